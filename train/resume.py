"""Which checkpoint a run may resume from: one written under the same settings, with every file intact.

A checkpoint folder `{out}/checkpoints/step_XXXXXXXX/` holds accelerate's state (safetensors files and torch
zip archives) and trainer_state.json (step, seconds, the settings and their digest,
TrainSettings.digest()). checkpoint_problem() says why a run cannot resume from one, or None when it can:
a missing or unreadable trainer_state.json, a different settings digest (with the keys that differ, old ->
new), or a file that does not open (a truncated safetensors header, a broken zip).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from train.settings import TrainSettings

STATE_FILE = "trainer_state.json"


def as_json(value):
    """`value` as it reads back from JSON (tuples become lists), so recorded and current settings compare."""
    return json.loads(json.dumps(value, default=list))


def settings_difference(recorded: dict, current: dict) -> str:
    """'key old -> new' for every setting that differs, e.g. 'lr 0.003 -> 0.002, max_steps 12 -> 8'."""
    current = as_json(current)
    changed = [
        f"{key} {json.dumps(recorded.get(key, '(absent)'))} -> {json.dumps(current.get(key, '(absent)'))}"
        for key in sorted(set(recorded) | set(current))
        if recorded.get(key) != current.get(key)
    ]
    return ", ".join(changed) or "no recorded setting differs (the digest's definition changed)"


def _safetensors_problem(path: Path) -> str | None:
    from safetensors import SafetensorError, safe_open

    try:  # the header lists every tensor's byte range; safe_open checks the file covers them all
        with safe_open(str(path), "pt") as handle:
            for key in handle.keys():
                handle.get_slice(key).get_shape()
    except (SafetensorError, OSError) as err:
        return f"{path}: unreadable safetensors file, {path.stat().st_size} bytes ({err})"
    return None


def _torch_archive_problem(path: Path) -> str | None:
    try:  # torch.save writes a zip archive whose directory is at the end: a cut-short file has none
        with zipfile.ZipFile(path) as archive:
            archive.namelist()
    except (zipfile.BadZipFile, OSError) as err:
        return f"{path}: unreadable torch archive, {path.stat().st_size} bytes ({err})"
    return None


def damaged_file(folder: Path, expected: list[str]) -> str | None:
    """The first missing or unreadable file of a checkpoint folder (with what is wrong), or None."""
    for name in expected:
        if not (folder / name).is_file():
            return f"{folder / name}: missing"
    for path in sorted(folder.rglob("*")):
        if path.suffix == ".safetensors":
            problem = _safetensors_problem(path)
        elif path.suffix in (".bin", ".pkl", ".pt"):
            problem = _torch_archive_problem(path)
        else:
            continue
        if problem:
            return problem
    return None


def read_trainer_state(folder: Path) -> dict:
    """trainer_state.json of a checkpoint; ValueError naming the file when it is unreadable or incomplete."""
    path = folder / STATE_FILE
    try:
        state = json.loads(path.read_text())
        int(state["step"]), float(state["seconds"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: unreadable ({type(err).__name__}: {err})") from None
    return state


def checkpoint_problem(folder: Path, settings: TrainSettings, expected_files: list[str]) -> str | None:
    """Why this run cannot resume from `folder`, or None when it can."""
    try:
        state = read_trainer_state(folder)
    except ValueError as err:
        return str(err)
    recorded = state.get("settings_digest")
    if recorded != settings.digest():
        if not isinstance(state.get("settings"), dict):
            return f"written without a settings record (digest {recorded}), by an older trainer"
        return (
            f"written under other settings (digest {recorded} -> {settings.digest()}): "
            f"{settings_difference(state['settings'], settings.computing())}"
        )
    return damaged_file(folder, expected_files)
