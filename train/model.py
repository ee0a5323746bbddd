"""The diffusion transformer (DiT with adaLN-zero) that every stage of the cascade uses.

One readable file, in the spirit of nanoGPT's model.py, laid out like SEDD's / MDLM's DIT so that their
pretrained weights map onto it by renaming alone (train/pretrained.py):

    tokens -> vocab_embed (+ prefix_embed on prefix positions)
           -> n_layers x [ x += gate_a * Attn(modulate(LN(x), shift_a, scale_a))      rotary q/k, SDPA
                           x += gate_m * MLP (modulate(LN(x), shift_m, scale_m)) ]    (shift, scale, gate)
                                                                                      = adaLN(c)
           -> modulate(LN(x), shift, scale) -> linear (untied from vocab_embed)        = logits
    c = silu(sigma_map(sigma)),  modulate(h, shift, scale) = h * (1 + scale) + shift

adaLN-zero: every adaLN projection and the output projection start at zero, so an untrained network is the
identity map followed by zero logits (a uniform prediction) and learns how much each block should act.

How the model tells prefix from target (cascade stage k > 1 sees [clean stage k-1 ; noisy stage k]):
a learned vector `prefix_embed` is added to the embedding of every prefix position (a segment embedding;
zero at init, so a pretrained single-sequence model starts unchanged). The rotary positions run over the
whole concatenation, so the target also knows where the prefix ends. The noise level sigma conditions every
position through adaLN; only the target positions are ever noised, so it is meaningful only there, and the
prefix is never masked and never scored.

`causal=True` gives the autoregressive model (is_causal in SDPA; sigma is then absent and c = silu(sigma_map(0))).

The rotary, gated-residual and modulation steps are written here as the plain formulas. The same math with
cheaper hand-written backward passes lives in train/fused.py; `DiffusionTransformer(cfg, fused=...)` picks
between them ("auto": fused on CPU, where it was measured faster; True / False to force). The switch is not
part of ModelConfig and changes no parameter, so checkpoints and config.json do not depend on it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from train import fused as fused_ops

SIZES = {
    # dim, layers, heads, cond_dim
    "tiny": dict(dim=128, n_layers=4, n_heads=4, cond_dim=64),
    "small": dict(dim=768, n_layers=12, n_heads=12, cond_dim=128),
    "medium": dict(dim=1024, n_layers=24, n_heads=16, cond_dim=128),
}


@dataclass
class ModelConfig:
    vocab_size: int
    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    cond_dim: int = 64
    mlp_ratio: int = 4
    dropout: float = 0.0
    causal: bool = False
    rope_base: float = 10000.0
    freq_dim: int = 256  # sinusoidal features of sigma fed to sigma_map
    time_conditioning: bool = True  # False: sigma is replaced by 0 (MDLM-OWT was trained this way)

    @classmethod
    def from_size(cls, size: str, vocab_size: int, **overrides) -> ModelConfig:
        if size not in SIZES:
            raise ValueError(f"model size must be one of {sorted(SIZES)}, got {size!r}")
        return cls(vocab_size=vocab_size, **{**SIZES[size], **overrides})

    def to_dict(self) -> dict:
        return asdict(self)


class Rotary(nn.Module):
    """Rotary position embedding (GPT-NeoX half-split form, as SEDD/MDLM): position p rotates each pair
    (x_j, x_{j+D/2}) of q and k by the angle p * base^(-2j/D), so q.k depends only on the relative offset:

        rot(x) = x * cos + rotate_half(x) * sin,   rotate_half(x) = [-x2, x1]
               = x * cos + swap_halves(x) * [-sin_1, sin_2]      (the form computed: no negation)

    The tables depend only on (L, device, dtype) and are cached.
    """

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._cache: tuple | None = None

    def forward(self, length: int, device: torch.device, dtype: torch.dtype = torch.float32):
        """cos and signed sin, shaped [1, L, 1, 1, D] to broadcast over [B, L, (q,k), H, D]."""
        if self._cache is None or self._cache[:3] != (length, device, dtype):
            t = torch.arange(length, device=device, dtype=torch.float32)
            freqs = torch.outer(t, self.inv_freq.to(device))
            cos, sin = freqs.cos(), freqs.sin()
            cos = torch.cat((cos, cos), dim=-1).to(dtype)[None, :, None, None]
            sin = torch.cat((-sin, sin), dim=-1).to(dtype)[None, :, None, None]
            self._cache = (length, device, dtype, cos, sin)
        return self._cache[3], self._cache[4]


def swap_halves(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [x2, x1] on the last dim (= roll(x, D/2); a cat of two views is cheaper on CPU)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    return x * cos + swap_halves(x) * signed_sin


def rotary_qkv(qkv: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor, fused: bool = False):
    """qkv [B, L, 3, H, D] -> q, k, v [B, L, H, D], with q and k rotated (together: one broadcast over (q, k))."""
    if fused:
        return fused_ops.rotary_qkv(qkv, cos, signed_sin)
    qk, v = qkv.split([2, 1], dim=2)
    q, k = apply_rotary(qk, cos, signed_sin).unbind(2)
    return q, k, v.squeeze(2)


class TimestepEmbedder(nn.Module):
    """sigma -> cond vector: sinusoidal features [cos(sigma f_j), sin(sigma f_j)], f_j = 10000^(-j/half),
    then a 2-layer MLP (DiT / SEDD's sigma_map)."""

    def __init__(self, cond_dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=sigma.device, dtype=torch.float32) / half)
        args = sigma.float()[:, None] * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


def gated_add(x: torch.Tensor, gate: torch.Tensor, h: torch.Tensor, fused: bool = False) -> torch.Tensor:
    """The adaLN-zero gated residual x + gate * h, gate [B, 1, D] per sequence."""
    if fused:
        return fused_ops.gated_add(x, gate, h)
    return x + gate * h


def norm_modulate(
    norm: nn.LayerNorm, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, fused: bool = False
) -> torch.Tensor:
    """The adaLN modulation of the normalized input, modulate(LN(x), shift, scale) = LN(x) * (1 + scale) + shift."""
    if fused:
        return fused_ops.norm_modulate(norm, x, shift, scale)
    return norm(x) * (1 + scale) + shift


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.dim
        self.n_heads, self.causal = cfg.n_heads, cfg.causal
        self.norm1 = nn.LayerNorm(d, bias=False)
        self.attn_qkv = nn.Linear(d, 3 * d, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.norm2 = nn.LayerNorm(d, bias=False)
        self.mlp = nn.Sequential(
            nn.Linear(d, cfg.mlp_ratio * d), nn.GELU(approximate="tanh"), nn.Linear(cfg.mlp_ratio * d, d)
        )
        self.adaLN_modulation = nn.Linear(cfg.cond_dim, 6 * d)
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, c: torch.Tensor, fused: bool = False
    ) -> torch.Tensor:
        B, L, D = x.shape
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c)[:, None].chunk(6, dim=2)
        h = norm_modulate(self.norm1, x, shift_a, scale_a, fused)
        qkv = self.attn_qkv(h).view(B, L, 3, self.n_heads, D // self.n_heads)
        q, k, v = (t.transpose(1, 2) for t in rotary_qkv(qkv, cos, sin, fused))  # [B, H, L, D]
        # SDPA picks flash / memory-efficient kernels on GPU and a fused flash kernel on CPU
        h = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        h = self.attn_out(h.transpose(1, 2).reshape(B, L, D))
        x = gated_add(x, gate_a, self.dropout(h), fused)
        h = self.mlp(norm_modulate(self.norm2, x, shift_m, scale_m, fused))
        return gated_add(x, gate_m, self.dropout(h), fused)


class FinalLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm_final = nn.LayerNorm(cfg.dim, bias=False)
        self.linear = nn.Linear(cfg.dim, cfg.vocab_size)
        self.adaLN_modulation = nn.Linear(cfg.cond_dim, 2 * cfg.dim)

    def forward(
        self, x: torch.Tensor, c: torch.Tensor, rows: torch.Tensor | None = None, fused: bool = False
    ) -> torch.Tensor:
        """x [B, L, D] with c [B, C]; or selected positions x [N, D] whose batch rows are `rows` [N]."""
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        if rows is None:
            shift, scale = shift[:, None], scale[:, None]
        else:  # modulation computed once per sequence, then gathered per selected position
            shift, scale = shift[rows], scale[rows]
        return self.linear(norm_modulate(self.norm_final, x, shift, scale, fused))


class DiffusionTransformer(nn.Module):
    def __init__(self, cfg: ModelConfig, fused: bool | str = "auto", gradient_checkpointing: bool = False):
        """fused: "auto", True or False, whether the forward (and diffusion_loss) use train/fused.py;
        gradient_checkpointing: in training, each block's activations are recomputed in the backward instead of
        kept (torch.utils.checkpoint, non-reentrant): less memory for about one more forward. Both are plain
        attributes, not ModelConfig fields, so they may differ between runs of the same checkpoint."""
        super().__init__()
        self.gradient_checkpointing = gradient_checkpointing
        if cfg.dim % cfg.n_heads or (cfg.dim // cfg.n_heads) % 2:
            raise ValueError(f"dim {cfg.dim} must split into {cfg.n_heads} heads of even size")
        self.config = cfg
        self.fused = fused_ops.check_fused_setting(fused)
        self.vocab_embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.prefix_embed = nn.Parameter(torch.zeros(cfg.dim))
        self.sigma_map = TimestepEmbedder(cfg.cond_dim, cfg.freq_dim)
        self.rotary = Rotary(cfg.dim // cfg.n_heads, cfg.rope_base)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.output_layer = FinalLayer(cfg)
        self.drop_embed = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.normal_(self.vocab_embed.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation.weight)
            nn.init.zeros_(block.adaLN_modulation.bias)
        for layer in (self.output_layer.adaLN_modulation, self.output_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def time_conditioning(self) -> bool:
        """Whether sigma reaches the network (train/backbones.MaskedLMDenoiser has the same attribute, False)."""
        return self.config.time_conditioning

    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor | None = None,
        prefix_len: int = 0,
        select: torch.Tensor | None = None,
        given: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x Long[B, prefix_len + target_len], sigma Float[B] -> logits Float[B, L, V].

        select Bool[B, L] (optional): return logits only at those positions, as [N, V] in row-major order;
        the losses need the vocabulary projection only at masked positions, which saves most of the head.
        given Bool[B, L] (optional; inserting stages, train/inserting.py): clean tokens placed inside the canvas,
        marked with prefix_embed as a prefix is: both are the clean tokens the model is conditioned on, and
        the marker tells a given token from one the noise merely left unmasked.
        """
        B, L = x.shape
        h = self.vocab_embed(x)
        if prefix_len:
            segment = (torch.arange(L, device=x.device) < prefix_len).to(h.dtype)
            h = h + segment[None, :, None] * self.prefix_embed
        if given is not None:
            h = h + given[..., None].to(h.dtype) * self.prefix_embed
        h = self.drop_embed(h)
        if sigma is None or not self.config.time_conditioning:
            sigma = torch.zeros(B, device=x.device)
        c = F.silu(self.sigma_map(sigma))
        # keep prefix_embed in the graph (zero gradient) so DDP finds every parameter used
        if not prefix_len and given is None:
            c = c + 0.0 * self.prefix_embed.sum()
        cos, sin = self.rotary(L, x.device, h.dtype)
        fused = fused_ops.use_fused(self.fused, h)
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                h = torch.utils.checkpoint.checkpoint(block, h, cos, sin, c, fused, use_reentrant=False)
            else:
                h = block(h, cos, sin, c, fused)
        if select is not None:
            rows = select.nonzero(as_tuple=True)[0]
            return self.output_layer(h[select], c, rows, fused)
        return self.output_layer(h, c, fused=fused)


def build_model(model_cfg: dict, fused: bool | str = "auto") -> DiffusionTransformer:
    return DiffusionTransformer(ModelConfig(**model_cfg), fused)
