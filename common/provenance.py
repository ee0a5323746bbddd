"""Where a result came from: the git commit of the code that produced it, recorded in every model's config.json
(and from there on every table row, beside the settings digest and the seed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def code_commit(repo: Path = REPO) -> str | None:
    """`git rev-parse HEAD` of the project, with "+dirty" when tracked files differ from it; None when the code
    is not a git checkout (an installed copy) or git is missing: the record then says so rather than guessing."""
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")
