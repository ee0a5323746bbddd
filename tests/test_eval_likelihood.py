"""eval/likelihood.py on hand-made tiny networks and on the exact toy of tests/test_atat_math.py.

The estimator's expectation is computed exactly, never by Monte Carlo: a draw is (mu, i*, u); the test enumerates
i* (probability 1/n each) and, per position, u = 0 (masked, probability mu) or u = 1 (clean, 1 - mu), and
integrates mu by Gauss-Legendre quadrature, which is exact for the toy's time-free denoiser (the integrand is a
polynomial in mu) and, for time-conditioned networks, is taken on the same t nodes as the bound it is compared
with. Against: the bound's own definition (the training terms under q_t, train/objectives), the mask-count form
sum_k c_k E[G | k] worked by hand, -log p(x) of the toy, and the discrete-T sum worked by hand. Then the
variance (finite, and on the toy far below the estimator it replaced), the approach of the discrete bound to
the continuous one as T grows, and padded blocks (pad positions never masked, never counted)."""

import itertools
import math

import numpy as np
import pytest
import test_atat_math as toy  # the exact denoiser on sequences of 3 tokens over {0, 1, 2} (tests/, no package)
import torch

import eval.likelihood as likelihood
from eval.denoiser import Denoiser
from eval.likelihood import (
    ar_nats,
    block_nats,
    continuous_nats,
    discrete_nats,
    draw_masks,
    draw_weights,
    final_denoising_nats,
    mask_share,
    share_of_level,
    stage_nelbo,
    step_of_time,
    stratified_levels,
    time_of_share,
)
from eval.trained import Trained
from train.model import DiffusionTransformer, ModelConfig
from train.noise import LogLinearNoise, get_noise
from train.objectives import masked_token_losses, mdlm_token_loss, sedd_log_score, sedd_token_loss, subs_nll

torch.set_num_threads(1)

VOCAB, MASK = 7, 6
SCHEDULES = [
    {"type": "loglinear", "eps": 1e-3},
    {"type": "cosine", "eps": 1e-3},
    {"type": "geometric", "sigma_min": 0.3, "sigma_max": 6.0},
]
# sigma_bar(1) = 1.6 instead of 6.9: a time-conditioned network's integrand stays smooth up to t = 1, so that
# 64 Gauss-Legendre nodes integrate it to float precision (the comparisons below are exact at any node count)
SMOOTH = [
    {"type": "loglinear", "eps": 0.2},
    {"type": "cosine", "eps": 0.2},
    {"type": "geometric", "sigma_min": 0.3, "sigma_max": 6.0},
]


def tiny_network(time_conditioning=True, causal=False, seed=0, std=0.5):
    torch.manual_seed(seed)
    cfg = ModelConfig(
        vocab_size=VOCAB, dim=16, n_layers=1, n_heads=2, cond_dim=8, causal=causal, time_conditioning=time_conditioning
    )
    model = DiffusionTransformer(cfg).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=std)
    return model


def as_trained(model, objective="mdlm", noise_spec=SCHEDULES[0], pad_id=None, target_len=2, mask_id=MASK, prefix_len=0):
    meta = {
        "objective": objective,
        "mask_id": mask_id,
        "prefix_len": prefix_len,
        "target_len": target_len,
        "noise": noise_spec,
        "bos_id": 0,
    }
    if pad_id is not None:
        meta["pad_id"] = pad_id
    if objective == "ar":
        return Trained("stage3", None, model, meta, loaded_tokenizer=None, tokenizer_dir=None)
    return Trained(
        "stage3",
        None,
        model,
        meta,
        loaded_tokenizer=None,
        tokenizer_dir=None,
        noise=get_noise(noise_spec),
        denoiser=Denoiser(model, objective, mask_id, prefix_len),
    )


def hand_nll(model, x, sigma, x0):
    """-log p_theta(x0_j | x) at every position j, by hand: the network's logits, mask logit -inf, log-softmax."""
    with torch.no_grad():
        logits = model(x[None], torch.tensor([sigma], dtype=torch.float32), 0)[0].double()
    logits[:, MASK] = -math.inf
    return -logits.log_softmax(-1).gather(-1, x0[:, None]).squeeze(-1)


def hand_share(noise_spec, t):
    """m(t) = move(t) / move(1) and its derivative m'(t) = sigma'(t) exp(-sigma_bar(t)) / move(1), float64."""
    noise = get_noise(noise_spec)
    t = torch.as_tensor(t, dtype=torch.float64)
    top = 1 - math.exp(-float(noise.total(torch.tensor(1.0, dtype=torch.float64))))
    return (1 - torch.exp(-noise.total(t))) / top, noise.rate(t) * torch.exp(-noise.total(t)) / top


def draws(valid_row, shares):
    """Every (i*, u pattern) of one block at each share mu: (pick [R], uniform [R, L], probability [R], node [R]).
    i* = the valid position of rank r (pick = (r + 1/2) / n, probability 1/n); u_i = 0 (masked, probability mu) or
    1 (clean, 1 - mu) at the valid positions; 0 at the others (it would mask them, were they not guarded)."""
    valid_row = valid_row.bool()
    n, length = int(valid_row.sum()), len(valid_row)
    picks, uniforms, probs, nodes = [], [], [], []
    for q, mu in enumerate(shares.tolist()):
        for r in range(n):
            for pattern in itertools.product((True, False), repeat=n):
                u = torch.zeros(length, dtype=torch.float64)
                u[valid_row] = torch.tensor([0.0 if s else 1.0 for s in pattern], dtype=torch.float64)
                picks.append((r + 0.5) / n)
                uniforms.append(u)
                probs.append(math.prod(mu if s else 1 - mu for s in pattern) / n)
                nodes.append(q)
    return (
        torch.tensor(picks, dtype=torch.float64),
        torch.stack(uniforms),
        torch.tensor(probs, dtype=torch.float64),
        torch.tensor(nodes),
    )


def gauss_legendre(nodes, low=0.0, high=1.0):
    s, w = np.polynomial.legendre.leggauss(nodes)
    return (
        torch.tensor(low + (high - low) * (s + 1) / 2, dtype=torch.float64),
        torch.tensor((high - low) * w / 2, dtype=torch.float64),
    )


# -- the exact toy: time-free posterior, so the expectation over mu is a polynomial integral -------------------
def toy_trained(noise_spec):
    return as_trained(toy.ExactDenoiser(toy.P), "mdlm", noise_spec, target_len=toy.LENGTH, mask_id=toy.MASK)


def toy_nll_given(x, masked):
    """G(S) = sum over i in S of -log p(x_i | x outside S), by hand from the toy's p (float64)."""
    agree = ((toy.SEQS == x) | masked).all(-1)
    total = float(toy.P[agree].sum())
    return sum(
        -math.log(float(toy.P[agree & (toy.SEQS[:, i] == x[i])].sum()) / total) for i in range(toy.LENGTH) if masked[i]
    )


def count_form(x, m0):
    """sum_{k=1}^n c_k E_{|S| = k}[G(S)], c_k = (1/k) P(Binomial(n, m0) < k), worked by hand (n = 3)."""
    n, total = toy.LENGTH, 0.0
    for k in range(1, n + 1):
        c_k = sum(math.comb(n, j) * m0**j * (1 - m0) ** (n - j) for j in range(k)) / k
        sets = [torch.tensor(p) for p in itertools.product((False, True), repeat=n) if sum(p) == k]
        total += c_k * sum(toy_nll_given(x, s) for s in sets) / len(sets)
    return total


def code_draw_values(trained, x, shares):
    """The code's draw values w(S) G(S, t(mu)) over every (i*, u) at each share (draws()), their probabilities
    and share index; the masks (draw_masks), weights (draw_weights) and terms (continuous_nats) are the module's."""
    valid = torch.ones(toy.LENGTH, dtype=torch.bool)
    pick, uniform, prob, node = draws(valid, shares)
    share, rows = shares[node], len(pick)
    valid_rows = valid.expand(rows, -1)
    masked = draw_masks(valid_rows, share, uniform, pick)
    assert masked.any(1).all()  # every draw masks at least one token
    t = time_of_share(trained.noise, share)
    with torch.no_grad():
        g = continuous_nats(trained, x.expand(rows, -1), None, t.float(), masked)
    start = float(mask_share(trained.noise, 0.0))
    return draw_weights(masked, valid_rows, start) * g, prob, node, masked


@pytest.mark.parametrize("noise_spec", SCHEDULES)
def test_expectation_on_the_exact_toy_is_the_mask_count_form_and_the_nll(noise_spec):
    """(a) Unbiased. For every one of the 27 sequences x, E[w(S) G(S, t(mu))] over mu ~ U(m0, 1] (through
    share_of_level), i* and u, computed exactly, equals the mask-count form with the per-count weights worked by
    hand, c_k = (1/k) P(Binomial(3, m0) < k); with the exact denoiser and m0 = 0 (loglinear, cosine: c_k = 1/k,
    LLaDA's form) that is -log p(x) itself. Geometric (m0 = 0.26) checks the general weights: there the bound
    also has R, whose estimator is unchanged."""
    trained = toy_trained(noise_spec)
    m0 = float(hand_share(noise_spec, 0.0)[0])
    assert (m0 == 0) == (noise_spec["type"] != "geometric")
    v, weight = gauss_legendre(4)  # degree <= 2 in mu: exact
    shares = share_of_level(trained.noise, v)
    assert torch.allclose(shares, m0 + (1 - m0) * v, rtol=0, atol=1e-15)
    for x, p in zip(toy.SEQS, toy.P):
        values, prob, node, _ = code_draw_values(trained, x, shares)
        expectation = float((weight[node] * prob * values).sum())
        assert expectation == pytest.approx(count_form(x, m0), rel=1e-6)  # float32 terms
        if m0 == 0:
            assert expectation == pytest.approx(-math.log(float(p)), rel=1e-6)
    if m0 > 0:  # the weights of m0 = 0 would be wrong here: the check above can fail
        assert count_form(toy.SEQS[0], 0.0) * (1 - m0) != pytest.approx(count_form(toy.SEQS[0], m0), rel=1e-3)


def old_second_moment(x, floor):
    """E[X^2] of the estimator this one replaced (one draw: t ~ U(0, 1], S ~ q_t, X = G(S) / t under loglinear
    m(t) = t, a time-free denoiser), over the draws with t >= floor: sum_S G(S)^2 int_floor^1 t^(k-2) (1-t)^(3-k) dt.
    k = 1: int (1 - t)^2 / t dt = ln(1/floor) - 2 (1 - floor) + (1 - floor^2) / 2, which grows without bound."""
    total = 0.0
    for pattern in itertools.product((False, True), repeat=toy.LENGTH):
        k = sum(pattern)
        if k == 0:
            continue
        if k == 1:
            integral = math.log(1 / floor) - 2 * (1 - floor) + (1 - floor**2) / 2
        else:
            t, w = gauss_legendre(4, floor, 1.0)
            integral = float((w * t ** (k - 2) * (1 - t) ** (3 - k)).sum())
        total += toy_nll_given(x, torch.tensor(pattern)) ** 2 * integral
    return total


def test_variance_is_finite_bounded_and_far_below_the_old_estimator():
    """(b) On the toy's least likely sequence (loglinear): the exact variance of one draw, and of the mean of K = 8
    stratified draws (each stratum integrated exactly), is finite, while the former estimator's second moment over
    t >= floor grows like ln(1 / floor) (infinite variance). Through block_nats on 4,000 copies (K = 8): every
    estimate lies in [min_S w(S) G(S), max_S w(S) G(S)] (a former draw G(S)/t at t < 1/8 leaves it), the sample
    variance is the exact one within 15% and the mean is -log p(x) within 4 standard errors."""
    trained = toy_trained(SCHEDULES[0])
    which = int(toy.P.argmin())
    x, nll = toy.SEQS[which], -math.log(float(toy.P[which]))
    K = 8
    v, weight = gauss_legendre(4)
    values, prob, node, _ = code_draw_values(trained, x, share_of_level(trained.noise, v))
    mean = float((weight[node] * prob * values).sum())
    one_draw = float((weight[node] * prob * values**2).sum()) - mean**2
    stratum_vars = []
    for j in range(K):
        v, weight = gauss_legendre(4, j / K, (j + 1) / K)
        values, prob, node, _ = code_draw_values(trained, x, share_of_level(trained.noise, v))
        e1 = K * float((weight[node] * prob * values).sum())
        e2 = K * float((weight[node] * prob * values**2).sum())
        stratum_vars.append(e2 - e1**2)
    stratified = sum(stratum_vars) / K**2
    assert mean == pytest.approx(nll, rel=1e-6) and 0 < stratified < one_draw < nll**2
    old = {floor: old_second_moment(x, floor) - nll**2 for floor in (1e-3, 1e-6, 1e-12)}
    assert old[1e-6] > 10 * one_draw and old[1e-12] - old[1e-6] > 0.5 * (old[1e-6] - old[1e-3]) > 0
    # the range of one draw: w(S) G(S) over the 7 nonempty S, from their hand values (n / k) G(S)
    sets = [torch.tensor(p) for p in itertools.product((False, True), repeat=3) if any(p)]
    low = min(3 / int(s.sum()) * toy_nll_given(x, s) for s in sets)
    high = max(3 / int(s.sum()) * toy_nll_given(x, s) for s in sets)
    copies = 4000
    estimates, _ = block_nats(
        trained,
        x.expand(copies, -1).clone(),
        None,
        torch.ones(copies, 3, dtype=torch.bool),
        K,
        torch.Generator().manual_seed(0),
    )
    assert float(estimates.min()) >= low - 1e-9 and float(estimates.max()) <= high + 1e-9
    assert float(estimates.var()) == pytest.approx(stratified, rel=0.15)
    assert abs(float(estimates.mean()) - nll) < 4 * math.sqrt(stratified / copies)


# -- time-conditioned networks: the estimator's expectation is the bound's integral --------------------------
@pytest.mark.parametrize("objective", ["mdlm", "sedd"])
@pytest.mark.parametrize("noise_spec", SMOOTH)
def test_expectation_is_the_bound_for_a_time_conditioned_network(noise_spec, objective):
    """(a) A time-conditioned tiny network, a clean 2-token prefix (a cascade stage) and a pad: the bound's
    definition D = int_0^1 sum_S q_t(S) L(S, t) dt, L the training terms of train/objectives (MDLM lambda * nll,
    SEDD sigma' * [score entropy]) over the 3 real positions, against the estimator's expectation
    int_0^1 m'(t) / (1 - m0) E_{i*, u}[w(S) G(S, t)] dt (mu = m(t), the share that time_of_share maps back to t),
    both on the same 64 Gauss-Legendre t nodes with every S / (i*, u) enumerated. The two integrands are equal
    node by node, so the match is to float32 precision whatever the nodes; it checks the masks' law, the weights
    (1 - m0) n / |S| and G = L / lambda for both objectives."""
    pad = 5
    model = tiny_network(std=0.4)
    trained = as_trained(model, objective, noise_spec, pad_id=pad, target_len=4, prefix_len=2)
    noise = trained.noise
    x0 = torch.tensor([[2, 0, 4, pad], [1, 1, 3, pad]])
    prefix = torch.tensor([[3, 0], [4, 2]])
    valid = x0 != pad
    t_nodes, t_weights = gauss_legendre(64)
    share, dshare = hand_share(noise_spec, t_nodes)
    m0 = float(hand_share(noise_spec, 0.0)[0])
    assert torch.allclose(time_of_share(noise, share), t_nodes, rtol=1e-9, atol=1e-12)  # mu -> t inverts m
    for b in range(len(x0)):
        # the bound: q_t(S) = m^k (1 - m)^(3 - k) over the real positions; the training terms with sigma'(t)
        patterns = torch.tensor(list(itertools.product((False, True), repeat=3)))
        rows = len(t_nodes) * len(patterns)
        pattern = patterns.repeat(len(t_nodes), 1)
        node = torch.arange(len(t_nodes)).repeat_interleave(len(patterns))
        uniform = torch.ones(rows, 4)
        uniform[:, :3] = torch.where(pattern, 0.0, 1.0)
        m = share[node]
        q = torch.where(pattern, m[:, None], 1 - m[:, None]).prod(1)
        with torch.no_grad():
            terms, which = masked_token_losses(
                model,
                objective,
                x0[b].expand(rows, -1),
                prefix[b].expand(rows, -1),
                t_nodes[node].float(),
                uniform,
                noise,
                trained.meta["mask_id"],
                valid[b].expand(rows, -1),
            )
        loss = torch.zeros(rows, dtype=torch.float64).index_add_(0, which, terms.double())
        bound = float((t_weights[node] * q * loss).sum())
        # the estimator
        pick, uniform, prob, node = draws(valid[b], share)
        rows = len(pick)
        valid_rows = valid[b].expand(rows, -1)
        masked = draw_masks(valid_rows, share[node], uniform, pick)
        assert not masked[:, 3].any() and masked.any(1).all()
        with torch.no_grad():
            g = continuous_nats(
                trained, x0[b].expand(rows, -1), prefix[b].expand(rows, -1), t_nodes[node].float(), masked
            )
        values = draw_weights(masked, valid_rows, m0) * g
        estimator = float((t_weights[node] * dshare[node] / (1 - m0) * prob * values).sum())
        assert estimator == pytest.approx(bound, rel=2e-5) and bound > 0


def hand_g(model, objective, x, sigma, x0, prefix):
    """g_i = L_i / lambda at every target position, by hand from the network's logits on [prefix ; x]: MDLM
    -log p_theta(x0_i | x) (mask logit -inf, log-softmax); SEDD sum_{y != m} a_y - log a_x0 - 1,
    a_y = exp(logit_y) / (V - 1) (module docstring)."""
    with torch.no_grad():
        logits = model(torch.cat([prefix, x])[None], torch.tensor([sigma], dtype=torch.float32), len(prefix))[
            0, len(prefix) :
        ].double()
    if objective == "mdlm":
        logits[:, MASK] = -math.inf
        return -logits.log_softmax(-1).gather(-1, x0[:, None]).squeeze(-1)
    a = logits.exp() / (VOCAB - 1)
    a[:, MASK] = 0.0
    return a.sum(-1) - a.gather(-1, x0[:, None]).squeeze(-1).log() - 1


@pytest.mark.parametrize("objective", ["mdlm", "sedd"])
@pytest.mark.parametrize("noise_spec", [SCHEDULES[0], SCHEDULES[2]])
def test_block_nats_replays_its_draws_by_hand(noise_spec, objective):
    """block_nats against a replay of its own random numbers worked by hand, per block: the K stratified levels
    v_j, then per draw the uniforms u [B, L] and the pick of i*, then (m0 > 0) R's uniforms. By hand:
    mu = m0 + (1 - m0) v, t(mu) in closed form (loglinear t = mu; geometric t = log(sigma / sigma_min) /
    log(sigma_max / sigma_min) with sigma = -log(1 - M mu)), S = {i*} + {u < mu} over the real positions,
    (1/K) sum_j (1 - m0) n / |S| * sum_{i in S} g_i at sigma_bar(t); the discrete one (mdlm) with step
    i = ceil(T t) and the masks at m(i/T), the network told sigma_bar(i/T); plus R = sum over the positions with
    u' < m0 of -log p_theta(x0 | x) at sigma_bar(0). A clean prefix and a pad in every block."""
    pad, K, T = 5, 3, 7
    model = tiny_network(std=0.4)
    trained = as_trained(model, objective, noise_spec, pad_id=pad, target_len=4, prefix_len=2)
    noise = trained.noise
    x0 = torch.tensor([[2, 0, 4, pad], [1, pad, 3, 3], [pad, 4, 4, 0]])
    prefix = torch.tensor([[3, 0], [4, 2], [1, 1]])
    valid = x0 != pad
    steps = T if objective == "mdlm" else None
    got_continuous, got_discrete = block_nats(trained, x0, prefix, valid, K, torch.Generator().manual_seed(4), steps)

    g = torch.Generator().manual_seed(4)
    u_levels = torch.rand(K, 3, generator=g, dtype=torch.float64)
    levels = (torch.arange(K, dtype=torch.float64)[:, None] + 1 - u_levels) / K
    m, _ = hand_share(noise_spec, torch.arange(T + 1, dtype=torch.float64) / T)
    m0 = float(m[0])
    top = 1 - math.exp(-float(noise.total(torch.tensor(1.0, dtype=torch.float64))))
    want_continuous, want_discrete = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    for j in range(K):
        u = torch.rand(3, 4, generator=g, dtype=torch.float64)
        pick = torch.rand(3, generator=g, dtype=torch.float64)
        for b in range(3):
            real = valid[b].nonzero().squeeze(1).tolist()
            n = len(real)
            chosen = real[int(float(pick[b]) * n)]
            mu = m0 + (1 - m0) * float(levels[j, b])
            if noise_spec["type"] == "loglinear":
                t = mu
            else:
                sigma = -math.log(1 - top * mu)
                t = math.log(sigma / noise.sigma_min) / math.log(noise.sigma_max / noise.sigma_min)
            passes = [(mu, float(noise.total(torch.tensor(t, dtype=torch.float32))), want_continuous)]
            if steps:  # step i = ceil(T t): masks at m(i/T), the network told sigma_bar(i/T)
                i = math.ceil(T * t)
                passes.append((float(m[i]), float(noise.total(torch.tensor(i / T))), want_discrete))
            for share, sigma, out in passes:
                masked = torch.tensor([i == chosen or (i in real and float(u[b, i]) < share) for i in range(4)])
                x = torch.where(masked, torch.full_like(x0[b], MASK), x0[b])
                terms = hand_g(model, objective, x, sigma, x0[b], prefix[b])
                out[b] += (1 - m0) * n / int(masked.sum()) * float(terms[masked].sum()) / K
    if m0 > 0:
        final = torch.rand(3, 4, generator=g) < m0
        for b in range(3):
            masked = final[b] & valid[b]
            x = torch.where(masked, torch.full_like(x0[b], MASK), x0[b])
            sigma0 = float(noise.total(torch.zeros(1))[0])
            r = float(hand_g(model, "mdlm", x, sigma0, x0[b], prefix[b])[masked].sum())
            want_continuous[b] += r
            want_discrete[b] += r
        assert final[valid].any()  # R is not empty here
    assert torch.allclose(got_continuous, want_continuous, rtol=1e-5)
    if steps:
        assert torch.allclose(got_discrete, want_discrete, rtol=1e-5)
    else:
        assert got_discrete is None


def test_draw_masks_law_and_weights_by_hand():
    """Given mu, S = {i*} + {i != i*: u_i < mu} has P(S) = (|S| / n) mu^(|S|-1) (1 - mu)^(n - |S|) (summed over the
    enumerated i* and u), pads are never masked even where u = 0, mu = 1 masks every real position whatever
    u < 1, and w = (1 - m0) n / |S|; a row with no real position masks nothing and weighs 0."""
    valid = torch.tensor([True, False, True, True, False])
    n, mu = 3, 0.37
    pick, uniform, prob, _ = draws(valid, torch.tensor([mu], dtype=torch.float64))
    masked = draw_masks(valid.expand(len(pick), -1), torch.full((len(pick),), mu, dtype=torch.float64), uniform, pick)
    assert not masked[:, ~valid].any()
    law = {}
    for row, p in zip(masked, prob.tolist()):
        law[tuple(row.tolist())] = law.get(tuple(row.tolist()), 0.0) + p
    assert len(law) == 7 and sum(law.values()) == pytest.approx(1.0, rel=1e-12)
    for pattern, p in law.items():
        k = sum(pattern)
        assert p == pytest.approx(k / n * mu ** (k - 1) * (1 - mu) ** (n - k), rel=1e-12)
    g = torch.Generator().manual_seed(0)
    rows = valid.expand(1000, -1)
    all_masked = draw_masks(
        rows,
        torch.ones(1000, dtype=torch.float64),
        torch.rand(1000, 5, generator=g, dtype=torch.float64),
        torch.rand(1000, generator=g),
    )
    assert torch.equal(all_masked, rows)
    # i* uniform over the real positions: pick in [0, 1/3) -> the first, [1/3, 2/3) -> the second, ...
    nothing_else = torch.ones(3, 5, dtype=torch.float64)
    chosen = draw_masks(
        valid.expand(3, -1),
        torch.full((3,), 0.5, dtype=torch.float64),
        nothing_else,
        torch.tensor([0.0, 0.5, 1 - 1e-17]),
    )
    assert chosen.tolist() == [
        [True, False, False, False, False],
        [False, False, True, False, False],
        [False, False, False, True, False],
    ]
    masked = torch.tensor([[True, False, False, False, False], [True, False, True, True, False]])
    assert draw_weights(masked, valid.expand(2, -1), 0.25).tolist() == [0.75 * 3 / 1, 0.75 * 3 / 3]
    none = torch.zeros(1, 5, dtype=torch.bool)
    assert not draw_masks(none, torch.ones(1, dtype=torch.float64), torch.zeros(1, 5), torch.zeros(1)).any()
    assert draw_weights(none, none, 0.0).tolist() == [0.0]


# -- the discrete-T bound ------------------------------------------------------------------------------------
@pytest.mark.parametrize("noise_spec", SCHEDULES)
def test_step_of_a_share_is_the_grid_step_above_it(noise_spec):
    """mu in (m(t_{i-1}), m(t_i)] maps to step i = ceil(T t(mu)), so mu ~ U(m0, 1] draws step i with probability
    (m_i - m_{i-1}) / (1 - m0), m computed by hand; loglinear: m(t) = t."""
    T = 50
    noise = get_noise(noise_spec)
    m, _ = hand_share(noise_spec, torch.arange(T + 1, dtype=torch.float64) / T)
    assert torch.allclose(mask_share(noise, torch.arange(T + 1, dtype=torch.float64) / T), m, rtol=1e-12, atol=1e-15)
    for frac in (0.02, 0.5, 0.98):
        inside = m[:-1] + frac * (m[1:] - m[:-1])
        assert torch.equal(step_of_time(time_of_share(noise, inside), T), torch.arange(1, T + 1))
    if noise_spec["type"] == "loglinear":
        assert torch.allclose(m, torch.arange(T + 1, dtype=torch.float64) / T, rtol=1e-12)


def test_k_equal_t_draws_every_step_once_per_block():
    """Loglinear (t(mu) = mu): K = T stratified draws visit every step once per block; K < T one step per stratum,
    each of 1..T equally likely over the strata."""
    g = torch.Generator().manual_seed(3)
    noise = LogLinearNoise(1e-3)
    for T in (1, 4, 16):
        steps = step_of_time(time_of_share(noise, share_of_level(noise, stratified_levels(50, T, g))), T)  # [K, B]
        assert torch.equal(steps, torch.arange(1, T + 1)[:, None].expand(T, 50))
    steps = step_of_time(time_of_share(noise, share_of_level(noise, stratified_levels(20000, 4, g))), 8)
    counts = torch.bincount(steps.flatten(), minlength=9)[1:].double() / steps.numel()
    assert torch.allclose(counts, torch.full((8,), 1 / 8, dtype=torch.float64), atol=0.01)
    assert set(steps[0].tolist()) == {1, 2} and set(steps[3].tolist()) == {7, 8}


@pytest.mark.parametrize("noise_spec", SCHEDULES)
def test_discrete_estimator_expectation_is_the_hand_sum(noise_spec):
    """(a) A 2-token block, a time-conditioned network, T = 5. By hand, with m_i = m(i/T) and
    w_i = (m_i - m_{i-1}) / m_i:

        L_T - R = sum_{i=1}^T w_i sum_{S subset of {1,2}} m_i^|S| (1 - m_i)^(2-|S|)
                                  * sum_{j in S} -log p_theta(x0_j | x0 masked at S; sigma_bar(i/T)),

    the network called here directly (mask logit -inf, log-softmax). The estimator: step i with probability
    (m_i - m_{i-1}) / (1 - m0) (the share interval that step_of_time maps to i, checked at its middle), S from
    draw_masks at m_i over every (i*, u), weight w(S), G_T from discrete_nats: the same number. The sampling
    estimator (stage_nelbo) on copies of the block agrees within 4 standard errors (loglinear, m0 = 0: R = 0)."""
    model = tiny_network()
    trained = as_trained(model, noise_spec=noise_spec)
    noise, T = trained.noise, 5
    x0 = torch.tensor([2, 4])
    m, _ = hand_share(noise_spec, torch.arange(T + 1, dtype=torch.float64) / T)
    m0 = float(m[0])
    hand = 0.0
    for i in range(1, T + 1):
        # sigma_bar(i/T) in float32, as training tells the network
        sigma = float(noise.total(torch.tensor(i / T, dtype=torch.float32)))
        w_i = float((m[i] - m[i - 1]) / m[i])
        for pattern in itertools.product([False, True], repeat=2):
            chosen = torch.tensor(pattern)
            prob = math.prod(float(m[i]) if s else 1 - float(m[i]) for s in pattern)
            x = torch.where(chosen, torch.full_like(x0, MASK), x0)
            hand += w_i * prob * float(hand_nll(model, x, sigma, x0)[chosen].sum())
    valid = torch.ones(2, dtype=torch.bool)
    estimator = 0.0
    for i in range(1, T + 1):
        middle = (m[i - 1] + m[i]) / 2
        step = step_of_time(time_of_share(noise, middle[None]), T)
        assert step.tolist() == [i]
        share = mask_share(noise, step.double() / T)
        pick, uniform, prob, _ = draws(valid, share)
        rows = len(pick)
        masked = draw_masks(valid.expand(rows, -1), share.expand(rows), uniform, pick)
        with torch.no_grad():
            g = discrete_nats(trained, x0.expand(rows, -1), None, step.expand(rows), masked, T)
        values = draw_weights(masked, valid.expand(rows, -1), m0) * g
        estimator += float((m[i] - m[i - 1]) / (1 - m0)) * float((prob * values).sum())
    assert estimator == pytest.approx(hand, rel=1e-6)
    if noise_spec["type"] != "loglinear":
        return
    copies = 3000
    result = stage_nelbo(
        trained,
        torch.zeros(copies, 0, dtype=torch.long),
        x0.repeat(copies, 1),
        time_samples=T,
        batch_size=copies,
        seed=1,
        discrete_steps=T,
    )
    _, per_copy = block_nats(
        trained,
        x0.repeat(copies, 1),
        None,
        torch.ones(copies, 2, dtype=torch.bool),
        T,
        torch.Generator().manual_seed(2),
        T,
    )
    standard_error = float(per_copy.std()) / math.sqrt(copies)
    assert abs(result["nats_discrete"] / copies - hand) < 4 * standard_error
    assert result["discrete_steps"] == T and result["nelbo_discrete"] == pytest.approx(result["nats_discrete"] / 6000)
    assert result["ppl_discrete"] == pytest.approx(math.exp(result["nelbo_discrete"]))


@pytest.mark.parametrize("noise_spec", SCHEDULES)
def test_one_token_bound_is_the_exact_nll(noise_spec):
    """A one-token block and a time-independent network: D + R = (1 - m0) NLL + m0 NLL = NLL, and L_T the same for
    any T. Every draw masks the token with weight 1 - m0, so with m0 = 0 (loglinear, cosine) each draw is the NLL
    exactly (zero variance; the former estimator, 1/t on a mask of probability t, needed rel = 0.03 on 1,200
    blocks); with m0 > 0 only R's Bernoulli(m0) draw varies."""
    model = tiny_network(time_conditioning=False)
    trained = as_trained(model, noise_spec=noise_spec, target_len=1)
    target = torch.arange(1200)[:, None] % MASK
    by_class = torch.cat([hand_nll(model, torch.tensor([MASK]), 0.0, torch.tensor([c])) for c in range(MASK)])
    nll = float(by_class[target[:, 0]].sum())
    result = stage_nelbo(
        trained, torch.zeros(1200, 0, dtype=torch.long), target, time_samples=16, batch_size=1200, discrete_steps=16
    )
    exact = noise_spec["type"] != "geometric"
    assert result["nats_discrete"] == pytest.approx(nll, rel=1e-6 if exact else 0.03)
    assert result["nats"] == pytest.approx(nll, rel=1e-6 if exact else 0.03)


@pytest.mark.parametrize("noise_spec", SCHEDULES)
def test_discrete_bound_approaches_the_continuous_one_as_t_grows(noise_spec):
    """Same seed, so the same shares, chosen positions and mask uniforms (common random numbers): as T -> inf,
    m(t_{ceil(T t)}) -> mu and t_i -> t, the masks and the network's sigma agree, and the discrete estimate tends
    to the continuous one draw by draw. Tolerance: relative gap below 1e-4 at T = 2^20, and at least 100 times
    smaller than at T = 16."""
    model = tiny_network(std=0.3)
    trained = as_trained(model, noise_spec=noise_spec, target_len=6)
    x0 = torch.randint(0, MASK, (64, 6), generator=torch.Generator().manual_seed(1))
    prefix = torch.zeros(64, 0, dtype=torch.long)
    gaps = {}
    for T in (16, 2**20):
        r = stage_nelbo(trained, prefix, x0, time_samples=4, batch_size=64, seed=5, discrete_steps=T)
        gaps[T] = abs(r["nelbo_discrete"] - r["nelbo"]) / r["nelbo"]
        continuous = r["nelbo"]
    assert gaps[2**20] < 1e-4 and gaps[2**20] * 100 < gaps[16]
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
    assert set(without) == {"nats", "tokens", "blocks", "nelbo", "ppl", "time_samples", "objective", "definition"}
    with pytest.raises(ValueError, match="discrete_steps should be an integer >= 1 or None, got 0"):
        stage_nelbo(as_trained(tiny_network(), target_len=4), prefix, x0, 2, 8, discrete_steps=0)
    with pytest.raises(ValueError, match="time_samples should be an integer >= 1, got 0"):
        stage_nelbo(as_trained(tiny_network(), target_len=4), prefix, x0, 0, 8)


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
    """(c) [a b c d pad pad] with pad_id gives the nats of [a b c d], with uniforms that would mask the pads
    (u = 0 there) and the same i* pick, for the masks, the weights (n = 4 real tokens), the continuous term, the
    discrete term, the t = 0 term and block_nats as a whole."""
    pad = 5
    net = PositionWise()
    real = torch.tensor([[1, 3, 0, 2], [4, 4, 1, 0]])
    padded = torch.cat([real, torch.full((2, 2), pad)], 1)
    valid = padded != pad
    trained = as_trained(net, objective, SCHEDULES[2], pad_id=pad, target_len=6)
    u = torch.tensor([[0.1, 0.7, 0.3, 0.9], [0.5, 0.2, 0.05, 0.6]], dtype=torch.float64)
    u_padded = torch.cat([u, torch.zeros(2, 2, dtype=torch.float64)], 1)
    share, pick = torch.tensor([0.4, 0.8], dtype=torch.float64), torch.tensor([0.9, 0.1], dtype=torch.float64)
    masked_padded = draw_masks(valid, share, u_padded, pick)
    masked = draw_masks(torch.ones_like(real, dtype=torch.bool), share, u, pick)
    assert torch.equal(masked_padded[:, :4], masked) and not masked_padded[:, 4:].any()
    start = float(mask_share(trained.noise, 0.0))
    assert torch.equal(draw_weights(masked_padded, valid, start), draw_weights(masked, torch.ones_like(masked), start))
    t = time_of_share(trained.noise, share).float()
    with torch.no_grad():
        got = continuous_nats(trained, padded, None, t, masked_padded)
        want = continuous_nats(trained, real, None, t, masked)
        assert torch.allclose(got, want, rtol=1e-6) and float(want.sum()) > 0
        if objective == "mdlm":
            got = discrete_nats(trained, padded, None, torch.tensor([3, 9]), masked_padded, 10)
            want = discrete_nats(trained, real, None, torch.tensor([3, 9]), masked, 10)
            assert torch.allclose(got, want, rtol=1e-6) and float(want.sum()) > 0
        # share 1: every real position masked at t = 0, the pads still not
        assert torch.allclose(
            final_denoising_nats(trained, padded, None, 1.0, torch.Generator(), valid),
            final_denoising_nats(trained, real, None, 1.0, torch.Generator()),
            rtol=1e-6,
        )
    for x, select in net.seen:
        if x.shape[1] == 6:
            assert (x[:, 4:] == pad).all() and (select is None or not select[:, 4:].any())
    # block_nats: the padded blocks' uniforms (6 per row) differ from the cut blocks' (4), so compare each with
    # itself under another pad id: the estimate must not depend on what the pads are
    steps = 7 if objective == "mdlm" else None
    one = block_nats(trained, padded, None, valid, 3, torch.Generator().manual_seed(4), steps)
    other = torch.where(valid, padded, torch.full_like(padded, 2))
    two = block_nats(trained, other, None, valid, 3, torch.Generator().manual_seed(4), steps)
    assert torch.allclose(one[0], two[0], rtol=1e-6) and (steps is None or torch.allclose(one[1], two[1], rtol=1e-6))


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
    # is the batch's own pad pattern (rows 0-2 or 3-5), and the output head is never asked for a pad position;
    # every row has at least one real token, so every row of every call is scored at least once
    pads = target == pad
    assert len(calls) == 2 * (4 + 4)  # 2 batches x 4 times x (continuous, discrete)
    for x, select in calls:
        assert torch.equal(x == pad, pads[:3]) or torch.equal(x == pad, pads[3:])
        assert not select[x == pad].any() and select.any(1).all()

    causal = tiny_network(causal=True)
    ar = as_trained(causal, "ar", pad_id=pad, target_len=6)
    with torch.no_grad():
        for row, n in zip(target, lengths.tolist()):
            got = ar_nats(ar, row[None], (row != pad)[None])
            assert got == pytest.approx(ar_nats(ar, row[None, :n], torch.ones(1, n, dtype=torch.bool)), rel=1e-5)
    ar_result = stage_nelbo(ar, torch.zeros(6, 0, dtype=torch.long), target, 4, 3)
    assert ar_result["tokens"] == 22


# -- the network call is training's (train.objectives.masked_forward): pinned against the code before it ----------
def reference_masked_logits(trained, x0, prefix, sigma, masked):
    """eval/likelihood.py's own network call before train.objectives.masked_forward (commit 3d2f6b2), verbatim."""
    mask_id = trained.meta["mask_id"]
    x_t = torch.where(masked, torch.full_like(x0, mask_id), x0)
    prefix_len = 0 if prefix is None else prefix.shape[1]
    x_in = x_t if prefix is None else torch.cat([prefix, x_t], dim=1)
    select = torch.cat([torch.zeros_like(prefix, dtype=torch.bool), masked], 1) if prefix_len else masked
    logits = trained.model(x_in, sigma, prefix_len, select=select)
    return logits, x_t, masked.nonzero(as_tuple=True)[0]


def reference_continuous_nats(trained, x0, prefix, t, masked, counted=None):
    """continuous_nats before masked_forward (commit 3d2f6b2), verbatim (it had no ``counted``: called with None)."""
    assert counted is None
    mask_id = trained.meta["mask_id"]
    sigma = trained.noise.total(t)
    scale = torch.expm1(sigma)
    logits, x_t, rows = reference_masked_logits(trained, x0, prefix, sigma, masked)
    if trained.meta["objective"] == "mdlm":
        fused = getattr(trained.model, "fused", "auto")
        token_loss = mdlm_token_loss(logits, x0[masked], sigma[rows], scale[rows], mask_id, fused)
    else:
        log_score = sedd_log_score(logits, x_t[masked], sigma[rows], mask_id)
        token_loss = sedd_token_loss(log_score, x0[masked], sigma[rows], scale[rows], mask_id)
    return likelihood._per_block(token_loss, rows, len(x0))


def reference_discrete_nats(trained, x0, prefix, step, masked, steps, counted=None):
    """discrete_nats before masked_forward (commit 3d2f6b2), verbatim (it had no ``counted``: called with None)."""
    assert counted is None
    t = (step.double() / steps).float()
    sigma = trained.noise.total(t.to(x0.device))
    logits, _, rows = reference_masked_logits(trained, x0, prefix, sigma, masked)
    return likelihood._per_block(subs_nll(logits, x0[masked], trained.meta["mask_id"]), rows, len(x0))


@pytest.mark.parametrize("prefix_len", [0, 3])
@pytest.mark.parametrize("noise_spec", [SCHEDULES[0], SCHEDULES[2]])
@pytest.mark.parametrize("objective", ["mdlm", "sedd"])
def test_terms_and_estimates_equal_the_code_before_masked_forward(objective, noise_spec, prefix_len, monkeypatch):
    """The shared network call changes no number: continuous_nats and discrete_nats on a padded batch, and
    block_nats and stage_nelbo (continuous and discrete-T, with the geometric schedule's t = 0 term) on the same
    seeds, are torch.equal / == to the pre-refactor code's."""
    pad = 5
    trained = as_trained(tiny_network(), objective, noise_spec, pad_id=pad, target_len=6, prefix_len=prefix_len)
    g = torch.Generator().manual_seed(11)
    x0 = torch.randint(0, 6, (4, 6), generator=g)
    prefix = torch.randint(0, 6, (4, prefix_len), generator=g)
    pre = prefix if prefix_len else None
    valid = x0 != pad
    t = torch.rand(4, generator=g)
    masked = (torch.rand(4, 6, generator=g) < 0.5) & valid
    steps = 10 if objective == "mdlm" else None
    with torch.no_grad():
        want = reference_continuous_nats(trained, x0, pre, t, masked)
        assert torch.equal(continuous_nats(trained, x0, pre, t, masked), want) and bool((want != 0).any())
        if steps:
            step = torch.tensor([1, 4, 7, 10])
            want = reference_discrete_nats(trained, x0, pre, step, masked, steps)
            assert torch.equal(discrete_nats(trained, x0, pre, step, masked, steps), want)
        results = []
        for continuous, discrete in (
            (reference_continuous_nats, reference_discrete_nats),
            (likelihood.continuous_nats, likelihood.discrete_nats),
        ):
            with monkeypatch.context() as m:  # what block_nats and stage_nelbo call
                m.setattr(likelihood, "continuous_nats", continuous)
                m.setattr(likelihood, "discrete_nats", discrete)
                blocks = block_nats(trained, x0, pre, valid, 3, torch.Generator().manual_seed(5), steps)
                stage = stage_nelbo(trained, prefix, x0, 2, 3, seed=3, discrete_steps=steps) if steps else None
            results.append((blocks, stage))
    (blocks0, stage0), (blocks1, stage1) = results
    assert torch.equal(blocks0[0], blocks1[0]) and (steps is None or torch.equal(blocks0[1], blocks1[1]))
    assert stage0 == stage1


# -- counted: a part of the same estimate (the SFT content NELBO, eval/sft.answer_content) ------------------------


@pytest.mark.parametrize("noise_spec", SCHEDULES)
def test_counted_parts_of_one_estimate_add_up_to_it(noise_spec):
    """stage_nelbo with ``counted`` = C and with its complement (within the scored positions) sums the terms of the
    same draws and masks: the two parts' nats add up to the whole estimate's, their tokens to its tokens, for the
    continuous and the discrete bound, under every schedule (the geometric one has the t = 0 term); counted = the
    scored positions gives the whole estimate exactly. The masks do not depend on C: a part is not the NELBO of
    C alone with the rest clean (which would differ)."""
    model = tiny_network()
    trained = as_trained(model, noise_spec=noise_spec, target_len=6)
    target = torch.randint(0, MASK, (5, 6), generator=torch.Generator().manual_seed(1))
    scored = torch.rand(5, 6, generator=torch.Generator().manual_seed(2)) < 0.8
    scored[:, 0] = True  # every row scores something
    part = torch.rand(5, 6, generator=torch.Generator().manual_seed(3)) < 0.5
    empty = torch.zeros(5, 0, dtype=torch.long)

    def nelbo(**kw):
        return stage_nelbo(trained, empty, target, 3, 2, seed=7, discrete_steps=9, scored=scored, **kw)

    whole, one, rest = nelbo(), nelbo(counted=part), nelbo(counted=~part)
    assert one["tokens"] == int((part & scored).sum()) and one["tokens"] + rest["tokens"] == whole["tokens"]
    assert 0 < one["tokens"] < whole["tokens"]
    for key in ("nats", "nats_discrete"):
        assert one[key] + rest[key] == pytest.approx(whole[key], rel=1e-9)
        assert 0 < one[key] < whole[key]
    assert nelbo(counted=scored)["nats"] == whole["nats"]
    alone = stage_nelbo(trained, empty, target, 3, 2, seed=7, scored=scored & part)
    assert alone["tokens"] == one["tokens"] and alone["nats"] != pytest.approx(one["nats"], rel=1e-6)
