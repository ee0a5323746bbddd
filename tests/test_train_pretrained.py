"""Checkpoints written locally in the louaaron/sedd-small and kuleshov-group/mdlm-owt layouts load into the
backbone and reproduce the network's outputs; a missing or mis-shaped key fails naming the key."""
import json

import pytest
import torch
from safetensors.torch import save_file

from train.model import DiffusionTransformer, ModelConfig
from train.pretrained import load_pretrained

torch.set_num_threads(1)
ARCH = dict(vocab_size=13, dim=16, n_layers=2, n_heads=2, cond_dim=8)

# the published key names of one DiT block and the rest of the network (SEDD's model/transformer.py,
# MDLM's models/dit.py), written out by hand rather than derived from train/pretrained.py
BLOCK_KEYS = ["norm1.weight", "attn_qkv.weight", "attn_out.weight", "norm2.weight", "mlp.0.weight", "mlp.0.bias",
              "mlp.2.weight", "mlp.2.bias", "adaLN_modulation.weight", "adaLN_modulation.bias"]
OTHER_KEYS = ["vocab_embed.embedding", "sigma_map.mlp.0.weight", "sigma_map.mlp.0.bias", "sigma_map.mlp.2.weight",
              "sigma_map.mlp.2.bias", "rotary_emb.inv_freq", "output_layer.norm_final.weight",
              "output_layer.linear.weight", "output_layer.linear.bias", "output_layer.adaLN_modulation.weight",
              "output_layer.adaLN_modulation.bias"]


def published_state(model):
    """Our weights under the published names."""
    ours = model.state_dict()
    state = {"vocab_embed.embedding": ours["vocab_embed.weight"],
             "rotary_emb.inv_freq": 1.0 / (10000 ** (torch.arange(0, 8, 2).float() / 8))}
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
    (folder / "config.json").write_text(json.dumps({
        "model": {"name": "small", "type": "ddit", "hidden_size": ARCH["dim"], "cond_dim": ARCH["cond_dim"],
                  "length": 32, "n_blocks": ARCH["n_layers"], "n_heads": ARCH["n_heads"], "scale_by_sigma": True,
                  "dropout": 0.1},
        "graph": {"type": "absorb"}, "noise": {"type": "loglinear"}, "tokens": ARCH["vocab_size"] - 1}))
    torch.save(published_state(model), folder / "pytorch_model.bin")


def write_mdlm(folder, model, state=None):
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "mdlm", "architectures": ["MDLM"], "hidden_dim": ARCH["dim"], "cond_dim": ARCH["cond_dim"],
        "n_blocks": ARCH["n_layers"], "n_heads": ARCH["n_heads"], "vocab_size": ARCH["vocab_size"],
        "model_length": 32, "dropout": 0.1, "time_conditioning": False}))
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
