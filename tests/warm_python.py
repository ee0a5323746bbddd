"""A warm interpreter for the end-to-end tests: one process imports torch, transformers, spaCy, KeyBERT and Snakemake
once, and forks a child for each `python -m <module>` that a Snakemake job (or a test's own `snakemake` call) starts.

Why: the suite runs about 250 such processes, and each spent most of its CPU time on imports (bench/README.md,
"The test suite"): torch and torch._dynamo 2-4 CPU-seconds for every train, sample and eval job, sentence-transformers
about 7 for every KeyBERT job, Snakemake about 1.5 for every `snakemake` call. A forked child starts with those
modules in memory and runs the same module, with the same arguments, working directory, environment and file
descriptors as the process it stands in for; `python -m` is the only form it serves.

    server   `python tests/warm_python.py --socket S --bin B --log L` (started by start()): preloads, writes
             B/python (tests/warm_client.py) and listens on S. Per request it forks a manager, which forks the job,
             reports the job's pid, waits for it and reports its wait status; if the client goes away first, the
             manager kills the job.
    client   B/python: first on the tests' PATH (conftest.offline_env); what it cannot hand over it execs plainly.

What a fresh interpreter would read at start-up must be what the server read: an environment that differs from the
server's in any key outside PER_JOB is served by the real interpreter (the manager answers "plain"). The server is
started with the thread counts and temporary folder that Snakemake gives a job of one thread (conftest.ONE_THREAD_JOB),
so that such a job, the common case, is served warm, and a job of two threads runs plainly. The plain
path stays covered: `make demo` (the Makefile puts the venv first on PATH), the live-SLURM test (sbatch), and
WARM_PYTHON=0 make test, which runs the whole suite without this module."""

import argparse
import atexit
import importlib.util
import json
import os
import random
import runpy
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path

# imported once here, so that a forked job finds them in sys.modules: what the jobs' entry points import at the top
PRELOAD = (
    "numpy",
    "pyarrow.parquet",
    "torch",
    "torch._dynamo",  # imported by the first torch.optim call (torch._compile._disable_dynamo): 1.5 CPU-seconds
    "torch.nn.functional",
    "safetensors.torch",
    "tokenizers",
    "transformers",
    "transformers.models.bert.modeling_bert",
    "transformers.models.gpt2.modeling_gpt2",
    "accelerate",
    "tqdm",
    "yaml",
    "jsonschema",
    "spacy",
    "keybert",
    "sentence_transformers",
    "snakemake.cli",
)

# keys a fresh interpreter's imports do not read, which differ from job to job (the shell's, pytest's, Snakemake's);
# PS1 and PS2: a venv's activate exports PS1, and a non-interactive bash (Snakemake's job shell) drops both
PER_JOB = {"PWD", "OLDPWD", "SHLVL", "_", "PATH", "PS1", "PS2", "PYTEST_CURRENT_TEST"}
PER_JOB_PREFIXES = ("SNAKEMAKE_",)
STARTED_WITH = dict(os.environ)  # the environment the preloaded imports read (they add keys of their own to it)


def environment_mismatch(job: dict) -> list[str]:
    """The keys, outside PER_JOB, in which a job's environment differs from the one the server's imports read; a key
    that those imports set themselves (e.g. torch's TORCHINDUCTOR_CACHE_DIR) may be absent, or the same."""
    added = added_by_imports()
    served = {**STARTED_WITH, **added}
    return sorted(
        k
        for k in set(served) | set(job)
        if k not in PER_JOB
        and not k.startswith(PER_JOB_PREFIXES)
        and served.get(k) != job.get(k)
        and not (k in added and k not in job)
    )


def added_by_imports() -> dict:
    return {k: v for k, v in os.environ.items() if k not in STARTED_WITH}


def receive_request(conn: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
    while len(data) < 4 or len(data) < 4 + struct.unpack("!I", data[:4])[0]:
        chunk = conn.recv(1 << 16)
        if not chunk:
            raise ConnectionError("client went away mid-request")
        data += chunk
    size = struct.unpack("!I", data[:4])[0]
    return json.loads(data[4 : 4 + size]), fds


def exit_code(exc: SystemExit) -> int:
    """What the interpreter does with sys.exit(x): None -> 0, an int -> itself, anything else printed -> 1."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def fresh_random_state() -> None:
    """The generators' state of a fresh interpreter, not the server's, which every fork would otherwise share: Python's,
    NumPy's global and torch's default generator, each seeded from the OS as at their start-up."""
    random.seed()
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    if "torch" in sys.modules:
        sys.modules["torch"].seed()


def run_job(request: dict, fds: list[int]) -> None:
    """In the forked child: become `python -m module args` in the client's directory and environment, run it to the
    end as the interpreter would (threads joined, then atexit), and leave without running anything of the server's."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdout.reconfigure(line_buffering=os.isatty(1))  # as a fresh interpreter buffers its stdout
    for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.chdir(request["cwd"])
    added = added_by_imports()
    os.environ.clear()
    os.environ.update({**added, **request["env"]})
    fresh_random_state()
    atexit._clear()
    module, args = request["argv"][1], request["argv"][2:]
    sys.argv = [module, *args]
    sys.path[0] = os.getcwd()
    code = 0
    try:
        if importlib.util.find_spec(module) is None:  # the interpreter's own words for it
            print(f"{sys.executable}: No module named {module}", file=sys.stderr)
            os._exit(1)
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exit_code(exc)
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 128 + signal.SIGINT
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        threading._shutdown()
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def manage(conn: socket.socket, log) -> None:
    """In the manager (a child of the server): start the job, report its pid, wait for it, report its wait status."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    request, fds = receive_request(conn)
    mismatch = environment_mismatch(request["env"])
    if mismatch:
        print(f"plain: {' '.join(request['argv'][:2])}: environment differs in {mismatch}", file=log, flush=True)
        conn.sendall(b"plain\n")
        return
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        conn.close()
        run_job(request, fds)
    for fd in fds:
        os.close(fd)
    conn.sendall(f"pid {pid}\n".encode())
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            conn.sendall(f"status {status}\n".encode())
            return
        readable, _, _ = select.select([conn], [], [], 0.05)
        if readable and not conn.recv(1):  # the client is gone (killed): so is the job, as a plain process would be
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return


def serve(socket_path: Path, bin_dir: Path, log_path: Path, preload=PRELOAD) -> None:
    for name in preload:
        __import__(name)
    bin_dir.mkdir(parents=True, exist_ok=True)
    shim = bin_dir / "python"
    here = Path(__file__).resolve().parent
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # managers are reaped by the kernel
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(socket_path))
    server.listen(64)
    server.settimeout(1.0)
    written = bin_dir / ".python"  # the client appears whole, and only once the socket listens
    written.write_text(
        f"#!{sys.executable} -IS\n"
        f"import sys\nsys.path.insert(0, {str(here)!r})\nimport warm_client\n"
        f"warm_client.run({sys.executable!r}, {str(socket_path)!r})\n"
    )
    written.chmod(0o755)
    written.rename(shim)
    parent = os.getppid()
    log = open(log_path, "a", buffering=1)  # noqa: SIM115 (open for the server's life)
    while os.getppid() == parent:  # the test session that started us is gone: so are we
        try:
            conn, _ = server.accept()
        except TimeoutError:
            continue
        conn.settimeout(None)
        sys.stdout.flush()
        if os.fork() == 0:
            server.close()
            try:
                manage(conn, log)
            except Exception:
                traceback.print_exc(file=log)
            finally:
                os._exit(0)
        conn.close()


def start(folder: Path, socket_dir: Path, env: dict, preload=None, timeout: float = 600):
    """Start a server for a test session: its client is folder/bin/python, its log folder/server.log, its socket in
    ``socket_dir`` (keep it short: a Unix socket's path is limited to 107 bytes). The running server, or None, with
    a warning that quotes its log, when it exits or does not listen within ``timeout`` seconds."""
    command = [sys.executable, __file__, "--socket", str(socket_dir / "socket"), "--bin", str(folder / "bin")]
    command += ["--log", str(folder / "plain.log")]
    if preload is not None:
        command += ["--preload", *preload]
    with open(folder / "server.log", "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + timeout
    while not (folder / "bin" / "python").exists():  # written once the imports are done and the socket listens
        if server.poll() is not None or time.time() > deadline:
            server.kill()
            server.wait()
            log = (folder / "server.log").read_text()[-3000:]
            warnings.warn(f"tests/warm_python.py did not start; jobs run on fresh interpreters:\n{log}", stacklevel=2)
            return None
        time.sleep(0.2)
    return server


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--bin", type=Path, required=True, help="folder for the `python` client to put on PATH")
    parser.add_argument("--log", type=Path, required=True, help="why a request was served plainly")
    parser.add_argument("--preload", nargs="*", default=PRELOAD, help="modules to import first (default: PRELOAD)")
    args = parser.parse_args(argv)
    started = time.time()
    serve(args.socket, args.bin, args.log, args.preload)
    print(f"warm python served for {time.time() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
