"""Run configuration: YAML files and named presets into frozen dataclasses.

A run is described by one `RunConfig` (model, inputs, generation, trace). It comes from a
preset name (`tiny`, `multitalk-480`, `multitalk-720`), a YAML file, or a YAML file that
starts from a preset (`base: tiny`), plus `key.path=value` overrides. Every value is
checked on load: an unknown key, a wrong type or an impossible value raises one
`ConfigError` naming the key path, what is allowed, and what was given. Shape rules that
depend on the inputs (4n+1 frame counts, audio length) are the shape plan's job
(`mtlib.plan`), not this module's.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from mtlib.io import ConfigError, project_root  # noqa: F401 (ConfigError: config's public name)
from mtlib.spec import SPECS

MODEL_NAMES = tuple(SPECS)  # model.name: the spec registry's names (tiny, multitalk-14b)


def _positive(v):  # noqa: D103
    return None if v >= 1 else "must be >= 1"


def _non_negative(v):
    return None if v >= 0 else "must be >= 0"


def _unit_interval(v):
    return None if 0.0 <= v <= 1.0 else "must be between 0 and 1"


def _frame_num(v):
    if v == "auto":
        return None
    return None if v >= 1 else "must be 'auto' or a positive integer (4n+1, e.g. 81)"


def _fps_25(v):
    # wav2vec2 features are cut into 25 fps windows (the audio adapter was trained so) and the
    # soundtrack is muxed at 25 fps: another rate makes lips and sound drift apart
    return (
        None
        if v == 25
        else (
            "must be 25: MultiTalk's audio adapter is trained on 25 video frames per second of "
            "speech, so other rates make lips and sound drift. Fix: keep 25 and resample the video "
            "afterwards (e.g. ffmpeg -i in.mp4 -r 30 out.mp4)"
        )
    )


def _check(fn, help_: str = ""):
    return {"check": fn, "help": help_}


@dataclass(frozen=True)
class WeightsConfig:
    # Directories of the three published checkpoints (None: the hub cache, see mtlib.weights).
    wan_dir: str | None = None  # Wan-AI/Wan2.1-I2V-14B-480P
    multitalk_dir: str | None = None  # MeiGen-AI/MeiGen-MultiTalk
    wav2vec_dir: str | None = None  # TencentGameMate/chinese-wav2vec2-base
    # Tiny random checkpoints (model "tiny"): written here on first use, in the real formats.
    tiny_dir: str | None = None
    tiny_seed: int = 0
    # The real-size architecture with random weights instead of checkpoints (model
    # multitalk-14b): speed runs and notebooks on a GPU without downloads. Every output says
    # so (generate's summary, the video metadata, the run record): the video is noise.
    random: bool = False
    # The reference's quantised checkpoints (optimum-quanto format, read without it):
    # int8 = quant_models/dit_model_int8.safetensors + dit_model_map_int8.json under
    # quant_dir (default: multitalk_dir), or the FusionX-merged one for model.recipe fusionx.
    quant: Literal["none", "int8"] = "none"
    quant_dir: str | None = None


@dataclass(frozen=True)
class OffloadConfig:
    # none: every DiT weight on the GPU. blocks: the 40 transformer blocks live in pinned host
    # memory and stream to the GPU one block ahead of compute (mtlib.accel.offload).
    mode: Literal["none", "blocks"] = "none"
    # With mode blocks: keep this many DiT parameters on the GPU (whole blocks, in order, after
    # the non-block modules), streaming the rest: the reference's --num_persistent_param_in_dit
    # (0 or null: stream every block).
    resident_params: int | None = field(default=None, metadata=_check(_non_negative))


@dataclass(frozen=True)
class LoraConfig:
    """One LoRA file merged into the DiT at load (mtlib.weights.lora; the reference's --lora_dir /
    --lora_scale pair). The scale has no default: the reference's 1.2 surprises."""

    path: str
    scale: float = field(
        metadata={"help": "the LoRA strength, e.g. 1.0 (the reference's --lora_scale)"}
    )
    # a file whose modules match the DiT only partly is refused unless this is true
    allow_unmatched: bool = False


@dataclass(frozen=True)
class ModelConfig:
    name: Literal[MODEL_NAMES] = "tiny"  # a spec of mtlib.spec.SPECS
    # Size key of the reference: picks the bucket table and the default sample shift.
    size: Literal["multitalk-480", "multitalk-720"] = "multitalk-480"
    # Bucket tables: "official" (ASPECT_RATIO_627 / _960) or "tiny" (48..112 px, for CPU).
    buckets: Literal["official", "tiny"] = "official"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # fp32: everything float32 (CPU, golden parity). reference: the official dtype policy
    # (bf16 DiT with fp32 islands, fp16 CLIP, bf16 T5, fp32 VAE and wav2vec2). fp8: reference,
    # plus the DiT blocks' linears and self-attention in float8 on the GPU (faster, changes
    # the output: see mtlib.accel.fp8; CUDA only).
    precision: Literal["fp32", "reference", "fp8"] = "reference"
    # DiT self-attention kernel: sdpa (torch), triton (mtlib's bf16 flash kernel), triton-fp8
    # (e4m3, changes results); auto = triton-fp8 under precision fp8 where the head dim allows,
    # else sdpa. Resolved in one place (mtlib.accel.options), named in the plan and the run record.
    attention: Literal["auto", "sdpa", "triton", "triton-fp8"] = "auto"
    # torch.compile the DiT block body (CUDA only; ignored on the CPU, and the plan says so).
    compile: bool = False
    # 3-D RoPE rotation: float64 (the official complex128 math) or float32 (~1e-7 relative,
    # half the traffic); auto = float32 when compiled, else float64 (the results so far).
    rope_precision: Literal["auto", "float64", "float32"] = "auto"
    offload: OffloadConfig = field(default_factory=OffloadConfig)
    # A published distillation recipe (mtlib.weights.recipes): lightx2v (4 steps) or fusionx (8 steps)
    # need their LoRA in model.loras (or, fusionx, the int8 FusionX checkpoint).
    recipe: Literal["none", "lightx2v", "fusionx"] = "none"
    weights: WeightsConfig = field(default_factory=WeightsConfig)
    # LoRA files merged into the DiT weights at load, in order, each with its scale
    loras: tuple[LoraConfig, ...] = ()


@dataclass(frozen=True)
class InputsConfig:
    image: str = "data/portrait.png"
    audio: tuple[str, ...] = ("data/speech_1p79s.wav",)
    # Two speakers: "para" (simultaneous) or "add" (one after the other).
    audio_type: Literal["para", "add"] = "para"
    # Per person [row_min, col_min, row_max, col_max] in source pixels (the reference's order).
    bbox: tuple[tuple[int, int, int, int], ...] | None = None
    prompt: str = "A person is talking to the camera, close-up shot, natural light."
    negative_prompt: str | None = None  # None: the reference's default negative prompt


def auto_shift(size: str) -> float:
    """generation.shift "auto": the reference's sample_shift per size (7 at 480p, 11 at 720p)."""
    return 11.0 if size == "multitalk-720" else 7.0


@dataclass(frozen=True)
class GenerationConfig:
    mode: Literal["clip", "streaming"] = "clip"
    # Pixel frames per clip; 'auto' derives it from the audio (see short_audio).
    frame_num: int | Literal["auto"] = field(default="auto", metadata=_check(_frame_num))
    # Audio too short for frame_num: pad it with silence (then trim the video back), snap
    # frame_num down to the largest valid 4n+1, or refuse.
    short_audio: Literal["pad", "snap", "error"] = "pad"
    motion_frame: int = field(default=25, metadata=_check(_positive))
    max_frames_num: int = field(default=1000, metadata=_check(_positive))
    sampling_steps: int = field(default=40, metadata=_check(_positive))
    text_guide_scale: float = 5.0
    audio_guide_scale: float = 4.0
    shift: float | Literal["auto"] = "auto"  # auto: 7 at multitalk-480, 11 at multitalk-720
    seed: int = field(default=42, metadata=_check(_non_negative))
    color_correction_strength: float = field(default=1.0, metadata=_check(_unit_interval))
    use_apg: bool = False
    apg_momentum: float = -0.75
    apg_norm_threshold: float = 55.0
    teacache: bool = False
    teacache_thresh: float = field(default=0.2, metadata=_check(_non_negative))
    face_scale: float = field(default=0.05, metadata=_check(_unit_interval))
    # 25 only: the one home of the rule (mtlib.plan.guards is not needed: refused on load)
    fps: int = field(default=25, metadata=_check(_fps_25))
    # Where the random draws come from (mtlib.reference.noise): cpu = one seeded CPU
    # generator in the reference's order; cuda = the reference's own draws on the CUDA
    # generator after torch.manual_seed(seed) (same seed + GPU type -> the Colab's noise);
    # trace = the draws recorded in the trace at noise_trace (any device).
    noise: Literal["cpu", "cuda", "trace"] = "cpu"
    noise_trace: str | None = None

    def __post_init__(self):
        if self.noise == "trace" and not self.noise_trace:
            raise ConfigError(
                "generation.noise: 'trace' needs generation.noise_trace (the path of a trace "
                "holding the draws, e.g. the one `python -m mtlib.reference` wrote)."
            )
        if self.noise_trace and self.noise != "trace":
            raise ConfigError(
                f"generation.noise_trace is set but generation.noise is {self.noise!r}: the trace "
                "would be ignored. Fix: generation.noise=trace, or drop noise_trace."
            )

    def resolved_shift(self, size: str) -> float:
        return float(self.shift) if self.shift != "auto" else auto_shift(size)


@dataclass(frozen=True)
class TraceConfig:
    # off: nothing recorded; stats: shape/dtype/mean/std/absmax/NaN/hash of every point;
    # full: stats + the tensors of the points matching `full` (glob patterns).
    level: Literal["off", "stats", "full"] = "stats"
    full: tuple[str, ...] = ()
    # points recorded at all (globs, last match decides, "!glob" leaves out): the pipeline's
    # points, not the ~55 us/point DiT / VAE internals; points named in `full` always recorded
    include: tuple[str, ...] = (
        "e2e.*", "audio.*", "image.*", "t5.*", "clip.*", "output.*", "!*.dit.*", "!*.vae.*",
    )  # fmt: skip


@dataclass(frozen=True)
class ParallelConfig:
    # Ranks of one run (sequence parallel: the DiT's video tokens split across them, see
    # mtlib.parallel). 1: one device. N > 1 without torchrun: mtlib spawns N processes (GPUs
    # 0..N-1 with NCCL; on the CPU N gloo processes). Under torchrun its --nproc-per-node
    # decides and gpus stays 1 (or equals it). N must divide the DiT's heads (40: 2, 4, 5, 8).
    gpus: int = field(default=1, metadata=_check(_positive))
    # Seconds a collective may wait for the other ranks before the run fails (no hang).
    timeout_s: int = field(default=900, metadata=_check(_positive))


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    inputs: InputsConfig = field(default_factory=InputsConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    trace: TraceConfig = field(default_factory=TraceConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

    def replace(self, **overrides: Any) -> RunConfig:
        """A copy with dotted-path overrides applied: `cfg.replace(**{"generation.seed": 1})`."""
        return from_dict(apply_overrides(to_dict(self), overrides))


# ------------------------------------------------------------------------------ presets

PRESETS: dict[str, dict[str, Any]] = {
    # CPU, random tiny weights written in the real formats, tiny buckets: seconds end to end.
    "tiny": {
        "name": "tiny",
        "model": {"name": "tiny", "buckets": "tiny", "device": "cpu", "precision": "fp32"},
        "generation": {"sampling_steps": 4},
        "trace": {"level": "stats"},
    },
    # Real weights on a GPU with the reference's CLI defaults.
    "multitalk-480": {
        "name": "multitalk-480",
        "model": {"name": "multitalk-14b", "size": "multitalk-480", "device": "cuda"},
        "generation": {"frame_num": 81, "sampling_steps": 40, "shift": 7.0},
        "trace": {"level": "stats"},
    },
    # The README's distillation recipes (text scale 1: 2 DiT passes per step, shift 2, LoRA
    # scale 1.0); the LoRA file is the one required input (mtlib.weights.recipes names its source).
    "multitalk-480-lightx2v": {
        "name": "multitalk-480-lightx2v",
        "model": {
            "name": "multitalk-14b",
            "size": "multitalk-480",
            "device": "cuda",
            "recipe": "lightx2v",
        },
        "generation": {
            "frame_num": 81,
            "sampling_steps": 4,
            "text_guide_scale": 1.0,
            "audio_guide_scale": 2.0,
            "shift": 2.0,
        },
        "trace": {"level": "stats"},
    },
    "multitalk-480-fusionx": {
        "name": "multitalk-480-fusionx",
        "model": {
            "name": "multitalk-14b",
            "size": "multitalk-480",
            "device": "cuda",
            "recipe": "fusionx",
        },
        "generation": {
            "frame_num": 81,
            "sampling_steps": 8,
            "text_guide_scale": 1.0,
            "audio_guide_scale": 2.0,
            "shift": 2.0,
        },
        "trace": {"level": "stats"},
    },
    "multitalk-720": {
        "name": "multitalk-720",
        "model": {"name": "multitalk-14b", "size": "multitalk-720", "device": "cuda"},
        "generation": {"frame_num": 81, "sampling_steps": 40, "shift": 11.0},
        "trace": {"level": "stats"},
    },
}


# ------------------------------------------------------------------------------ loading


def load_config(
    source: str | Path | dict | RunConfig | None = "tiny",
    overrides: dict[str, Any] | list[str] | None = None,
) -> RunConfig:
    """A RunConfig from a preset name, a YAML path, a dict or a RunConfig, plus overrides.

    overrides: {"generation.seed": 3} or ["generation.seed=3", ...] (values parsed as YAML).
    A YAML file may start from a preset with `base: <preset>`.
    """
    where = "config"
    if source is None:
        source = "tiny"
    if isinstance(source, RunConfig):
        data = to_dict(source)
    elif isinstance(source, dict):
        data = dict(source)
    elif isinstance(source, str) and source in PRESETS:
        data = _merge(to_dict(RunConfig()), PRESETS[source])
        where = f"preset {source!r}"
    else:
        path = Path(source)
        if not path.exists() and not path.is_absolute() and (project_root() / path).exists():
            path = project_root() / path
        if not path.exists():
            raise ConfigError(
                f"config {str(source)!r}: no such file and no preset of that name. "
                f"Presets: {', '.join(PRESETS)}."
            )
        where = str(source)
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{where}: not valid YAML ({e}).") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{where}: the top level must be a mapping of keys to values.")
        if not loaded or ("base" not in loaded and "name" not in (loaded.get("model") or {})):
            # defaults would run the tiny model at the official sizes and 40 steps, silently
            raise ConfigError(
                f"{where}: {'the file is empty' if not loaded else 'names no model'}: a config "
                "must start from a preset (`base: tiny`, `base: multitalk-480`, `base: "
                "multitalk-720`) or set model.name. Fix: add `base: tiny` as its first line."
            )
        data = loaded
    base = data.pop("base", None) if isinstance(data, dict) else None
    if base is not None:
        if base not in PRESETS:
            raise ConfigError(
                f"{where}: base: {base!r} is not a preset; allowed: {', '.join(PRESETS)}."
            )
        data = _merge(_merge(to_dict(RunConfig()), PRESETS[base]), data)
    if overrides:
        data = apply_overrides(data, overrides)
    try:
        return from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _override_value(text: str) -> Any:
    """A `-p key=value` value parsed as YAML, except YAML 1.1's yes/no/on/off booleans: only
    true/false are booleans, so `-p trace.level=off` means the string 'off'."""
    value = yaml.safe_load(text)
    if isinstance(value, bool) and text.strip().lower() not in ("true", "false"):
        return text.strip()
    return value


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """["generation.seed=3", ...] -> {"generation.seed": 3, ...}: values parsed as YAML; an item
    without "=" is refused naming it."""
    parsed = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(
                f"override {item!r}: expected key.path=value, e.g. generation.seed=3."
            )
        key, value = item.split("=", 1)
        parsed[key.strip()] = _override_value(value)
    return parsed


def apply_overrides(data: dict, overrides: dict[str, Any] | list[str]) -> dict:
    if isinstance(overrides, list | tuple):
        overrides = parse_overrides(overrides)
    out = _merge({}, data)
    for key, value in overrides.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return out


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def to_dict(cfg: Any) -> Any:
    """Plain dict/list form of a config (tuples become lists), for YAML and JSON."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, tuple | list):
        return [to_dict(v) for v in cfg]
    return cfg


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def from_dict(data: dict, cls: type = RunConfig, path: str = "") -> Any:
    """Build (and validate) a config dataclass from plain data."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {_show(data)}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"{_join(path, key)}: unknown key.{hint} Allowed keys here: {', '.join(fields)}."
            )
    for name, f in fields.items():
        no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if no_default and name not in data:
            help_ = f.metadata.get("help")
            raise ConfigError(
                f"{_join(path, name)}: required, missing.{f' It is {help_}.' if help_ else ''}"
            )
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            continue
        key_path = _join(path, name)
        value = _coerce(data[name], hints[name], key_path)
        check = f.metadata.get("check")
        if check is not None and value is not None:
            problem = check(value)
            if problem:
                raise ConfigError(f"{key_path}: {problem}, got {_show(data[name])}.")
        kwargs[name] = value
    return cls(**kwargs)


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _show(v: Any) -> str:
    return f"{v!r} ({type(v).__name__})"


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "a list"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check `value` against the type hint `tp`; return it in canonical form."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arm in typing.get_args(tp):
            try:
                return _coerce(value, arm, path)
            except ConfigError:
                continue
        raise ConfigError(f"{path}: expected {_describe(tp)}, got {_show(value)}.")
    if origin is Literal:
        if value in typing.get_args(tp) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected {_describe(tp)}, got {_show(value)}.")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path}: expected a list, got {_show(value)}.")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{path}: expected a list of {len(args)} values, got {_show(value)}.")
        return tuple(
            _coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if dataclasses.is_dataclass(tp):
        return from_dict(value, tp, path)
    if tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{path}: expected {_describe(tp)}, got {_show(value)}.")
