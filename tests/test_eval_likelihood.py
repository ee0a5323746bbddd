"""eval/likelihood.py on hand-made tiny networks: the discrete-T bound against its formula worked by hand, its
approach to the continuous bound as T grows, and padded blocks (pad positions never masked, never counted)."""
import itertools
import math

import pytest
import torch

from eval.denoiser import Denoiser
from eval.likelihood import (continuous_nats, discrete_nats, discrete_weights, final_denoising_nats, ar_nats,
                             mask_probability, stage_nelbo, step_of_time, stratified_times)
from eval.trained import Trained
from train.model import DiffusionTransformer, ModelConfig
from train.noise import CosineNoise, GeometricNoise, LogLinearNoise, get_noise

torch.set_num_threads(1)

VOCAB, MASK = 7, 6
SCHEDULES = [{"type": "loglinear", "eps": 1e-3}, {"type": "cosine", "eps": 1e-3},
             {"type": "geometric", "sigma_min": 0.3, "sigma_max": 6.0}]


def tiny_network(time_conditioning=True, causal=False, seed=0, std=0.5):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=VOCAB, dim=16, n_layers=1, n_heads=2, cond_dim=8, causal=causal,
                      time_conditioning=time_conditioning)
    model = DiffusionTransformer(cfg).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=std)
    return model


def as_trained(model, objective="mdlm", noise_spec=SCHEDULES[0], pad_id=None, target_len=2):
    meta = {"objective": objective, "mask_id": MASK, "prefix_len": 0, "target_len": target_len,
            "noise": noise_spec, "bos_id": 0}
    if pad_id is not None:
        meta["pad_id"] = pad_id
    if objective == "ar":
        return Trained("stage3", None, model, meta, tokenizer=None, tokenizer_dir=None)
    return Trained("stage3", None, model, meta, tokenizer=None, tokenizer_dir=None, noise=get_noise(noise_spec),
                   denoiser=Denoiser(model, objective, MASK, 0))


def hand_nll(model, x, sigma, x0):
    """-log p_theta(x0_j | x) at every position j, by hand: the network's logits, mask logit -inf, log-softmax."""
    with torch.no_grad():
        logits = model(x[None], torch.tensor([sigma], dtype=torch.float32), 0)[0].double()
    logits[:, MASK] = -math.inf
    return -logits.log_softmax(-1).gather(-1, x0[:, None]).squeeze(-1)


def test_loglinear_weight_is_mdlm_d3pm_weight_and_weights_telescope():
    """Loglinear m(t) = t: T w_i = 1/t_i, MDLM's _d3pm_loss T * dt / t under SUBS. Every schedule: the weights
    telescope, sum_i w_i m(t_i) = m(1) - m(0), which with the t = 0 term m(0) gives the one-token NLL."""
    T = 50
    i = torch.arange(1, T + 1, dtype=torch.float64)
    assert torch.allclose(T * discrete_weights(LogLinearNoise(1e-3), T), T / i, rtol=1e-12)
    assert torch.allclose(T * discrete_weights(LogLinearNoise(1e-3), T), T * (1 / T) / (i / T), rtol=1e-12)
    for noise in (LogLinearNoise(1e-3), CosineNoise(1e-3), GeometricNoise(0.3, 6.0)):
        move = -torch.expm1(-noise.total(torch.arange(T + 1, dtype=torch.float64) / T))
        m = move / move[-1]
        assert float((discrete_weights(noise, T) * m[1:]).sum()) == pytest.approx(1 - float(m[0]), rel=1e-12)


def test_k_equal_t_draws_every_step_once_per_block():
    g = torch.Generator().manual_seed(3)
    for T in (1, 4, 16):
        steps = step_of_time(stratified_times(50, T, g), T)  # [K, B]
        assert torch.equal(steps, torch.arange(1, T + 1)[:, None].expand(T, 50))
    # K < T: one step per stratum, each of 1..T equally likely over the strata
    steps = step_of_time(stratified_times(20000, 4, g), 8)
    counts = torch.bincount(steps.flatten(), minlength=9)[1:].double() / steps.numel()
    assert torch.allclose(counts, torch.full((8,), 1 / 8, dtype=torch.float64), atol=0.01)
    assert set(steps[0].tolist()) == {1, 2} and set(steps[3].tolist()) == {7, 8}


def test_discrete_estimator_over_every_step_is_the_hand_sum():
    """(a) A 2-token block, a time-conditioned network, loglinear (m(t) = t). By hand:

        L_T = sum_{i=1}^T (1/T) / (i/T) * sum_{S subset of {1,2}} (i/T)^|S| (1 - i/T)^(2-|S|)
                                          * sum_{j in S} -log p_theta(x0_j | x0 masked at S; sigma_bar(i/T)),

    the network called here directly (mask logit -inf, log-softmax). The estimator at step i, weighted by the
    same q probabilities of S and averaged over i uniform on 1..T, gives the same number."""
    model = tiny_network()
    trained = as_trained(model)
    noise, T, eps = trained.noise, 5, 1e-3
    x0 = torch.tensor([2, 4])
    patterns = list(itertools.product([False, True], repeat=2))
    hand = 0.0
    for i in range(1, T + 1):
        # sigma_bar(t) = -log(1 - (1 - eps) t) in float32, as training tells the network (near t = 1 the float32
        # 1 - 0.999 t carries a 1e-5 relative error, which the network hears)
        m, sigma = i / T, float(-torch.log1p(-(1 - eps) * torch.tensor(i / T, dtype=torch.float32)))
        for pattern in patterns:
            chosen = torch.tensor(pattern)
            prob = math.prod(m if s else 1 - m for s in pattern)
            x = torch.where(chosen, torch.full_like(x0, MASK), x0)
            hand += (1 / T) / (i / T) * prob * float(hand_nll(model, x, sigma, x0)[chosen].sum())
    weights = discrete_weights(noise, T)
    mean_over_steps = 0.0
    with torch.no_grad():
        for i in range(1, T + 1):
            m = i / T
            for pattern in patterns:
                prob = math.prod(m if s else 1 - m for s in pattern)
                uniform = torch.where(torch.tensor(pattern), 0.0, 2.0)[None]  # 0: masked, 2: clean
                nats = discrete_nats(trained, x0[None], None, torch.tensor([i]), uniform, T, weights)
                mean_over_steps += prob * float(nats[0]) / T
    assert mean_over_steps == pytest.approx(hand, rel=1e-6)
    # at t_T = 1 every position is masked, whatever u in [0, 1) (q_1 = all masks: no prior term)
    top = mask_probability(noise, 1.0)
    with torch.no_grad():
        near_one = discrete_nats(trained, x0[None], None, torch.tensor([T]), top * torch.tensor([[0.999999, 0.5]]),
                                 T, weights)
    sigma_one = float(-torch.log1p(-(1 - eps) * torch.tensor(1.0)))
    all_masked = hand_nll(model, torch.full_like(x0, MASK), sigma_one, x0).sum()
    assert float(near_one[0]) == pytest.approx(T * float(weights[-1]) * float(all_masked), rel=1e-6)

    # the sampling estimator (stage_nelbo, K = T stratified draws: every step once per block) on copies of the
    # block: within 4 standard errors of the hand sum (per-copy spread measured below, same estimator)
    copies = 3000
    result = stage_nelbo(trained, torch.zeros(copies, 0, dtype=torch.long), x0.repeat(copies, 1), time_samples=T,
                         batch_size=copies, seed=1, discrete_steps=T)
    per_copy = torch.tensor([stage_nelbo(trained, torch.zeros(1, 0, dtype=torch.long), x0[None], T, 1, seed=s,
                                         discrete_steps=T)["nats_discrete"] for s in range(200)])
    standard_error = float(per_copy.std()) / math.sqrt(copies)
    assert abs(result["nats_discrete"] / copies - hand) < 4 * standard_error
    assert result["discrete_steps"] == T and result["nelbo_discrete"] == pytest.approx(result["nats_discrete"] / 6000)
    assert result["ppl_discrete"] == pytest.approx(math.exp(result["nelbo_discrete"]))


@pytest.mark.parametrize("noise_spec", SCHEDULES)
def test_one_token_discrete_bound_is_the_exact_nll(noise_spec):
    """A one-token block and a time-independent network: L_T = sum_i w_i m(t_i) NLL + m(0) NLL = NLL for any T
    (the t = 0 term carries the geometric schedule's m(0) > 0), as the continuous bound."""
    model = tiny_network(time_conditioning=False)
    trained = as_trained(model, noise_spec=noise_spec, target_len=1)
    target = torch.arange(1200)[:, None] % MASK
    by_class = torch.cat([hand_nll(model, torch.tensor([MASK]), 0.0, torch.tensor([c])) for c in range(MASK)])
    nll = float(by_class[target[:, 0]].sum())
    result = stage_nelbo(trained, torch.zeros(1200, 0, dtype=torch.long), target, time_samples=16, batch_size=1200,
                         discrete_steps=16)
    assert result["nats_discrete"] == pytest.approx(nll, rel=0.03)
    assert result["nats"] == pytest.approx(nll, rel=0.03)


@pytest.mark.parametrize("noise_spec", SCHEDULES)
def test_discrete_bound_approaches_the_continuous_one_as_t_grows(noise_spec):
    """(b) Same seed, so the same times and mask uniforms (common random numbers): as T -> inf, t_{ceil(T t)} -> t,
    T w_i -> lambda(t), and the discrete estimate tends to the continuous one draw by draw. Tolerance: relative
    gap below 1e-4 at T = 2^20 (measured ~2e-6), and at least 100 times smaller than at T = 16."""
    model = tiny_network(std=0.3)
    trained = as_trained(model, noise_spec=noise_spec, target_len=6)
    x0 = torch.randint(0, MASK, (64, 6), generator=torch.Generator().manual_seed(1))
    prefix = torch.zeros(64, 0, dtype=torch.long)
    gaps = {}
    for T in (16, 2 ** 20):
        r = stage_nelbo(trained, prefix, x0, time_samples=4, batch_size=64, seed=5, discrete_steps=T)
        gaps[T] = abs(r["nelbo_discrete"] - r["nelbo"]) / r["nelbo"]
        continuous = r["nelbo"]
    assert gaps[2 ** 20] < 1e-4 and gaps[2 ** 20] * 100 < gaps[16]
    # asking for the discrete bound does not move the continuous one (its draws are unchanged)
    assert stage_nelbo(trained, prefix, x0, 4, 64, seed=5)["nelbo"] == continuous


def test_sedd_has_no_discrete_bound_and_ar_reports_its_exact_nll_twice():
    x0 = torch.randint(0, MASK, (8, 4), generator=torch.Generator().manual_seed(0))
    prefix = torch.zeros(8, 0, dtype=torch.long)
    sedd = stage_nelbo(as_trained(tiny_network(), "sedd", target_len=4), prefix, x0, 2, 8, discrete_steps=10)
    assert sedd["nelbo"] > 0 and sedd["nelbo_discrete"] is None and sedd["ppl_discrete"] is None
    assert sedd["discrete_steps"] == 10 and sedd["definition_discrete"].startswith("null: objective sedd")
    ar = stage_nelbo(as_trained(tiny_network(causal=True), "ar", target_len=4), prefix, x0, 2, 8, discrete_steps=10)
    assert ar["nelbo_discrete"] == ar["nelbo"] and ar["nats_discrete"] == ar["nats"]
    without = stage_nelbo(as_trained(tiny_network(), target_len=4), prefix, x0, 2, 8)
    assert "nelbo_discrete" not in without and "discrete_steps" not in without
    with pytest.raises(ValueError, match="discrete_steps should be an integer >= 1 or None, got 0"):
        stage_nelbo(as_trained(tiny_network(), target_len=4), prefix, x0, 2, 8, discrete_steps=0)


class PositionWise(torch.nn.Module):
    """A network whose output at a position depends only on that position's token and sigma:
    logits[b, l] = table[x[b, l]] + sigma[b] * slope. So a block's real positions see nothing of its pads,
    and a padded block can be compared with the block cut before its pads."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.table = torch.randn(VOCAB, VOCAB, generator=g)
        self.slope = torch.randn(VOCAB, generator=g)
        self.seen = []

    def forward(self, x, sigma, prefix_len=0, select=None):
        self.seen.append((x.clone(), None if select is None else select.clone()))
        logits = self.table[x] + sigma.float()[:, None, None] * self.slope
        return logits if select is None else logits[select]


@pytest.mark.parametrize("objective", ["mdlm", "sedd"])
def test_pads_carry_nothing_and_are_never_masked(objective):
    """(c) [a b c d pad pad] with pad_id gives the nats of [a b c d], even with uniforms that would mask the pads
    (0 < every move), for the continuous term, the discrete term and the t = 0 term."""
    pad = 5
    net = PositionWise()
    real = torch.tensor([[1, 3, 0, 2], [4, 4, 1, 0]])
    padded = torch.cat([real, torch.full((2, 2), pad)], 1)
    valid = padded != pad
    trained = as_trained(net, objective, SCHEDULES[2], pad_id=pad, target_len=6)
    u = torch.tensor([[0.1, 0.7, 0.3, 0.9], [0.5, 0.2, 0.05, 0.6]])
    u_padded = torch.cat([u, torch.zeros(2, 2)], 1)
    t = torch.tensor([0.4, 0.8])
    with torch.no_grad():
        got = continuous_nats(trained, padded, None, t, u_padded, valid)
        want = continuous_nats(trained, real, None, t, u)
        assert torch.allclose(got, want, rtol=1e-6) and float(want.sum()) > 0
        if objective == "mdlm":
            weights = discrete_weights(trained.noise, 10)
            got = discrete_nats(trained, padded, None, torch.tensor([3, 9]), u_padded, 10, weights, valid)
            want = discrete_nats(trained, real, None, torch.tensor([3, 9]), u, 10, weights)
            assert torch.allclose(got, want, rtol=1e-6) and float(want.sum()) > 0
        g = torch.Generator()
        # share 1: every real position masked at t = 0, the pads still not
        assert final_denoising_nats(trained, padded, None, 1.0, g, valid) == pytest.approx(
            final_denoising_nats(trained, real, None, 1.0, g), rel=1e-6)
    for x, select in net.seen:
        if x.shape[1] == 6:
            assert (x[:, 4:] == pad).all() and (select is None or not select[:, 4:].any())


def test_padded_validation_counts_only_real_tokens_on_a_tiny_transformer():
    """(c) stage_nelbo on a tiny DiffusionTransformer with a pad id: tokens = the non-pad count, the network never
    sees a pad masked nor is asked for its output, and nelbo = nats / tokens; the AR NLL of a padded block (causal:
    trailing pads cannot reach earlier positions) is the NLL of the block without its pads."""
    pad = 5
    lengths = torch.tensor([6, 3, 1, 4, 6, 2])
    target = torch.randint(0, pad, (6, 6), generator=torch.Generator().manual_seed(0))
    target[torch.arange(6)[None] >= lengths[:, None]] = pad
    model = tiny_network()
    calls = []
    forward = model.forward

    def spy(x, sigma, prefix_len=0, select=None):
        calls.append((x.clone(), None if select is None else select.clone()))
        return forward(x, sigma, prefix_len, select=select)
    model.forward = spy
    trained = as_trained(model, pad_id=pad, target_len=6)
    result = stage_nelbo(trained, torch.zeros(6, 0, dtype=torch.long), target, 4, 3, discrete_steps=8)
    assert result["tokens"] == int(lengths.sum()) == 22 and result["blocks"] == 6
    assert result["nelbo"] == pytest.approx(result["nats"] / 22)
    assert result["nelbo_discrete"] == pytest.approx(result["nats_discrete"] / 22)
    # real tokens are 0..4, so a row of x shows the pad token exactly where a pad was kept clean: in every call it
    # is the batch's own pad pattern (rows 0-2 or 3-5), and the output head is never asked for a pad position
    pads = target == pad
    assert len(calls) == 2 * (4 + 4)  # 2 batches x 4 times x (continuous, discrete)
    for x, select in calls:
        assert torch.equal(x == pad, pads[:3]) or torch.equal(x == pad, pads[3:])
        assert not select[x == pad].any()

    causal = tiny_network(causal=True)
    ar = as_trained(causal, "ar", pad_id=pad, target_len=6)
    with torch.no_grad():
        for row, n in zip(target, lengths.tolist()):
            got = ar_nats(ar, row[None], (row != pad)[None])
            assert got == pytest.approx(ar_nats(ar, row[None, :n], torch.ones(1, n, dtype=torch.bool)), rel=1e-5)
    ar_result = stage_nelbo(ar, torch.zeros(6, 0, dtype=torch.long), target, 4, 3)
    assert ar_result["tokens"] == 22
