#!/usr/bin/env bash
# A real, single-node SLURM cluster on localhost, for testing the pipeline's SLURM profile.
#
#   tests/cluster/slurm.sh install install the Debian packages where missing (what `up` does first; .ci/run
#                                  starts it at the beginning, beside the Python install and the tests)
#   tests/cluster/slurm.sh up      install (Debian) where missing, write configs, start daemons, wait for idle
#   tests/cluster/slurm.sh down    stop every daemon this script started, by pid (reverse order)
#   tests/cluster/slurm.sh status  the daemons we started, and sinfo
#
# The cluster: one node `localhost` with every CPU, ~90% of the RAM and two fake GPUs (gres.conf points
# them at /dev/null and /dev/zero: a `--gpus=1` job gets CUDA_VISIBLE_DEVICES=0, nothing runs on a GPU);
# partitions `debug` (default) and `gpu` on that node; account `cascade` for root. Accounting is real
# (mariadb + slurmdbd), because snakemake-executor-plugin-slurm asks `sacct` for job states; without
# accounting sacct fails and Snakemake waits forever after the jobs end.
#
# Everything the cluster writes lives under $CASCADE_SLURM_DIR (default /tmp/cascade-slurm): configs,
# state, spool, logs, pid files, the database. The configs are also linked into /etc/slurm/ (the links are
# removed by `down`): the plugin's job step strips SLURM_* variables, SLURM_CONF included, so the `srun`
# inside every job reads the default path. Daemons are started by hand (no systemd on CI machines) and
# their pid files recorded in $CASCADE_SLURM_DIR/started, so `down` stops exactly those, never a daemon
# that was running before (a munged that already answers is used and left alone).
#
# Exit codes: 0 ok; 1 failure (a daemon did not come up: its log is printed, and what was started is
# stopped); 77 skipped: this host cannot run this cluster (not root, SLURM missing and not installable,
# or a SLURM configuration of its own in /etc/slurm, which is never replaced).
set -euo pipefail

DIR=${CASCADE_SLURM_DIR:-/tmp/cascade-slurm}
ETC=$DIR/etc
CLUSTER=${CASCADE_SLURM_CLUSTER:-localcluster}
PARTITION=${CASCADE_SLURM_PARTITION:-debug}
ACCOUNT=${CASCADE_SLURM_ACCOUNT:-cascade}
DB_PORT=${CASCADE_SLURM_DB_PORT:-3307}   # not 3306, so a host's own mariadb is left alone
SKIP=77

log() { echo "[slurm.sh] $*" >&2; }
skip() { echo "SKIP: $*" >&2; exit $SKIP; }

show_log() {  # the tail of a daemon's log, so a failure explains itself
    local f=$1
    [[ -f $f ]] && { log "--- last lines of $f ---"; tail -n 25 "$f" >&2; } || log "(no log at $f)"
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds (each try at most 5 s:
    local seconds=$1 what=$2 deadline; shift 2   # a client can hang when a daemon it needs is half up)
    deadline=$((SECONDS + seconds))
    while ((SECONDS < deadline)); do
        if timeout -k 1 5 "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    log "timed out after ${seconds}s waiting for $what"
    return 1
}

record() { echo "$1 $2" >>"$DIR/started"; }  # record NAME PIDFILE, in start order

running() {  # running PID: the process exists and is not a zombie (an exited daemon nobody reaped yet)
    local state
    state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    [[ $state != Z* ]]
}

alive() { [[ -f $1 ]] && running "$(cat "$1")"; }

install_packages() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurm-wlm)
    command -v munged >/dev/null || missing+=(munge)
    command -v slurmdbd >/dev/null || missing+=(slurmdbd)
    command -v mariadbd >/dev/null || missing+=(mariadb-server)
    ((${#missing[@]} == 0)) && return 0
    [[ $(id -u) == 0 ]] || skip "SLURM is not installed (${missing[*]}) and we are not root to install it"
    command -v apt-get >/dev/null || skip "SLURM is not installed (${missing[*]}) and this host has no apt-get"
    log "installing ${missing[*]} (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    # Package scripts try to start services; there is no init system here, so tell them not to (101).
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [[ ! -e $policy ]]; then printf '#!/bin/sh\nexit 101\n' >$policy; chmod +x $policy; made_policy=1; fi
    local ok=1
    apt-get update -qq >"$DIR/apt.log" 2>&1 &&
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$DIR/apt.log" 2>&1 || ok=0
    ((made_policy)) && rm -f $policy
    ((ok)) || { tail -n 20 "$DIR/apt.log" >&2; skip "apt-get could not install ${missing[*]} (log: $DIR/apt.log)"; }
}

write_configs() {
    local cpus mem_mb
    cpus=$(nproc)
    mem_mb=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
    mkdir -p "$ETC" "$DIR"/{state,spool,log,run}
    chown slurm: "$DIR/state" "$DIR/log" "$DIR/run"

    cat >"$ETC/slurm.conf.tmp" <<EOF
# Written by tests/cluster/slurm.sh: a single-node test cluster on localhost.
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
# Finished jobs stay visible to squeue for 10 minutes (a fallback when sacct is slow).
MinJobAge=600
KillWait=30
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# Accounting through slurmdbd: the executor plugin asks sacct for job states.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
# Keep sbatch --comment (the plugin writes the rule and wildcards there) so sacct can name each job.
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
GresTypes=gpu
NodeName=localhost NodeHostname=localhost CPUs=$cpus RealMemory=$mem_mb Gres=gpu:fake:2 State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
# A second name for the same node, so a test can prove that a partition given on the command line is used.
PartitionName=gpu Nodes=localhost Default=NO MaxTime=INFINITE State=UP
EOF
    mv "$ETC/slurm.conf.tmp" "$ETC/slurm.conf"

    cat >"$ETC/gres.conf" <<EOF
# Two fake GPUs: scheduling and CUDA_VISIBLE_DEVICES are real, the devices are not.
AutoDetect=off
NodeName=localhost Name=gpu Type=fake File=/dev/null
NodeName=localhost Name=gpu Type=fake File=/dev/zero
EOF

    # slurmdbd refuses a config that others can read (it holds the database password).
    umask 077
    cat >"$ETC/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=cascade-test
StorageLoc=slurm_acct_db
EOF
    umask 022
    chown slurm: "$ETC/slurmdbd.conf"
    chmod 600 "$ETC/slurmdbd.conf"
}

start_munge() {
    # A munged that answers is reused (and left running by `down`); a dead or half-gone one is not.
    if timeout 5 munge -n </dev/null 2>/dev/null | timeout 5 unmunge >/dev/null 2>&1; then
        log "munged already running: using it"; return 0
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating /etc/munge/munge.key"
        (command -v mungekey >/dev/null && mungekey -c -f -k /etc/munge/munge.key) ||
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        chown munge: /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge: /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged || { show_log /var/log/munge/munged.log; return 1; }
    record munged /run/munge/munged.pid
    wait_for 10 munged munge -n || { show_log /var/log/munge/munged.log; return 1; }
}

start_mariadb() {
    local data=$DIR/mysql sock=$DIR/run/mysqld.sock
    if [[ ! -d $data/mysql ]]; then
        mkdir -p "$data"; chown mysql: "$data"
        mariadb-install-db --user=mysql --datadir="$data" --skip-test-db \
            --auth-root-authentication-method=socket >"$DIR/log/mariadb-install.log" 2>&1 ||
            { show_log "$DIR/log/mariadb-install.log"; return 1; }
    fi
    chmod 1777 "$DIR/run"   # mariadbd (user mysql) and the slurm daemons both write pid files here
    mariadbd --user=mysql --datadir="$data" --socket="$sock" --pid-file="$DIR/run/mariadb.pid" \
        --port="$DB_PORT" --bind-address=127.0.0.1 --log-error="$DIR/log/mariadb.log" \
        --innodb-buffer-pool-size=64M >/dev/null 2>&1 &
    record mariadbd "$DIR/run/mariadb.pid"
    wait_for 30 "mariadb socket" mariadb -S "$sock" -u root -e 'select 1' || { show_log "$DIR/log/mariadb.log"; return 1; }
    mariadb -S "$sock" -u root <<'EOF'
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'cascade-test';
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'cascade-test';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
EOF
}

start_slurmdbd() {
    slurmdbd || { show_log "$DIR/log/slurmdbd.log"; return 1; }
    record slurmdbd "$DIR/run/slurmdbd.pid"
    wait_for 30 slurmdbd sacctmgr -n list cluster || { show_log "$DIR/log/slurmdbd.log"; return 1; }
    sacctmgr -i -Q add cluster "$CLUSTER" >/dev/null 2>&1 || true   # exists already on a restart
}

start_slurm() {
    slurmctld -f "$ETC/slurm.conf" || { show_log "$DIR/log/slurmctld.log"; return 1; }
    record slurmctld "$DIR/run/slurmctld.pid"
    wait_for 30 slurmctld scontrol ping || { show_log "$DIR/log/slurmctld.log"; return 1; }
    slurmd -f "$ETC/slurm.conf" -N localhost || { show_log "$DIR/log/slurmd.log"; return 1; }
    record slurmd "$DIR/run/slurmd.pid"
    wait_for 60 "node idle in sinfo" bash -c "sinfo -h -N -o '%t' | grep -qx idle" || { sinfo -N >&2; show_log "$DIR/log/slurmd.log"; show_log "$DIR/log/slurmctld.log"; return 1; }
}

add_account() {
    # The account the profile's default-resources name; root and the calling user may submit to it.
    sacctmgr -i -Q add account "$ACCOUNT" Cluster="$CLUSTER" Description="cascade-dllm test" >/dev/null 2>&1 || true
    local u
    for u in root "${SUDO_USER:-}"; do
        [[ -n $u ]] && { sacctmgr -i -Q add user "$u" Account="$ACCOUNT" Cluster="$CLUSTER" >/dev/null 2>&1 || true; }
    done
    sacctmgr -n -s list user root format=account%64 | grep -qw "$ACCOUNT" ||
        { log "sacctmgr did not record account $ACCOUNT for root"; return 1; }
}

link_configs() {  # /etc/slurm/NAME -> $ETC/NAME, recorded so that `down` removes exactly these links
    local name target names=(slurm.conf gres.conf slurmdbd.conf)
    mkdir -p /etc/slurm
    for name in "${names[@]}"; do  # check all before linking any, so a skip leaves nothing behind
        target=/etc/slurm/$name
        [[ -L $target && $(readlink "$target") == "$ETC/$name" ]] && continue
        [[ -e $target || -L $target ]] && skip "$target already exists: this host has its own SLURM configuration, which this test will not replace"
    done
    for name in "${names[@]}"; do
        target=/etc/slurm/$name
        [[ -L $target ]] && continue
        ln -s "$ETC/$name" "$target"
        echo "$target" >>"$DIR/links"
    done
}

unlink_configs() {
    [[ -f $DIR/links ]] || return 0
    local link
    while read -r link; do
        [[ -L $link ]] && rm -f "$link" && log "removed link $link"
    done <"$DIR/links"
    rm -f "$DIR/links"
}

up() {
    mkdir -p "$DIR"
    if [[ -s $DIR/started ]] && alive "$DIR/run/slurmctld.pid"; then
        log "already up (see $DIR/started)"; export SLURM_CONF=$ETC/slurm.conf; sinfo; return 0
    fi
    install_packages
    [[ $(id -u) == 0 ]] || skip "starting slurmctld/slurmd needs root"
    : >"$DIR/started"
    write_configs
    link_configs
    export SLURM_CONF=$ETC/slurm.conf
    local t0=$SECONDS
    start_munge && start_mariadb && start_slurmdbd && start_slurm && add_account || {
        log "SLURM did not come up; stopping what was started"; down; return 1; }
    log "SLURM up in $((SECONDS - t0))s: cluster $CLUSTER, partition $PARTITION, account $ACCOUNT"
    log "sbatch/sinfo/sacct read it through the links in /etc/slurm/; stop it with: $0 down"
    sinfo
}

down() {
    [[ -f $DIR/started ]] || { log "nothing recorded in $DIR/started"; unlink_configs; return 0; }
    # Reverse start order: slurmd, slurmctld, slurmdbd, mariadbd, munged.
    local name pidfile pid
    tac "$DIR/started" | while read -r name pidfile; do
        [[ -f $pidfile ]] || { log "$name: no pid file $pidfile"; continue; }
        pid=$(cat "$pidfile")
        running "$pid" || { log "$name ($pid) already gone"; continue; }
        kill -TERM "$pid"
        for ((i = 0; i < 40; i++)); do running "$pid" || break; sleep 0.25; done
        if running "$pid"; then log "$name ($pid) ignored SIGTERM: SIGKILL"; kill -KILL "$pid"; fi
        log "stopped $name ($pid)"
    done
    rm -f "$DIR/started"
    unlink_configs
}

status() {
    export SLURM_CONF=$ETC/slurm.conf
    [[ -f $DIR/started ]] && cat "$DIR/started" || echo "no daemons recorded"
    sinfo -N 2>&1 || true
}

case ${1:-} in
install) mkdir -p "$DIR" && install_packages ;;
up) up ;;
down) down ;;
status) status ;;
*) echo "usage: $0 install|up|down|status   (state in \$CASCADE_SLURM_DIR, default /tmp/cascade-slurm)" >&2; exit 2 ;;
esac
