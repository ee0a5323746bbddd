"""The `python` that the end-to-end tests put first on PATH (tests/warm_python.py writes it): stdlib only, started
with -IS so that it costs milliseconds. `python -m <module> ...` with an environment the warm server can serve
becomes a request to that server, which forks an interpreter that has torch, transformers, spaCy and KeyBERT already
imported; anything else (a script, -c, -P, another PYTHONPATH, no server) execs the real interpreter unchanged.

For the caller (Snakemake's shell, a test) this process is the job: it passes its stdin, stdout and stderr to the
forked job, forwards the signals a scheduler sends (TERM, INT, HUP, QUIT, USR1, USR2), and exits as the job did, with
its code or by its signal."""

import json
import os
import signal
import socket
import struct
import sys

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def read_line(sock: socket.socket, pending: bytearray) -> str:
    while b"\n" not in pending:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("the warm server closed the connection")
        pending.extend(chunk)
    line, _, rest = bytes(pending).partition(b"\n")
    pending[:] = rest
    return line.decode()


def run(real_python: str, socket_path: str) -> None:
    argv = sys.argv[1:]
    if len(argv) < 2 or argv[0] != "-m" or argv[1].startswith("-"):
        os.execv(real_python, [real_python, *argv])
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(socket_path)
    except OSError:
        os.execv(real_python, [real_python, *argv])
    request = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    header = struct.pack("!I", len(request))
    socket.send_fds(sock, [header + request], [0, 1, 2])
    pending = bytearray()
    try:
        answer = read_line(sock, pending)
    except ConnectionError:  # the server failed before starting the job: nothing ran yet
        answer = "plain"
    if answer == "plain":  # the server cannot serve this environment (it says why in its log)
        sock.close()
        os.execv(real_python, [real_python, *argv])
    pid = int(answer.split()[1])
    for signum in FORWARDED:
        signal.signal(signum, lambda signum, _frame: os.kill(pid, signum))
    status = int(read_line(sock, pending).split()[1])
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    os._exit(os.waitstatus_to_exitcode(status))
