"""train/fused.py computes the same math as the plain formulas it replaces: each fused function against the
formula written out independently here (values and gradients), the whole model with fused=True against
fused=False, and the switch deciding which path runs."""

from types import SimpleNamespace

import pytest
import torch

import train.objectives
from train import fused
from train.model import DiffusionTransformer, ModelConfig, Rotary
from train.noise import get_noise
from train.objectives import diffusion_loss, mdlm_token_loss

TINY = ModelConfig(vocab_size=11, dim=16, n_layers=2, n_heads=2, cond_dim=8, freq_dim=16)
MASK_ID = 10


def grads(fn, *inputs):
    """Outputs of fn and the gradients of a fixed random projection of them with respect to every input."""
    inputs = [x.detach().clone().requires_grad_() for x in inputs]
    outs = fn(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    torch.manual_seed(1)
    sum(((o.float() * torch.randn(o.shape)).sum() for o in outs), torch.zeros(())).backward()
    return [o.detach() for o in outs], [x.grad for x in inputs]


def assert_same(fused_fn, reference_fn, *inputs, **tolerance):
    (out_ref, grad_ref), (out, grad) = grads(reference_fn, *inputs), grads(fused_fn, *inputs)
    assert len(out) == len(out_ref)
    for got, expected in zip(out + grad, out_ref + grad_ref):
        torch.testing.assert_close(got.float(), expected.float(), **tolerance)
    return grad


# -- the plain formulas, written out from their definitions -------------------------------------------------


def rotate_reference(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """x [B, L, H, D]: each pair (x_j, x_{j+D/2}) at position p rotated by p * base^(-2j/D)."""
    L, D = x.shape[1], x.shape[-1]
    angle = torch.arange(L)[:, None] * base ** (-torch.arange(0, D, 2) / D)
    cos, sin = angle.cos()[None, :, None], angle.sin()[None, :, None]
    x1, x2 = x[..., : D // 2], x[..., D // 2 :]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def layer_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight


def subs_nll_reference(logits: torch.Tensor, x0: torch.Tensor, mask_id: int) -> torch.Tensor:
    """-log softmax(logits without the mask column)[x0] = logsumexp over the other tokens - logit of x0."""
    keep = torch.arange(logits.shape[-1]) != mask_id
    return torch.logsumexp(logits[:, keep], dim=-1) - logits.gather(-1, x0[:, None]).squeeze(-1)


# -- each fused function against its plain formula ----------------------------------------------------------


def test_rotary_qkv_equals_rotating_q_and_k():
    B, L, H, D = 2, 7, 3, 8
    cos, signed_sin = Rotary(D)(L, torch.device("cpu"))

    def reference(qkv):
        q, k, v = qkv.unbind(2)
        return rotate_reference(q), rotate_reference(k), v

    assert_same(lambda qkv: fused.rotary_qkv(qkv, cos, signed_sin), reference, torch.randn(B, L, 3, H, D))


def test_gated_add_equals_x_plus_gate_times_h():
    x, gate, h = torch.randn(3, 5, 8), torch.randn(3, 1, 8), torch.randn(3, 5, 8)
    assert_same(fused.gated_add, lambda x, gate, h: x + gate * h, x, gate, h)
    shift = torch.randn(3, 1, 8)  # a per-sequence first operand, as norm_modulate passes its shift
    assert_same(fused.gated_add, lambda x, gate, h: x + gate * h, shift, gate, h)


@pytest.mark.parametrize(
    "x_shape, cond_shape",
    [
        ((3, 5, 8), (3, 1, 8)),  # blocks: per sequence
        ((6, 8), (6, 8)),
    ],
)  # output layer at selected positions
def test_norm_modulate_equals_layer_norm_times_one_plus_scale_plus_shift(x_shape, cond_shape):
    eps = 1e-5

    def fused_fn(x, weight, shift, scale):
        norm = SimpleNamespace(normalized_shape=(x.shape[-1],), eps=eps, weight=weight)  # what it reads of a LayerNorm
        return fused.norm_modulate(norm, x, shift, scale)

    def reference(x, weight, shift, scale):
        return layer_norm_reference(x, weight, eps) * (1 + scale) + shift

    x, weight = torch.randn(x_shape) * 3 + 1, torch.randn(x_shape[-1])
    assert_same(fused_fn, reference, x, weight, torch.randn(cond_shape), torch.randn(cond_shape))


def test_subs_cross_entropy_equals_logsumexp_without_the_mask_column():
    N, V, mask_id = 9, 13, 12
    logits, x0 = torch.randn(N, V) * 3, torch.randint(0, mask_id, (N,))
    grad = assert_same(
        lambda z: fused.subs_cross_entropy(z, x0, mask_id), lambda z: subs_nll_reference(z, x0, mask_id), logits
    )
    assert (grad[0][:, mask_id] == 0).all()


def test_subs_cross_entropy_takes_bf16_logits_and_returns_their_dtype_gradient():
    logits, x0 = torch.randn(9, 13).bfloat16(), torch.randint(0, 12, (9,))
    out, (grad,) = grads(lambda z: fused.subs_cross_entropy(z, x0, 12), logits)
    out_ref, (grad_ref,) = grads(lambda z: subs_nll_reference(z.float(), x0, 12), logits)
    assert out[0].dtype == torch.float32 and grad.dtype == torch.bfloat16
    torch.testing.assert_close(out[0], out_ref[0])
    torch.testing.assert_close(grad, grad_ref)


@pytest.mark.parametrize("switch", [True, False])
def test_mdlm_token_loss_is_the_weighted_subs_nll_either_way(switch):
    N, V, mask_id = 9, 13, 12
    logits, x0 = torch.randn(N, V), torch.randint(0, mask_id, (N,))
    sigma, dsigma = torch.rand(N) + 0.1, torch.rand(N)
    assert_same(
        lambda z: mdlm_token_loss(z, x0, sigma, dsigma, mask_id, fused=switch),
        lambda z: dsigma / torch.expm1(sigma) * subs_nll_reference(z, x0, mask_id),
        logits,
    )


def test_fused_subs_cross_entropy_second_backward_raises_instead_of_reusing_its_buffer():
    logits = torch.randn(4, 6, requires_grad=True)
    loss = mdlm_token_loss(logits, torch.tensor([0, 1, 2, 3]), torch.ones(4), torch.ones(4), 5, fused=True).sum()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace"):
        loss.backward()


# -- the whole model ----------------------------------------------------------------------------------------


def random_models(cfg: ModelConfig):
    """The same random weights (adaLN gates and output head not zero, so every block shows) as fused=False and
    fused=True models; the second loads the first's state dict strictly, so the switch changes no key."""
    g = torch.Generator().manual_seed(0)
    plain = DiffusionTransformer(cfg, fused=False)
    with torch.no_grad():
        for p in plain.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    fast = DiffusionTransformer(cfg, fused=True)
    fast.load_state_dict(plain.state_dict(), strict=True)
    return plain, fast


def logits_and_grads(model, x, **kwargs):
    model.zero_grad(set_to_none=True)
    logits = model(x, **kwargs)
    (logits * torch.randn(logits.shape, generator=torch.Generator().manual_seed(2))).sum().backward()
    return logits.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    "causal, prefix_len, with_select",
    [(False, 3, False), (False, 3, True), (True, 0, False)],
    ids=["diffusion_prefix", "diffusion_prefix_select", "causal"],
)
def test_model_fused_equals_plain(causal, prefix_len, with_select):
    plain, fast = random_models(ModelConfig(**{**TINY.to_dict(), "causal": causal}))
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, MASK_ID, (3, 9), generator=g)
    kwargs = {} if causal else {"sigma": torch.rand(3, generator=g) + 0.1, "prefix_len": prefix_len}
    if with_select:
        kwargs["select"] = torch.rand(3, 9, generator=g) < 0.5
    logits_ref, grads_ref = logits_and_grads(plain, x, **kwargs)
    logits, grads_fused = logits_and_grads(fast, x, **kwargs)
    assert logits.shape == ((int(kwargs["select"].sum()), TINY.vocab_size) if with_select else (3, 9, TINY.vocab_size))
    torch.testing.assert_close(logits, logits_ref, rtol=1e-5, atol=1e-5)
    assert grads_fused.keys() == grads_ref.keys()
    for name, grad in grads_fused.items():
        torch.testing.assert_close(grad, grads_ref[name], rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


def test_diffusion_loss_fused_equals_plain():
    noise = get_noise({"type": "loglinear", "eps": 1e-3})
    g = torch.Generator().manual_seed(4)
    x0, prefix = torch.randint(0, MASK_ID, (3, 8), generator=g), torch.randint(0, MASK_ID, (3, 4), generator=g)
    t, uniform = torch.rand(3, generator=g) * 0.8 + 0.1, torch.rand(3, 8, generator=g)
    results = []
    for model in random_models(TINY):
        loss = diffusion_loss(model, "mdlm", x0, prefix, t, uniform, noise, MASK_ID)
        loss.backward()
        results.append((loss.detach(), [p.grad for p in model.parameters()]))
    (loss_ref, grads_ref), (loss, grads_fused) = results
    torch.testing.assert_close(loss, loss_ref)
    for grad, grad_ref in zip(grads_fused, grads_ref):
        torch.testing.assert_close(grad, grad_ref, rtol=1e-4, atol=1e-6)


# -- the switch -------------------------------------------------------------------------------------------


def record_fused_calls(monkeypatch) -> list[str]:
    calls = []
    for module, name in [
        (fused, "rotary_qkv"),
        (fused, "gated_add"),
        (fused, "norm_modulate"),
        (train.objectives, "subs_cross_entropy"),
    ]:

        def recorded(*args, _original=getattr(module, name), _name=name):
            calls.append(_name)
            return _original(*args)

        monkeypatch.setattr(module, name, recorded)
    return calls


@pytest.mark.parametrize(
    "switch, autocast, expected",
    [
        (True, False, True),
        (False, False, False),
        ("auto", False, True),  # auto: fused on CPU tensors
        ("auto", True, False),
        (True, True, True),
    ],
)  # but plain autograd under autocast unless forced
def test_the_model_switch_decides_the_path_of_forward_and_loss(monkeypatch, switch, autocast, expected):
    calls = record_fused_calls(monkeypatch)
    model = DiffusionTransformer(TINY, fused=switch)
    x0 = torch.randint(0, MASK_ID, (2, 6))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        diffusion_loss(
            model,
            "mdlm",
            x0,
            None,
            torch.full((2,), 0.5),
            torch.zeros(2, 6),
            get_noise({"type": "loglinear", "eps": 1e-3}),
            MASK_ID,
        ).backward()
    expected_calls = {"rotary_qkv", "gated_add", "norm_modulate", "subs_cross_entropy"} if expected else set()
    assert set(calls) == expected_calls


def test_the_switch_is_no_part_of_the_config_or_the_state_dict():
    assert "fused" not in TINY.to_dict()
    keys = [list(DiffusionTransformer(TINY, fused=s).state_dict()) for s in ("auto", True, False)]
    assert keys[0] == keys[1] == keys[2]


@pytest.mark.parametrize("bad", ["yes", "on", 1, None])
def test_unknown_switch_values_are_refused(bad):
    with pytest.raises(ValueError, match="fused must be one of"):
        DiffusionTransformer(TINY, fused=bad)
    with pytest.raises(ValueError, match="fused must be one of"):
        mdlm_token_loss(torch.randn(2, 11), torch.tensor([0, 1]), torch.ones(2), torch.ones(2), MASK_ID, fused=bad)


@pytest.mark.parametrize("switch", [True, False])
def test_every_parameter_gets_a_gradient_when_nothing_is_masked(switch):
    noise = get_noise({"type": "loglinear", "eps": 1e-3})
    model = DiffusionTransformer(ModelConfig.from_size("tiny", 16), fused=switch)
    x0 = torch.randint(0, 15, (2, 6))
    for objective in ("mdlm", "sedd"):
        model.zero_grad(set_to_none=True)
        loss = diffusion_loss(model, objective, x0, None, torch.full((2,), 0.5), torch.ones(2, 6), noise, 15)
        loss.backward()
        assert loss.item() == 0.0
        assert all(p.grad is not None for p in model.parameters())
