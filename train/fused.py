"""Hand-written autograd functions for the CPU training step: the same math as plain formulas of
train/model.py and train/objectives.py, with backward passes that make fewer passes over memory.

Each function's docstring gives the plain formula it replaces; tests/test_train_model_equivalence.py checks
values and gradients against that formula, and the whole model with fused=True against fused=False.
On the 2-core CPU of bench/README.md they made the tiny / small training step 1.07x / 1.17x faster: on CPU
every fresh full-size tensor costs page faults, and autograd allocates several per elementwise op.

Who uses what is decided by one switch, `fused`, given to DiffusionTransformer(cfg, fused=...) and read by
train.objectives.diffusion_loss from the model:
    True / False   force the fused functions / plain autograd
    "auto"         fused on CPU tensors outside autocast, plain elsewhere (see use_fused)
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

FUSED_SETTINGS = ("auto", True, False)


def check_fused_setting(fused) -> bool | str:
    """The setting itself when it is "auto", True or False; a ValueError naming it otherwise."""
    if isinstance(fused, bool) or fused == "auto":
        return fused
    raise ValueError(f"fused must be one of {FUSED_SETTINGS}, got {fused!r}")


def use_fused(fused, like: torch.Tensor) -> bool:
    """Whether to run the fused functions on tensors like `like` under the setting `fused`.

    "auto" picks them only on CPU outside autocast, where their gain was measured. On CUDA the caching
    allocator makes fresh tensors nearly free, so what they save (allocations and page faults) is small there,
    and they were never timed on a GPU; under autocast they would also see mixed bf16/fp32 inputs that the
    plain ops' autocast rules already handle. Plain autograd is the safe choice wherever nothing was measured.
    """
    if check_fused_setting(fused) != "auto":
        return fused
    return like.device.type == "cpu" and not torch.is_autocast_enabled("cpu")


def _swap_halves(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [x2, x1] on the last dim (train.model.swap_halves; repeated so neither module imports the other)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x2, x1), dim=-1)


class _RotaryQKV(torch.autograd.Function):
    """qkv [B, L, 3, H, D] -> (rot(q), rot(k), v), each [B, L, H, D], rot(x) = x * cos + swap_halves(x) * signed_sin.

    The rotation is orthogonal, so the backward is the rotation by the opposite angle,
    rot^T(g) = g * cos - swap_halves(g) * signed_sin, written with dv straight into one d(qkv) buffer
    (autograd would run five ops per rotation and then stack dq, dk and cat dv onto them)."""

    @staticmethod
    def forward(ctx, qkv, cos, signed_sin):
        ctx.save_for_backward(cos, signed_sin)
        qk, v = qkv.split([2, 1], dim=2)
        rot = (qk * cos).addcmul_(_swap_halves(qk), signed_sin)  # q and k rotated together
        q, k = rot.unbind(2)
        return q, k, v.squeeze(2)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dq, dk, dv):
        cos, signed_sin = (t.squeeze(2) for t in ctx.saved_tensors)  # [1, L, 1, D] for [B, L, H, D]
        dqkv = dv.new_empty(dv.shape[:2] + (3,) + dv.shape[2:])
        for i, grad in enumerate((dq, dk)):
            torch.mul(grad, cos, out=dqkv[:, :, i])
            dqkv[:, :, i].addcmul_(_swap_halves(grad), signed_sin, value=-1)
        dqkv[:, :, 2] = dv
        return dqkv, None, None


def rotary_qkv(qkv: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor):
    """Fused form of train.model.rotary_qkv:

    qk, v = qkv.split([2, 1], dim=2);  q, k = apply_rotary(qk, cos, signed_sin).unbind(2);  v = v.squeeze(2)
    """
    return _RotaryQKV.apply(qkv, cos, signed_sin)


class _Affine(torch.autograd.Function):
    """out = a + s * y (torch.addcmul), for a per-sequence s (and possibly a) broadcast over a full-size y:

        da = sum_to_shape(g),   ds = sum_to_shape(g * y),   dy = g * s.

    Autograd's addcmul backward also multiplies the full-size y by the scalar `value` (= 1) before the product
    (one more pass over y); this is the same gradient without it."""

    @staticmethod
    def forward(ctx, a, s, y):
        ctx.save_for_backward(s, y)
        ctx.a_shape = a.shape
        return torch.addcmul(a, s, y)

    @staticmethod
    def backward(ctx, grad):
        s, y = ctx.saved_tensors
        da = ds = dy = None
        if ctx.needs_input_grad[0]:
            da = grad.sum_to_size(ctx.a_shape)
        if ctx.needs_input_grad[1]:
            ds = (grad * y).sum_to_size(s.shape)
        if ctx.needs_input_grad[2]:
            dy = grad * s
        return da, ds, dy


def gated_add(x: torch.Tensor, gate: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Fused form of train.model.gated_add, the adaLN-zero gated residual:

    x + gate * h,   gate [B, 1, D] per sequence, x and h [B, L, D]
    """
    return _Affine.apply(x, gate, h)


def norm_modulate(norm: nn.LayerNorm, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Fused form of train.model.norm_modulate, the adaLN modulation of a (bias-free) LayerNorm:

        norm(x) * (1 + scale) + shift  =  LN_plain(x) * (norm.weight * (1 + scale)) + shift

    The LayerNorm weight and the adaLN scale are both per-channel, so they are multiplied first ([B, 1, D])
    and applied to the full-size tensor in one pass."""
    plain = F.layer_norm(x, norm.normalized_shape, eps=norm.eps)
    return _Affine.apply(shift, norm.weight * (1 + scale), plain)


class _SubsCrossEntropy(torch.autograd.Function):
    """-log p_theta(x0 | x_t) at masked positions under SUBS: the cross-entropy of the logits with the mask
    logit set to -inf,

        nll_i = -log_softmax(logits_i with l_m = -inf)[x0_i],   d nll_i / d logits_i = p_i - onehot(x0_i),

    p_i the softmax (0 at m). The backward is the closed form, computed in place in the saved log-softmax
    buffer instead of autograd's three new [N, V] tensors (zero-filled one-hot, log-softmax grad, copy for the
    -inf column)."""

    @staticmethod
    def forward(ctx, logits, target, mask_id):
        z = logits.float()
        z = z.clone() if z is logits else z  # .float() already copied bf16 logits
        z[:, mask_id] = float("-inf")
        log_p = z.log_softmax(dim=-1)
        ctx.save_for_backward(log_p, target)
        ctx.dtype = logits.dtype
        return -log_p.gather(-1, target[:, None]).squeeze(-1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        log_p, target = ctx.saved_tensors
        dlogits = log_p.exp_()  # in place: a second backward through this graph raises (saved tensor modified)
        dlogits[torch.arange(len(target), device=target.device), target] -= 1
        return dlogits.mul_(grad[:, None]).to(ctx.dtype), None, None


def subs_cross_entropy(logits: torch.Tensor, target: torch.Tensor, mask_id: int) -> torch.Tensor:
    """Fused form of train.objectives.subs_nll, logits [N, V], target [N] -> float32 [N]:

    z = logits.float() with z[:, mask_id] = -inf;   F.cross_entropy(z, target, reduction="none")
    """
    return _SubsCrossEntropy.apply(logits, target, mask_id)
