"""The expected key -> (shape, dtype) map of every network, from the networks themselves
(built on the meta device), so a checkpoint and the code that loads it cannot silently
disagree (`EXPECTED`, `expected_map`, `expected_digest`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from mtlib.spec import WAV2VEC2_CONFIG
from mtlib.weights.files import WeightsError

# ------------------------------------------------------------------------------------------
# Expected state: key -> (shape, dtype or None) per network, from the networks themselves

ExpectedMap = dict[str, tuple[tuple[int, ...], "str | None"]]
NETWORKS = ("dit", "vae", "clip", "t5", "wav2vec2")


def _state_map(module, dtype: str | None = None) -> ExpectedMap:
    return {k: (tuple(v.shape), dtype) for k, v in module.state_dict().items()}


def _expected_dit(name: str) -> ExpectedMap:
    from mtlib.models.dit import build_dit

    return _state_map(build_dit(name, device="meta"))


def _expected_vae(name: str) -> ExpectedMap:
    import torch

    from mtlib.models.vae import CONFIGS, CausalVAE

    with torch.device("meta"):
        return _state_map(CausalVAE(CONFIGS[name]))


def _expected_clip(name: str) -> ExpectedMap:
    from mtlib.models.clip import get_config
    from mtlib.models.official_keys import clip_shapes

    # The .pth holds the whole CLIP (text tower too) and the official load is strict. Written
    # from the config: building the transformers-backed module would import transformers.
    return {k: (s, None) for k, s in clip_shapes(get_config(name)).items()}


def _expected_t5(name: str) -> ExpectedMap:
    from mtlib.models.official_keys import t5_shapes
    from mtlib.models.t5 import get_config

    # the published file is bf16 (its name says so); shapes from the config (no transformers)
    return {k: (s, "BF16") for k, s in t5_shapes(get_config(name)).items()}


# Geometry of the wav2vec2 checkpoints (HF Wav2Vec2Config fields that shape the state dict):
# the spec registry's (mtlib.spec.WAV2VEC2_CONFIG).
WAV2VEC2_GEOMETRY: dict[str, dict[str, Any]] = WAV2VEC2_CONFIG


def _expected_wav2vec2(name: str) -> ExpectedMap:
    """Keys of the published Wav2Vec2ForPreTraining checkpoint (legacy weight_g / weight_v).

    Written out from the geometry instead of instantiating transformers' model: importing
    transformers costs seconds, and this layout (group-norm feature extractor, post-norm
    encoder, no conv bias) is fixed by the checkpoint. tests/test_weights.py checks it
    against transformers-derived key lists (the golden manifest and tiny weights).
    """
    g = WAV2VEC2_GEOMETRY[name]
    h, ffn, conv = g["hidden_size"], g["intermediate_size"], g["conv_dim"]
    groups, per_group = g["num_codevector_groups"], g["num_codevectors_per_group"]
    out: dict[str, tuple[int, ...]] = {"wav2vec2.masked_spec_embed": (h,)}
    fe = "wav2vec2.feature_extractor.conv_layers"
    for i, (c, k) in enumerate(zip(conv, g["conv_kernel"], strict=True)):
        out[f"{fe}.{i}.conv.weight"] = (c, conv[i - 1] if i else 1, k)
        if i == 0 and g["feat_extract_norm"] == "group":  # GroupNorm on the first conv only
            out[f"{fe}.0.layer_norm.weight"] = out[f"{fe}.0.layer_norm.bias"] = (c,)
    fp = "wav2vec2.feature_projection"
    out[f"{fp}.layer_norm.weight"] = out[f"{fp}.layer_norm.bias"] = (conv[-1],)
    out[f"{fp}.projection.weight"], out[f"{fp}.projection.bias"] = (h, conv[-1]), (h,)
    pc, kpos = "wav2vec2.encoder.pos_conv_embed.conv", g["num_conv_pos_embeddings"]
    out[f"{pc}.bias"] = (h,)
    out[f"{pc}.weight_g"] = (1, 1, kpos)  # weight_norm(dim=2)
    out[f"{pc}.weight_v"] = (h, h // g["num_conv_pos_embedding_groups"], kpos)
    out["wav2vec2.encoder.layer_norm.weight"] = out["wav2vec2.encoder.layer_norm.bias"] = (h,)
    for i in range(g["num_hidden_layers"]):
        lp = f"wav2vec2.encoder.layers.{i}"
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            out[f"{lp}.attention.{proj}.weight"], out[f"{lp}.attention.{proj}.bias"] = (h, h), (h,)
        out[f"{lp}.layer_norm.weight"] = out[f"{lp}.layer_norm.bias"] = (h,)
        out[f"{lp}.feed_forward.intermediate_dense.weight"] = (ffn, h)
        out[f"{lp}.feed_forward.intermediate_dense.bias"] = (ffn,)
        out[f"{lp}.feed_forward.output_dense.weight"] = (h, ffn)
        out[f"{lp}.feed_forward.output_dense.bias"] = (h,)
        out[f"{lp}.final_layer_norm.weight"] = out[f"{lp}.final_layer_norm.bias"] = (h,)
    # pre-training heads: in the published file, unused by MultiTalk
    out["quantizer.codevectors"] = (1, groups * per_group, g["codevector_dim"] // groups)
    out["quantizer.weight_proj.weight"] = (groups * per_group, conv[-1])
    out["quantizer.weight_proj.bias"] = (groups * per_group,)
    proj = g["proj_codevector_dim"]
    out["project_hid.weight"], out["project_hid.bias"] = (proj, h), (proj,)
    out["project_q.weight"], out["project_q.bias"] = (proj, g["codevector_dim"]), (proj,)
    return {k: (s, None) for k, s in out.items()}


def _legacy_weight_norm(key: str) -> str:
    return key.replace("parametrizations.weight.original0", "weight_g").replace(
        "parametrizations.weight.original1", "weight_v"
    )


# network -> (config name -> expected map). The lead may repoint entries after merging.
EXPECTED: dict[str, Callable[[str], ExpectedMap]] = {
    "dit": _expected_dit,
    "vae": _expected_vae,
    "clip": _expected_clip,
    "t5": _expected_t5,
    "wav2vec2": _expected_wav2vec2,
}

# Keys a checkpoint may lack without harm (pre-training heads nobody runs).
OPTIONAL_KEYS: dict[str, tuple[str, ...]] = {
    "wav2vec2": ("wav2vec2.masked_spec_embed", "quantizer.*", "project_hid.*", "project_q.*"),
}


def expected_map(network: str, config_name: str) -> ExpectedMap:
    """EXPECTED[network](config_name), with one clear error when the model code is absent."""
    try:
        return EXPECTED[network](config_name)
    except ImportError as e:
        raise WeightsError(
            f"cannot build the expected {network} state: its model module is not importable ({e})."
        ) from None
    except KeyError:
        raise WeightsError(f"{network}: no model config named {config_name!r}.") from None


def expected_maps(config_name: str, networks: Iterable[str] = NETWORKS) -> dict[str, ExpectedMap]:
    return {net: expected_map(net, config_name) for net in networks}


def expected_digest(expected: dict[str, ExpectedMap]) -> str:
    import hashlib

    canon = {
        net: sorted((k, list(s), d) for k, (s, d) in m.items())
        for net, m in sorted(expected.items())
    }
    return hashlib.sha256(json.dumps(canon).encode()).hexdigest()[:16]
