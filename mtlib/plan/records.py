"""The plan's records: `PlanInputs` (what the plan reads from the files), `Violation`,
`PolicyAction`, `PlannedTensor`, `ClipPlan`, `ShapePlan`, `PlanError`; the model sizes;
`explain` (one violation in words).
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from typing import Any

from mtlib.frames import SAMPLE_RATE as AUDIO_SR
from mtlib.io import InputError
from mtlib.spec import DTYPE_BYTES, PRECISION, SPECS, ModelSpec, get_spec

CLIP_FRAMES = 81  # the clip length the model was trained on (frame_num default of the reference)
LOUDNESS_BLOCK_S = 0.4  # pyloudnorm's gating block: shorter audio cannot be measured
ROPE_POSITIONS = 1024  # rows of the reference's 3-D RoPE tables (per axis)
MAX_CLIPS = 100_000  # a plan longer than this is a typo (about 60 days of 25 fps video)
PLAN_DEFAULT_CONFIG = "multitalk-480"  # `mtlib plan` and the plan view plan for the real model
AUDIO_ASSERT = "AssertionError: Aduio file not exists or length not satisfies frame nums."  # (sic)


class PlanError(InputError):
    """Metadata the plan cannot even reason about (negative sizes, unknown policy, ...)."""


# ------------------------------------------------------------------------------ model sizes

# The geometry lives in mtlib.spec (one registry for plan, engine, weights and bench).
ModelSizes = ModelSpec
MODEL_SIZES = SPECS

# Bytes per parameter under each precision policy (multitalk-facts §1.3), from mtlib.spec.PRECISION.
WEIGHT_BYTES = {
    policy: {c: DTYPE_BYTES[d] for c, d in dtypes.items()} for policy, dtypes in PRECISION.items()
}


def model_sizes(model: str | ModelSpec | None) -> ModelSpec:
    try:
        return get_spec(model)
    except ValueError as e:
        raise PlanError(str(e)) from None


# ------------------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class PlanInputs:
    """Metadata of one run's inputs; build it with from_files() or from_metadata()."""

    image_size: tuple[int, int] | None = None  # source (width, height) in pixels
    # Per input speech track: sample count after resampling to 16 kHz (before add/para).
    audio_samples_16k: tuple[int, ...] = ()
    # Instead of samples: embedding frames per person as the reference loads them (.pt files).
    audio_frames: tuple[int, ...] | None = None
    audio_type: str | None = None  # "para" | "add"; None: config.inputs.audio_type
    bbox: tuple[tuple[int, int, int, int], ...] | None = None  # None: config.inputs.bbox
    target_size: tuple[int, int] | None = None  # (H, W) bypassing the buckets (wrappers do this)
    text_tokens: tuple[int, int] | None = None  # T5 lengths of (prompt, negative prompt) if known
    image_stored_size: tuple[int, int] | None = (
        None  # (width, height) before EXIF rotation, if rotated
    )
    image_src: str | None = None  # where the metadata came from (display only)
    audio_src: tuple[str, ...] = ()

    @classmethod
    def from_metadata(
        cls,
        image_size: tuple[int, int] | None = None,
        audio_seconds: list[float] | tuple[float, ...] = (),
        **kw: Any,
    ) -> PlanInputs:
        """From numbers only: image (width, height) and audio durations in seconds."""
        samples = tuple(int(round(float(s) * AUDIO_SR)) for s in audio_seconds)
        return cls(image_size=image_size, audio_samples_16k=samples, **kw)

    @classmethod
    def from_files(
        cls, image: str | None, audio: list[str] | tuple[str, ...] | str, **kw: Any
    ) -> PlanInputs:
        """From file headers (local paths or URLs); no pixels or samples are decoded."""
        from mtlib.media.probe import probe_audio, probe_image

        if isinstance(audio, str):
            audio = [audio]
        size = stored = None
        if image:
            info = probe_image(image)
            size = (info.width, info.height)
            if info.rotated:
                stored = (info.stored_width, info.stored_height)
        samples = tuple(probe_audio(a).samples_16k for a in audio)
        return cls(
            image_size=size,
            audio_samples_16k=samples,
            image_src=image,
            image_stored_size=stored,
            audio_src=tuple(str(a) for a in audio),
            **kw,
        )


# ------------------------------------------------------------------------------ plan records


@dataclass(frozen=True)
class Violation:
    rule: str  # rule id, e.g. "frame_num_4n_plus_1"
    values: dict  # the numbers the rule looked at
    reference_message: str | None  # what the reference raises, verbatim (None: it fails silently)
    why: str  # plain-words explanation
    fixes: tuple[str, ...]  # concrete changes that make the run valid

    def to_dict(self) -> dict:
        return {
            "rule": self.rule,
            "values": dict(self.values),
            "reference_message": self.reference_message,
            "why": self.why,
            "fixes": list(self.fixes),
        }


@dataclass(frozen=True)
class PolicyAction:
    policy: str  # e.g. "frame_num=auto", "short_audio=pad"
    what: str  # what it did, in words
    changes: dict  # the values it set
    avoided: str | None = None  # the reference error this avoided

    def to_dict(self) -> dict:
        return {
            "policy": self.policy,
            "what": self.what,
            "changes": dict(self.changes),
            "avoided": self.avoided,
        }


@dataclass(frozen=True)
class PlannedTensor:
    # trace-point name; `*` stands for every step / block / chunk index, `#n` for the n-th
    # repeat of a name (speaker 2's audio points), as in the on-disk trace format
    name: str
    shape: tuple[int, ...]
    dtype: str
    note: str = ""

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "note": self.note,
        }


@dataclass(frozen=True)
class ClipPlan:
    clip: int
    is_first_clip: bool
    cur_motion_frames_num: int  # conditioning frames (1 = the image; later motion_frame)
    audio_start_idx: int  # audio frames [start, end) feed this clip's video frames
    audio_end_idx: int
    frame_num: int
    lat_h: int
    lat_w: int
    max_seq_len: int
    kept_frames: int  # frames this clip adds to the video (first clip: all)
    audio_len: tuple[int, ...]  # per person embedding length seen by this clip (after padding)
    audio_index_range: tuple[int, int]  # first / last audio frame the +-2 windows read (clamped)

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


@dataclass
class ShapePlan:
    model: str
    mode: str
    size: str
    buckets: str
    precision: str
    persons: int
    audio_type: str
    frame_num_requested: int | str
    frame_num: int | None = None
    motion_frame: int = 25
    sampling_steps: int = 40
    passes_per_step: int = 3
    src_hw: tuple[int, int] | None = None
    bucket_key: str | None = None
    target_hw: tuple[int, int] | None = None
    lat_hw: tuple[int, int] | None = None
    token_grid: tuple[int, int, int] | None = None  # (T, N_h, N_w)
    seq_len: int | None = None
    audio_samples_16k: tuple[int, ...] = ()  # per person track (after add/para), real audio
    audio_frames: tuple[int, ...] = ()  # per person embedding frames, real audio
    pad_to_samples: tuple[int | None, ...] = ()  # per person: pad the 16 kHz track to this length
    padded_audio_frames: tuple[int, ...] = ()  # per person embedding frames after padding
    audio_video_frames: int | None = None  # frames that show the real audio: ceil(N*25/16000)
    clips: list[ClipPlan] = field(default_factory=list)
    miss: tuple[int, ...] = ()  # reflection-padding frames per person at the end (streaming)
    video_frames: int | None = None  # frames generate() returns (golden e2e.video)
    output_frames: int | None = None  # frames after trimming back to the real audio
    tensors: list[PlannedTensor] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    policy_actions: list[PolicyAction] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    params: dict = field(default_factory=dict)  # component -> parameter count
    weight_bytes: dict = field(default_factory=dict)  # component -> bytes under the precision
    activation_bytes: int | None = None  # peak activations of one DiT pass (estimate)
    flops_per_pass: dict = field(default_factory=dict)  # linear / self_attention / other
    flops_per_step: float | None = None
    # LoRA files merged into the DiT at load (model.loras), checked from their headers:
    # {path, scale, format, params_touched, params, unmatched}
    loras: list = field(default_factory=list)
    parallel: dict = field(default_factory=dict)  # ranks > 1: mtlib.plan.parallel
    # the DiT's resolved speed options (mtlib.accel.options.DiTOptions.to_dict()): weights' precision
    # per group, offload, attention kernel, compile, RoPE dtype, LoRAs; None: not resolvable
    dit_options: dict | None = None

    @property
    def valid(self) -> bool:
        return not self.violations

    @property
    def reference_error(self) -> str | None:
        """The first error the reference would raise on these inputs (None: it would run)."""
        for v in self.violations:
            if v.reference_message:
                return v.reference_message
        return None

    def shape_of(self, name: str) -> tuple[int, ...] | None:
        """Planned shape of a concrete trace-point name (entries with `*` match any index)."""
        t = self.tensor(name)
        return None if t is None else t.shape

    def tensor(self, name: str) -> PlannedTensor | None:
        index = self.__dict__.get("_index")
        if index is None:
            index = {t.name: t for t in self.tensors}
            self.__dict__["_index"] = index
        if name in index:
            return index[name]
        for t in self.tensors:
            if "*" in t.name and fnmatch.fnmatchcase(name, t.name):
                return t
        return None

    def raise_if_invalid(self) -> None:
        if self.violations:
            raise PlanError("\n\n".join(explain(v) for v in self.violations))

    def to_dict(self) -> dict:
        out: dict[str, Any] = {}
        for k, v in self.__dict__.items():
            if k.startswith("_"):
                continue
            if isinstance(v, list):
                out[k] = [x.to_dict() if hasattr(x, "to_dict") else x for x in v]
            elif isinstance(v, tuple):
                out[k] = list(v)
            else:
                out[k] = v
        out["valid"] = self.valid
        out["reference_error"] = self.reference_error
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)


def explain(violation: Violation) -> str:
    """A violation as readable text: rule, the reference's message, why, and the fixes."""
    lines = [f"[{violation.rule}]"]
    if violation.reference_message:
        lines.append(f"  the reference raises: {violation.reference_message}")
    else:
        lines.append("  the reference raises nothing here: it fails later or silently")
    lines.append(f"  why: {violation.why}")
    for f in violation.fixes:
        lines.append(f"  fix: {f}")
    return "\n".join(lines)
