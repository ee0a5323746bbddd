"""The hand-written backward passes of train/model.py and train/objectives.py equal autograd's on the plain
formulas they replace (values and gradients)."""
import pytest
import torch
import torch.nn.functional as F

from train.model import DiffusionTransformer, ModelConfig, Rotary, apply_rotary, gated_add, rotary_qkv
from train.noise import get_noise
from train.objectives import diffusion_loss, mdlm_token_loss


def grads(fn, *inputs):
    inputs = [x.detach().clone().requires_grad_() for x in inputs]
    outs = fn(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    torch.manual_seed(1)
    sum(((o * torch.randn_like(o)).sum() for o in outs), torch.zeros(())).backward()
    return [o.detach() for o in outs], [x.grad for x in inputs]


def test_rotary_qkv_equals_split_rotate_unbind():
    B, L, H, D = 2, 7, 3, 8
    cos, sin = Rotary(D)(L, torch.device("cpu"))
    qkv = torch.randn(B, L, 3, H, D)

    def reference(qkv):
        qk, v = qkv.split([2, 1], dim=2)
        q, k = apply_rotary(qk, cos, sin).unbind(2)
        return q, k, v.squeeze(2)

    (out_ref, grad_ref), (out, grad) = grads(reference, qkv), grads(lambda x: rotary_qkv(x, cos, sin), qkv)
    for a, b in zip(out_ref + grad_ref, out + grad):
        torch.testing.assert_close(b, a)


def test_gated_add_equals_addcmul():
    x, gate, h = torch.randn(3, 5, 8), torch.randn(3, 1, 8), torch.randn(3, 5, 8)
    (out_ref, grad_ref), (out, grad) = grads(torch.addcmul, x, gate, h), grads(gated_add, x, gate, h)
    for a, b in zip(out_ref + grad_ref, out + grad):
        torch.testing.assert_close(b, a)
    shift = torch.randn(3, 1, 8)  # the modulation form: a per-sequence shift as well
    (out_ref, grad_ref), (out, grad) = grads(torch.addcmul, shift, gate, h), grads(gated_add, shift, gate, h)
    for a, b in zip(out_ref + grad_ref, out + grad):
        torch.testing.assert_close(b, a)


def test_mdlm_token_loss_equals_cross_entropy_on_masked_copy():
    N, V, mask_id = 9, 13, 12
    logits, x0 = torch.randn(N, V), torch.randint(0, mask_id, (N,))
    sigma, dsigma = torch.rand(N) + 0.1, torch.rand(N)

    def reference(logits):
        masked = logits.clone()
        masked[:, mask_id] = float("-inf")
        return dsigma / torch.expm1(sigma) * F.cross_entropy(masked, x0, reduction="none")

    (out_ref, grad_ref), (out, grad) = grads(reference, logits), grads(
        lambda z: mdlm_token_loss(z, x0, sigma, dsigma, mask_id), logits)
    torch.testing.assert_close(out[0], out_ref[0])
    torch.testing.assert_close(grad[0], grad_ref[0])
    assert (grad[0][:, mask_id] == 0).all()


def test_every_parameter_gets_a_gradient_when_nothing_is_masked():
    noise = get_noise({"type": "loglinear", "eps": 1e-3})
    model = DiffusionTransformer(ModelConfig.from_size("tiny", 16))
    x0 = torch.randint(0, 15, (2, 6))
    for objective in ("mdlm", "sedd"):
        model.zero_grad(set_to_none=True)
        loss = diffusion_loss(model, objective, x0, None, torch.full((2,), 0.5), torch.ones(2, 6), noise, 15)
        loss.backward()
        assert loss.item() == 0.0
        assert all(p.grad is not None for p in model.parameters())


def test_mdlm_token_loss_second_backward_raises_instead_of_reusing_its_buffer():
    logits = torch.randn(4, 6, requires_grad=True)
    loss = mdlm_token_loss(logits, torch.tensor([0, 1, 2, 3]), torch.ones(4), torch.ones(4), 5).sum()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace"):
        loss.backward()
