"""The static shape plan: every tensor of a run, and every reason the reference would fail.

`plan(config, inputs)` works from metadata only (image size, per-speaker audio length, the
run config and the model's sizes) and returns a `ShapePlan`: the ordered list of named
tensors with shapes and dtypes (named like the golden trace points), the streaming clip
schedule, parameter / memory / FLOP estimates, and, when the inputs break a rule of the
reference, `Violation`s carrying the exact message the reference would raise, the reason
in plain words and concrete fixes. It runs in well under a millisecond per call, before
any model is loaded; `mtlib plan` is its command line (`add_arguments_plan`, `run_plan`).

Rules (multitalk-facts §10.5), in the order the reference would trip over them:
  persons_1_or_2, audio_min_duration, para_equal_length, audio_longer_than_frame_num,
  frame_num_4n_plus_1, frame_num_min, bbox_count, motion_frame_below_frame_num,
  motion_frame_4n_plus_1, size_multiple_of_16, rope_positions, teacache_text_scale_one,
  empty_output.
Frame / audio arithmetic comes from mtlib.frames, model geometry and dtypes from mtlib.spec.
Policies (config.generation): frame_num 'auto' | int, short_audio 'pad' | 'snap' | 'error'.

Where it sits: pipeline.generate() calls plan() first and refuses an invalid plan
(`ShapePlan.raise_if_invalid()`); mtlib.media.audio pads each waveform to `pad_to_samples`;
notebooks/02_shape_inspection.ipynb renders it with `plan_table`, `explain` and
`plot_frame_grouping`; mtlib.shapecheck runs the engine and compares every recorded shape
with the plan (tests/test_plan_live.py).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
from dataclasses import dataclass, field
from os import PathLike
from typing import Any

from mtlib.buckets import bucket_table, choose_bucket
from mtlib.extras import require
from mtlib.frames import SAMPLE_RATE as AUDIO_SR
from mtlib.frames import (  # noqa: F401 (audio_padding: re-exported, shapes' public name)
    audio_padding,
    clip_schedule,
    embedding_frames,
    frames_needed,
    is_4n_plus_1,
    is_valid_frame_num,
    latent_frames,
    max_frames_of,
    samples_for_frames,
    snap_frame_num,
    snap_frame_num_up,
    streaming_clip_count,
    video_frames_of,
)
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
    image_stored_size: tuple[int, int] | None = None  # (width, height) before EXIF rotation, if rotated
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
    def from_files(cls, image: str | None, audio: list[str] | tuple[str, ...] | str, **kw: Any) -> PlanInputs:
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
            image_size=size, audio_samples_16k=samples, image_src=image, image_stored_size=stored,
            audio_src=tuple(str(a) for a in audio), **kw,
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
            "rule": self.rule, "values": dict(self.values),
            "reference_message": self.reference_message, "why": self.why, "fixes": list(self.fixes),
        }


@dataclass(frozen=True)
class PolicyAction:
    policy: str  # e.g. "frame_num=auto", "short_audio=pad"
    what: str  # what it did, in words
    changes: dict  # the values it set
    avoided: str | None = None  # the reference error this avoided

    def to_dict(self) -> dict:
        return {"policy": self.policy, "what": self.what, "changes": dict(self.changes), "avoided": self.avoided}


@dataclass(frozen=True)
class PlannedTensor:
    # trace-point name; `*` stands for every step / block / chunk index, `#n` for the n-th
    # repeat of a name (speaker 2's audio points), as in the on-disk trace format
    name: str
    shape: tuple[int, ...]
    dtype: str
    note: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "note": self.note}


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
    parallel: dict = field(default_factory=dict)  # ranks > 1: mtlib.parallel.layout
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


# ------------------------------------------------------------------------------ planning


def _config(config: Any):
    from mtlib.config import ConfigError, RunConfig, load_config

    if isinstance(config, RunConfig):
        return config
    if config is not None and not isinstance(config, str | dict | PathLike):
        raise PlanError(f"config: expected a preset name, a YAML path, a dict or a RunConfig, got {type(config).__name__}.")
    try:
        return load_config(config if config is not None else "tiny")
    except ConfigError as e:
        raise PlanError(str(e)) from None


def _pos_int(v: Any, what: str, allow_zero: bool = False) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < (0 if allow_zero else 1):
        bound = ">= 0" if allow_zero else ">= 1"
        raise PlanError(f"{what}: expected an integer {bound}, got {v!r}.")
    return v


def _check_inputs(inputs: PlanInputs) -> None:
    if inputs.image_size is None and inputs.target_size is None:
        raise PlanError("image: no size given. Fix: pass an image file or PlanInputs(image_size=(w, h)).")
    if inputs.image_size is not None:
        if not isinstance(inputs.image_size, tuple | list) or len(inputs.image_size) != 2:
            raise PlanError(f"image_size: expected (width, height), got {inputs.image_size!r}.")
        for v, n in zip(inputs.image_size, ("width", "height"), strict=True):
            _pos_int(v, f"image {n}")
    if inputs.target_size is not None:
        if not isinstance(inputs.target_size, tuple | list) or len(inputs.target_size) != 2:
            raise PlanError(f"target_size: expected (H, W), got {inputs.target_size!r}.")
        for v, n in zip(inputs.target_size, ("H", "W"), strict=True):
            _pos_int(v, f"target {n}")
    for i, n in enumerate(inputs.audio_samples_16k):
        _pos_int(n, f"audio {i + 1} samples", allow_zero=True)
    if inputs.audio_frames is not None:
        for i, n in enumerate(inputs.audio_frames):
            _pos_int(n, f"audio {i + 1} embedding frames", allow_zero=True)
    elif not isinstance(inputs.audio_samples_16k, tuple | list):
        raise PlanError("audio_samples_16k: expected a tuple of sample counts.")
    if inputs.text_tokens is not None:
        for n in inputs.text_tokens:
            _pos_int(n, "text tokens")
    _check_bbox(inputs.bbox)


def _check_bbox(bbox: Any) -> None:
    if bbox is None:
        return
    ok = isinstance(bbox, tuple | list) and all(
        isinstance(b, tuple | list) and len(b) == 4 and all(isinstance(x, int) and not isinstance(x, bool) for x in b)
        for b in bbox
    )
    if not ok:
        raise PlanError(f"bbox: expected one [row_min, col_min, row_max, col_max] of integers per speaker, got {bbox!r}.")


def plan(config: Any = None, inputs: PlanInputs | None = None, model: str | ModelSizes | None = None) -> ShapePlan:
    """The shape plan of one run from metadata only (see module docstring)."""
    cfg = _config(config)
    m = model_sizes(model if model is not None else cfg.model.name)
    g = cfg.generation
    if inputs is None:
        try:
            inputs = PlanInputs.from_files(cfg.inputs.image, list(cfg.inputs.audio))
        except PlanError:
            raise
        except InputError as e:
            raise PlanError(str(e)) from None
    if not isinstance(inputs, PlanInputs):
        raise PlanError(f"inputs: expected PlanInputs, got {type(inputs).__name__}.")
    _check_inputs(inputs)
    audio_type = inputs.audio_type or cfg.inputs.audio_type
    if audio_type not in ("para", "add"):
        raise PlanError(f"audio_type {audio_type!r}: allowed 'para' or 'add'.")
    bbox = inputs.bbox if inputs.bbox is not None else cfg.inputs.bbox
    _check_bbox(bbox)
    if g.short_audio not in ("pad", "snap", "error"):
        raise PlanError(f"short_audio {g.short_audio!r}: allowed pad, snap or error.")
    if g.mode not in ("clip", "streaming"):
        raise PlanError(f"mode {g.mode!r}: allowed clip or streaming.")
    req = g.frame_num
    if req != "auto":
        _pos_int(req, "frame_num")
    _pos_int(g.motion_frame, "motion_frame")
    _pos_int(g.max_frames_num, "max_frames_num")

    loras = _lora_plan(cfg)  # a LoRA file that does not fit the DiT is refused here
    n_persons = len(inputs.audio_frames) if inputs.audio_frames is not None else len(inputs.audio_samples_16k)
    text_one = math.isclose(g.text_guide_scale, 1.0)
    p = ShapePlan(
        model=m.name, mode=g.mode, size=cfg.model.size, buckets=cfg.model.buckets,
        precision=cfg.model.precision, persons=n_persons, audio_type=audio_type,
        frame_num_requested=req, motion_frame=g.motion_frame, sampling_steps=g.sampling_steps,
        passes_per_step=2 if text_one else 3, loras=loras,
    )
    p.dit_options = _dit_options(cfg)
    if m.name == "tiny":
        p.notes.append("model tiny: the small random-weight test model, not MultiTalk-14B (for the real "
                       "shapes: --config multitalk-480)")
    v = p.violations

    # --- image -> bucket -> latent grid
    if inputs.target_size is not None:
        H, W = int(inputs.target_size[0]), int(inputs.target_size[1])
        p.bucket_key = None
        p.notes.append(f"target size {H}x{W} given directly (the size buckets are bypassed)")
    else:
        src_w, src_h = inputs.image_size
        p.bucket_key, (H, W) = choose_bucket(src_h, src_w, bucket_table(cfg.model.size, cfg.model.buckets))
    if inputs.image_size is not None:
        p.src_hw = (int(inputs.image_size[1]), int(inputs.image_size[0]))
    if inputs.image_stored_size is not None and inputs.target_size is None:
        sw_, sh_ = inputs.image_stored_size
        key, (rh, rw) = choose_bucket(sh_, sw_, bucket_table(cfg.model.size, cfg.model.buckets))
        p.notes.append(
            f"the image carries an EXIF rotation: planned upright (bucket {p.bucket_key}, {H}x{W}); the reference "
            f"opens it without applying EXIF and would see a {sw_}x{sh_} (w x h) image: bucket {key}, {rh}x{rw}"
        )
    p.target_hw = (H, W)
    sh, sw = m.vae_stride[1], m.vae_stride[2]
    lat_h, lat_w = H // sh, W // sw
    p.lat_hw = (lat_h, lat_w)

    # --- persons and audio tracks
    P = n_persons
    if not 1 <= P <= 2:
        v.append(Violation(
            "persons_1_or_2", {"persons": P}, None,
            f"MultiTalk supports one or two speakers (got {P}): its audio attention hard-codes "
            "two L-RoPE position ranges and splits the audio tokens in two halves.",
            ("pass one speech track per visible speaker (1 or 2 files)",),
        ))
        return p
    if inputs.audio_frames is not None:
        tracks: list[int | None] = [None] * P
        frames = [int(x) for x in inputs.audio_frames]
        raw = [None] * P
    else:
        raw = [int(x) for x in inputs.audio_samples_16k]
        if P == 2 and audio_type == "add":
            tracks = [raw[0] + raw[1]] * 2
        else:
            tracks = list(raw)
        frames = [embedding_frames(n) for n in tracks]
        for i, n in enumerate(raw):
            if n < LOUDNESS_BLOCK_S * AUDIO_SR:
                v.append(Violation(
                    "audio_min_duration", {"person": i + 1, "samples_16k": n, "seconds": n / AUDIO_SR},
                    "ValueError: Audio must have length greater than the block size.",
                    f"speaker {i + 1}'s audio is {n / AUDIO_SR:.3f} s; loudness normalisation "
                    f"(BS.1770) needs at least one {LOUDNESS_BLOCK_S} s block.",
                    (f"use at least {LOUDNESS_BLOCK_S} s of speech",),
                ))
        if P == 2 and audio_type == "para" and raw[0] != raw[1]:
            v.append(Violation(
                "para_equal_length", {"samples_16k": raw},
                f"ValueError: operands could not be broadcast together with shapes ({raw[0]},) ({raw[1]},) ",
                "audio_type 'para' (both speak at once) sums the two tracks sample by sample for the "
                f"soundtrack, so they must be equally long; they have {raw[0]} and {raw[1]} samples at 16 kHz.",
                ("trim or pad the two recordings to the same length",
                 "or use audio_type 'add' if they speak one after the other"),
            ))
    p.audio_samples_16k = tuple(n for n in tracks if n is not None)
    p.audio_frames = tuple(frames)
    L_min = min(frames)
    want = video_frames_of(max(tracks)) if tracks[0] is not None else max(frames)
    p.audio_video_frames = want

    # --- frame_num: request, policy, rules (reference order: audio assert, then mask view)
    F0 = req
    if req == "auto":
        if g.mode == "clip":
            F0 = min(snap_frame_num_up(want), CLIP_FRAMES)
            what = f"clip mode: the smallest 4n+1 covering the audio's {want} video frames"
            if snap_frame_num_up(want) > CLIP_FRAMES:
                what = f"clip mode: the audio needs {want} frames, more than one {CLIP_FRAMES}-frame clip; capped at {CLIP_FRAMES} (use mode streaming for all of it)"
        else:
            F0 = CLIP_FRAMES
            what = f"streaming mode: {CLIP_FRAMES} frames per clip (the trained clip length)"
        p.policy_actions.append(PolicyAction("frame_num=auto", what, {"frame_num": F0}))
    F = F0
    frame_ok = is_valid_frame_num(F)
    pad_to: list[int | None] = [None] * P
    eff = list(frames)
    if L_min <= F:
        if frame_ok and g.short_audio == "pad":
            need = frames_needed(F)
            n_pad = samples_for_frames(need)
            for i in range(P):
                if tracks[i] is None:
                    eff[i] = max(eff[i], need)
                else:
                    pad_to[i] = max(n_pad, tracks[i])
                    eff[i] = embedding_frames(pad_to[i])
            secs = n_pad / AUDIO_SR
            p.policy_actions.append(PolicyAction(
                "short_audio=pad",
                f"audio has {L_min} embedding frames, the reference needs more than frame_num {F}: "
                f"silence appended to {n_pad} samples ({secs:.2f} s, {need} frames); the video is "
                f"trimmed back to the real audio ({want} frames)",
                {"pad_to_samples": n_pad, "audio_frames": need},
                avoided=AUDIO_ASSERT,
            ))
        elif frame_ok and g.short_audio == "snap" and _snap_ok(snap_frame_num(L_min - 1), g):
            F = snap_frame_num(L_min - 1)
            p.policy_actions.append(PolicyAction(
                "short_audio=snap",
                f"frame_num {F0} -> {F}: the largest 4n+1 below the audio's {L_min} embedding frames",
                {"frame_num": F}, avoided=AUDIO_ASSERT,
            ))
        else:
            v.append(_audio_violation(F, frames, tracks, g))
    p.frame_num = F
    p.pad_to_samples = tuple(pad_to)
    p.padded_audio_frames = tuple(eff)
    if not frame_ok:
        v.append(_frame_violation(F, lat_h, lat_w, L_min, tracks, want))
    # the person masks (and their bbox assertion) are built per clip, after the frame mask
    if bbox is not None and len(bbox) != P:
        v.append(Violation(
            "bbox_count", {"bbox": len(bbox), "persons": P}, "AssertionError",
            f"{len(bbox)} bounding boxes for {P} speakers: the reference asserts one box per audio track.",
            (f"give exactly {P} boxes, or none (default: left / right halves of the image)",),
        ))
    if g.mode == "streaming" and frame_ok:
        if g.motion_frame >= F:
            v.append(Violation(
                "motion_frame_below_frame_num", {"motion_frame": g.motion_frame, "frame_num": F}, None,
                f"streaming re-uses the last motion_frame={g.motion_frame} frames of a clip to start the "
                f"next one; with frame_num {F} no new frames would be generated (the reference loops "
                "without progress or builds a negative zero-padding).",
                (f"set motion_frame to {snap_frame_num(min(25, F - 1))} (must be 4n+1 and below frame_num)",),
            ))
        if not is_4n_plus_1(g.motion_frame):
            good = snap_frame_num(g.motion_frame)
            v.append(Violation(
                "motion_frame_4n_plus_1", {"motion_frame": g.motion_frame}, None,
                f"motion_frame={g.motion_frame} is not 4n+1: the VAE groups frames 1+4+4+..., so the "
                "motion frames and the zero frames would share a latent frame; the reference does not "
                "fail, it silently conditions on a mix.",
                (f"set motion_frame to {good} or {good + 4}",),
            ))
    if H % 16 or W % 16:
        v.append(Violation(
            "size_multiple_of_16", {"H": H, "W": W}, None,
            f"the VAE divides H and W by 8 and the DiT patches by 2, so both must be multiples of 16 "
            f"(got {H}x{W}); otherwise the latent grid and the patch grid disagree and the Euler update "
            "fails to broadcast (or the VAE latent size drifts from H//8).",
            (f"use {H // 16 * 16}x{W // 16 * 16}, or let the size buckets choose (no explicit target size)",),
        ))
    T = latent_frames(F) if F >= 1 else 0
    nh, nw = lat_h // m.patch[1], lat_w // m.patch[2]
    if frame_ok and (T > ROPE_POSITIONS or nh > ROPE_POSITIONS or nw > ROPE_POSITIONS):
        v.append(Violation(
            "rope_positions", {"T": T, "N_h": nh, "N_w": nw}, None,
            f"the 3-D RoPE tables hold {ROPE_POSITIONS} positions per axis; the token grid "
            f"{T}x{nh}x{nw} exceeds them.",
            ("use fewer frames per clip (mode streaming) or a smaller image size",),
        ))
    if g.teacache and text_one:
        v.append(Violation(
            "teacache_text_scale_one", {"teacache": True, "text_guide_scale": g.text_guide_scale}, None,
            "TeaCache assumes 3 DiT calls per step (cond, drop_text, uncond), each with its own cached "
            "residual; text_guide_scale 1 makes 2 calls per step (cond, drop_audio), and the reference's "
            "mod-3 bookkeeping then mixes the branches' caches (multitalk-facts §3.10). mtlib refuses it "
            "rather than silently dropping TeaCache or copying the mix-up.",
            ("set generation.teacache=false (text_guide_scale 1 already saves a third of the DiT calls)",
             "or set generation.text_guide_scale to a value other than 1 to keep TeaCache"),
        ))
    if v:
        return p

    # --- valid: grid, schedule, tensors, costs
    p.token_grid = (T, nh, nw)
    p.seq_len = T * nh * nw
    _schedule(p, g, F, eff, lat_h, lat_w, m)
    if p.video_frames == 0 and len(p.miss) == 2 and p.miss[0] == 0:
        # reachable with per-person embedding lengths (PlanInputs.audio_frames) that differ,
        # streaming capped by max_frames_num: person 1 needs no tail padding, person 2 does
        v.append(Violation(
            "empty_output", {"miss": list(p.miss), "max_frames_num": g.max_frames_num}, None,
            f"streaming stops at max_frames_num={g.max_frames_num}; person 2's audio is shorter "
            f"and gets {p.miss[1]} frames of tail padding, person 1's none, and the reference "
            "cuts person 1's padding with video[:-0], which is empty: it returns no frames "
            "(mtlib's engine skips a cut of 0 and would keep them).",
            ("give both speakers the same audio length (pad the shorter track with silence)",
             "or raise generation.max_frames_num to cover the longer track"),
        ))
        return p
    if any(a.policy == "short_audio=pad" for a in p.policy_actions):
        p.output_frames = min(p.video_frames, want)
    else:
        p.output_frames = p.video_frames
    if p.output_frames != p.video_frames:
        p.notes.append(f"the video is trimmed from {p.video_frames} to {p.output_frames} frames (real audio length)")
    if inputs.text_tokens is None:
        p.notes.append("T5 context lengths depend on the prompt's token count: not planned")
    _tensors(p, m, H, W, F, T, lat_h, lat_w, P, raw, tracks, pad_to, eff, inputs, g)
    _costs(p, m, P)
    from mtlib.guards import plan_warnings  # frames beyond training, audio the video cuts off

    p.notes += plan_warnings(p, g)
    from mtlib.parallel.layout import plan_parallel, ranks_of

    plan_parallel(p, ranks_of(cfg), m)
    return p


def _lora_plan(cfg: Any) -> list[dict]:
    """model.loras checked against the DiT of model.name from their headers (mtlib.weights.lora):
    raises LoraError for a file that is missing, truncated, of no known format, partly
    matching (unless allowed) or made for another model size."""
    if not getattr(cfg.model, "loras", ()):
        return []
    from mtlib.weights import lora

    shapes = lora.dit_param_shapes(cfg.model.name)
    out = []
    for check in lora.check_loras(cfg.model.loras, shapes, model=cfg.model.name):
        out.append({"path": str(check.spec.path), "scale": check.spec.scale, "format": check.format,
                    "params_touched": len(check.params), "params": check.params,
                    "unmatched": list(check.unmatched), "summary": check.describe()})  # fmt: skip
    return out


def plan_for(config: Any = "tiny", image: str | None = None, audio: list[str] | str | None = None,
             **generation: Any) -> ShapePlan:
    """plan() from file paths / URLs and generation overrides, e.g. in a notebook:
    plan_for("tiny", image="data/portrait.png", audio=["data/a.wav"], frame_num="auto").
    Relative local paths resolve against the project root (notebooks run from notebooks/)."""
    from mtlib.config import ConfigError, load_config
    from mtlib.io import is_remote, resolve_local

    def where(path: str) -> str:
        return path if is_remote(path) else str(resolve_local(path))

    overrides: dict[str, Any] = {f"generation.{k}": v for k, v in generation.items()}
    if image is not None:
        overrides["inputs.image"] = where(str(image))
    if audio is not None:
        overrides["inputs.audio"] = [where(str(a)) for a in ([audio] if isinstance(audio, str) else audio)]
    try:
        cfg = load_config(config, overrides)
    except ConfigError as e:
        raise PlanError(str(e)) from None
    return plan(cfg)


def _snap_ok(F: int, g) -> bool:
    return F >= 5 and (g.mode == "clip" or F > g.motion_frame)


def _audio_violation(F: int, frames: list[int], tracks: list, g) -> Violation:
    L = min(frames)
    need = frames_needed(F)
    n_pad = samples_for_frames(need)
    secs = [None if n is None else round(n / AUDIO_SR, 4) for n in tracks]
    real = f"{tracks[0] / AUDIO_SR:.2f} s" if tracks[0] is not None else f"{L} frames"
    fixes = []
    snapped = snap_frame_num(L - 1) if L >= 2 else 0
    if _snap_ok(snapped, g):
        fixes.append(f"set frame_num to {snapped} (snap: the largest 4n+1 below the audio's {L} frames)")
    fixes.append(
        f"pad the audio to >= {math.ceil(n_pad / AUDIO_SR * 100) / 100:.2f} s ({n_pad} samples at 16 kHz) and "
        f"generate {F} frames, trimmed back to {real} (short_audio=pad)"
    )
    auto_f = snap_frame_num_up(video_frames_of(tracks[0])) if tracks[0] is not None else None
    if auto_f is not None and auto_f < F:
        n_auto = samples_for_frames(frames_needed(auto_f))
        fixes.append(
            f"or frame_num=auto: {auto_f} frames (the smallest 4n+1 covering {real}) from >= "
            f"{math.ceil(n_auto / AUDIO_SR * 100) / 100:.2f} s of padded audio"
        )
    if L - 1 >= 5 and not is_4n_plus_1(L - 1):
        fixes.append(
            f"do NOT clamp frame_num to audio frames - 1 = {L - 1}: that is not 4n+1 and ends in the "
            "frame-mask shape error instead"
        )
    return Violation(
        "audio_longer_than_frame_num",
        {"audio_frames": list(frames), "frame_num": F, "audio_seconds": secs},
        AUDIO_ASSERT,
        f"the reference keeps an audio track only if its embedding has MORE frames than frame_num "
        f"(25 per second: int(seconds*25)); {real} gives {L} frames and {L} <= {F}, so the track is "
        "dropped and the count assertion fires (the message blames a missing file; the audio is "
        "just too short).",
        tuple(fixes),
    )


def _frame_violation(F: int, lat_h: int, lat_w: int, L: int, tracks: list, want: int) -> Violation:
    if not is_4n_plus_1(F):
        msg = f"RuntimeError: shape '[1, {(F + 3) // 4}, 4, {lat_h}, {lat_w}]' is invalid for input of size {(F + 3) * lat_h * lat_w}"
        why = (
            f"frame_num must be 4n+1 (the VAE turns 1+4k pixel frames into 1+k latent frames). "
            f"frame_num {F} is {F % 4} mod 4: the frame mask repeats frame 0 four times "
            f"({F}+3 = {F + 3} frames) and views them in groups of 4 per latent frame at the "
            f"{lat_h}x{lat_w} latent size; {F + 3} is not divisible by 4, so the view fails."
        )
        if F == L - 1:
            why += (
                f" {F} is exactly the audio's {L} frames - 1: something clamped frame_num to the audio "
                "length without snapping it to 4n+1."
            )
        rule = "frame_num_4n_plus_1"
    else:
        msg = None
        why = f"frame_num {F} gives a single latent frame; the reference needs at least 5 frames (2 latent frames)."
        rule = "frame_num_min"
    fixes = []
    down = snap_frame_num(min(F, L - 1)) if L >= 2 else 1
    if down >= 5:
        fixes.append(f"set frame_num to {down} (snap: the largest 4n+1 <= {F} the audio can feed)")
    up = snap_frame_num_up(F)
    need = samples_for_frames(frames_needed(up))
    real = f"{tracks[0] / AUDIO_SR:.2f} s" if tracks and tracks[0] is not None else "the real length"
    if L <= up:
        fixes.append(
            f"pad the audio to >= {math.ceil(need / AUDIO_SR * 100) / 100:.2f} s and generate {up} frames, "
            f"trimmed back to {real} (frame_num=auto, short_audio=pad)"
        )
    else:
        fixes.append(f"set frame_num to {up}")
    return Violation(rule, {"frame_num": F, "lat_h": lat_h, "lat_w": lat_w, "audio_frames": L}, msg, why, tuple(fixes))


def _schedule(p: ShapePlan, g, F: int, eff: list[int], lat_h: int, lat_w: int, m: ModelSpec) -> None:
    """The clip schedule (mtlib.frames.clip_schedule, the engine's too) as ClipPlan records."""
    max_frames = max_frames_of(g.mode, F, g.max_frames_num)
    motion = g.motion_frame
    if max_frames > F:  # streaming: refuse schedules no machine would run (and loops that long)
        n_clips = streaming_clip_count(F, motion, max_frames, eff[0])
        if n_clips > MAX_CLIPS:
            horizon = min(max_frames, eff[0])
            raise PlanError(
                f"streaming would need about {n_clips} clips of {F} frames ({horizon} audio frames, "
                f"max_frames_num {max_frames}); mtlib plans at most {MAX_CLIPS}. Fix: lower "
                "generation.max_frames_num or split the audio."
            )
    sched = clip_schedule(F, motion, max_frames, eff, m.audio_window)
    seq = p.seq_len
    for c in sched.clips:
        p.clips.append(ClipPlan(
            c.index, c.is_first, c.n_cond, c.audio_start, c.audio_end, F, lat_h, lat_w, seq,
            c.kept, c.audio_len, c.window_range,
        ))  # fmt: skip
    miss = sched.miss
    out = sched.video_frames
    if max_frames > F and miss[0] == 0 and sum(miss) > 0:
        out = 0  # the reference cuts person 1's padding with video[:-0]: empty (empty_output rule)
    total = sum(c.kept for c in sched.clips)
    if max_frames > F and sum(miss) > 0 and total > max_frames:
        p.notes.append("the 1000-frame cap and the tail padding both apply: the reference output is shorter than the audio - 3")
    p.miss = miss
    p.video_frames = out


def _dit_options(cfg) -> dict | None:
    """What the loader will build (mtlib.accel.options: one home); a device "auto" plans the GPU for
    the real model. An option the device cannot take is the prepare step's error, not the plan's."""
    from mtlib.accel.options import resolve_dit_options
    from mtlib.config import ConfigError

    dev = cfg.model.device
    cuda = dev.startswith("cuda") or (dev == "auto" and cfg.model.name != "tiny")
    try:
        return resolve_dit_options(cfg, cuda=cuda).to_dict()
    except ConfigError:
        return None


def _dtypes(precision: str) -> dict[str, str]:
    """Planned dtype per tensor kind, from the one precision table (mtlib.spec.PRECISION)."""
    comp = PRECISION["fp32" if precision == "fp32" else "reference"]
    return {"lat": "float32", "img": "float32", "aud": comp["wav2vec2"], "dit": comp["dit"],
            "clip": comp["clip"], "t5": comp["t5"], "vae": comp["vae"]}  # fmt: skip


def _tensors(p, m, H, W, F, T, lat_h, lat_w, P, raw, tracks, pad_to, eff, inputs, g) -> None:
    dt = _dtypes(p.precision)
    out: list[PlannedTensor] = []

    def add(name, shape, kind="lat", note=""):
        out.append(PlannedTensor(name, tuple(int(s) for s in shape), dt.get(kind, kind), note))

    lay, aw = m.audio_layers, m.audio_width
    # audio front-end (golden stage "audio"). The short-audio policy appends its silence
    # AFTER loudness normalisation (and after combining two speakers): raw16k, loudnorm and
    # person1/2/sum keep the real lengths, wav2vec2 sees the padded track.
    if tracks[0] is not None:
        n = [pad_to[i] if pad_to[i] is not None else tracks[i] for i in range(P)]
        w2v = []
        for i in range(P):
            n50 = max(0, (n[i] - 400) // 320 + 1)  # conv feature frames at 50 Hz
            w2v.append([
                ("audio.input_values", (n[i],), "aud", "the 16 kHz track given to wav2vec2" + (" (+ silence)" if pad_to[i] else "")),
                ("audio.w2v.conv_features", (1, m.w2v_conv_dim, n50), "aud", ""),
                ("audio.w2v.interp_features", (1, eff[i], m.w2v_conv_dim), "aud", ""),
                ("audio.w2v.hidden0", (1, eff[i], aw), "aud", ""),
                ("audio.embedding", (eff[i], lay, aw), "aud", ""),
            ])
        if P == 1:
            add("audio.raw16k", (raw[0],), "aud", "librosa.load(sr=16000)")
            add("audio.loudnorm", (raw[0],), "aud")
            for name, shape, kind, note in w2v[0]:
                add(name, shape, kind, note)
        else:
            # a name offered again is `<name>#1` (the trace format): speaker 2's file / person 2
            for i in range(P):
                tag = "" if i == 0 else f"#{i}"
                add(f"audio.raw16k{tag}", (raw[i],), "aud", f"speaker {i + 1}'s file at 16 kHz")
                add(f"audio.loudnorm{tag}", (raw[i],), "aud")
            wide = "float64" if p.audio_type == "add" else dt["aud"]
            add("audio.person1", (tracks[0],), wide)
            add("audio.person2", (tracks[1],), wide)
            add("audio.sum", (max(tracks),), wide, "the soundtrack of the video")
            for i in range(P):
                tag = "" if i == 0 else f"#{i}"
                for name, shape, kind, note in w2v[i]:
                    add(name + tag, shape, kind, note or f"person {i + 1}")
            add("audio.embedding1", (eff[0], lay, aw), "aud", "golden name of person 1's embedding")
            add("audio.embedding2", (eff[1], lay, aw), "aud", "golden name of person 2's embedding")
    b = "b720" if p.size == "multitalk-720" else "b480"
    add(f"image.{b}.cond", (1, 3, 1, H, W), "img", "bucket + resize + centre crop, [-1, 1]")
    add("clip.input", (1, 3, 1, H, W), "img")
    add("clip.pixels", (1, 3, m.clip_image_size, m.clip_image_size), "img")
    add("clip.out", (1, m.clip_tokens, m.clip_dim), "clip", "clip_fea")
    add("ref_target_masks", (3, lat_h, lat_w), "lat", "person 1, person 2, background on the latent grid")
    add("t5.out_full", (2, m.text_len, m.text_dim), "t5", "T5 output with the padding rows")
    add("e2e.t5.call0.ids", (2, m.text_len), "int64", "[prompt, negative prompt]")
    add("e2e.t5.call0.mask", (2, m.text_len), "int64")
    add("e2e.t5.call0.out", (2, m.text_len, m.text_dim), "t5")
    Tm = 1 + (g.motion_frame - 1) // 4
    steps = g.sampling_steps
    lat = (m.z_dim, T, lat_h, lat_w)
    preds = ("cond", "drop_audio") if p.passes_per_step == 2 else ("cond", "drop_text", "uncond")
    for c in p.clips:
        k = f"e2e.clip{c.clip}"
        ncond = c.cur_motion_frames_num
        add(f"{k}.rand.noise", lat, "lat", "torch.randn, fresh per clip")
        add(f"{k}.cond_image", (1, 3, ncond, H, W), "img")
        add(f"{k}.clip_in", (1, 3, 1, H, W), "img")
        add(f"{k}.clip_fea", (1, m.clip_tokens, m.clip_dim), "clip")
        add(f"{k}.vae_latent", (1, m.z_dim, T, lat_h, lat_w), "vae", f"VAE encode of {ncond} cond + {F - ncond} zero frames")
        add(f"{k}.mask", (1, 4, T, lat_h, lat_w), "dit", f"ones for {ncond} frames, frame 0 x4, view(1, {T}, 4, {lat_h}, {lat_w})")
        add(f"{k}.y", (1, 4 + m.z_dim, T, lat_h, lat_w), "dit")
        add(f"{k}.audio", (P, F, m.audio_window, lay, aw), "dit", f"audio frames {c.audio_start_idx}..{c.audio_end_idx - 1} +-2, clamped")
        add(f"{k}.ref_target_masks", (3, lat_h, lat_w), "lat")
        if inputs.text_tokens is not None:
            add(f"{k}.context", (inputs.text_tokens[0], m.text_dim), "t5")
            add(f"{k}.context_null", (inputs.text_tokens[1], m.text_dim), "t5")
        add(f"{k}.timesteps", (steps + 1,), "lat")
        if not c.is_first_clip:
            add(f"{k}.latent_motion_frames", (m.z_dim, Tm, lat_h, lat_w), "vae")
            add(f"{k}.rand.motion_init", (m.z_dim, Tm, lat_h, lat_w), "lat")
            add(f"{k}.add_noise_init.t", (1,), "lat")
            add(f"{k}.add_noise_init.out", (m.z_dim, Tm, lat_h, lat_w), "lat")
        add(f"{k}.step*.t", (1,), "lat")
        add(f"{k}.step*.latent_in", lat, "lat")
        for name in preds:
            add(f"{k}.step*.{name}", lat, "lat", "DiT prediction")
        add(f"{k}.step*.noise_pred", lat, "lat")
        if not c.is_first_clip:
            add(f"{k}.step*.latent_updated", lat, "lat")
            add(f"{k}.rand.motion_step*", (m.z_dim, Tm, lat_h, lat_w), "lat")
            add(f"{k}.add_noise_step*.t", (1,), "lat")
            add(f"{k}.add_noise_step*.out", (m.z_dim, Tm, lat_h, lat_w), "lat")
        add(f"{k}.x0", (1,) + lat, "lat")
        add(f"{k}.decoded", (1, 3, F, H, W), "vae")
        if g.color_correction_strength > 0:  # strength 0 skips the colour matching
            add(f"{k}.color_ref", (1, 3, 1, H, W), "img")
            add(f"{k}.color_corrected", (1, 3, F, H, W), "img")
    # the VAE of every clip (inside e2e.clip<k>.): causal chunks of 1, 4, 4, ... frames
    add("vae.encode.in", (1, 3, F, H, W), "vae", "cond frames + zero frames")
    add("vae.encode.encoder_chunk*", (1, 2 * m.z_dim, 1, lat_h, lat_w), "vae", "mean and log-variance of one latent frame")
    add("vae.y", (1, m.z_dim, T, lat_h, lat_w), "vae")
    add("vae.decode.in", (1, m.z_dim, T, lat_h, lat_w), "vae")
    add("vae.decode.decoder_chunk0", (1, 3, 1, H, W), "vae", "latent frame 0 -> 1 pixel frame")
    add("vae.decode.decoder_chunk*", (1, 3, m.vae_stride[0], H, W), "vae", "later latent frames -> 4 pixel frames each")
    add("vae.decode.out", (1, 3, F, H, W), "vae")
    add("e2e.video", (3, p.video_frames, H, W), "vae", "generate() output")
    add("output.video", (3, p.output_frames, H, W), "vae", "after trimming to the real audio")
    # one DiT call (golden stage "dit"); P is the number of persons of the cond pass
    D, nh, nw = m.dim, lat_h // m.patch[1], lat_w // m.patch[2]
    L, S, hd = p.seq_len, nh * nw, m.head_dim
    add("dit.in.x", lat, "lat")
    add("dit.in.t", (1,), "lat")
    add("dit.in.clip_fea", (1, m.clip_tokens, m.clip_dim), "dit", "CLIP output cast to the DiT dtype")
    add("dit.in.y", (1, 4 + m.z_dim, T, lat_h, lat_w), "dit")
    add("dit.in.audio", (P, F, m.audio_window, lay, aw), "dit", "uncond passes: 1 person of zeros")
    add("dit.in.ref_target_masks", (3, lat_h, lat_w), "lat")
    add("dit.patch_embedding", (1, D, T, nh, nw), "dit")
    add("dit.e", (1, D), "lat")
    add("dit.e0", (1, 6 * D), "lat")
    add("dit.text_embedding", (1, m.text_len, D), "dit")
    add("dit.img_emb", (1, m.clip_tokens, D), "dit")
    add("dit.audio_proj", (P, T, m.context_tokens, m.output_dim), "dit")
    add("dit.audio_embedding", (1, T, m.context_tokens * P, m.output_dim), "dit")
    add("dit.token_ref_target_masks", (3, S), "dit")
    add("dit.seq_len", (), "int64", f"a Python int, not a tensor: seq_len = T*N_h*N_w = {T}*{nh}*{nw} = {L}")
    add("dit.block*.self_attn.q", (1, m.num_heads, L, hd), "lat", "q, k after RoPE (fp32); v alike")
    add("dit.block*.self_attn.k", (1, m.num_heads, L, hd), "lat")
    add("dit.block*.self_attn.v", (1, m.num_heads, L, hd), "dit")
    add("dit.block*.self_attn", (1, L, D), "dit")
    add("dit.block*.self_attn.x_ref_attn_map", (3, L), "dit", f"softmax over the {S} reference-frame keys")
    add("dit.block*.cross_attn.q", (1, m.num_heads, L, hd), "dit")
    add("dit.block*.cross_attn.k", (1, m.num_heads, m.text_len, hd), "dit", "text keys (v alike); summed with the image attention")
    add("dit.block*.cross_attn.k_img", (1, m.num_heads, m.clip_tokens, hd), "dit", "CLIP image keys (v_img alike)")
    add("dit.block*.cross_attn", (1, L, D), "dit")
    add("dit.block*.audio_cross_attn.q", (T, m.num_heads, S, hd), "dit", "one batch item per latent frame")
    add("dit.block*.audio_cross_attn.kv", (T, m.num_heads, m.context_tokens * P, hd), "dit")
    add("dit.block*.audio_cross_attn", (1, L, D), "dit")
    add("dit.block*.out", (1, L, D), "dit")
    add("dit.head", (1, L, m.patch[0] * m.patch[1] * m.patch[2] * m.z_dim), "lat")
    add("dit.out", lat, "lat")
    p.tensors = out


def _pass_flops(m: ModelSizes, T: int, S: int, persons: int) -> dict[str, float]:
    """FLOPs of one DiT forward, 2 per multiply-add. With L = T*S tokens, D width, F_ffn,
    C = 257 + 512 context rows, A = 32*P audio tokens per latent frame, per block:
      linear          2*L*D*(8*D + 2*F_ffn)        self q,k,v,o + cross q,o + audio q,proj + FFN
                    + 2*C*D*2*D + 2*T*A*768*2*D    cross k,v (text + image), audio kv
      self_attention  4*L^2*D                      Q.K^T and A.V over all L keys
      other_attention 2*L*S*D + 4*L*C*D + 4*L*A*D  reference-frame map, cross, audio
    times num_layers, plus patch embedding, head and text embedding (embed_head).
    14B, 448x896, 81 frames (L = 32,928): 0.929 + 0.888 + 0.043 PFLOP per pass."""
    D, Fd, nl = m.dim, m.ffn_dim, m.num_layers
    L = T * S
    ctx = m.clip_tokens + m.text_len
    A = m.context_tokens * persons
    linear_tok = 2 * L * D * (4 * D + 2 * D + 2 * D + 2 * Fd)  # self qkvo, cross q/o, audio q/proj, FFN
    linear_ctx = 2 * ctx * D * 2 * D + 2 * T * A * m.output_dim * 2 * D  # cross k/v (+img), audio kv
    self_attn = 4 * L * L * D
    other_attn = 2 * L * S * D + 4 * L * ctx * D + 4 * L * A * D  # ref map, cross, audio
    pv = m.patch[0] * m.patch[1] * m.patch[2]
    outer = 2 * L * m.in_dim * pv * D + 2 * L * D * pv * m.z_dim + 2 * m.text_len * (m.text_dim * D + D * D)
    return {
        "linear": float(nl * (linear_tok + linear_ctx)),
        "self_attention": float(nl * self_attn),
        "other_attention": float(nl * other_attn),
        "embed_head": float(outer),
    }


def _costs(p: ShapePlan, m: ModelSizes, P: int) -> None:
    T, nh, nw = p.token_grid
    S = nh * nw
    p.params = {"dit": m.dit_params, **dict(m.param_counts)}
    bpp = WEIGHT_BYTES["fp32" if p.precision == "fp32" else "reference"]
    p.weight_bytes = {k: n * bpp[k] for k, n in p.params.items()}
    cond = _pass_flops(m, T, S, P)
    p.flops_per_pass = cond
    per = sum(cond.values())
    null = sum(_pass_flops(m, T, S, 1).values())
    # cond (+ drop_text) passes carry all persons; the uncond / drop_audio pass one zero person
    p.flops_per_step = per * (p.passes_per_step - 1) + null
    L, D = p.seq_len, m.dim
    a = 2 if p.precision != "fp32" else 4
    p.activation_bytes = int(
        L * D * (4 * a + 2 * 4 + 2 * 4)  # x, norm out, v, attn out + fp32 q, k + fp32 residual temps
        + L * m.ffn_dim * a * 2  # FFN hidden + GELU out
        + (m.num_heads // 2) * L * S * a * 2  # x_ref_attn_map chunk: logits + softmax
    )


# ------------------------------------------------------------------------------ rendering


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


def plan_table(plan: ShapePlan, max_rows: int | None = None) -> str:
    """The plan as a plain-text table (no rich / pandas needed), then the diagnosis."""
    head = [
        f"model {plan.model} | mode {plan.mode} | size {plan.size} ({plan.buckets} buckets) | precision {plan.precision}",
        f"image {plan.src_hw[1]}x{plan.src_hw[0]} (w x h)" if plan.src_hw else "image: explicit target size",
    ]
    if plan.target_hw:
        head[-1] += f" -> bucket {plan.bucket_key} {plan.target_hw[0]}x{plan.target_hw[1]} (H x W), latent {plan.lat_hw[0]}x{plan.lat_hw[1]}"
    head.append(
        f"persons {plan.persons} ({plan.audio_type}) | audio frames {list(plan.audio_frames)} "
        f"| frame_num {plan.frame_num_requested} -> {plan.frame_num}"
    )
    if plan.valid:
        head.append(
            f"latent grid T x N_h x N_w = {' x '.join(map(str, plan.token_grid))}, seq_len {plan.seq_len} | "
            f"clips {len(plan.clips)} | video {plan.video_frames} frames -> output {plan.output_frames}"
            f" | {plan.sampling_steps} steps x {plan.passes_per_step} DiT passes"
        )
    for lo in plan.loras:
        head.append(f"LoRA {lo['summary']}")
    if plan.dit_options is not None and plan.valid:  # what would run (an invalid plan runs nothing)
        from mtlib.accel.options import DiTOptions

        o = dict(plan.dit_options)
        o.pop("weight_precisions", None)
        opts = DiTOptions(**{k: tuple(map(tuple, v)) if k == "loras" else (tuple(v) if k == "notes" else v)
                             for k, v in o.items()})  # fmt: skip
        head.append(opts.line())
        head.append("weights: " + "; ".join(f"{k} {v}" for k, v in opts.weight_precisions().items()))
    for a in plan.policy_actions:
        head.append(f"policy {a.policy}: {a.what}")
    for n in plan.notes:
        head.append(f"note: {n}")
    rows = [(t.name, "[" + ", ".join(map(str, t.shape)) + "]", t.dtype) for t in plan.tensors]
    if max_rows is not None and len(rows) > max_rows:
        rows = rows[:max_rows] + [(f"... {len(plan.tensors) - max_rows} more", "", "")]
    body = []
    if rows:
        w0 = max(len(r[0]) for r in rows)
        w1 = max(len(r[1]) for r in rows)
        body.append(f"{'tensor':<{w0}}  {'shape':<{w1}}  dtype")
        body.append("-" * (w0 + w1 + 11))
        body += [f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows]
    if plan.clips and plan.mode == "streaming":
        body.append("")
        body.append(f"{'clip':>4}  {'audio [start, end)':<20}  {'windows read':<14}  {'motion':>6}  {'kept':>4}")
        for c in plan.clips:
            rng = f"[{c.audio_start_idx}, {c.audio_end_idx})"
            win = f"{c.audio_index_range[0]}..{c.audio_index_range[1]}"
            body.append(f"{c.clip:>4}  {rng:<20}  {win:<14}  {c.cur_motion_frames_num:>6}  {c.kept_frames:>4}")
        body.append(f"reflection padding (miss) per person: {list(plan.miss)}")
    if plan.valid and plan.flops_per_step:
        body.append("")
        body.append(
            f"DiT params {plan.params['dit']:,} | weights {sum(plan.weight_bytes.values()) / 1e9:.2f} GB "
            f"| activations/pass ~{plan.activation_bytes / 1e9:.2f} GB | {plan.flops_per_step / 1e15:.3f} PFLOP/step "
            f"({plan.passes_per_step} passes)"
        )
        from mtlib.parallel.layout import parallel_lines

        body += parallel_lines(plan)
    tail = ["VALID" if plan.valid else f"INVALID: {len(plan.violations)} violation(s)"]
    tail += [explain(v) for v in plan.violations]
    sections = [head, body, tail]
    return "\n\n".join("\n".join(x) for x in sections if x)


def plot_frame_grouping(frame_num: int = 13, audio_start: int = 0, audio_frames: int | None = None, ax=None):
    """A matplotlib figure: pixel frames -> latent frames (frame 0 repeated x4, then groups of
    4) and the audio frames feeding each latent frame (latent 0: 5 window slots; latent k >= 1:
    8 slots = audio frames 4k-5 .. 4k+2, clamped to the track)."""
    plt = require("matplotlib.pyplot", "notebooks", "the shape-plan figure")
    from matplotlib.patches import Rectangle

    F = int(frame_num)
    if not is_valid_frame_num(F):
        raise PlanError(f"frame_num {F}: the grouping is defined for 4n+1 >= 5 only (snap: {snap_frame_num_up(F)}).")
    T = latent_frames(F)
    last = audio_frames - 1 if audio_frames else None
    if ax is None:
        fig, ax = plt.subplots(figsize=(min(16, 2 + 0.5 * (F + 3)), 3.6))
    else:
        fig = ax.figure
    colors = plt.get_cmap("tab10")
    # row 2: mask frames (frame 0 x4, then 1..F-1) grouped per latent frame
    seq = [0, 0, 0, 0] + list(range(1, F))
    for i, f in enumerate(seq):
        k = i // 4
        ax.add_patch(Rectangle((i, 2), 0.9, 0.8, color=colors(k % 10), alpha=0.6))
        ax.text(i + 0.45, 2.4, str(f), ha="center", va="center", fontsize=7)
    for k in range(T):
        ax.text(4 * k + 1.8, 3.05, f"latent {k}", ha="center", fontsize=8)
        if k == 0:
            idx = [audio_start + j - 2 for j in range(5)]
        else:
            idx = [audio_start + 4 * k - 5 + j for j in range(8)]
        idx = [max(0, i if last is None else min(i, last)) for i in idx]
        x0 = 4 * k + 2 - len(idx) * 0.25  # centred under the latent frame's 4 mask slots
        for j, a in enumerate(idx):
            ax.add_patch(Rectangle((x0 + j * 0.5, 0.6), 0.45, 0.8, color=colors(k % 10), alpha=0.35))
            ax.text(x0 + j * 0.5 + 0.22, 1.0, str(a), ha="center", va="center", fontsize=6, rotation=90)
    ax.text(-0.5, 2.4, "pixel frame", ha="right", va="center", fontsize=8)
    ax.text(-0.5, 1.0, "audio frames", ha="right", va="center", fontsize=8)
    ax.set_xlim(-6, F + 4)
    ax.set_ylim(0.3, 3.4)
    ax.axis("off")
    ax.set_title(f"frame_num {F}: {F}+3 mask frames -> {T} latent frames of 4; audio windows per latent frame")
    return fig


# ------------------------------------------------------------------------------ CLI


def add_arguments_plan(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", help="reference image (path or URL); only its header is read")
    parser.add_argument("--audio", action="append", default=None, help="speech track (repeat for 2 speakers)")
    parser.add_argument("--frame-num", default=None, help="frames per clip: 4n+1 or 'auto'")
    parser.add_argument("--size", choices=["multitalk-480", "multitalk-720"], default=None)
    parser.add_argument("--buckets", choices=["official", "tiny"], default=None)
    parser.add_argument("--mode", choices=["clip", "streaming"], default=None)
    parser.add_argument("--short-audio", choices=["pad", "snap", "error"], default=None)
    parser.add_argument("--audio-type", choices=["para", "add"], default=None)
    parser.add_argument("--model", choices=sorted(MODEL_SIZES), default=None)
    parser.add_argument("--config", default=None,
                        help="preset name or YAML file (default: multitalk-480, the real model; tiny: the test model)")
    parser.add_argument("--gpus", type=int, default=None, help="ranks of a sequence-parallel run (parallel.gpus)")
    parser.add_argument("--json", action="store_true", help="print ShapePlan.to_dict() as JSON")


def run_plan(args: argparse.Namespace) -> int:
    """Exit 0 for a valid plan, 2 (with the diagnosis) for an invalid one or bad input."""
    import sys

    from mtlib.config import ConfigError, load_config

    overrides: dict[str, Any] = {}
    if args.frame_num is not None:
        fn = args.frame_num
        overrides["generation.frame_num"] = fn if fn == "auto" else _int_arg(fn)
    for key, val in (("model.size", args.size), ("model.buckets", args.buckets),
                     ("generation.mode", args.mode), ("generation.short_audio", args.short_audio),
                     ("inputs.audio_type", args.audio_type), ("model.name", args.model),
                     ("parallel.gpus", args.gpus)):
        if val is not None:
            overrides[key] = val
    if args.image is not None:
        overrides["inputs.image"] = args.image
    if args.audio:
        overrides["inputs.audio"] = list(args.audio)
    try:
        cfg = load_config(args.config or PLAN_DEFAULT_CONFIG, overrides)
        p = plan(cfg)
    except (PlanError, ConfigError, InputError) as e:
        print(f"mtlib plan: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(p.to_json())
    else:
        _print_rich(p)
    return 0 if p.valid else 2


def _int_arg(s: str) -> int | str:
    try:
        return int(s)
    except ValueError:
        return s  # load_config reports it with the allowed values


def _print_rich(p: ShapePlan) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # rich is a dependency, but the plain table is always enough
        print(plan_table(p))
        return
    con = Console(soft_wrap=True)  # long messages stay on one line (copyable, greppable)
    text = plan_table(p).split("\n\n")[0]
    con.print(text, markup=False, highlight=False)
    if p.tensors:
        t = Table(title="planned tensors", show_lines=False)
        t.add_column("tensor")
        t.add_column("shape")
        t.add_column("dtype")
        for x in p.tensors:
            t.add_row(x.name, "[" + ", ".join(map(str, x.shape)) + "]", x.dtype)
        con.print(t)
    if p.valid:
        con.print(f"VALID: seq_len {p.seq_len}, {len(p.clips)} clip(s), {p.output_frames} frames, "
                  f"{p.flops_per_step / 1e15:.3f} PFLOP per step", markup=False, style="bold green")
        from mtlib.parallel.layout import parallel_lines

        for line in parallel_lines(p):
            con.print(line, markup=False, highlight=False)
    else:
        con.print(f"INVALID: {len(p.violations)} violation(s)", style="bold red")
        for v in p.violations:
            con.print(explain(v), markup=False, highlight=False)
