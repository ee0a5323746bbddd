"""Checkpoints written locally in the louaaron/sedd-small and kuleshov-group/mdlm-owt layouts, and MDLM training
checkpoints (Lightning .ckpt, with and without EMA), load into the backbone and reproduce the network's outputs;
a missing or mis-shaped key fails naming the key."""

import json
import re
import sys
import types

import pytest
import torch
from safetensors.torch import save_file

from train.model import DiffusionTransformer, ModelConfig
from train.pretrained import load_pretrained

torch.set_num_threads(1)
ARCH = dict(vocab_size=13, dim=16, n_layers=2, n_heads=2, cond_dim=8)

# the published key names of one DiT block and the rest of the network (SEDD's model/transformer.py,
# MDLM's models/dit.py), written out by hand rather than derived from train/pretrained.py
BLOCK_KEYS = [
    "norm1.weight",
    "attn_qkv.weight",
    "attn_out.weight",
    "norm2.weight",
    "mlp.0.weight",
    "mlp.0.bias",
    "mlp.2.weight",
    "mlp.2.bias",
    "adaLN_modulation.weight",
    "adaLN_modulation.bias",
]
OTHER_KEYS = [
    "vocab_embed.embedding",
    "sigma_map.mlp.0.weight",
    "sigma_map.mlp.0.bias",
    "sigma_map.mlp.2.weight",
    "sigma_map.mlp.2.bias",
    "rotary_emb.inv_freq",
    "output_layer.norm_final.weight",
    "output_layer.linear.weight",
    "output_layer.linear.bias",
    "output_layer.adaLN_modulation.weight",
    "output_layer.adaLN_modulation.bias",
]


def published_state(model):
    """Our weights under the published names."""
    ours = model.state_dict()
    state = {
        "vocab_embed.embedding": ours["vocab_embed.weight"],
        "rotary_emb.inv_freq": 1.0 / (10000 ** (torch.arange(0, 8, 2).float() / 8)),
    }
    for key in OTHER_KEYS[1:]:
        if key not in state:
            state[key] = ours[key]
    for i in range(ARCH["n_layers"]):
        for key in BLOCK_KEYS:
            state[f"blocks.{i}.{key}"] = ours[f"blocks.{i}.{key}"]
    return {k: v.clone() for k, v in state.items()}


@pytest.fixture
def source_model():
    torch.manual_seed(0)
    model = DiffusionTransformer(ModelConfig(**ARCH))
    for name, p in model.named_parameters():
        if name != "prefix_embed":
            torch.nn.init.normal_(p, std=0.3)
    return model.eval()


def write_sedd(folder, model):
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model": {
                    "name": "small",
                    "type": "ddit",
                    "hidden_size": ARCH["dim"],
                    "cond_dim": ARCH["cond_dim"],
                    "length": 32,
                    "n_blocks": ARCH["n_layers"],
                    "n_heads": ARCH["n_heads"],
                    "scale_by_sigma": True,
                    "dropout": 0.1,
                },
                "graph": {"type": "absorb"},
                "noise": {"type": "loglinear"},
                "tokens": ARCH["vocab_size"] - 1,
            }
        )
    )
    torch.save(published_state(model), folder / "pytorch_model.bin")


def write_mdlm(folder, model, state=None):
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "mdlm",
                "architectures": ["MDLM"],
                "hidden_dim": ARCH["dim"],
                "cond_dim": ARCH["cond_dim"],
                "n_blocks": ARCH["n_layers"],
                "n_heads": ARCH["n_heads"],
                "vocab_size": ARCH["vocab_size"],
                "model_length": 32,
                "dropout": 0.1,
                "time_conditioning": False,
            }
        )
    )
    state = published_state(model) if state is None else state
    save_file({f"backbone.{k}": v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))


def test_sedd_layout_round_trip(tmp_path, source_model):
    write_sedd(tmp_path / "sedd", source_model)
    model = DiffusionTransformer(ModelConfig(**ARCH)).eval()
    report = load_pretrained(model, str(tmp_path / "sedd"))
    assert report["layout"] == "sedd" and report["new"] == ["prefix_embed"]
    x, sigma = torch.randint(0, 12, (2, 7)), torch.tensor([0.5, 3.0])
    assert torch.allclose(model(x, sigma), source_model(x, sigma), atol=1e-6)
    # stage k > 1 starts from the same network: the new segment embedding is zero
    assert torch.allclose(model(x, sigma, 3), source_model(x, sigma, 3), atol=1e-6)


def test_mdlm_layout_round_trip_follows_time_conditioning(tmp_path, source_model):
    write_mdlm(tmp_path / "mdlm", source_model)
    model = DiffusionTransformer(ModelConfig(**ARCH)).eval()
    assert load_pretrained(model, str(tmp_path / "mdlm"))["layout"] == "mdlm"
    assert model.config.time_conditioning is False  # MDLM-OWT ignores sigma
    x = torch.randint(0, 12, (2, 7))
    zero = torch.zeros(2)
    assert torch.allclose(model(x, torch.tensor([0.5, 3.0])), source_model(x, zero), atol=1e-6)


def test_missing_and_mismatched_keys_are_named(tmp_path, source_model):
    state = published_state(source_model)
    del state["blocks.1.attn_out.weight"]
    state["blocks.0.mlp.0.bias"] = torch.zeros(5)
    write_mdlm(tmp_path / "broken", source_model, state)
    with pytest.raises(ValueError, match=r"blocks\.1\.attn_out\.weight.*blocks\.0\.mlp\.0\.bias: checkpoint \(5,\)"):
        load_pretrained(DiffusionTransformer(ModelConfig(**ARCH)), str(tmp_path / "broken"))


def test_vocabulary_mismatch_is_named(tmp_path, source_model):
    write_sedd(tmp_path / "sedd", source_model)
    other = DiffusionTransformer(ModelConfig(**{**ARCH, "vocab_size": 20}))
    with pytest.raises(ValueError, match="vocab_size checkpoint 13 vs model 20"):
        load_pretrained(other, str(tmp_path / "sedd"))


def test_unknown_layout_is_refused(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "config.json").write_text("{}")
    save_file({"w": torch.zeros(1)}, str(tmp_path / "x" / "model.safetensors"))
    with pytest.raises(ValueError, match="unknown pretrained layout"):
        load_pretrained(DiffusionTransformer(ModelConfig(**ARCH)), str(tmp_path / "x"))


# --- MDLM training checkpoints (the Lightning .ckpt of kuleshov-group/mdlm's main.py) ---------------------------

# MDLM's DIT in module registration order (models/dit.py: vocab_embed, sigma_map, rotary_emb, blocks, output_layer),
# which is the order of its state_dict; its parameters() order is the same less the rotary buffer
MDLM_STATE_ORDER = (
    OTHER_KEYS[:6] + [f"blocks.{i}.{k}" for i in range(ARCH["n_layers"]) for k in BLOCK_KEYS] + OTHER_KEYS[6:]
)
MDLM_PARAM_ORDER = [k for k in MDLM_STATE_ORDER if k != "rotary_emb.inv_freq"]


def mdlm_config(time_conditioning=False):
    """The parts of MDLM's Hydra config (configs/config.yaml + configs/model/*.yaml) a checkpoint carries."""
    return {
        "mode": "train",
        "diffusion": "absorbing_state",
        "backbone": "dit",
        "parameterization": "subs",
        "time_conditioning": time_conditioning,
        "T": 0,
        "subs_masking": False,
        "model": {
            "name": "tiny",
            "type": "ddit",
            "hidden_size": ARCH["dim"],
            "cond_dim": ARCH["cond_dim"],
            "length": 32,
            "n_blocks": ARCH["n_layers"],
            "n_heads": ARCH["n_heads"],
            "scale_by_sigma": True,
            "dropout": 0.1,
            "tie_word_embeddings": False,
        },
        "noise": {"type": "loglinear", "sigma_min": 1e-4, "sigma_max": 20},
        "training": {"ema": 0.9999, "antithetic_sampling": True, "sampling_eps": 1e-3},
    }


def write_ckpt(path, raw_model, ema_model=None, config=None, drop=(), shadow_order=MDLM_PARAM_ORDER):
    """A dict in the layout Lightning's dump_checkpoint + MDLM's Diffusion.on_save_checkpoint produce."""
    published = published_state(raw_model)
    state = {f"backbone.{k}": published[k] for k in MDLM_STATE_ORDER if k not in drop}
    ckpt = {
        "epoch": 0,
        "global_step": 1000,
        "pytorch-lightning_version": "2.2.1",
        "state_dict": state,
        "loops": {},
        "callbacks": {},
        "optimizer_states": [],
        "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": {"config": mdlm_config() if config is None else config, "tokenizer": None},
        "sampler": {"random_state": None},
    }
    if ema_model is not None:
        averaged = published_state(ema_model)
        ckpt["ema"] = {"decay": 0.9999, "num_updates": 1000, "shadow_params": [averaged[k] for k in shadow_order]}
    torch.save(ckpt, path)
    return path


@pytest.fixture
def ema_model():
    """A second set of weights standing for the EMA, different from source_model's raw ones."""
    torch.manual_seed(1)
    model = DiffusionTransformer(ModelConfig(**ARCH))
    for name, p in model.named_parameters():
        if name != "prefix_embed":
            torch.nn.init.normal_(p, std=0.3)
    return model.eval()


def outputs(model, x):
    return model(x, torch.zeros(x.shape[0]))  # MDLM-OWT style: no time conditioning, sigma is replaced by 0


def test_ckpt_loads_the_ema_weights(tmp_path, source_model, ema_model):
    path = write_ckpt(tmp_path / "last.ckpt", source_model, ema_model)
    model = DiffusionTransformer(ModelConfig(**ARCH)).eval()
    report = load_pretrained(model, str(path))
    assert report["layout"] == "mdlm" and report["weights"] == "ema" and report["unpickling"] == "weights_only"
    assert report["new"] == ["prefix_embed"] and report["step"] == 1000
    assert model.config.time_conditioning is False
    x = torch.randint(0, 12, (2, 7))
    got = model(x, torch.tensor([0.5, 3.0]))
    assert torch.allclose(got, outputs(ema_model, x), atol=1e-6)
    assert not torch.allclose(got, outputs(source_model, x), atol=1e-3)
    assert torch.allclose(model(x, None, 3), ema_model(x, None, 3), atol=1e-6)


def test_ckpt_without_ema_or_with_ema_disabled_loads_the_raw_weights(tmp_path, source_model, ema_model):
    x = torch.randint(0, 12, (2, 7))
    config = mdlm_config(time_conditioning=True)
    plain = write_ckpt(tmp_path / "plain.ckpt", source_model, config=config)
    model = DiffusionTransformer(ModelConfig(**{**ARCH, "time_conditioning": False})).eval()
    report = load_pretrained(model, str(plain), "mdlm")
    assert report["weights"] == "raw" and report["ema_available"] is False
    assert model.config.time_conditioning is True  # followed from the checkpoint's config
    sigma = torch.tensor([0.5, 3.0])
    assert torch.allclose(model(x, sigma), source_model(x, sigma), atol=1e-6)

    with_ema = write_ckpt(tmp_path / "with_ema.ckpt", source_model, ema_model)
    model = DiffusionTransformer(ModelConfig(**ARCH)).eval()
    report = load_pretrained(model, str(with_ema), use_ema=False)
    assert report["weights"] == "raw" and report["ema_available"] is True
    assert torch.allclose(outputs(model, x), outputs(source_model, x), atol=1e-6)


def test_ckpt_missing_block_key_is_named_with_the_file(tmp_path, source_model, ema_model):
    path = write_ckpt(tmp_path / "broken.ckpt", source_model, ema_model, drop=("blocks.1.attn_out.weight",))
    with pytest.raises(ValueError, match=re.escape(str(path)) + r".*missing keys \['blocks\.1\.attn_out\.weight'\]"):
        load_pretrained(DiffusionTransformer(ModelConfig(**ARCH)), str(path))


def test_ckpt_shadow_params_of_the_wrong_length_fail(tmp_path, source_model, ema_model):
    path = write_ckpt(tmp_path / "short.ckpt", source_model, ema_model, shadow_order=MDLM_PARAM_ORDER[:-1])
    n = len(MDLM_PARAM_ORDER)
    with pytest.raises(ValueError, match=re.escape(str(path)) + f".*shadow_params has {n - 1} tensors, expected {n}"):
        load_pretrained(DiffusionTransformer(ModelConfig(**ARCH)), str(path))


def test_ckpt_shadow_params_in_another_order_fail(tmp_path, source_model, ema_model):
    path = write_ckpt(tmp_path / "sorted.ckpt", source_model, ema_model, shadow_order=sorted(MDLM_PARAM_ORDER))
    with pytest.raises(
        ValueError,
        match=r"shadow_params do not line up.*shadow_params\[0\] \(96,\) vs "
        r"backbone\.vocab_embed\.embedding \(13, 16\)",
    ):
        load_pretrained(DiffusionTransformer(ModelConfig(**ARCH)), str(path))


def test_ckpt_architecture_mismatch_and_wrong_format_are_refused(tmp_path, source_model):
    path = write_ckpt(tmp_path / "last.ckpt", source_model)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*dim checkpoint 16 vs model 32"):
        load_pretrained(DiffusionTransformer(ModelConfig(**{**ARCH, "dim": 32})), str(path))
    with pytest.raises(ValueError, match="pretrained_format is 'sedd' but a .ckpt file"):
        load_pretrained(DiffusionTransformer(ModelConfig(**ARCH)), str(path), "sedd")
    (tmp_path / "weights.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="not a .ckpt training checkpoint"):
        load_pretrained(DiffusionTransformer(ModelConfig(**ARCH)), str(tmp_path / "weights.pt"))
    with pytest.raises(FileNotFoundError, match="no such .ckpt file"):
        load_pretrained(DiffusionTransformer(ModelConfig(**ARCH)), str(tmp_path / "absent.ckpt"))


def test_ckpt_with_a_pickled_config_object_falls_back_or_names_the_missing_package(
    tmp_path, monkeypatch, source_model, ema_model
):
    """MDLM's hyper_parameters hold objects weights_only=True refuses (OmegaConf's DictConfig); a stand-in
    omegaconf module plays that role, so this runs whether or not omegaconf is installed."""
    stub = types.ModuleType("omegaconf")

    class DictConfig(dict):
        pass

    # pickled by reference as omegaconf.DictConfig, like the real class
    DictConfig.__module__, DictConfig.__qualname__, stub.DictConfig = "omegaconf", "DictConfig", DictConfig
    monkeypatch.setitem(sys.modules, "omegaconf", stub)
    path = write_ckpt(tmp_path / "hydra.ckpt", source_model, ema_model, config=DictConfig(mdlm_config()))
    model = DiffusionTransformer(ModelConfig(**ARCH)).eval()
    report = load_pretrained(model, str(path))
    assert report["unpickling"] == "full" and report["weights"] == "ema"
    x = torch.randint(0, 12, (2, 7))
    assert torch.allclose(outputs(model, x), outputs(ema_model, x), atol=1e-6)

    monkeypatch.setitem(sys.modules, "omegaconf", None)  # now importing omegaconf fails, as when not installed
    with pytest.raises(ModuleNotFoundError, match=re.escape(str(path)) + ".*'omegaconf'.*OmegaConf DictConfig"):
        load_pretrained(DiffusionTransformer(ModelConfig(**ARCH)), str(path))


def test_ckpt_with_a_real_omegaconf_config(tmp_path, source_model, ema_model):
    omegaconf = pytest.importorskip("omegaconf", reason="omegaconf is not installed in this environment")
    config = omegaconf.OmegaConf.create(mdlm_config())
    # MDLM's config has interpolations through resolvers only its main.py registers: they must stay unresolved
    config.loader = {"global_batch_size": 512, "batch_size": "${div_up:${.global_batch_size}, ${device_count:}}"}
    path = write_ckpt(tmp_path / "hydra.ckpt", source_model, ema_model, config=config)
    model = DiffusionTransformer(ModelConfig(**ARCH)).eval()
    report = load_pretrained(model, str(path))
    assert report["unpickling"] == "full" and report["weights"] == "ema"
    x = torch.randint(0, 12, (2, 7))
    assert torch.allclose(outputs(model, x), outputs(ema_model, x), atol=1e-6)
