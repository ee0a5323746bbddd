"""The torch device a command runs on."""

from __future__ import annotations

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu; anything else is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def add_device_arguments(parser) -> None:
    """--device and --threads, for the commands that run a network (eval.sample, eval.evaluate, eval.sft score,
    eval.dpo score)."""
    parser.add_argument("--device", default="auto", help="auto: cuda when available, else cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def device_from_arguments(args) -> torch.device:
    """Apply --threads and resolve --device (see add_device_arguments)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return resolve_device(args.device)
