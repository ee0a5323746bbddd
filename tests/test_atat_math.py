"""The math of objective atat (train/atat.py), checked on a distribution small enough to enumerate.

Sequences of length 3 over tokens {0, 1, 2} (mask id 3) with a fixed arbitrary distribution p over the 27 of
them. The exact denoiser computes p_t(x0_i = v | x_t) by enumeration, for the state-dependent schedule too
(p(x0) prod_{i masked} (1 - alpha_{x0_i}(t)) over the x0 that agree with x_t). Expectations over masks are exact
sums over the 8 mask patterns (uniform u = 0 masks a position, u = 1 keeps it); the time integral is
Gauss-Legendre quadrature. The base schedule alpha(t) = (1 - t)^K reaches alpha(1) = 0, so the prior term is 0
and the continuous-time NELBO of the exact denoiser is -log p(x) exactly; K = 5 keeps the rates
lambda_v = -alpha_v' / (1 - alpha_v) ~ K w_v (1 - t)^{K w_v - 1} bounded for every exponent w_v >= 0.4.
"""

import itertools
import math

import numpy as np
import pytest
import torch

import train.atat as atat
from train.atat import (
    TokenTerms,
    atat_loss,
    atat_token_terms,
    boundary_terms,
    corrupt_by_token,
    curriculum_stage,
    log_mask_ratio,
    schedule_exponents,
    state_dependent_token_loss,
    unmask_rates,
)
from train.fused import subs_cross_entropy, use_fused
from train.importance import ImportanceEstimator, frequency_importance
from train.model import DiffusionTransformer, ModelConfig
from train.noise import SAMPLING_EPS, LogLinearNoise, sample_times
from train.objectives import corrupt, diffusion_loss, subs_nll

torch.set_num_threads(1)

TOKENS, MASK, LENGTH, K = 3, 3, 3, 5
VOCAB = TOKENS + 1
SEQS = torch.tensor(list(itertools.product(range(TOKENS), repeat=LENGTH)))  # [27, 3]
PATTERNS = torch.tensor(list(itertools.product((False, True), repeat=LENGTH)))  # [8, 3], True = masked


def data_distribution(seed=0) -> torch.Tensor:
    """An arbitrary fixed p over the 27 sequences, every one with mass > 0, in float64."""
    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(len(SEQS), generator=g, dtype=torch.float64) ** 3 + 0.02
    return weights / weights.sum()


P = data_distribution()


class PowerNoise:
    """alpha(t) = (1 - t)^k:  sigma_bar(t) = -k log(1 - t),  sigma'(t) = k / (1 - t)."""

    def __init__(self, power=K):
        self.power = power

    def total(self, t):
        return -self.power * torch.log1p(-t)

    def rate(self, t):
        return self.power / (1 - t)


class ExactDenoiser(torch.nn.Module):
    """p_t(x0_i = v | x_t) by enumeration, as logits (log-probabilities) at the selected positions. With
    `exponents` (w [V]) the posterior of the state-dependent schedule; without, the schedule-free one
    p(x0_i = v | the unmasked tokens)."""

    def __init__(self, p, exponents=None):
        super().__init__()
        self.p, self.exponents = p, exponents
        self.fused = False

    def forward(self, x, sigma, prefix_len=0, select=None):
        assert prefix_len == 0
        masked = x == MASK  # [B, L]
        agree = ((SEQS[None] == x[:, None]) | masked[:, None]).all(-1)  # [B, 27]
        weight = self.p[None] * agree
        if self.exponents is not None:
            w = self.exponents.double()[SEQS]  # [27, L]
            mask_prob = -torch.expm1(-w[None] * sigma.double()[:, None, None])  # [B, 27, L]
            weight = weight * torch.where(masked[:, None], mask_prob, torch.ones_like(mask_prob)).prod(-1)
        posterior = weight / weight.sum(-1, keepdim=True)
        onehot = torch.nn.functional.one_hot(SEQS, VOCAB).double()  # [27, L, V]
        marginal = torch.einsum("bs,slv->blv", posterior, onehot)
        logits = marginal.clamp_min(1e-300).log()
        return logits[select] if select is not None else logits


def keep_probability(x0, t, exponents, power=K):
    """alpha_{x0_i}(t) = (1 - t)^{k w_{x0_i}}, float64 [B, L]."""
    w = torch.ones(VOCAB, dtype=torch.float64) if exponents is None else exponents.double()
    return (1 - t.double())[:, None] ** (power * w[x0])


def expected_nelbo(model, exponents, nodes=256, part="loss", noise=None, power=K, lower=0.0):
    """For every sequence x: int_lower^1 sum_patterns q_t(pattern | x) sum_{i masked} l_i dt, by Gauss-Legendre
    in t and an exact sum over the mask patterns, q_t keeping x_i with probability exp(-w_{x_i} sigma(t)).
    part: "loss" (l_i), or "naive" (l_i without the vocabulary bracket, the weighting a state-dependent schedule
    must not use). noise: the base schedule (default PowerNoise(power)). float64 [27]."""
    noise = noise or PowerNoise(power)
    s, weights = np.polynomial.legendre.leggauss(nodes)
    t_nodes = torch.tensor(lower + (1 - lower) * (s + 1) / 2, dtype=torch.float64)
    w_nodes = torch.tensor(weights * (1 - lower) / 2, dtype=torch.float64)
    # rows: (sequence, node, pattern)
    x0 = SEQS[:, None, None].expand(-1, nodes, len(PATTERNS), -1).reshape(-1, LENGTH)
    t = t_nodes[None, :, None].expand(len(SEQS), -1, len(PATTERNS)).reshape(-1)
    pattern = PATTERNS[None, None].expand(len(SEQS), nodes, -1, -1).reshape(-1, LENGTH)
    uniform = torch.where(pattern, 0.0, 1.0)
    w = torch.ones(VOCAB, dtype=torch.float64) if exponents is None else exponents.double()
    keep = torch.exp(-w[x0] * noise.total(t)[:, None])
    pattern_prob = torch.where(pattern, 1 - keep, keep).prod(-1)
    with torch.no_grad():
        terms = atat_token_terms(model, x0, None, t, uniform, noise, MASK, exponents)
    assert torch.equal(terms.masked, pattern)
    token = terms.loss if part == "loss" else terms.loss - terms.rate_term
    per_row = torch.zeros(len(x0), dtype=torch.float64).index_add(0, terms.rows, token.double())
    integrand = (pattern_prob * per_row).view(len(SEQS), nodes, len(PATTERNS)).sum(-1)
    return (integrand * w_nodes[None]).sum(-1)


def frequency_exponents(strength=0.35):
    """w from the frequency importance of skewed counts (token 0 common, 2 rare; the mask never seen)."""
    return schedule_exponents(frequency_importance(np.array([60, 25, 6, 0])), strength)


def random_exponents(seed):
    g = torch.Generator().manual_seed(seed)
    return 0.4 + 2.1 * torch.rand(VOCAB, generator=g)  # w_v in [0.4, 2.5]


SCHEDULES = {
    "uniform": None,
    "frequency": frequency_exponents(),
    **{f"random{seed}": random_exponents(seed) for seed in (1, 2, 3)},
}


def test_frequency_exponents_are_not_trivial():
    w = SCHEDULES["frequency"]
    assert w[0] > 1 > w[2] and w[:TOKENS].min() >= 0.4  # common tokens masked sooner, rare later; K w >= 2


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_exact_denoiser_nelbo_is_the_nll(name):
    """E_t E_mask NELBO(x) = -log p(x) for every x under every schedule, with the exact posterior."""
    exponents = SCHEDULES[name]
    nelbo = expected_nelbo(ExactDenoiser(P, exponents), exponents)
    assert torch.allclose(nelbo, -P.log(), rtol=1e-6, atol=1e-6), (nelbo + P.log()).abs().max()


def test_loglinear_uniform_schedule_gives_the_nll():
    """The pipeline's LogLinearNoise with eps = 0 (alpha = 1 - t, MDLM's weight 1/t), variant uniform."""
    nelbo = expected_nelbo(ExactDenoiser(P), None, noise=LogLinearNoise(eps=0.0), power=1)
    assert torch.allclose(nelbo, -P.log(), rtol=1e-6, atol=1e-6), (nelbo + P.log()).abs().max()


@pytest.mark.parametrize("name", ["frequency", "random1", "random2"])
def test_dropping_the_vocabulary_term_is_not_a_nelbo(name):
    """Negative control: under a state-dependent schedule, lambda_{x0} * -log p alone (MDLM's form with
    per-token weights) misses -log p(x) even with the exact posterior, so the test above can fail; and it is not
    a bound at all: sum_x exp(-naive(x)) > 1, which no NELBO of a distribution allows."""
    exponents = SCHEDULES[name]
    naive = expected_nelbo(ExactDenoiser(P, exponents), exponents, part="naive")
    assert (naive + P.log()).abs().max() > 1e-2
    assert float(torch.exp(-naive).sum()) > 1.0 + 1e-3


def training_range(model, exponents, noise=LogLinearNoise(eps=1e-3), s=SAMPLING_EPS):
    """For every x, under the training noise (alpha(1) = eps > 0) and times t ~ U[s, 1]: (the mean of sum l_i,
    which atat_nelbo used to be; the expectation of the atat_nelbo stat now), float64 [27] each."""
    inner = expected_nelbo(model, exponents, noise=noise, lower=s)  # int_s^1 of the integrand
    sigma_floor, sigma_one = noise.total(torch.tensor([s, 1.0], dtype=torch.float64))
    return inner / (1 - s), inner + boundary_terms(SEQS, sigma_floor, sigma_one, VOCAB, MASK, exponents)


@pytest.mark.parametrize("name", ["frequency", "w032"])
def test_training_stat_is_a_bound_with_the_boundary_terms(name):
    """With eps = 1e-3 a token of exponent w stays clean at t = 1 with probability eps^w (0.11 for w = 0.32).
    Without the prior and end terms, the mean of sum l_i over t ~ U[s, 1] is not a bound even for the exact
    denoiser (below the entropy, sum_x e^{-.} > 1); atat_nelbo's expectation, with them, is one."""
    exponents = torch.tensor([1.0, 0.32, 0.32, 1.0]) if name == "w032" else SCHEDULES[name]
    bare, bound = training_range(ExactDenoiser(P, exponents), exponents)
    entropy = float(-(P * P.log()).sum())
    assert float((P * bare).sum()) < entropy - 1e-2 and float(torch.exp(-bare).sum()) > 1.0 + 1e-2
    assert float((P * bound).sum()) >= entropy and float(torch.exp(-bound).sum()) <= 1.0
    assert float(torch.exp(-bound).sum()) > 0.95  # close to the truth: the checks above are not vacuous


def test_boundary_terms_vanish_when_everything_is_masked_at_one():
    """alpha(1) = 0 (sigma(1) = inf) and s = 0: no prior or end term, the NELBO of the tests above."""
    for exponents in (None, SCHEDULES["random1"]):
        ends = boundary_terms(SEQS, 0.0, float("inf"), VOCAB, MASK, exponents)
        assert torch.equal(ends, torch.zeros(len(SEQS), dtype=torch.float64))


def test_atat_nelbo_stat_is_the_bound_estimate():
    """atat_nelbo = [(1 - s) sum_{i masked} l_i + sum boundary terms] / N on the batch's own draw, pi from
    prior_logits."""
    vocab, mask = 24, 23
    model = tiny_dit(vocab)
    g = torch.Generator().manual_seed(11)
    x0 = torch.randint(0, mask, (5, 12), generator=g)
    t, u = sample_times(5, g), torch.rand(5, 12, generator=g)
    counts = np.bincount(x0.flatten().numpy(), minlength=vocab)
    frequency, logits = frequency_importance(counts), torch.log1p(torch.as_tensor(counts, dtype=torch.float64))
    noise = LogLinearNoise()
    _, _, stats = atat_loss(model, None, x0, None, t, u, noise, mask, "frequency", 0.8, frequency, prior_logits=logits)
    exponents = schedule_exponents(frequency, 0.8)
    with torch.no_grad():
        terms = atat_token_terms(model, x0, None, t, u, noise, mask, exponents)
    sigma_floor, sigma_one = noise.total(torch.tensor([SAMPLING_EPS, 1.0], dtype=torch.float64))
    ends = boundary_terms(x0, sigma_floor, sigma_one, vocab, mask, exponents, logits)
    want = ((1 - SAMPLING_EPS) * terms.loss.double().sum() + ends.sum()) / x0.numel()
    assert stats["atat_nelbo"] == pytest.approx(float(want), rel=1e-6)
    assert float(ends.sum()) > 0


def test_unmask_rates_stay_finite_when_an_exponent_underflows():
    """w = exp(-2.4 * 45.2) is 0 in float32 (the mask id, never a target, has the largest z): lambda there is
    its w -> 0 limit sigma' / sigma, not 0 / 0."""
    exponents = schedule_exponents(torch.tensor([0.0, 45.2]), 2.4)
    assert exponents[1] == 0  # the case is real
    rates = unmask_rates(torch.tensor([1e-3]), torch.tensor([1.0]), exponents)
    assert torch.isfinite(rates).all(), rates
    assert float(rates[0, 0]) == pytest.approx(1 / math.expm1(1e-3), rel=1e-6)  # w = 1: sigma' / expm1(sigma)
    assert float(rates[0, 1]) == pytest.approx(1 / 1e-3, rel=1e-6)  # w = 0: sigma' / sigma


def test_atat_loss_stays_finite_when_an_exponent_underflows():
    vocab, mask = 24, 23
    model = tiny_dit(vocab)
    g = torch.Generator().manual_seed(4)
    x0 = torch.randint(0, mask, (4, 10), generator=g)
    t, u = sample_times(4, g), torch.rand(4, 10, generator=g)
    frequency = torch.zeros(vocab)
    frequency[:4] = torch.tensor([-1.0, 0.5, 2.0, 3.0])
    frequency[mask] = 45.2  # never occurs: the largest z
    loss, _, stats = atat_loss(model, None, x0, None, t, u, LogLinearNoise(), mask, "frequency", 2.4, frequency)
    assert torch.isfinite(loss) and all(math.isfinite(v) for v in stats.values()), stats
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_schedule_free_posterior_is_wrong_for_state_dependent_masking():
    """Under the frequency schedule the exact denoiser must use the t-dependent posterior: the
    schedule-free one (right for MDLM) is a model like any other, so its NELBO is a strict bound."""
    exponents = SCHEDULES["frequency"]
    nelbo = expected_nelbo(ExactDenoiser(P, None), exponents)
    entropy = -(P * P.log()).sum()
    assert float((P * nelbo).sum()) > float(entropy) + 1e-4


def random_denoisers():
    """Non-exact denoisers: the exact posterior tempered (close to the truth) and a random tiny transformer."""

    class Tempered(ExactDenoiser):
        def forward(self, x, sigma, prefix_len=0, select=None):
            return super().forward(x, sigma, prefix_len, select) * 0.6

    torch.manual_seed(0)
    net = DiffusionTransformer(ModelConfig(vocab_size=VOCAB, dim=16, n_layers=1, n_heads=2, cond_dim=8))
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return {"tempered": Tempered, "transformer": net.eval()}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("denoiser", ["tempered", "transformer"])
def test_non_exact_denoiser_gives_an_upper_bound(name, denoiser):
    """For a model q_theta: NELBO(x) >= -log q_theta(x) for every x. Per x that is not >= -log p(x) (the model
    may put more mass on x than p does), but it implies both (i) sum_x exp(-NELBO(x)) <= sum_x q_theta(x) = 1 and
    (ii) E_p[NELBO] >= E_p[-log q_theta] >= H(p), checked here with margin-free inequalities."""
    exponents = SCHEDULES[name]
    model = random_denoisers()[denoiser]
    if denoiser == "tempered":
        model = model(P, exponents)
    nelbo = expected_nelbo(model, exponents, nodes=128)
    entropy = -(P * P.log()).sum()
    assert float(torch.exp(-nelbo).sum()) <= 1.0
    assert float((P * nelbo).sum()) >= float(entropy)
    if denoiser == "tempered":  # close to the truth, so the checks above are not vacuous
        assert float(torch.exp(-nelbo).sum()) > 0.9


def test_importance_sampling_ratio_recovers_the_plain_expectation():
    """E_{q_w}[exp(log_mask_ratio) f(x_t)] = E_{q_1}[f(x_t)] exactly, summed over the 8 patterns."""
    exponents = SCHEDULES["random1"]
    x0 = torch.tensor([[0, 2, 1]]).expand(len(PATTERNS), -1)
    t = torch.full((len(PATTERNS),), 0.37, dtype=torch.float64)
    sigma = PowerNoise().total(t)
    f = torch.arange(1, len(PATTERNS) + 1, dtype=torch.float64) ** 2  # any function of the pattern
    q_w = torch.where(PATTERNS, 1 - keep_probability(x0, t, exponents), keep_probability(x0, t, exponents)).prod(-1)
    q_1 = torch.where(PATTERNS, 1 - keep_probability(x0, t, None), keep_probability(x0, t, None)).prod(-1)
    ratio = log_mask_ratio(x0, PATTERNS, sigma, exponents).exp()
    assert torch.allclose((q_w * ratio * f).sum(), (q_1 * f).sum(), rtol=1e-12)
    assert not torch.allclose((q_w * f).sum(), (q_1 * f).sum(), rtol=1e-3)


# -- the uniform variant is MDLM ---------------------------------------------------------------------------
def tiny_dit(vocab=24, seed=0, fused="auto"):
    torch.manual_seed(seed)
    model = DiffusionTransformer(ModelConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=2, cond_dim=16), fused=fused)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return model


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("case", ["plain", "prefix", "pad", "maskable"])
def test_uniform_variant_equals_mdlm_exactly(fused, case):
    vocab, mask, pad = 24, 23, 22
    model = tiny_dit(vocab, fused=fused)
    g = torch.Generator().manual_seed(3)
    x0 = torch.randint(0, pad, (5, 12), generator=g)
    prefix = torch.randint(0, pad, (5, 4), generator=g) if case == "prefix" else None
    pad_id, maskable = None, None
    if case == "pad":
        x0[:, 9:] = pad
        pad_id = pad
    if case == "maskable":
        maskable = torch.zeros_like(x0, dtype=torch.bool)
        maskable[:, 6:] = True
    t, u = sample_times(5, g), torch.rand(5, 12, generator=g)
    noise = LogLinearNoise()
    estimator = ImportanceEstimator(vocab, dim=8)
    frequency = frequency_importance(np.bincount(x0.flatten().numpy(), minlength=vocab))
    reference = diffusion_loss(model, "mdlm", x0, prefix, t, u, noise, mask, pad_id, maskable)
    for variant, strength in [("uniform", 1.0), ("full", 0.0), ("frequency", 0.0), ("learned", 0.0)]:
        loss, est_loss, stats = atat_loss(
            model, estimator, x0, prefix, t, u, noise, mask, variant, strength, frequency, pad_id, maskable
        )
        assert torch.equal(loss, reference), (variant, float(loss), float(reference))
        # the stat adds the boundary terms to (1 - s) times the same sum (test_atat_nelbo_stat_is_the_bound_estimate)
        effective = None if pad_id is None else (x0 != pad_id)
        if maskable is not None:
            effective = maskable if effective is None else effective & maskable
        sigma_floor, sigma_one = noise.total(torch.tensor([SAMPLING_EPS, 1.0], dtype=torch.float64))
        ends = boundary_terms(x0, sigma_floor, sigma_one, vocab, mask, maskable=effective).sum()
        count = x0.numel() if effective is None else int(effective.sum())
        want = (1 - SAMPLING_EPS) * float(reference.detach()) + float(ends) / count
        assert stats["atat_nelbo"] == pytest.approx(want, rel=1e-6) and est_loss is not None
    shaped, _, _ = atat_loss(
        model, estimator, x0, prefix, t, u, noise, mask, "frequency", 1.0, frequency, pad_id, maskable
    )
    assert not torch.equal(shaped, reference)  # the comparison above can fail


def test_uniform_variant_gradient_equals_mdlm():
    vocab, mask = 24, 23
    g = torch.Generator().manual_seed(5)
    x0 = torch.randint(0, mask, (4, 10), generator=g)
    t, u = sample_times(4, g), torch.rand(4, 10, generator=g)
    grads = []
    for use_atat in (False, True):
        model = tiny_dit(vocab, fused=False)
        if use_atat:
            loss, _, _ = atat_loss(model, None, x0, None, t, u, LogLinearNoise(), mask, "uniform", 0.0)
        else:
            loss = diffusion_loss(model, "mdlm", x0, None, t, u, LogLinearNoise(), mask)
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


# -- the curriculum ----------------------------------------------------------------------------------------
def reference_atat_token_terms(model, x0, prefix, t, uniform, noise, mask_id, exponents=None, maskable=None):
    """atat_token_terms as it was before train.objectives.masked_forward (commit 3d2f6b2), kept verbatim to pin
    the refactor."""
    sigma, dsigma = noise.total(t), noise.rate(t)
    if maskable is not None:
        uniform = torch.where(maskable, uniform, torch.ones_like(uniform))
    if exponents is None:
        x_t = corrupt(x0, sigma, mask_id, uniform)
    else:
        x_t = corrupt_by_token(x0, sigma, mask_id, uniform, exponents)
    prefix_len = 0 if prefix is None else prefix.shape[1]
    x_in = x_t if prefix is None else torch.cat([prefix, x_t], dim=1)
    masked = x_t == mask_id
    select = torch.cat([torch.zeros_like(prefix, dtype=torch.bool), masked], 1) if prefix_len else masked
    logits = model(x_in, sigma, prefix_len, select=select)
    rows = masked.nonzero(as_tuple=True)[0]
    x0_masked = x0[masked]
    if exponents is None:
        fused = getattr(getattr(model, "module", model), "fused", "auto")
        if use_fused(fused, logits):
            nll = subs_cross_entropy(logits, x0_masked, mask_id)
        else:
            nll = subs_nll(logits, x0_masked, mask_id)
        loss = dsigma[rows] / torch.expm1(sigma[rows]) * nll
        return TokenTerms(loss, torch.zeros_like(loss), nll, rows, masked, x_in, sigma, logits.shape[-1])
    nll_term, rate_term, nll = state_dependent_token_loss(
        logits, x0_masked, sigma[rows], dsigma[rows], exponents.to(logits.device), mask_id
    )
    return TokenTerms(nll_term + rate_term, rate_term, nll, rows, masked, x_in, sigma, logits.shape[-1])


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("case", ["plain", "prefix", "maskable"])
def test_token_terms_and_loss_equal_the_code_before_masked_forward(case, fused, monkeypatch):
    """The shared network call (train.objectives.masked_forward) changes no number: every field of TokenTerms and
    the gradient, for w = 1 and a frequency schedule, and atat_loss's loss, estimator loss, stats and gradients for
    every variant, are torch.equal to the pre-refactor code's on the same draws."""
    vocab, mask, pad = 24, 23, 22
    g = torch.Generator().manual_seed(7)
    x0 = torch.randint(0, pad, (5, 12), generator=g)
    x0[0, 9:] = pad
    prefix = torch.randint(0, pad, (5, 4), generator=g) if case == "prefix" else None
    maskable = torch.rand(5, 12, generator=g) < 0.6 if case == "maskable" else None
    t, u = sample_times(5, g), torch.rand(5, 12, generator=g)
    noise = LogLinearNoise()
    frequency = frequency_importance(np.bincount(x0.flatten().numpy(), minlength=vocab))
    for exponents in (None, schedule_exponents(frequency, 0.7)):
        got = []
        for terms_of in (reference_atat_token_terms, atat_token_terms):
            model = tiny_dit(vocab, fused=fused)
            terms = terms_of(model, x0, prefix, t, u, noise, mask, exponents, maskable)
            terms.loss.sum().backward()
            got.append((terms, [p.grad for p in model.parameters()]))
        (before, grads0), (after, grads1) = got
        assert after.loss.numel() > 0 and after.vocab_size == before.vocab_size == vocab
        for name in ("loss", "rate_term", "nll", "rows", "masked", "x_in", "sigma"):
            assert torch.equal(getattr(before, name), getattr(after, name)), (name, exponents is None)
        assert all(torch.equal(a, b) for a, b in zip(grads0, grads1))
    for variant, strength in [("full", 0.8), ("learned", 0.8), ("frequency", 0.8), ("uniform", 0.0)]:
        got = []
        for terms_of in (reference_atat_token_terms, atat_token_terms):
            model = tiny_dit(vocab, fused=fused)
            torch.manual_seed(1)
            estimator = ImportanceEstimator(vocab, dim=8)
            with monkeypatch.context() as m:
                m.setattr(atat, "atat_token_terms", terms_of)
                loss, est_loss, stats = atat_loss(
                    model, estimator, x0, prefix, t, u, noise, mask, variant, strength, frequency, pad, maskable
                )
            (loss + est_loss).backward()
            got.append((loss, est_loss, stats, [p.grad for p in (*model.parameters(), *estimator.parameters())]))
        (loss0, est0, stats0, grads0), (loss1, est1, stats1, grads1) = got
        assert torch.equal(loss0, loss1) and torch.equal(est0, est1) and stats0 == stats1, variant
        assert all(torch.equal(a, b) for a, b in zip(grads0, grads1)), variant


@pytest.mark.parametrize("max_steps,stages", [(10, 3), (800, 4), (7, 7), (5, 1), (1000, 2)])
def test_curriculum_is_monotone_and_ends_plain(max_steps, stages):
    path = [curriculum_stage(step, max_steps, stages, max_strength=1.5) for step in range(max_steps)]
    strengths = [s.strength for s in path]
    assert all(a >= b for a, b in zip(strengths, strengths[1:]))
    assert strengths[-1] == 0.0
    assert strengths[0] == (1.5 if stages > 1 else 0.0)
    assert [s.stage for s in path] == sorted(s.stage for s in path)
    assert {s.stage for s in path} == set(range(stages))  # every stage gets steps
    for step, s in enumerate(path):  # each stage starts where the step first enters it
        assert s.start == min(i for i, q in enumerate(path) if q.stage == s.stage) <= step
    changes = [s.describe() for prev, s in zip(path, path[1:]) if s.stage != prev.stage]
    assert len(changes) == stages - 1
    assert path[-1].describe().endswith("plain MDLM (strength 0)")


def test_curriculum_rejects_bad_settings():
    with pytest.raises(ValueError, match="atat.stages"):
        curriculum_stage(0, 2, stages=3)
    with pytest.raises(ValueError, match="max_strength"):
        curriculum_stage(0, 10, stages=2, max_strength=-1)
    with pytest.raises(ValueError, match="max_steps"):
        curriculum_stage(0, 0)


# -- gradients: the estimator and the diffusion model never train each other ------------------------------
def test_estimator_target_is_detached_and_weights_are_detached():
    vocab, mask = 24, 23
    model = tiny_dit(vocab)
    estimator = ImportanceEstimator(vocab, dim=8)
    for p in estimator.parameters():  # a non-constant estimator, so the weights differ from 1
        torch.nn.init.normal_(p, std=0.5)
    g = torch.Generator().manual_seed(7)
    x0 = torch.randint(0, mask, (6, 12), generator=g)
    t, u = sample_times(6, g), torch.rand(6, 12, generator=g)
    frequency = frequency_importance(np.bincount(x0.flatten().numpy(), minlength=vocab))
    loss, est_loss, _ = atat_loss(model, estimator, x0, None, t, u, LogLinearNoise(), mask, "full", 1.0, frequency)
    plain, _, _ = atat_loss(model, None, x0, None, t, u, LogLinearNoise(), mask, "frequency", 1.0, frequency)
    assert not torch.allclose(loss, plain)  # the estimator does shape the diffusion loss ...
    model_params, est_params = list(model.parameters()), list(estimator.parameters())
    to_estimator = torch.autograd.grad(loss, est_params, retain_graph=True, allow_unused=True)
    assert all(g is None for g in to_estimator)  # ... but only as a constant
    to_model = torch.autograd.grad(est_loss, model_params, retain_graph=True, allow_unused=True)
    assert all(g is None for g in to_model)  # the surprisal is its target, not a path into the model
    own = torch.autograd.grad(est_loss, est_params, retain_graph=True)
    assert any(float(g.abs().sum()) > 0 for g in own)
    model_grads = torch.autograd.grad(loss, model_params)
    assert any(float(g.abs().sum()) > 0 for g in model_grads)
