"""Tiny random checkpoints in the exact published file names and formats.

Where it sits: the "tiny" model config runs the whole pipeline on a CPU in seconds. Its
weights are random but are written as the real release is laid out, so the tiny run goes
through the same file discovery, verification (mtlib.weights) and loading code as a real
one:

  <root>/Wan2.1-I2V-14B-480P/   config.json (Wan I2V form, tiny values)
                                diffusion_pytorch_model-0000k-of-0000N.safetensors + index json
                                Wan2.1_VAE.pth, models_clip_...pth, models_t5_umt5-xxl-enc-bf16.pth
                                google/umt5-xxl/mtlib-stand-in-tokenizer.json
  <root>/MeiGen-MultiTalk/      multitalk.safetensors (audio keys) + index json (all keys)
  <root>/chinese-wav2vec2-base/ config.json, preprocessor_config.json, model.safetensors
                                (HF Wav2Vec2ForPreTraining layout, legacy weight_g / weight_v)

The real umT5 tokenizer cannot be shipped with random weights; google/umt5-xxl/ holds only
a marker telling the text encoder to use mtlib.models.t5.StandInTokenizer (see
WeightsLayout.t5_tokenizer). xlm-roberta-large/ is not written (optional, official code only).

Keys and shapes come from `expected` (per network, key -> (shape, dtype)), by default the
networks themselves on the meta device (mtlib.weights.EXPECTED). Values are seeded draws
following the golden set's rules (weights ~ N(0, 1/fan_in), norm gains ~ 1 + N(0, 0.1),
biases ~ N(0, 0.05), modulation and CLIP embeddings ~ N(0, 1/dim), T5 token embedding
~ N(0, 1), T5 relative-position table ~ N(0, 0.5)), not the modules' own init, which zeroes
some layers. The set is written atomically and only once per (seed, expected maps).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import torch

from mtlib import weights as W
from mtlib.io import atomic_write
from mtlib.weights.verify import _count_layers, _wav2vec_geometry

STAMP = ".mtlib-tiny-stamp.json"  # in <root>, next to (not inside) the checkpoint folders
FORMAT_VERSION = 1
TINY_DIT_SHARDS = 2  # the real Wan has 7; two are enough to exercise the sharded path

# Wan I2V config.json form with the tiny DiT's values (dims are re-derived from the keys;
# the others cannot be read off shapes). mtlib's own copy (golden README section 3.1).
TINY_DIT_CONFIG_JSON = {
    "_class_name": "WanModel", "_diffusers_version": "0.30.0", "dim": 64, "eps": 1e-06,
    "ffn_dim": 96, "freq_dim": 256, "in_dim": 36, "model_type": "i2v", "num_heads": 4,
    "num_layers": 2, "out_dim": 16, "text_len": 512, "text_dim": 32, "audio_window": 5,
    "intermediate_dim": 24, "output_dim": 40, "context_tokens": 6, "vae_scale": 4,
    "norm_input_visual": True, "norm_output_audio": True,
}  # fmt: skip

# chinese-wav2vec2-base geometry scaled down (golden README section 3.6); HF config.json form.
TINY_WAV2VEC2_CONFIG = {
    "model_type": "wav2vec2", "architectures": ["Wav2Vec2ForPreTraining"],
    **W.WAV2VEC2_GEOMETRY["tiny"],
    "num_feat_extract_layers": 7, "feat_extract_activation": "gelu", "hidden_act": "gelu",
    "layer_norm_eps": 1e-05, "hidden_dropout": 0.1, "activation_dropout": 0.0,
    "attention_dropout": 0.1, "feat_proj_dropout": 0.1, "final_dropout": 0.0, "layerdrop": 0.0,
    "apply_spec_augment": True, "mask_time_prob": 0.05, "mask_time_length": 10,
    "mask_feature_prob": 0.0, "vocab_size": 32, "pad_token_id": 0, "bos_token_id": 1,
    "eos_token_id": 2, "use_weighted_layer_sum": False,
}  # fmt: skip
TINY_WAV2VEC2_PREPROCESSOR = {
    "do_normalize": True, "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1,
    "padding_side": "right", "padding_value": 0.0, "return_attention_mask": False,
    "sampling_rate": 16000,
}  # fmt: skip
STAND_IN_MARKER_CONTENT = {
    "tokenizer": "stand-in",
    "why": "tiny random checkpoints written by mtlib.weights.tiny: the real umT5 tokenizer "
    "(google/umt5-xxl) cannot be shipped with them. mtlib's text encoder uses "
    "mtlib.models.t5.StandInTokenizer (whitespace words -> ids in the tiny vocabulary) "
    "when this file is present.",
}

_TORCH_DTYPES = {
    "F32": torch.float32,
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F64": torch.float64,
}


# ------------------------------------------------------------------------------------------
# Values


def init_tensor(key: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """One float32 tensor drawn by the golden set's rule for this key name."""
    shape = tuple(shape)
    z = torch.randn(shape, generator=gen, dtype=torch.float32)
    last = key.rsplit(".", 1)[-1]
    dim = shape[-1] if shape else 1
    lower = key.lower()
    if "token_embedding" in key and not key.startswith("visual."):
        return z  # T5 / XLM-R token table ~ N(0, 1)
    if key.endswith("pos_embedding.embedding.weight"):
        return z * 0.5  # T5 relative-position buckets
    if last in ("cls_embedding", "pos_embedding", "modulation"):
        return z / math.sqrt(dim)
    if last == "weight_g":
        return 1.0 + 0.1 * z
    if (last in ("weight", "gamma") and "norm" in lower and len(shape) <= 1) or last == "gamma":
        return 1.0 + 0.1 * z
    if last == "bias" or len(shape) <= 1:
        return 0.05 * z
    fan_in = math.prod(shape[1:])
    return z / math.sqrt(fan_in)


def random_state(expected: W.ExpectedMap, gen: torch.Generator) -> dict[str, torch.Tensor]:
    out = {}
    for key, (shape, dtype) in expected.items():
        t = init_tensor(key, shape, gen)
        out[key] = t.to(_TORCH_DTYPES.get(dtype or "F32", torch.float32)).contiguous()
    return out


# ------------------------------------------------------------------------------------------
# Writers


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def _dit_config(expected: W.ExpectedMap) -> dict:
    cfg = dict(TINY_DIT_CONFIG_JSON)
    pe = expected.get("patch_embedding.weight")
    if pe is not None:
        cfg["dim"], cfg["in_dim"] = pe[0][0], pe[0][1]
    ffn = expected.get("blocks.0.ffn.0.weight")
    if ffn is not None:
        cfg["ffn_dim"] = ffn[0][0]
    layers = _count_layers(expected, "blocks.")
    if layers:
        cfg["num_layers"] = layers
    head = expected.get("head.head.weight")
    if head is not None:
        cfg["out_dim"] = head[0][0] // 4  # patch (1, 2, 2)
    return cfg


def _write_dit(
    wan: Path, mt: Path, expected: W.ExpectedMap, gen: torch.Generator, shards: int
) -> None:
    from safetensors.torch import save_file

    state = random_state(expected, gen)
    base = [k for k in state if not W.AUDIO_KEY_RE.match(k)]
    audio = [k for k in state if W.AUDIO_KEY_RE.match(k)]
    shards = max(1, min(shards, len(base)))
    per = math.ceil(len(base) / shards)
    wan_map: dict[str, str] = {}
    total = 0
    for i in range(shards):
        keys = base[i * per : (i + 1) * per]
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: state[k] for k in keys}, str(wan / name), metadata={"format": "pt"})
        wan_map.update({k: name for k in keys})
        total += sum(state[k].numel() * state[k].element_size() for k in keys)
    save_file({k: state[k] for k in audio}, str(mt / W.MULTITALK_FILE), metadata={"format": "pt"})
    audio_bytes = sum(state[k].numel() * state[k].element_size() for k in audio)
    _write_json(wan / W.DIT_INDEX, {"metadata": {"total_size": total}, "weight_map": wan_map})
    mt_map = {**wan_map, **{k: W.MULTITALK_FILE for k in audio}}
    _write_json(
        mt / W.DIT_INDEX, {"metadata": {"total_size": total + audio_bytes}, "weight_map": mt_map}
    )
    _write_json(wan / "config.json", _dit_config(expected))


def _wav2vec_config(expected: W.ExpectedMap) -> dict:
    cfg = dict(TINY_WAV2VEC2_CONFIG)
    layers, width = _wav2vec_geometry(expected)
    if layers:
        cfg["num_hidden_layers"] = layers
    if width:
        cfg["hidden_size"] = width
    ffn = expected.get("wav2vec2.encoder.layers.0.feed_forward.intermediate_dense.weight")
    if ffn is not None:
        cfg["intermediate_size"] = ffn[0][0]
    convs = [
        expected.get(f"wav2vec2.feature_extractor.conv_layers.{i}.conv.weight") for i in range(7)
    ]
    if all(c is not None for c in convs):
        cfg["conv_dim"] = [c[0][0] for c in convs]
    return cfg


def _write_tree(tmp: Path, expected: dict[str, W.ExpectedMap], seed: int) -> None:
    from safetensors.torch import save_file

    gen = torch.Generator(device="cpu").manual_seed(seed)
    wan, mt, a2v = tmp / W.WAN_FOLDER, tmp / W.MULTITALK_FOLDER, tmp / W.WAV2VEC_FOLDER
    for d in (wan, mt, a2v, wan / W.T5_TOKENIZER_DIR):
        d.mkdir(parents=True, exist_ok=True)
    _write_dit(wan, mt, expected["dit"], gen, TINY_DIT_SHARDS)
    for net, name in (("vae", W.VAE_FILE), ("clip", W.CLIP_FILE), ("t5", W.T5_FILE)):
        torch.save(random_state(expected[net], gen), str(wan / name))
    _write_json(wan / W.T5_TOKENIZER_DIR / W.STAND_IN_TOKENIZER_MARKER, STAND_IN_MARKER_CONTENT)
    save_file(
        random_state(expected["wav2vec2"], gen),
        str(a2v / "model.safetensors"),
        metadata={"format": "pt"},
    )
    _write_json(a2v / "config.json", _wav2vec_config(expected["wav2vec2"]))
    _write_json(a2v / "preprocessor_config.json", TINY_WAV2VEC2_PREPROCESSOR)
    for p in tmp.rglob("*"):  # safetensors and mkstemp create 0600 files; these are shareable
        p.chmod(0o755 if p.is_dir() else 0o644)


def _stamp(seed: int, expected: dict[str, W.ExpectedMap]) -> dict:
    return {"format": FORMAT_VERSION, "seed": seed, "expected": W.expected_digest(expected)}


def _file_sizes(root: Path) -> dict[str, int]:
    """Size of every file of the set: a file cut short or replaced is noticed on the next call."""
    folders = (W.WAN_FOLDER, W.MULTITALK_FOLDER, W.WAV2VEC_FOLDER)
    return {
        str(p.relative_to(root)): p.stat().st_size
        for f in folders
        for p in sorted((root / f).rglob("*"))
        if p.is_file()
    }


def tiny_layout(root: str | os.PathLike) -> W.WeightsLayout:
    root = Path(root)
    return W.WeightsLayout(
        root / W.WAN_FOLDER, root / W.MULTITALK_FOLDER, root / W.WAV2VEC_FOLDER, "tiny"
    )


def write_tiny_checkpoints(
    root: str | os.PathLike,
    seed: int = 0,
    expected: dict[str, W.ExpectedMap] | None = None,
) -> W.WeightsLayout:
    """Write (once) the tiny random checkpoints under `root`; return their layout.

    Skips the work when `root` already holds a complete set for this seed and these
    expected maps (stamp file). Otherwise the three folders are built in a temporary folder
    inside `root` and renamed into place; the stamp is written last, so an interrupted
    write is redone next time. Folders of the same names that mtlib did not write are never
    replaced.
    """
    root = Path(root).expanduser()
    if expected is None:
        expected = W.expected_maps("tiny")
    missing_nets = [n for n in W.NETWORKS if n not in expected]
    if missing_nets:
        raise ValueError(
            f"write_tiny_checkpoints: expected maps lack {missing_nets}; give all of {W.NETWORKS}."
        )
    stamp = _stamp(seed, expected)
    layout = tiny_layout(root)
    stamp_path = root / STAMP
    old_stamp = None
    if stamp_path.exists():
        try:
            old_stamp = json.loads(stamp_path.read_text())
        except ValueError:
            old_stamp = {}
    if old_stamp is not None and {k: v for k, v in old_stamp.items() if k != "files"} == stamp:
        if old_stamp.get("files") == _file_sizes(root):
            return layout
    folders = (W.WAN_FOLDER, W.MULTITALK_FOLDER, W.WAV2VEC_FOLDER)
    if old_stamp is None:
        foreign = [f for f in folders if (root / f).exists()]
        if foreign:
            raise W.WeightsError(
                f"{root}: already holds {', '.join(foreign)} not written by mtlib (no {STAMP}); "
                "refusing to overwrite what may be real checkpoints. Fix: choose an empty folder "
                "for the tiny weights (model.weights.tiny_dir)."
            )
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-tmp-", dir=root))
    try:
        _write_tree(tmp / "new", expected, seed)
        # From here until the final stamp the folders are mtlib's but incomplete: a crash in
        # between leads to a rewrite next time (never to "not written by mtlib").
        atomic_write(stamp_path, json.dumps({"format": FORMAT_VERSION, "writing": True}) + "\n")
        (tmp / "old").mkdir()
        for f in folders:
            if (root / f).exists():
                os.replace(root / f, tmp / "old" / f)
            os.replace(tmp / "new" / f, root / f)
        atomic_write(stamp_path, json.dumps({**stamp, "files": _file_sizes(root)}, indent=1) + "\n")
        stamp_path.chmod(0o644)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return layout
