"""The inserting stage form (train/inserting.py, train/placement.py) on toys small enough to enumerate.

Placement laws: both normalise exactly over the C(L, m) placements and sample() draws from log_prob. The bound:
one inserting stage with m = 2 given tokens in an L = 4 canvas over tokens {0, 1, 2} (mask 3), a joint q(P, fill)
over the 6 placements and 9 fills; the exact denoiser computes q(fill_i | x_t, P) by enumeration. Expectations
over masks are exact sums over the 4 patterns of the 2 inserted positions and the time integral Gauss-Legendre
under alpha(t) = (1 - t)^5 (alpha(1) = 0, so no prior term; tests/test_atat_math.py's PowerNoise)."""

import itertools
import math

import numpy as np
import pytest
import test_atat_math as atat_toy  # PowerNoise (tests/, no package)
import torch

from train.inserting import given_mask
from train.objectives import masked_token_losses
from train.placement import LearnedPlacement, UniformPlacement, gaps_of, positions_of

torch.set_num_threads(1)

TOKENS, MASK, L, M = 3, 3, 4, 2
VOCAB = TOKENS + 1
PLACEMENTS = torch.tensor(list(itertools.combinations(range(L), M)))  # [6, 2]
FILLS = torch.tensor(list(itertools.product(range(TOKENS), repeat=L - M)))  # [9, 2]
Y = torch.tensor([2, 0])  # the given tokens


def laws():
    torch.manual_seed(0)
    learned = LearnedPlacement(VOCAB, 7, 3, dim=16, layers=1, heads=2)
    for p in learned.parameters():  # far from uniform, so the checks below see the masking and the budget
        torch.nn.init.normal_(p, std=0.5)
    return {"uniform": UniformPlacement(7, 3), "learned": learned.eval()}


@pytest.mark.parametrize("name", ["uniform", "learned"])
def test_placement_laws_normalise_and_sample_from_log_prob(name):
    """sum over the C(7, 3) = 35 placements of exp(log_prob) = 1 (for two prefixes), and 40,000 draws of sample()
    pass a chi-square test against exp(log_prob) (fixed seed; p > 0.001)."""
    from scipy.stats import chisquare

    law = laws()[name]
    placements = torch.tensor(list(itertools.combinations(range(7), 3)))
    for prefix in (torch.tensor([0, 1, 2]), torch.tensor([2, 2, 1])):
        with torch.no_grad():
            log_p = law.log_prob(prefix.expand(len(placements), -1), placements).double()
        assert float(log_p.exp().sum()) == pytest.approx(1.0, abs=1e-5)
    if name == "uniform":
        assert float(-log_p[0]) == pytest.approx(math.log(35))
        assert UniformPlacement(32, 16).nats == pytest.approx(20.2, abs=0.05)
    draws = law.sample(prefix.expand(40_000, -1), torch.Generator().manual_seed(0))
    assert (draws.diff(dim=1) > 0).all() and draws.min() >= 0 and draws.max() < 7
    index = {tuple(p.tolist()): i for i, p in enumerate(placements)}
    counts = np.bincount([index[tuple(d)] for d in draws.tolist()], minlength=len(placements))
    expected = log_p.exp().numpy() * len(draws)
    assert chisquare(counts, expected / expected.sum() * len(draws)).pvalue > 1e-3


def test_gaps_and_positions_are_inverse_and_checked():
    positions = torch.tensor([[0, 2, 3], [1, 4, 6]])
    gaps = gaps_of(positions, 7)
    assert gaps.tolist() == [[0, 1, 0, 3], [1, 2, 1, 0]]
    assert torch.equal(positions_of(gaps), positions)
    with pytest.raises(ValueError, match="strictly increasing"):
        gaps_of(torch.tensor([[2, 2, 3]]), 7)
    with pytest.raises(ValueError, match=r"\[0, 7\)"):
        gaps_of(torch.tensor([[2, 3, 7]]), 7)


# -- the bound on the exact toy ------------------------------------------------------------------------------
def joint(seed=0) -> torch.Tensor:
    """q(P, fill) [6, 9], every entry > 0, with uniform q(P) (the code's UniformPlacement is then exact)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(len(PLACEMENTS), len(FILLS), generator=g, dtype=torch.float64) ** 3 + 0.02
    return w / w.sum(1, keepdim=True) / len(PLACEMENTS)


Q = joint()


def canvas(p: int, f: int) -> torch.Tensor:
    x = torch.empty(L, dtype=torch.long)
    given = given_mask(PLACEMENTS[p][None], L)[0]
    x[given], x[~given] = Y, FILLS[f]
    return x


class ExactInfill(torch.nn.Module):
    """q(fill_i = v | x_t, P) by enumeration over the 9 fills of the row's placement (given marks P)."""

    def __init__(self, q, temper=1.0):
        super().__init__()
        self.q, self.temper, self.fused = q, temper, False

    def forward(self, x, sigma, prefix_len=0, select=None, given=None):
        assert prefix_len == 0 and given is not None
        logits = torch.zeros(*x.shape, VOCAB, dtype=torch.float64)
        for b in range(len(x)):
            p = next(i for i, pl in enumerate(PLACEMENTS) if given_mask(pl[None], L)[0].equal(given[b]))
            holes = x[b][~given[b]]
            agree = ((FILLS == holes) | (holes == MASK)).all(-1)
            posterior = self.q[p] * agree
            posterior = posterior / posterior.sum()
            marginal = torch.einsum("f,fjv->jv", posterior, torch.nn.functional.one_hot(FILLS, VOCAB).double())
            logits[b, ~given[b]] = self.temper * marginal.clamp_min(1e-300).log()
        return logits[select] if select is not None else logits


def expected_bounds(model, law, nodes=16) -> torch.Tensor:
    """E[B] = -log law(P | y) + int_0^1 sum_patterns q_t(pattern) sum_{i masked} loss_i dt for every (P, fill),
    float64 [6, 9]; the infill terms from train.objectives.masked_token_losses with given = P."""
    noise = atat_toy.PowerNoise()
    s, w = np.polynomial.legendre.leggauss(nodes)
    t_nodes, w_nodes = torch.tensor((s + 1) / 2), torch.tensor(w / 2)
    patterns = torch.tensor(list(itertools.product((False, True), repeat=L - M)))
    out = torch.zeros(len(PLACEMENTS), len(FILLS), dtype=torch.float64)
    for p, f in itertools.product(range(len(PLACEMENTS)), range(len(FILLS))):
        given = given_mask(PLACEMENTS[p][None], L)[0]
        rows = [(t, pat) for t in range(nodes) for pat in patterns]
        x0 = canvas(p, f).expand(len(rows), -1)
        t = torch.stack([t_nodes[i] for i, _ in rows])
        uniform = torch.ones(len(rows), L, dtype=torch.float64)
        for r, (_, pat) in enumerate(rows):
            uniform[r, ~given] = torch.where(pat, 0.0, 1.0).double()
        with torch.no_grad():
            loss, index = masked_token_losses(
                model, "mdlm", x0, None, t, uniform, noise, MASK, given=given.expand(len(rows), -1)
            )
        per_row = torch.zeros(len(rows), dtype=torch.float64).index_add(0, index, loss.double())
        keep = torch.exp(-noise.total(t))[:, None]  # each inserted position kept with alpha(t)
        masked = uniform[:, ~given] == 0
        prob = torch.where(masked, 1 - keep, keep).prod(-1)
        infill = float((w_nodes[[i for i, _ in rows]] * prob * per_row).sum())
        with torch.no_grad():
            placement = -float(law.log_prob(Y[None], PLACEMENTS[p][None])[0])
        out[p, f] = placement + infill
    return out


def test_exact_infill_and_placement_give_the_nll():
    """With the exact posterior and the true (uniform) placement law, E[B] = -log q(P, fill) for all 54 outcomes."""
    bounds = expected_bounds(ExactInfill(Q), UniformPlacement(L, M))
    assert torch.allclose(bounds, -Q.log(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("temper", [0.6, 1.7])
def test_perturbed_infill_and_learned_placement_stay_bounds(temper):
    """A tempered posterior and a random learned law: sum over outcomes of exp(-E[B]) <= 1 (E[B] >= -log of the
    model's own probability) and E_q[E[B]] >= H(q), and the checks are not vacuous."""
    torch.manual_seed(1)
    law = LearnedPlacement(VOCAB, L, M, dim=8, layers=1, heads=2).eval()
    bounds = expected_bounds(ExactInfill(Q, temper), law)
    total = float(torch.exp(-bounds).sum())
    assert total <= 1.0 and total > 0.5
    assert float((Q * bounds).sum()) >= float(-(Q * Q.log()).sum())


# -- settings and training -----------------------------------------------------------------------------------
def insert_config(**run):
    from common.config import validate_config

    spec = {"kind": "cascade", "method": "constituency", "objective": "mdlm", "stage_form": "insert", **run}
    config = {"stages": {"lengths": [4, 8, 16]}, "annotate": {"check_models": False}, "runs": {"c": spec}}
    return validate_config(config, "test.yaml")


def test_settings_of_an_inserting_cascade():
    """Stage 1 is the same model in both forms (its settings digest too); stages 2 and 3 insert, uniform by
    default; a re-predicting run's settings have neither key (its digest is what it was)."""
    from train.settings import resolve

    config = insert_config(placement="learned")
    one, two = resolve(config, "c", 1), resolve(config, "c", 2)
    assert (one.stage_form, one.placement) == ("repredict", None)
    assert (two.stage_form, two.placement, two.prefix_len, two.target_len) == ("insert", "learned", 4, 8)
    assert resolve(insert_config(), "c", 3).placement == "uniform"
    repredict = insert_config(stage_form="repredict")
    assert "stage_form" not in resolve(repredict, "c", 2).computing()
    assert resolve(repredict, "c", 1).digest() == one.digest()


def test_match_compute_counts_the_canvas_tokens_of_an_inserting_cascade():
    """A single run matched to an inserting cascade gets sum_k steps_k l_k / l3 steps (the canvas only)."""
    from train.settings import compute_matched_steps, resolve

    config = insert_config()
    config["runs"]["s"] = {"kind": "single", "method": "constituency", "objective": "mdlm", "match_compute": "c"}
    steps = resolve(config, "c", 1).max_steps
    assert resolve(config, "s").max_steps == -(-steps * (4 + 8 + 16) // 16)
    assert compute_matched_steps([800] * 3, [8, 16, 32], 32) == 2000  # the seed's demo count is unchanged


@pytest.mark.parametrize(
    "run, message",
    [
        ({"kind": "single"}, r"runs.c.stage_form = insert applies to cascade runs"),
        ({"stage_form": "repredict", "placement": "learned"}, r"runs.c.placement = 'learned'.*stage_form: insert"),
    ],
)
def test_config_refuses_insert_outside_cascades(run, message):
    from common.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        insert_config(**run)


def test_settings_refuse_shuffled_given_tokens_and_atat():
    from train.settings import SettingsError, resolve

    config = insert_config()
    config["runs"]["c"]["shuffle_prefix"] = True
    with pytest.raises(SettingsError, match=r"runs.c.shuffle_prefix"):
        resolve(config, "c", 2)
    config = insert_config(objective="atat")
    with pytest.raises(SettingsError, match=r"runs.c.stage_form insert trains objective mdlm or sedd"):
        resolve(config, "c", 2)


def test_given_tokens_change_nothing_when_they_are_not_there():
    """The DiT with given=None is the seed's network (bit for bit), and given marks positions as a prefix does."""
    from train.model import DiffusionTransformer, ModelConfig

    torch.manual_seed(0)
    net = DiffusionTransformer(ModelConfig(vocab_size=VOCAB, dim=16, n_layers=1, n_heads=2, cond_dim=8)).eval()
    torch.nn.init.normal_(net.prefix_embed, std=1.0)
    x, sigma = torch.randint(0, TOKENS, (3, 6)), torch.rand(3)
    given = torch.zeros(3, 6, dtype=torch.bool)
    given[:, :2] = True
    assert torch.equal(net(x, sigma), net(x, sigma, 0))
    assert torch.allclose(net(x, sigma, 0, given=given), net(x, sigma, 2), atol=1e-6)


def test_inserting_cascade_trains_in_process(tmp_path):
    """Stage 2 of an inserting cascade with a learned placement law trains on the toy shards: the loss is the infill
    NELBO, metrics.csv has the placement NLL, the folder holds placement.safetensors and says stage_form insert."""
    import json

    from toy_runs import ToyProject, rows_of

    from train.placement import load_placement

    project = ToyProject.build(
        tmp_path,
        runs={
            "insert": {
                "kind": "cascade",
                "method": "keybert_no_stopword",
                "objective": "mdlm",
                "stage_form": "insert",
                "placement": "learned",
                "shuffle_prefix": False,
            }
        },
    )
    done = project.train("insert", tmp_path / "stage2")
    assert done.returncode == 0, done.log[-3000:]
    rows = rows_of(tmp_path / "stage2")
    assert all(float(r["placement_nats"]) > 0 for r in rows)
    meta = json.loads((tmp_path / "stage2" / "config.json").read_text())
    assert (meta["stage_form"], meta["placement"]) == ("insert", "learned")
    assert (meta["prefix_len"], meta["target_len"]) == (4, 8)
    law = load_placement(tmp_path / "stage2")
    assert (law.length, law.given) == (8, 4)
    # stage 1 of the same run is an ordinary (re-predicting) stage
    done = project.train("insert", tmp_path / "stage1", "--stage", "1")
    assert done.returncode == 0, done.log[-3000:]
    assert "stage_form" not in json.loads((tmp_path / "stage1" / "config.json").read_text())
    check_sampling_and_bound(tmp_path, project.data["validation"])


def check_sampling_and_bound(tmp_path, val_shard):
    """The trained stages sampled as a cascade: every sampler keeps the stage-1 tokens in stage 2, in order
    (retention 1, as a subsequence); the validation entry splits into placement and infill nats that add up."""
    from eval.likelihood import inserting_stage_nelbo
    from eval.metrics import prefix_retention
    from eval.sample import sample_batch
    from eval.samplers import SAMPLERS
    from eval.trained import load_trained

    stages = [load_trained(tmp_path / name) for name in ("stage1", "stage2")]
    for sampler in [s for s in SAMPLERS if s != "uncertainty"]:
        generator = torch.Generator().manual_seed(0)
        ids, _ = sample_batch(stages, 6, sampler, 8, 1.0, None, generator, torch.device("cpu"))
        for one, two in zip(ids["stage1"].tolist(), ids["stage2"].tolist()):
            it = iter(two)
            assert all(token in it for token in one), (sampler, one, two)  # a subsequence: kept, in order
        assert prefix_retention(ids["stage1"].tolist(), ids["stage2"].tolist())["value"] == 1.0
    entry = inserting_stage_nelbo(stages[1], [val_shard], 2, 16, 32)
    assert entry["tokens"] == 32 * 8 and entry["infill_tokens"] == 32 * 4
    assert entry["nats"] == pytest.approx(entry["placement_nats"] + entry["infill_nats"])
    assert entry["placement_nats"] > 0 and entry["infill_nats"] > 0
    assert entry["infill_nelbo"] == pytest.approx(entry["infill_nats"] / entry["infill_tokens"])
