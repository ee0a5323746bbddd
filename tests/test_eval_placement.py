"""Prefix placement (eval/placement.py) and the placing samplers ({sampler}_placed, eval/samplers.py): the DP finds
the best order-preserving placement (brute force over every C(L, m) placement, ties to the leftmost), every
placing sampler keeps every prefix token at its place, in order (retention 1), fills the rest, counts only the
free positions, and is the plain sampler where there is no prefix; one-model runs refuse it."""

import itertools
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_eval_samplers import MASK, PREFIX_LEN, TARGET_LEN, flat_importance, prefix_batch, tiny_denoiser

from eval.metrics import prefix_retention
from eval.placement import best_placement
from eval.sample import sample_batch
from eval.samplers import (
    PLACED,
    PLACING_SAMPLERS,
    SAMPLERS,
    finished_target,
    masked_target,
    place_prefix,
    placing,
    sample,
    time_grid,
)
from train.noise import LogLinearNoise

torch.set_num_threads(1)


def brute_force(scores: torch.Tensor) -> tuple[int, ...]:
    """The best placement of one row's scores [m, L] over all C(L, m) of them; ties: the lexicographically
    smallest (the leftmost)."""
    m, length = scores.shape
    rows = scores.tolist()

    def total(c):
        return sum(rows[r][j] for r, j in enumerate(c))

    best = max(total(c) for c in itertools.combinations(range(length), m))
    return min(c for c in itertools.combinations(range(length), m) if total(c) == best)


@pytest.mark.parametrize("ties", [False, True])
def test_the_dp_is_the_brute_force_best_placement(ties):
    """Random tables, every m <= L up to L = 7; with ties: small integers (exact sums, many equal placements)."""
    g = torch.Generator().manual_seed(0)
    for length in range(1, 8):
        for m in range(length + 1):
            if ties:
                scores = torch.randint(-2, 1, (4, m, length), generator=g).double()
            else:
                scores = torch.randn(4, m, length, generator=g, dtype=torch.float64)
            positions = best_placement(scores)
            assert positions.shape == (4, m) and positions.dtype == torch.long
            for row in range(4):
                assert tuple(positions[row].tolist()) == brute_force(scores[row]), (length, m, scores[row])


def test_ties_go_to_the_leftmost_placement():
    assert best_placement(torch.zeros(1, 3, 6)).tolist() == [[0, 1, 2]]
    # token 0 is as good at 1 as at 4; token 1 must come after it and is best at 5
    scores = torch.full((1, 2, 6), -5.0)
    scores[0, 0, 1] = scores[0, 0, 4] = 0.0
    scores[0, 1, 5] = 0.0
    assert best_placement(scores).tolist() == [[1, 5]]


def test_placement_is_strictly_increasing_and_in_range():
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(16, 9, 20, generator=g)
    positions = best_placement(scores)
    assert (positions[:, 1:] > positions[:, :-1]).all()
    assert ((positions >= 0) & (positions < 20)).all()
    assert best_placement(torch.randn(2, 5, 5)).tolist() == [list(range(5))] * 2  # m = L: the only placement


def test_impossible_tokens_and_bad_tables_are_named():
    scores = torch.full((1, 2, 4), float("-inf"))
    scores[0, 1, 2] = 0.0  # token 0 is impossible everywhere: it still gets a place, before token 1
    assert best_placement(scores).tolist() == [[0, 2]]
    with pytest.raises(ValueError, match="cannot place 3 tokens in order in 2 positions"):
        best_placement(torch.zeros(1, 3, 2))
    with pytest.raises(ValueError, match="NaN"):
        best_placement(torch.full((1, 1, 2), float("nan")))
    with pytest.raises(ValueError, match=r"\[batch, m tokens, L positions\]"):
        best_placement(torch.zeros(3, 2))


def test_placing_names():
    assert PLACING_SAMPLERS == tuple(s + PLACED for s in SAMPLERS)
    assert placing("confidence_placed") == ("confidence", True) and placing("semi_ar") == ("semi_ar", False)


def test_place_prefix_puts_the_prefix_where_the_network_scores_it_best():
    """One network call on the all-masked canvas; the positions are the best placement of its log-probs."""
    denoiser, noise, prefix = tiny_denoiser(), LogLinearNoise(), prefix_batch()
    denoiser.calls = 0
    with torch.no_grad():
        canvas = place_prefix(denoiser, noise, prefix, TARGET_LEN)
        assert denoiser.calls == 1
        x = masked_target(prefix, TARGET_LEN, MASK)
        sigma = noise.total(torch.ones(3, dtype=torch.float64)).float()
        log_p = denoiser.x0_log_probs(x, sigma)[:, PREFIX_LEN:]
    assert torch.equal(canvas[:, :PREFIX_LEN], prefix)
    target = canvas[:, PREFIX_LEN:]
    given = target != MASK
    assert (given.sum(-1) == PREFIX_LEN).all()
    for row in range(3):
        positions = given[row].nonzero().squeeze(-1)
        assert torch.equal(target[row, positions], prefix[row])  # in order
        scores = torch.stack([log_p[row, :, t] for t in prefix[row].tolist()])  # [m, L]
        best = sum(scores[r, j].item() for r, j in enumerate(positions.tolist()))
        assert math.isclose(
            best,
            max(
                sum(scores[r, j].item() for r, j in enumerate(c))
                for c in itertools.combinations(range(TARGET_LEN), PREFIX_LEN)
            ),
            rel_tol=1e-9,
        )
    with pytest.raises(ValueError, match="cannot place a prefix of 5 tokens in a target of 4"):
        place_prefix(denoiser, noise, prefix, 4)


@pytest.mark.parametrize("objective", ["mdlm", "sedd"])
@pytest.mark.parametrize("sampler", PLACING_SAMPLERS)
@pytest.mark.parametrize("block_size", [None, 5])
def test_every_placing_sampler_keeps_every_prefix_token_at_its_place(objective, sampler, block_size):
    """Retention 1: the prefix is a subsequence of the output at the placed positions; the rest has no mask."""
    denoiser, noise, prefix = tiny_denoiser(objective), LogLinearNoise(), prefix_batch()
    with torch.no_grad():
        canvas = place_prefix(denoiser, noise, prefix, TARGET_LEN)[:, PREFIX_LEN:]
        out = sample(
            denoiser,
            noise,
            prefix,
            TARGET_LEN,
            sampler,
            steps=7,
            temperature=0.9,
            block_size=block_size,
            generator=torch.Generator().manual_seed(0),
            importance=flat_importance(placing(sampler)[0]),
        )
    assert out.shape == (3, TARGET_LEN) and not (out == MASK).any()
    given = canvas != MASK
    for row in range(3):
        positions = given[row].nonzero().squeeze(-1)
        assert (positions[1:] > positions[:-1]).all()
        assert torch.equal(out[row, positions], prefix[row])
    assert prefix_retention(prefix.tolist(), out.tolist())["value"] == 1.0


def test_confidence_counts_only_the_free_positions():
    """After the step to s, round((L - m) * move(s)) positions are still masked: the given ones are not counted."""
    denoiser, noise, prefix = tiny_denoiser(), LogLinearNoise(), prefix_batch()
    seen, inner = [], denoiser.model

    def spy(x, sigma, prefix_len):
        seen.append(int((x[0, prefix_len:] == MASK).sum()))
        return inner(x, sigma, prefix_len)

    denoiser.model = spy
    steps = 5
    with torch.no_grad():
        sample(denoiser, noise, prefix, TARGET_LEN, "confidence_placed", steps, generator=torch.Generator())
    free = TARGET_LEN - PREFIX_LEN
    move = [-math.expm1(-float(noise.total(t[None])[0])) for t in time_grid(steps)[1:-1]]
    # call 0 places (all masked), call 1 is step 0 (the free positions), call i + 1 follows step i - 1
    assert seen == [TARGET_LEN, free] + [round(free * m) for m in move]


def test_without_a_prefix_a_placing_sampler_is_the_plain_one():
    """Stage 1: nothing to place, no extra call, the same tokens under the same seed."""
    denoiser, noise = tiny_denoiser(prefix_len=0), LogLinearNoise()
    empty = torch.zeros(3, 0, dtype=torch.long)
    for sampler in ("confidence", "ddpm_cache", "analytic"):
        outs = [
            sample(denoiser, noise, empty, TARGET_LEN, name, 6, generator=torch.Generator().manual_seed(3))
            for name in (sampler, sampler + PLACED)
        ]
        assert torch.equal(*outs), sampler


def test_a_changed_given_token_is_a_bug():
    prefix = prefix_batch()
    start = masked_target(prefix, TARGET_LEN, MASK)
    start[:, PREFIX_LEN + 2] = 7
    finished = start.clone()
    finished[:, PREFIX_LEN:] = 3
    canvas = start[:, PREFIX_LEN:]
    given = canvas != MASK
    with pytest.raises(AssertionError, match="changed a given token"):
        finished_target(finished, prefix, MASK, given, canvas)
    finished[:, PREFIX_LEN + 2] = 7
    assert (finished_target(finished, prefix, MASK, given, canvas)[:, 2] == 7).all()


@pytest.mark.parametrize("kind, is_ar", [("single", False), ("ar", True)])
def test_a_one_model_run_refuses_a_placing_sampler(kind, is_ar):
    stage = SimpleNamespace(model_dir=Path(f"runs/demo/{kind}/model"), record=SimpleNamespace(kind=kind), is_ar=is_ar)
    with pytest.raises(
        ValueError,
        match=rf"runs/demo/{kind}/model: sampler 'confidence_placed' .* {kind} run .*"
        r"sample it with 'confidence'",
    ):
        sample_batch([stage], 2, "confidence_placed", 4, 1.0, None, torch.Generator(), torch.device("cpu"))


def test_a_placed_cascade_keeps_every_stage_in_the_next():
    """eval.sample over three toy stages: stage 1 as the plain sampler, stages 2 and 3 keep all of the stage before."""
    lengths = (4, 8, 12)
    stages = [
        SimpleNamespace(
            name=f"stage{k + 1}",
            is_ar=False,
            model_dir=Path(f"runs/demo/cascade/stage{k + 1}"),
            record=SimpleNamespace(kind="cascade"),
            meta={"prefix_len": lengths[k - 1] if k else 0, "target_len": lengths[k]},
            denoiser=tiny_denoiser(prefix_len=lengths[k - 1] if k else 0),
            noise=LogLinearNoise(),
        )
        for k in range(3)
    ]

    def run(sampler):
        with torch.no_grad():
            ids, _ = sample_batch(
                stages, 4, sampler, 5, 1.0, None, torch.Generator().manual_seed(0), torch.device("cpu")
            )
        return ids

    placed, plain = run("ddpm_cache_placed"), run("ddpm_cache")
    assert torch.equal(placed["stage1"], plain["stage1"])
    for prev, nxt in (("stage1", "stage2"), ("stage2", "stage3")):
        assert prefix_retention(placed[prev].tolist(), placed[nxt].tolist())["value"] == 1.0
        for row in range(4):  # an order-preserving subsequence
            it = iter(placed[nxt][row].tolist())
            assert all(token in it for token in placed[prev][row].tolist())
