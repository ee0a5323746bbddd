r"""The placement law of an inserting stage (train/inserting.py): where the m given tokens y = (y_1..y_m) of
stage k-1 sit in the L-token canvas of stage k, in text order.

A placement is p_1 < ... < p_m in {0..L-1}; equivalently its gaps

    g_0 = p_1,   g_j = p_{j+1} - p_j - 1 (1 <= j < m),   g_m = L - 1 - p_m,      g_j >= 0,  sum_j g_j = L - m,

one-to-one (p_j = g_0 + ... + g_{j-1} + j - 1), so there are C(L, m) placements. Both laws give
log_prob(prefix, positions) -> Float[B] (nats, natural log) and sample(prefix, generator) -> Long[B, m], and are
proper distributions over the C(L, m) placements (tests/test_inserting.py sums them and checks sample()
against log_prob). Calling a law is log_prob.

UniformPlacement:   log p(positions | y) = -log C(L, m)       (20.2 nats for C(32, 16)).

LearnedPlacement: the gaps one after another, each a categorical over the values that leave a completion,

    p(g | y) = prod_{j=0}^{m-1} p(g_j | y, g_<j),       g_m = L - m - sum_{j<m} g_j (determined),
    p(g_j = v | y, g_<j) = exp(a_j[v]) / sum_{v' <= R_j} exp(a_j[v']) for v <= R_j, 0 above,
    R_j = L - m - sum_{i<j} g_i (the gap budget left),      a_j = head(h_j + e(R_j)),      h = encoder(y).

Every value v <= R_j leaves R_j - v >= 0 for the later gaps, each of which can be completed, so every factor
normalises over exactly the reachable values and the product sums to 1 over the placements. h_j is the encoding
of given token j (the gap g_j sits before it), from a small bidirectional transformer over the stage k-1 tokens;
e(R_j) an embedding of the budget, so the factors see the gaps already drawn through what they left.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

PLACEMENT_FILE = "placement.safetensors"
PLACEMENT_SIZES = {"dim": 64, "layers": 2, "heads": 4}  # the learned law's size: small beside the denoiser


def gaps_of(positions: torch.Tensor, length: int) -> torch.Tensor:
    """Long[B, m + 1]: the gaps g_0..g_m of positions Long[B, m] (strictly increasing, in [0, length));
    a placement that is not one is an error naming what is wrong."""
    if positions.numel() and (positions.min() < 0 or positions.max() >= length):
        raise ValueError(f"placement positions must lie in [0, {length}), got {positions.min()}..{positions.max()}")
    if positions.shape[1] > 1 and not (positions.diff(dim=1) > 0).all():
        raise ValueError("placement positions must be strictly increasing (the given tokens keep their text order)")
    edges = torch.cat(
        [positions.new_full((len(positions), 1), -1), positions, positions.new_full((len(positions), 1), length)], 1
    )
    return edges.diff(dim=1) - 1


def positions_of(gaps: torch.Tensor) -> torch.Tensor:
    """Long[B, m]: p_j = g_0 + ... + g_{j-1} + j - 1 (1-based j), the inverse of gaps_of (gaps Long[B, m + 1])."""
    m = gaps.shape[1] - 1
    return (gaps[:, :m] + 1).cumsum(dim=1) - 1


class UniformPlacement:
    """Every order-preserving placement of m given tokens in L positions equally likely."""

    def __init__(self, length: int, given: int):
        if not 0 < given < length:
            raise ValueError(f"a placement puts 0 < m < L given tokens, got m = {given}, L = {length}")
        self.length, self.given = length, given
        self.nats = math.lgamma(length + 1) - math.lgamma(given + 1) - math.lgamma(length - given + 1)  # log C(L, m)

    def log_prob(self, prefix: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Float[B]: -log C(L, m) for every (valid) placement."""
        gaps_of(positions, self.length)  # checks the placement
        return torch.full((len(positions),), -self.nats, dtype=torch.float32, device=positions.device)

    __call__ = log_prob

    def sample(self, prefix: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Long[B, m]: the m smallest of L i.i.d. uniform keys' ranks, sorted: a uniform m-subset."""
        keys = torch.rand(len(prefix), self.length, generator=generator, device=getattr(generator, "device", "cpu"))
        return keys.argsort(dim=1)[:, : self.given].sort(dim=1).values.to(prefix.device)


class LearnedPlacement(nn.Module):
    """The gap-by-gap law of the module docstring over a vocabulary of vocab_size ids."""

    def __init__(self, vocab_size: int, length: int, given: int, dim: int = 64, layers: int = 2, heads: int = 4):
        super().__init__()
        if not 0 < given < length:
            raise ValueError(f"a placement puts 0 < m < L given tokens, got m = {given}, L = {length}")
        self.config = dict(vocab_size=vocab_size, length=length, given=given, dim=dim, layers=layers, heads=heads)
        self.length, self.given, self.budget = length, given, length - given
        self.embed = nn.Embedding(vocab_size, dim)
        self.position = nn.Parameter(torch.zeros(given, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.left = nn.Embedding(self.budget + 1, dim)  # e(R_j)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, self.budget + 1)
        nn.init.normal_(self.position, std=0.02)

    def encode(self, prefix: torch.Tensor) -> torch.Tensor:
        """h Float[B, m, dim] of the given tokens Long[B, m]."""
        if prefix.shape[1] != self.given:
            raise ValueError(f"the placement law was built for {self.given} given tokens, got {prefix.shape[1]}")
        return self.encoder(self.embed(prefix) + self.position)

    def gap_log_probs(self, h: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
        """log p(g_j = v | ...) Float[..., budget + 1] from h_j [..., dim] and R_j Long[...]: -inf for v > R_j."""
        logits = self.head(self.norm(h + self.left(left))).float()
        values = torch.arange(self.budget + 1, device=left.device)
        return logits.masked_fill(values > left[..., None], float("-inf")).log_softmax(dim=-1)

    def log_prob(self, prefix: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Float[B]: sum_{j<m} log p(g_j | y, g_<j) (teacher-forced: every R_j from the true gaps, one pass)."""
        gaps = gaps_of(positions, self.length)[:, : self.given]
        left = self.budget - (gaps.cumsum(dim=1) - gaps)  # R_j = L - m - sum_{i<j} g_i
        log_p = self.gap_log_probs(self.encode(prefix), left)
        return log_p.gather(-1, gaps[..., None]).squeeze(-1).sum(dim=1)

    def forward(self, prefix: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """log_prob: the call a prepared (DDP-wrapped) law is trained through."""
        return self.log_prob(prefix, positions)

    @torch.no_grad()
    def sample(self, prefix: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Long[B, m]: g_0, g_1, ... drawn in turn from their factors (the last gap is what is left)."""
        h = self.encode(prefix)
        left = torch.full((len(prefix),), self.budget, dtype=torch.long, device=prefix.device)
        gaps = []
        for j in range(self.given):
            probs = self.gap_log_probs(h[:, j], left).exp()
            where = probs.device if generator is None else generator.device  # the generator's device draws
            gap = torch.multinomial(probs.double().to(where), 1, generator=generator).squeeze(1).to(prefix.device)
            gaps.append(gap)
            left = left - gap
        gaps.append(left)
        return positions_of(torch.stack(gaps, dim=1))


def save_placement(out_dir, law: LearnedPlacement) -> Path:
    """placement.safetensors in a model folder: the learned law's weights, its sizes in the metadata."""
    from safetensors.torch import save_file

    from common.io import atomic_path

    path = Path(out_dir) / PLACEMENT_FILE
    state = {k: v.detach().cpu().contiguous() for k, v in law.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"config": json.dumps(law.config)})
    return path


def load_placement(model_dir, device="cpu") -> LearnedPlacement:
    """The learned law of a model folder (save_placement), in eval mode; an error naming the file when absent."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(model_dir) / PLACEMENT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; a stage trained with placement: learned writes it")
    with safe_open(str(path), "pt") as f:
        config = json.loads(f.metadata()["config"])
    law = LearnedPlacement(**config)
    law.load_state_dict(load_file(str(path)))
    return law.to(device).eval()


def placement_law(kind: str, vocab_size: int, length: int, given: int, model_dir=None, device="cpu"):
    """The law of an inserting stage: UniformPlacement, or LearnedPlacement (fresh, or from model_dir's file)."""
    if kind == "uniform":
        return UniformPlacement(length, given)
    if kind == "learned":
        if model_dir is not None:
            return load_placement(model_dir, device)
        return LearnedPlacement(vocab_size, length, given, **PLACEMENT_SIZES)
    raise ValueError(f"placement must be uniform or learned, got {kind!r}")
