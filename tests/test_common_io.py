"""Atomic writes: a file appears whole or not at all, and a device or pipe given as the output stays what it is."""

import os
import stat
import threading

import pytest

from common.io import atomic_path


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_a_pipe_is_written_through_not_replaced(tmp_path):
    """`--out /dev/null` (or a pipe) must not rename a regular file onto the device: as root that replaces
    /dev/null itself, and every later program that opens it for writing gets 'Permission denied'."""
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    received = []
    reader = threading.Thread(target=lambda: received.append(pipe.read_text()))
    reader.start()
    with atomic_path(pipe) as out:
        assert out == pipe
        out.write_text("answers\n")
    reader.join(timeout=10)
    assert received == ["answers\n"]
    assert stat.S_ISFIFO(os.stat(pipe).st_mode)
