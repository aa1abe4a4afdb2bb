"""Building (`build_dit`) and loading (`load_dit`) the DiT from the official checkpoint files:
Wan shards first, multitalk.safetensors on top; keys checked against the model's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from mtlib.finite import check_state_finite
from mtlib.models.checkpoint import CheckpointError, pick_config, state_diff
from mtlib.models.dit.config import CONFIGS, PRECISION_DTYPES, DiTConfig, Precision
from mtlib.models.dit.model import MultiTalkDiT


def build_dit(
    config: DiTConfig | str = "multitalk-14b",
    device: str | torch.device = "meta",
    dtype: torch.dtype = torch.float32,
) -> MultiTalkDiT:
    """An uninitialised model (meta device by default: no memory until weights are assigned)."""
    cfg = pick_config(config, CONFIGS, "DiT")
    with torch.device(device):
        model = MultiTalkDiT(cfg)
    return model.to(dtype) if dtype != torch.float32 else model


WAN_SHARD_GLOB = "diffusion_pytorch_model*.safetensors"
MULTITALK_FILE = "multitalk.safetensors"


def _collect_sources(sources) -> tuple[list[Path], dict | None]:
    """Checkpoint files in load order (Wan shards first, multitalk.safetensors on top) and the
    first config.json found in a source directory."""
    if isinstance(sources, (str, Path)):
        sources = [sources]
    shards: list[Path] = []
    adapters: list[Path] = []
    config_json = None
    for src in sources:
        p = Path(src)
        if p.is_dir():
            found = sorted(p.glob(WAN_SHARD_GLOB))
            if (p / MULTITALK_FILE).is_file():
                adapters.append(p / MULTITALK_FILE)
            if not found and not (p / MULTITALK_FILE).is_file():
                raise CheckpointError(
                    f"DiT checkpoint directory {p} holds no {WAN_SHARD_GLOB} and no {MULTITALK_FILE}; "
                    "pass the Wan2.1-I2V-14B directory and/or the MeiGen-MultiTalk directory"
                )
            shards.extend(found)
            if config_json is None and (p / "config.json").is_file():
                config_json = json.loads((p / "config.json").read_text())
        elif p.is_file() and p.suffix == ".safetensors":
            (adapters if p.name == MULTITALK_FILE else shards).append(p)
        else:
            raise CheckpointError(
                f"DiT checkpoint source {p}: not a directory or an existing .safetensors file"
            )
    return shards + adapters, config_json


def _is_audio_key(key: str) -> bool:
    return key.startswith("audio_proj.") or ".audio_cross_attn." in key or ".norm_x." in key


def check_checkpoint_keys(
    expected: dict[str, tuple], found: dict[str, tuple], cfg: DiTConfig
) -> None:
    """Raise one CheckpointError naming missing / unexpected / mis-shaped keys (or the wrong
    model) before any tensor is read."""
    pe = found.get("patch_embedding.weight")
    if pe is not None and len(pe) == 5 and pe[1] != cfg.in_dim:
        kind = "a text-to-video Wan DiT" if pe[1] == 16 else "not an image-to-video Wan DiT"
        raise CheckpointError(
            f"this is {kind} (in_dim {pe[1]}: patch_embedding.weight {list(pe)}); "
            f"MultiTalk needs the I2V-14B checkpoint (in_dim {cfg.in_dim})"
        )
    diff = state_diff(expected, found)
    audio_expected = [k for k in expected if _is_audio_key(k)]
    if (
        audio_expected
        and set(audio_expected) <= set(diff.missing)
        and len(diff.missing) < len(expected)
    ):
        raise CheckpointError(
            f"the MultiTalk audio adapter is missing ({len(audio_expected)} keys, e.g. {audio_expected[0]}): "
            f"{MULTITALK_FILE} not found/loaded; pass it (or the MeiGen-MultiTalk directory) with the Wan shards"
        )
    if diff:
        raise CheckpointError(f"DiT checkpoint does not match the config: {diff.describe()}")


def load_dit(
    sources: str | Path | Sequence[str | Path],
    config: DiTConfig | str | None = None,
    device: str | torch.device = "cpu",
    precision: Precision = "fp32",
) -> MultiTalkDiT:
    """Load the DiT from Wan shards (+ multitalk.safetensors) without copying any file.

    sources: a directory (config.json + diffusion_pytorch_model*.safetensors, optionally
    multitalk.safetensors), several directories (e.g. the Wan dir and the MeiGen-MultiTalk
    dir), or a list of .safetensors files. Tensors are the union of all files, the
    multitalk file on top, so no index.json swap or symlinks are needed. config: a DiTConfig
    or a CONFIGS name; None reads config.json like WanModel.from_pretrained (text_dim etc.
    keep their defaults, see DiTConfig.from_config_json).
    """
    from safetensors import safe_open

    if precision not in PRECISION_DTYPES:
        raise ValueError(f"precision must be one of {sorted(PRECISION_DTYPES)}, got {precision!r}")
    files, config_json = _collect_sources(sources)
    if config is None:
        if config_json is None:
            raise CheckpointError(
                "no config.json among the DiT sources: pass config= (a DiTConfig or a CONFIGS name)"
            )
        config = DiTConfig.from_config_json(config_json)
    else:
        config = pick_config(config, CONFIGS, "DiT")

    model = build_dit(config, device="meta")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    where: dict[str, Path] = {}
    found: dict[str, tuple] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as h:
            for k in h.keys():
                where[k] = f
                found[k] = tuple(h.get_slice(k).get_shape())
    check_checkpoint_keys(expected, found, config)

    dtype = PRECISION_DTYPES[precision]
    state: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list[str]] = {}
    for k, f in where.items():
        by_file.setdefault(f, []).append(k)
    for f, keys in by_file.items():
        with safe_open(str(f), framework="pt") as h:
            for k in keys:
                state[k] = h.get_tensor(k).to(device=device, dtype=dtype)
        check_state_finite({k: state[k] for k in keys}, "DiT", repr(str(f)))
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)
