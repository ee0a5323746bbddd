"""Where a config's outputs live: one folder per data product, named by the settings that make it, and one runs
folder per config profile, so that two configs in one checkout share what they build alike and never overwrite
what they build differently.

    layout = Layout(config)                  # a validated config (common.config)
    layout.raw("train")                      data/pydoc/raw-3f09c2aa/train
    layout.tokenizer                         data/pydoc/tokenizer-81b7d4e0
    layout.annot("keybert", "train")         data/pydoc/annot-5d1a.../keybert/train
    layout.stages("keybert", "train")        data/pydoc/stages-5d1a.../keybert/8_16_32/train
    layout.blocks("wrap", "train")           data/pydoc/blocks-c2e4.../wrap/32/train
    layout.sft("train")                      data/pydoc/sft-7a0b.../96/train
    layout.preference("train")               data/pydoc/preference-19fe.../96/train
    layout.run("cascade")                    runs/demo/cascade

From the shell (to ask Snakemake for one shard, or to find a config's outputs), with the configfiles merged as
Snakemake merges them (config.yaml when none is given):

    python -m common.layout annot keybert train                                  data/pydoc/annot-5d1a.../keybert/train
    python -m common.layout tokenizer --configfile configs/tiny.yaml
    python -m common.layout run sft --configfile configs/sft.yaml configs/twins/sft.yaml

The tag after a data product's name is the first 8 hex digits of

    sha256(yaml(settings of that product, and the paths of the products it is made from))

so it changes when any setting upstream of it changes (a parent's path carries the parent's tag), and two configs
that agree on everything a product depends on get the same folder (the test suite's DAG fixtures share their
corpus and tokenizer this way). The settings are exactly the keys the product's job reads (the rules' `params:
settings` rerun triggers): keys that change only speed or resources (threads, batch sizes of annotation, GPUs)
are not in it. A folder name never changes under a job: an edit to a setting makes a new folder, and the old one
stays valid for the config that still names it.

Trained models depend on a whole run's settings and on the data above; their folder is named by the config's
`profile` (runs/{profile}/{run}), which each file of configs/ sets to its own name (tested), and a model folder
carries a copy of its tokenizer (train/trainer.py), so it is usable from anywhere.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import os
from pathlib import Path

import yaml

# The sft section's keys that make a canvas shard (preprocess/sft.py); a split reads its own record count only.
SFT_DATA_KEYS = ("source", "format", "length", "validation_fraction", "n_train", "n_validation", "seed")
# The dpo section's keys that make a preference shard (preprocess/preference.py), on canvases of sft.length.
PREFERENCE_DATA_KEYS = ("source", "validation_fraction", "n_train", "n_validation", "seed")
# The annotate keys that change an annotated shard: the models it runs and the piece size (threads and batch size
# change only the speed).
ANNOTATE_KEYS = ("spacy_model", "keybert_model", "max_doc_chars")


def settings_tag(*parts) -> str:
    """8 hex digits of the SHA-256 of the parts as sorted YAML: the name suffix of a data folder."""
    text = yaml.safe_dump(list(parts), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def split_settings(section: dict, keys: tuple[str, ...], split: str) -> dict:
    """The keys of ``section`` a shard of ``split`` depends on: a split reads its own record count
    (n_train | n_validation), not the other one's."""
    other = "n_validation" if split == "train" else "n_train"
    return {k: section[k] for k in keys if k != other}


class Layout:
    """The output paths of one validated config (see the module docstring)."""

    def __init__(self, config: dict):
        self.config = config
        self.corpus = config["corpus"]["name"]
        self.profile = config["profile"]
        self.data = f"data/{self.corpus}"
        self.raw_root = f"{self.data}/raw-{settings_tag('raw', config['corpus'])}"
        tok = config["tokenizer"]
        # a pretrained tokenizer is read, not trained: the corpus does not change it
        trained_on = self.raw_root if tok["kind"] == "bpe" else None
        self.tokenizer = f"{self.data}/tokenizer-{settings_tag('tokenizer', tok, trained_on)}"
        annotate = {k: config["annotate"][k] for k in ANNOTATE_KEYS}
        annot_tag = settings_tag("annot", annotate, self.raw_root, self.tokenizer)
        self.annot_root = f"{self.data}/annot-{annot_tag}"
        self.stages_root = f"{self.data}/stages-{annot_tag}"  # made from the annotated shards alone
        self.blocks_root = f"{self.data}/blocks-{settings_tag('blocks', self.raw_root, self.tokenizer)}"

    def raw(self, split: str) -> str:
        return f"{self.raw_root}/{split}"

    def annot(self, method: str, split: str) -> str:
        return f"{self.annot_root}/{method}/{split}"

    def stages(self, method: str, split: str) -> str:
        lengths = "_".join(map(str, self.config["stages"]["lengths"]))
        return f"{self.stages_root}/{method}/{lengths}/{split}"

    def blocks(self, packing: str, split: str) -> str:
        from common.config import block_length

        return f"{self.blocks_root}/{packing}/{block_length(self.config)}/{split}"

    def sft_tag(self, split: str) -> str:
        return settings_tag("sft", split_settings(self.config["sft"], SFT_DATA_KEYS, split), self.tokenizer)

    def sft(self, split: str) -> str:
        return f"{self.data}/sft-{self.sft_tag(split)}/{self.config['sft']['length']}/{split}"

    def preference_tag(self, split: str) -> str:
        return settings_tag(
            "preference",
            split_settings(self.config["dpo"], PREFERENCE_DATA_KEYS, split),
            self.config["sft"]["length"],
            self.tokenizer,
        )

    def preference(self, split: str) -> str:
        return f"{self.data}/preference-{self.preference_tag(split)}/{self.config['sft']['length']}/{split}"

    def zero_shot_tag(self, label: str) -> str:
        """The tag of one zero-shot corpus entry ({name, path, max_docs}) of the config."""
        return settings_tag("zero-shot", self.config["zero_shot"]["corpora"][label])

    def zero_shot_blocks_tag(self, label: str) -> str:
        return settings_tag("blocks", self.zero_shot_raw(label), self.tokenizer)

    def zero_shot_raw(self, label: str) -> str:
        """data/{name}/zero-shot-{tag}/raw: one zero-shot corpus's evaluation text."""
        name = self.config["zero_shot"]["corpora"][label]["name"]
        return f"data/{name}/zero-shot-{self.zero_shot_tag(label)}/raw"

    def zero_shot_blocks(self, label: str, length: int) -> str:
        """Its text wrapped into blocks of ``length`` tokens by the config's tokenizer."""
        root = os.path.dirname(self.zero_shot_raw(label))
        return f"{root}/blocks-{self.zero_shot_blocks_tag(label)}/wrap/{length}"

    def run(self, run: str) -> str:
        return f"runs/{self.profile}/{run}"

    def own_pairs(self, run: str) -> str:
        """runs/{profile}/{run}/pairs/train: the pairs a dpo run with pairs: own_answers made from its start
        model's answers (eval/own_pairs.py); under the run, since they depend on a model, not on data settings."""
        return f"{self.run(run)}/pairs/train"


def merge_config(base: dict, over: dict) -> dict:
    """``over`` merged into ``base`` in place, key by key (nested mappings merged, anything else replaced), as
    Snakemake's --configfile merges a later file into the earlier ones; returns ``base``."""
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge_config(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def merge_configfiles(paths) -> dict:
    """The configfiles merged in order (merge_config), then checked and the schema's defaults filled in."""
    from common.config import read_yaml, validate_config

    config: dict = {}
    for path in paths:
        merge_config(config, read_yaml(path) or {})
    return validate_config(config, " + ".join(map(str, paths)))


PRODUCTS = {  # what the command line can ask for: (argument names, the Layout call)
    "raw": (["split"], lambda l, a: l.raw(a.split)),
    "tokenizer": ([], lambda l, a: l.tokenizer),
    "annot": (["method", "split"], lambda l, a: l.annot(a.method, a.split)),
    "stages": (["method", "split"], lambda l, a: l.stages(a.method, a.split)),
    "blocks": (["packing", "split"], lambda l, a: l.blocks(a.packing, a.split)),
    "sft": (["split"], lambda l, a: l.sft(a.split)),
    "preference": (["split"], lambda l, a: l.preference(a.split)),
    "run": (["run"], lambda l, a: l.run(a.run)),
}


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m common.layout",
        description="Print where a config keeps one of "
        "its outputs (relative to the working directory Snakemake runs in).",
    )
    sub = parser.add_subparsers(dest="product", required=True)
    for name, (args, _) in PRODUCTS.items():
        p = sub.add_parser(name)
        for arg in args:
            p.add_argument(arg)
        p.add_argument(
            "--configfile",
            nargs="+",
            default=[str(Path(__file__).resolve().parents[1] / "config.yaml")],
            help="as snakemake's --configfile, after the product (default: the embedded config.yaml)",
        )
    args = parser.parse_args(argv)
    print(PRODUCTS[args.product][1](Layout(merge_configfiles(args.configfile)), args))


if __name__ == "__main__":
    main()
