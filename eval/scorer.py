"""Generative perplexity: how likely an autoregressive scorer finds the final text of the samples.

    gen_ppl = exp( sum_samples sum_i -log p_scorer(y_i | bos, y_<i)  /  sum_samples len(y) )

token-weighted over all samples, every token of a sample scored after a BOS token. load_scorer(spec) picks
one of two scorers:

- a pipeline AR model folder (config evaluate.scorer ``ar``: rules/eval.smk passes the model folder of the
  first run of kind ar): the pipeline's own causal model, trained on the same stage-3 blocks with the same
  tokenizer, so the sampled token ids are scored as they are (no retokenization). When the tokenizers differ
  the text is retokenized with the scorer's tokenizer.
- a hub id or local folder of a transformers causal LM (``gpt2-large`` in the paper profile): the decoded
  text is retokenized with its AutoTokenizer and scored by AutoModelForCausalLM, in windows of its context
  length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

DEFINITION = (
    "generative perplexity of the final-stage text, token-weighted: exp(sum over samples and tokens of "
    "-ln p_scorer(y_i | bos, y_<i) / number of scored tokens); scorer {scorer}; {tokens}"
)


class PipelineARScorer:
    """The pipeline's causal model: ``model(x) -> logits``, logits at i predict token i+1, fed [bos ; y]."""

    def __init__(self, model_dir, device=torch.device("cpu"), batch_size: int = 32):
        from eval.trained import load_trained

        trained = load_trained(model_dir, device)
        if not trained.is_ar:
            raise ValueError(
                f"{model_dir}/config.json: objective should be 'ar' for a scorer, got {trained.meta['objective']!r}"
            )
        self.model, self.meta, self.tokenizer = trained.model, trained.meta, trained.tokenizer
        self.name, self.device, self.batch_size = str(model_dir), device, batch_size
        self.bos_id = self.meta["bos_id"]
        self.tokenizer_path = trained.tokenizer_dir
        self.tokenizer_sha256 = trained.tokenizer_sha256

    @torch.no_grad()
    def nll(self, sequences: Sequence[Sequence[int]]) -> tuple[float, int]:
        """(summed nats, tokens) of the sequences; sequences are grouped by length to batch without padding."""
        by_length: dict[int, list] = {}
        for seq in sequences:
            if len(seq):
                by_length.setdefault(len(seq), []).append(list(seq))
        nats, tokens = 0.0, 0
        for group in by_length.values():
            for start in range(0, len(group), self.batch_size):
                y = torch.tensor(group[start : start + self.batch_size], dtype=torch.long, device=self.device)
                x = torch.cat([torch.full_like(y[:, :1], self.bos_id), y[:, :-1]], dim=1)
                logits = self.model(x).float()
                nats += float(F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum"))
                tokens += y.numel()
        return nats, tokens

    def score(self, records: list[dict], ids_key: str, text_key: str, tokenizer_sha256: str | None) -> tuple:
        """Sampled ids are scored as they are when the samples' tokenizer is the scorer's (equal digests,
        train.checkpoint.tokenizer_digest); else the text is retokenized."""
        if tokenizer_sha256 is not None and tokenizer_sha256 == self.tokenizer_sha256:
            return self.nll([r[ids_key] for r in records]) + ("sampled token ids, no retokenization",)
        ids = [self.tokenizer(r[text_key], add_special_tokens=False)["input_ids"] for r in records]
        return self.nll(ids) + (f"text retokenized with {self.tokenizer_path}",)


class HubScorer:
    """Any transformers causal LM (hub id or local folder); text retokenized with its own tokenizer."""

    def __init__(self, name: str, device=torch.device("cpu"), batch_size: int = 8):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name, self.device, self.batch_size = name, device, batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(name)
        self.model = AutoModelForCausalLM.from_pretrained(name).to(device).eval()
        bos = self.tokenizer.bos_token_id
        self.bos_id = bos if bos is not None else self.tokenizer.eos_token_id
        if self.bos_id is None:
            raise ValueError(f"{name}: the tokenizer has neither a BOS nor an EOS token to start from")
        self.context = int(
            getattr(self.model.config, "n_positions", None)
            or getattr(self.model.config, "max_position_embeddings", 1024)
        )

    @torch.no_grad()
    def nll(self, sequences: Sequence[Sequence[int]]) -> tuple[float, int]:
        """Each sequence is cut into windows of context - 1 tokens, each scored after bos (as MDLM's eval)."""
        windows = [
            list(seq[i : i + self.context - 1]) for seq in sequences for i in range(0, len(seq), self.context - 1)
        ]
        nats, tokens = 0.0, 0
        for start in tqdm(
            range(0, len(windows), self.batch_size),
            desc=f"score {self.name}",
            unit="batch",
            disable=len(windows) <= self.batch_size,
        ):
            group = windows[start : start + self.batch_size]
            width = max(len(w) for w in group) + 1
            ids = torch.full((len(group), width), self.bos_id, dtype=torch.long)
            attention = torch.zeros_like(ids)
            for row, w in enumerate(group):
                ids[row, 1 : len(w) + 1] = torch.tensor(w)
                attention[row, : len(w) + 1] = 1
            ids, attention = ids.to(self.device), attention.to(self.device)
            logits = self.model(input_ids=ids, attention_mask=attention).logits.float()[:, :-1]
            target, keep = ids[:, 1:], attention[:, 1:].bool()
            nll = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none").view_as(target)
            nats += float(nll[keep].sum())
            tokens += int(keep.sum())
        return nats, tokens

    def score(self, records: list[dict], ids_key: str, text_key: str, tokenizer_sha256: str | None) -> tuple:
        ids = [self.tokenizer(r[text_key], add_special_tokens=False)["input_ids"] for r in records]
        return self.nll(ids) + (f"text retokenized with {self.name}",)


def load_scorer(spec: str, device=torch.device("cpu")):
    """A pipeline model folder (train.checkpoint.is_model_dir; it must be autoregressive) -> PipelineARScorer;
    anything else -> HubScorer, a transformers causal LM (hub id or local folder)."""
    from train.checkpoint import is_model_dir

    return PipelineARScorer(spec, device) if is_model_dir(spec) else HubScorer(spec, device)


def generative_perplexity(records: list[dict], scorer, stage: str, tokenizer_sha256: str | None = None) -> dict:
    """Token-weighted gen ppl of ``{stage}_ids`` / ``{stage}_text`` of the records (see module docstring);
    ``tokenizer_sha256``: the digest of the samples' tokenizer (None: always retokenize)."""
    nats, tokens, how = scorer.score(records, f"{stage}_ids", f"{stage}_text", tokenizer_sha256)
    if tokens == 0:
        raise ValueError("no tokens to score")
    return {
        "value": math.exp(nats / tokens),
        "nll_per_token": nats / tokens,
        "nats": nats,
        "tokens": tokens,
        "scorer": scorer.name,
        "definition": DEFINITION.format(scorer=scorer.name, tokens=how),
    }
