"""Each noise schedule, objective and model property against a hand computation on tiny tensors."""

import math

import pytest
import torch

import train.objectives as objectives
from common.config import validate_config
from train.model import DiffusionTransformer, ModelConfig
from train.noise import get_noise, sample_times
from train.objectives import (
    ar_loss,
    ar_token_loss,
    corrupt,
    diffusion_loss,
    forward_mask,
    masked_forward,
    masked_token_losses,
    mdlm_token_loss,
    sedd_log_score,
    sedd_token_loss,
    sequence_nelbo,
    subs_log_probs,
)
from train.settings import compute_matched_steps, resolve

torch.set_num_threads(1)
NEG_INF = float("-inf")


@pytest.mark.parametrize(
    "spec",
    [
        {"type": "loglinear", "eps": 1e-3},
        {"type": "geometric", "sigma_min": 1e-4, "sigma_max": 20.0},
        {"type": "cosine", "eps": 1e-3},
    ],
)
def test_rate_is_derivative_of_total(spec):
    noise = get_noise(spec)
    t = torch.tensor([0.1, 0.37, 0.8], dtype=torch.float64)
    h = 1e-6
    numeric = (noise.total(t + h) - noise.total(t - h)) / (2 * h)
    assert torch.allclose(noise.rate(t), numeric, rtol=1e-5)


def test_schedule_values_by_hand():
    t = torch.tensor([0.5], dtype=torch.float64)
    assert get_noise({"type": "loglinear", "eps": 1e-3}).total(t).item() == pytest.approx(-math.log(1 - 0.999 * 0.5))
    assert get_noise({"type": "geometric", "sigma_min": 1e-4, "sigma_max": 20}).total(t).item() == pytest.approx(
        math.sqrt(1e-4 * 20)
    )
    assert get_noise({"type": "cosine", "eps": 1e-3}).total(t).item() == pytest.approx(
        -math.log(1e-3 + 0.999 * math.cos(math.pi / 4))
    )
    # loglinear: mask probability 1 - exp(-sigma) = (1 - eps) t, and the MDLM weight sigma'/expm1(sigma) = 1/t
    ll = get_noise({"type": "loglinear", "eps": 1e-3})
    t = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    assert torch.allclose(-torch.expm1(-ll.total(t)), 0.999 * t)
    assert torch.allclose(ll.rate(t) / torch.expm1(ll.total(t)), 1 / t)
    with pytest.raises(ValueError, match="noise type"):
        get_noise({"type": "linear"})


def test_antithetic_times_cover_every_stratum():
    n = 8
    t = sample_times(n, torch.Generator().manual_seed(3), antithetic=True, sampling_eps=0.0)
    assert sorted(int(v * n) for v in t) == list(range(n))


def test_corrupt_masks_where_uniform_below_move_probability():
    x0 = torch.tensor([[5, 6, 7]])
    sigma = torch.tensor([-math.log(0.5)])  # move probability 0.5
    x_t = corrupt(x0, sigma, 9, torch.tensor([[0.4, 0.6, 0.49]]))
    assert x_t.tolist() == [[9, 6, 9]]


def test_subs_log_probs_by_hand():
    logits = torch.tensor([[[1.0, 2.0, 0.0, 5.0], [1.0, 2.0, 0.0, 5.0]]])
    x_t = torch.tensor([[3, 1]])  # position 0 masked (mask_id 3), position 1 carries token 1
    out = subs_log_probs(logits, x_t, mask_id=3)
    z = math.log(math.e + math.e**2 + 1)
    assert out[0, 0, :3].tolist() == pytest.approx([1 - z, 2 - z, -z])
    assert out[0, 0, 3].item() == NEG_INF  # the mask is never predicted
    assert out[0, 1].tolist() == [NEG_INF, 0.0, NEG_INF, NEG_INF]  # carry-over


def test_mdlm_loss_by_hand():
    logits = torch.tensor([[1.0, 2.0, 0.0, 5.0]])
    noise = get_noise({"type": "loglinear", "eps": 1e-3})
    t = torch.tensor([0.25])
    loss = mdlm_token_loss(logits, torch.tensor([1]), noise.total(t), noise.rate(t), mask_id=3)
    nll = -(2 - math.log(math.e + math.e**2 + 1))
    assert loss.item() == pytest.approx(nll / 0.25, rel=1e-5)  # weight 1/t under loglinear


class FixedLogits(torch.nn.Module):
    """A stand-in network: returns a fixed logit table at the selected positions; records its inputs."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(logits)

    def forward(self, x, sigma, prefix_len, select=None):
        self.seen = (x.clone(), prefix_len, select.clone())
        return self.logits.expand(x.shape[0], -1, -1)[select]


def test_diffusion_loss_sums_masked_positions_over_all_targets_and_never_masks_the_prefix():
    mask_id = 3
    logits = torch.tensor([[[0.0, 1.0, 2.0, 0.0]] * 5])  # prefix 2 + target 3
    model = FixedLogits(logits)
    x0 = torch.tensor([[0, 1, 2]])
    prefix = torch.tensor([[2, 2]])
    noise = get_noise({"type": "loglinear", "eps": 0.0})
    t = torch.tensor([0.5])
    u = torch.tensor([[0.1, 0.9, 0.2]])  # positions 0 and 2 masked (move prob 0.5)
    loss = diffusion_loss(model, "mdlm", x0, prefix, t, u, noise, mask_id)
    x, prefix_len, select = model.seen
    assert prefix_len == 2 and x[0, :2].tolist() == [2, 2] and x[0, 2:].tolist() == [3, 1, 3]
    assert select.tolist() == [[False, False, True, False, True]]
    z = math.log(1 + math.e + math.e**2)
    expected = (2 * (z - 0.0) + 2 * (z - 2.0)) / 3  # weight 1/t = 2; sum over masked / 3 targets
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_pad_positions_are_never_masked_carry_no_loss_and_are_not_counted():
    """data: doc blocks end in pads: the loss is the sum over masked non-pad positions / non-pad tokens."""
    mask_id, pad_id = 3, 2
    model = FixedLogits(torch.tensor([[[0.0, 1.0, 2.0, 0.0]] * 4]))
    x0 = torch.tensor([[0, 1, pad_id, pad_id]])
    noise = get_noise({"type": "loglinear", "eps": 0.0})
    u = torch.tensor([[0.1, 0.9, 0.0, 0.0]])  # position 0 masked; the pads would be, by u, but never are
    loss = diffusion_loss(model, "mdlm", x0, None, torch.tensor([0.5]), u, noise, mask_id, pad_id=pad_id)
    x, _, select = model.seen
    assert x[0].tolist() == [mask_id, 1, pad_id, pad_id] and select.tolist() == [[True, False, False, False]]
    z = math.log(1 + math.e + math.e**2)
    assert loss.item() == pytest.approx(2 * (z - 0.0) / 2, rel=1e-6)  # weight 1/t = 2; 2 non-pad targets
    # without pad_id the same block counts 4 targets and masks the pads
    plain = diffusion_loss(model, "mdlm", x0, None, torch.tensor([0.5]), u, noise, mask_id)
    assert model.seen[0][0].tolist() == [mask_id, 1, mask_id, mask_id] and plain.item() > 0


def test_sft_masks_and_scores_only_answer_tokens_per_token_or_per_sequence():
    """maskable (the answer mask): prompt positions stay clean whatever their uniform; the loss is the sum over
    masked answer positions / answer tokens (token), or the mean over rows of each row's mean (sequence)."""
    mask_id = 3
    model = FixedLogits(torch.tensor([[[0.0, 1.0, 2.0, 0.0]] * 4]))
    x0 = torch.tensor([[0, 1, 2, 0], [1, 1, 2, 2]])
    answer = torch.tensor([[False, False, True, True], [False, True, True, True]])
    u = torch.zeros(2, 4)  # every position would be masked by u; only answers are
    noise = get_noise({"type": "loglinear", "eps": 0.0})
    t = torch.tensor([0.5, 0.5])
    token = diffusion_loss(model, "mdlm", x0, None, t, u, noise, mask_id, maskable=answer)
    x, _, select = model.seen
    assert x.tolist() == [[0, 1, mask_id, mask_id], [1, mask_id, mask_id, mask_id]]
    assert select.tolist() == answer.tolist()
    z = math.log(1 + math.e + math.e**2)
    nll = {0: z - 0.0, 1: z - 1.0, 2: z - 2.0}  # -log p(y) under the fixed logits
    row0 = 2 * (nll[2] + nll[0])  # weight 1/t = 2
    row1 = 2 * (nll[1] + nll[2] + nll[2])
    assert token.item() == pytest.approx((row0 + row1) / 5, rel=1e-6)
    sequence = diffusion_loss(model, "mdlm", x0, None, t, u, noise, mask_id, maskable=answer, normalization="sequence")
    assert sequence.item() == pytest.approx((row0 / 2 + row1 / 3) / 2, rel=1e-6)


def test_forward_mask_and_masked_forward_by_hand():
    """forward_mask: u < move on the maskable positions; masked_forward: x_t, the prefix clean and never selected,
    the head on the masked positions only, targets x0 there and their rows, row-major."""
    u = torch.tensor([[0.1, 0.9, 0.2], [0.5, 0.0, 0.7]])
    move = torch.tensor([[0.5], [0.6]])  # one per row
    assert forward_mask(u, move).tolist() == [[True, False, True], [True, True, False]]
    per_position = torch.tensor([[0.05, 0.95, 0.5], [0.4, 0.1, 0.8]])
    assert forward_mask(u, per_position).tolist() == [[False, True, True], [False, True, True]]
    maskable = torch.tensor([[True, True, False], [False, True, True]])
    assert forward_mask(u, move, maskable).tolist() == [[True, False, False], [False, True, False]]

    mask_id = 3
    table = torch.arange(2 * 5 * 4, dtype=torch.float32).view(2, 5, 4)  # row b, position j: distinct logits
    model = FixedLogits(table)
    x0 = torch.tensor([[0, 1, 2], [2, 1, 0]])
    prefix = torch.tensor([[1, 1], [0, 2]])
    masked = torch.tensor([[True, False, True], [False, True, False]])
    sigma = torch.tensor([0.5, 1.5])
    out = masked_forward(model, x0, prefix, masked, sigma, mask_id)
    x, prefix_len, select = model.seen
    assert prefix_len == 2 and x.tolist() == [[1, 1, 3, 1, 3], [0, 2, 2, 3, 0]]
    assert select.tolist() == [[False, False, True, False, True], [False, False, False, True, False]]
    assert torch.equal(out.logits, torch.stack([table[0, 2], table[0, 4], table[1, 3]]))
    assert out.targets.tolist() == [0, 2, 1] and out.rows.tolist() == [0, 0, 1]
    assert torch.equal(out.masked, masked) and torch.equal(out.x_in, x)
    model = FixedLogits(table[:, 2:])
    without = masked_forward(model, x0, None, masked, sigma, mask_id)  # no prefix: select is the mask itself
    assert model.seen[1] == 0 and model.seen[2].tolist() == masked.tolist()
    assert without.x_in.tolist() == [[3, 1, 3], [2, 3, 0]] and without.rows.tolist() == [0, 0, 1]
    assert torch.equal(without.logits, out.logits)


def reference_masked_token_losses(model, objective, x0, prefix, t, uniform, noise, mask_id, maskable=None):
    """masked_token_losses as it was before masked_forward (commit 3d2f6b2), kept verbatim to pin the refactor."""
    sigma, dsigma = noise.total(t), noise.rate(t)
    if maskable is not None:
        uniform = torch.where(maskable, uniform, torch.ones_like(uniform))
    x_t = corrupt(x0, sigma, mask_id, uniform)
    prefix_len = 0 if prefix is None else prefix.shape[1]
    x_in = x_t if prefix is None else torch.cat([prefix, x_t], dim=1)
    masked = x_t == mask_id
    select = torch.cat([torch.zeros_like(prefix, dtype=torch.bool), masked], 1) if prefix_len else masked
    logits = model(x_in, sigma, prefix_len, select=select)
    rows = masked.nonzero(as_tuple=True)[0]
    if objective == "mdlm":
        fused = getattr(getattr(model, "module", model), "fused", "auto")
        return mdlm_token_loss(logits, x0[masked], sigma[rows], dsigma[rows], mask_id, fused), rows
    if objective == "sedd":
        log_score = sedd_log_score(logits, x_t[masked], sigma[rows], mask_id)
        return sedd_token_loss(log_score, x0[masked], sigma[rows], dsigma[rows], mask_id), rows
    raise ValueError(objective)


def _pin_model(fused):
    torch.manual_seed(0)
    model = DiffusionTransformer(ModelConfig(vocab_size=24, dim=32, n_layers=2, n_heads=2, cond_dim=16), fused=fused)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return model


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("objective", ["mdlm", "sedd"])
@pytest.mark.parametrize("case", ["plain", "prefix", "maskable"])
def test_masked_token_losses_equal_the_code_before_masked_forward(case, objective, fused, monkeypatch):
    """The shared network call changes no number: token losses, rows and gradients are torch.equal to the
    pre-refactor code's on the same draws, and so are diffusion_loss (both normalizations, with pads) and
    sequence_nelbo (the DPO score) computed through it."""
    mask, pad = 23, 22
    g = torch.Generator().manual_seed(7)
    x0 = torch.randint(0, pad, (5, 12), generator=g)
    x0[0, 9:] = pad
    prefix = torch.randint(0, pad, (5, 4), generator=g) if case == "prefix" else None
    maskable = torch.rand(5, 12, generator=g) < 0.6 if case == "maskable" else None
    t, u = sample_times(5, g), torch.rand(5, 12, generator=g)
    noise = get_noise({"type": "loglinear", "eps": 1e-3})
    results = []
    for terms in (reference_masked_token_losses, masked_token_losses):
        model = _pin_model(fused)
        loss, rows = terms(model, objective, x0, prefix, t, u, noise, mask, maskable)
        loss.sum().backward()
        with monkeypatch.context() as m:
            m.setattr(objectives, "masked_token_losses", terms)  # what diffusion_loss and sequence_nelbo call
            with torch.no_grad():
                totals = [
                    diffusion_loss(model, objective, x0, prefix, t, u, noise, mask, pad, maskable, norm)
                    for norm in ("token", "sequence")
                ]
                if objective == "mdlm" and prefix is None:
                    answer = torch.ones_like(x0, dtype=torch.bool) if maskable is None else maskable
                    totals.append(sequence_nelbo(model, x0, t, u, noise, mask, answer))
        results.append((loss.detach(), rows, [p.grad for p in model.parameters()], totals))
    (loss0, rows0, grads0, totals0), (loss1, rows1, grads1, totals1) = results
    assert loss1.numel() > 0 and torch.equal(loss0, loss1) and torch.equal(rows0, rows1)
    assert all(torch.equal(a, b) for a, b in zip(grads0, grads1))
    assert all(torch.equal(a, b) for a, b in zip(totals0, totals1))


def test_ar_loss_ignores_pads():
    class FavoursFour(torch.nn.Module):
        def forward(self, x):
            logits = torch.zeros(*x.shape, 5)
            logits[..., 4] = 2.0
            return logits

    x0 = torch.tensor([[4, 4, 1, 1]])  # pad id 1
    z = math.log(4 + math.e**2)
    assert ar_loss(FavoursFour(), x0, bos_id=0, pad_id=1).item() == pytest.approx(z - 2.0)
    assert ar_loss(FavoursFour(), x0, bos_id=0).item() == pytest.approx((2 * (z - 2.0) + 2 * z) / 4)


def test_sedd_log_score_by_hand():
    logits = torch.tensor([[[1.0, 2.0, 0.0, 5.0]]])
    sigma = torch.tensor([1.0])
    score = sedd_log_score(logits, torch.tensor([[3]]), sigma, mask_id=3)
    shift = math.log(math.e - 1) + math.log(3)
    assert score[0, 0, :3].tolist() == pytest.approx([1 - shift, 2 - shift, -shift])
    assert score[0, 0, 3].item() == 0.0  # the current token's score is 1 by definition


def test_sedd_score_entropy_by_hand_and_zero_at_the_true_ratio():
    sigma, dsigma = torch.tensor([0.7]), torch.tensor([1.3])
    log_score = torch.tensor([[0.2, -0.5, 1.0, 0.0]])  # mask_id 3
    loss = sedd_token_loss(log_score, torch.tensor([2]), sigma, dsigma, mask_id=3)
    r = 1 / math.expm1(0.7)
    positive = math.exp(0.2) + math.exp(-0.5) + math.exp(1.0)
    expected = 1.3 * (positive - r * 1.0 + r * (math.log(r) - 1))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # the score entropy is minimised (= 0) by the true ratio r at x0 and 0 elsewhere
    exact = torch.tensor([[-60.0, -60.0, math.log(r), 0.0]])
    assert sedd_token_loss(exact, torch.tensor([2]), sigma, dsigma, 3).item() == pytest.approx(0.0, abs=1e-6)


def test_ar_loss_by_hand():
    logits = torch.tensor([[[0.0, 1.0], [2.0, 0.0]]])
    loss = ar_token_loss(logits, torch.tensor([[1, 1]]))
    assert loss[0].tolist() == pytest.approx([math.log(1 + math.e) - 1, math.log(math.e**2 + 1)])


def _random_model(**kw):
    torch.manual_seed(0)
    model = DiffusionTransformer(ModelConfig(vocab_size=11, dim=16, n_layers=2, n_heads=2, cond_dim=8, **kw))
    for p in model.parameters():  # leave adaLN-zero's zero init so every path matters
        torch.nn.init.normal_(p, std=0.3)
    return model.eval()


def test_model_select_equals_full_logits_and_prefix_changes_output():
    model = _random_model()
    x = torch.randint(0, 10, (2, 6))
    sigma = torch.tensor([0.3, 2.0])
    full = model(x, sigma, 2)
    select = torch.rand(2, 6) < 0.5
    assert torch.allclose(model(x, sigma, 2, select=select), full[select], atol=1e-6)
    assert not torch.allclose(model(x, sigma, 0), full)  # the segment embedding marks the prefix
    assert not torch.allclose(model(x, sigma * 3, 2), full)  # sigma conditions the output


def test_causal_model_does_not_look_ahead():
    model = _random_model(causal=True)
    x = torch.randint(0, 10, (1, 6))
    y = x.clone()
    y[0, 4:] = (y[0, 4:] + 1) % 10
    assert torch.allclose(model(x)[0, :4], model(y)[0, :4], atol=1e-6)
    assert not torch.allclose(model(x)[0, 4:], model(y)[0, 4:])


def test_compute_matched_steps_and_settings():
    assert compute_matched_steps([300, 300, 300], [16, 32, 64]) == 750  # 300 * (16 + 48 + 96) / 64
    method = "keybert_no_stopword"
    config = validate_config(
        {
            "stages": {"lengths": [16, 32, 64]},
            "train": {"max_steps": 300, "lr": 1e-3, "model": "tiny"},
            "runs": {
                "c": {"kind": "cascade", "method": method, "objective": "sedd", "lr": 5e-4, "max_steps": 200},
                "s": {"kind": "single", "method": method, "objective": "mdlm", "match_compute": "c"},
                "plain": {"kind": "single", "method": method, "objective": "mdlm"},
                "a": {"kind": "ar", "method": method, "objective": "ar"},
            },
        }
    )
    c2 = resolve(config, "c", 2)
    assert (c2.lr, c2.prefix_len, c2.target_len, c2.objective, c2.max_steps) == (5e-4, 16, 32, "sedd", 200)
    s = resolve(config, "s")
    assert (s.max_steps, s.prefix_len, s.target_len) == (500, 0, 64)  # 200 * (16 + 48 + 96) / 64
    assert s.steps_source.startswith("match_compute: c")
    # a plain max_steps means what it says
    assert (resolve(config, "plain").max_steps, resolve(config, "plain").steps_source) == (300, "train.max_steps")
    assert resolve(config, "a", 3).objective == "ar"
    assert resolve(config, "a").lr == 1e-3 and resolve(config, "a").warmup_steps == 30  # the schema default
    with pytest.raises(ValueError, match="stage must be 1, 2 or 3"):
        resolve(config, "c", 4)
    # a run on packed blocks: no method, block length from blocks.length, compute matched per block token
    config["runs"]["w"] = {"kind": "single", "data": "wrap", "objective": "mdlm", "match_compute": "c"}
    config["blocks"] = {"length": 128}
    w = resolve(validate_config(config), "w")
    assert (w.data, w.method, w.target_len, w.max_steps) == ("wrap", None, 128, 250)  # 200 * 160 / 128
    with pytest.raises(ValueError, match="not in config runs"):
        resolve(config, "nope", 1)


def test_settings_checks_name_the_run_and_key():
    method = "keybert_no_stopword"
    base = {"stages": {"lengths": [4, 8, 16]}}
    bad_kind = validate_config({**base, "runs": {"x": {"kind": "ar", "method": method, "objective": "mdlm"}}})
    with pytest.raises(ValueError, match="runs.x: kind ar trains objective ar"):
        resolve(bad_kind, "x")
    bad_batch = validate_config(
        {
            **base,
            "runs": {
                "x": {
                    "kind": "single",
                    "method": method,
                    "objective": "mdlm",
                    "global_batch_size": 10,
                    "micro_batch_size": 4,
                }
            },
        }
    )
    with pytest.raises(ValueError, match="global_batch_size 10 is not a multiple of micro_batch_size 4"):
        resolve(bad_batch, "x")
    with pytest.raises(ValueError, match="match_compute = 'x' must name a cascade run"):
        validate_config(
            {**base, "runs": {"x": {"kind": "single", "method": method, "objective": "mdlm", "match_compute": "x"}}}
        )
