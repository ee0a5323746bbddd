"""The tokenizer: a byte-level BPE trained on the train split, or a named Hugging Face tokenizer.

Either way the result is a folder that ``transformers.PreTrainedTokenizerFast.from_pretrained`` loads, with
an EOS token (document separator) and a MASK token (the absorbing state of the diffusion). A named tokenizer
that lacks a mask token (GPT-2) gets ``<|mask|>`` appended, so ``len(tokenizer)`` is always the model's
vocabulary size.

    python -m preprocess.tokenizer --config config.yaml --train-shards data/pydoc/raw-<tag>/train/shard_*.parquet \
        --out data/pydoc/tokenizer-<tag>
    python -m preprocess.tokenizer --config configs/wikihow.yaml --out tok     # kind pretrained: nothing to train on
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator
from pathlib import Path

from tqdm import tqdm

from common.config import load_config
from common.io import atomic_dir, read_parquet

EOS_TOKEN = "<|endoftext|>"
MASK_TOKEN = "<|mask|>"
PAD_TOKEN = "<|pad|>"


def iter_texts(shards: Iterable[str | Path], batch_size: int = 1000) -> Iterator[list[str]]:
    """Batches of document texts from raw shards, in shard order."""
    for shard in tqdm(list(shards), desc="tokenizer: reading shards", unit="shard"):
        texts = read_parquet(shard, ["text"]).column("text").to_pylist()
        for i in range(0, len(texts), batch_size):
            yield texts[i : i + batch_size]


def train_bpe(texts: Iterable[list[str]], vocab_size: int, min_frequency: int):
    """Train a byte-level BPE (GPT-2 style pre-tokenization) and wrap it as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN, PAD_TOKEN, MASK_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable: no unknown tokens
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN, mask_token=MASK_TOKEN
    )


def load_pretrained(name: str):
    """A named tokenizer (hub id, local folder or installed model package: common.model_packages) with a mask
    token added where it has none."""
    from transformers import AutoTokenizer

    from common.model_packages import model_location

    tok = AutoTokenizer.from_pretrained(model_location(name))
    if tok.mask_token is None:
        tok.add_special_tokens({"mask_token": MASK_TOKEN})
    if tok.eos_token is None:
        tok.add_special_tokens({"eos_token": EOS_TOKEN})
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def build(config: dict, train_shards: list[str], out: str | Path):
    """Build the tokenizer the config asks for and save it atomically as a folder at ``out``."""
    cfg = config["tokenizer"]
    if cfg["kind"] == "bpe":
        tok = train_bpe(iter_texts(train_shards), cfg["vocab_size"], cfg["min_frequency"])
    else:
        tok = load_pretrained(cfg["name"])
    with atomic_dir(out) as tmp:
        tok.save_pretrained(str(tmp))
    return tok


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the pipeline config (read with common.config.load_config)")
    parser.add_argument(
        "--train-shards",
        nargs="+",
        default=[],
        help="raw train shards (tokenizer.kind bpe, which trains on them); none for kind pretrained",
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    config = load_config(args.config)
    if config["tokenizer"]["kind"] == "bpe" and not args.train_shards:
        parser.error(f"{args.config}: tokenizer.kind is bpe, which trains on --train-shards; none given")
    tok = build(config, args.train_shards, args.out)
    print(f"tokenizer: {len(tok)} tokens (eos={tok.eos_token_id}, mask={tok.mask_token_id}) -> {args.out}")


if __name__ == "__main__":
    main()
