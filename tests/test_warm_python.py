"""tests/warm_python.py stands in for a fresh `python -m <module>`: same argv, directory, environment, streams, exit
code, signals and random state, and a plain interpreter for an environment it cannot serve. Checked against a fresh
interpreter running the same module, on a server that preloads torch only."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from warm_python import start

ROOT = Path(__file__).resolve().parents[1]

PROBE = '''
import json, os, random, sys
warm = "torch" in sys.modules  # the server imported it; a fresh interpreter has not yet
import torch
print(json.dumps({
    "warm": warm, "argv": sys.argv, "cwd": os.getcwd(), "path0": sys.path[0], "path": os.environ["PATH"],
    "stdin": sys.stdin.read(), "torch_draw": torch.rand(1).item(), "python_draw": random.random(),
}))
print("to stderr", file=sys.stderr)
sys.exit(int(sys.argv[1]))
'''

SLEEPER = """
import os, signal, sys, time
from pathlib import Path
signal.signal(signal.SIGTERM, lambda *_: sys.exit(75))  # as the trainer does: checkpoint, then exit 75
Path(sys.argv[1]).write_text(str(os.getpid()))
time.sleep(60)
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("warm")
    (folder / "modules").mkdir()
    (folder / "modules" / "probe.py").write_text(PROBE)
    (folder / "modules" / "sleeper.py").write_text(SLEEPER)
    (folder / "modules" / "suicide.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n")
    env = {**os.environ}
    proc = start(folder, folder, env, preload=["torch"], timeout=120)
    assert proc is not None, (folder / "server.log").read_text()
    yield {"folder": folder, "python": str(folder / "bin" / "python"), "env": env}
    proc.terminate()
    proc.wait(timeout=30)


def run(python, server, *args, env=None, **kwargs):
    return subprocess.run(
        [python, "-m", *args], cwd=server["folder"] / "modules", env={**server["env"], **(env or {})}, **kwargs
    )


def probe(python, server, env=None, code="0"):
    proc = run(python, server, "probe", code, "--b", env=env, input="in", capture_output=True, text=True)
    return proc.returncode, json.loads(proc.stdout), proc.stderr


def test_a_served_module_sees_what_a_fresh_interpreter_sees(server):
    env = {"PATH": f"/probe-path:{os.environ['PATH']}"}  # PATH is a per-job key: served warm, and passed on
    warm_code, warm, warm_err = probe(server["python"], server, env, code="3")
    plain_code, plain, plain_err = probe(sys.executable, server, env, code="3")
    assert warm["warm"] and not plain["warm"]
    assert warm_code == plain_code == 3 and warm_err == plain_err == "to stderr\n"
    for key in ("argv", "cwd", "path0", "path", "stdin"):
        assert warm[key] == plain[key], key
    assert warm["argv"][1:] == ["3", "--b"] and warm["stdin"] == "in" and warm["path"].startswith("/probe-path:")


def test_each_fork_draws_its_own_random_numbers(server):
    """Python's and torch's generators are seeded from the OS in a fresh interpreter: two forks of one server must
    not repeat each other's draws (and none repeats the server's)."""
    first, second = probe(server["python"], server)[1], probe(server["python"], server)[1]
    assert first["python_draw"] != second["python_draw"] and first["torch_draw"] != second["torch_draw"]


def test_another_environment_is_served_by_a_fresh_interpreter_and_logged(server):
    code, out, _ = probe(server["python"], server, env={"HOME": "/nonexistent-home"})
    assert code == 0 and not out["warm"]
    assert "environment differs in ['HOME']" in (server["folder"] / "plain.log").read_text()


def start_sleeper(server, pid_file: Path) -> tuple[subprocess.Popen, int]:
    """The sleeper module through the warm client: (the client process, the pid the job wrote once it started)."""
    proc = subprocess.Popen(
        [server["python"], "-m", "sleeper", str(pid_file)], cwd=server["folder"] / "modules", env=server["env"]
    )
    deadline = time.time() + 30
    while not (pid_file.exists() and pid_file.read_text()) and time.time() < deadline:
        time.sleep(0.05)
    return proc, int(pid_file.read_text())


def test_a_forwarded_sigterm_reaches_the_jobs_handler(server, tmp_path):
    proc, job = start_sleeper(server, tmp_path / "pid")
    assert job != proc.pid  # the job is the fork, not the client
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 75


def test_a_job_killed_by_a_signal_is_reported_as_killed(server):
    assert run(server["python"], server, "suicide").returncode == -signal.SIGTERM
    assert run(sys.executable, server, "suicide").returncode == -signal.SIGTERM


def test_a_killed_client_takes_its_job_with_it(server, tmp_path):
    proc, job = start_sleeper(server, tmp_path / "pid")
    proc.kill()
    proc.wait()
    deadline = time.time() + 10
    while Path(f"/proc/{job}").exists() and time.time() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{job}").exists()


def test_other_forms_run_on_the_real_interpreter(server):
    done = subprocess.run([server["python"], "-c", "import sys; print(sys.executable)"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == sys.executable
    missing = run(server["python"], server, "no_such_module", capture_output=True, text=True)
    assert missing.returncode == 1 and "No module named no_such_module" in missing.stderr


def test_a_server_that_cannot_start_is_reported_and_leaves_jobs_to_fresh_interpreters(tmp_path):
    with pytest.warns(UserWarning, match="No module named 'no_such_module'"):
        assert start(tmp_path, tmp_path, {**os.environ}, preload=["no_such_module"], timeout=60) is None
    assert not (tmp_path / "bin" / "python").exists()
