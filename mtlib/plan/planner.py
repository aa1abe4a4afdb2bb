"""The static shape plan: every tensor of a run, and every reason the reference would fail.

`plan(config, inputs)` works from metadata only (image size, per-speaker audio length, the
run config and the model's sizes) and returns a `ShapePlan`: the ordered list of named
tensors with shapes and dtypes (named like the golden trace points), the streaming clip
schedule, parameter / memory / FLOP estimates, and, when the inputs break a rule of the
reference, `Violation`s carrying the exact message the reference would raise, the reason
in plain words and concrete fixes. It runs in well under a millisecond per call, before
any model is loaded; `mtlib plan` is its command line (mtlib/cli/plan.py).

Rules (multitalk-facts §10.5), in the order the reference would trip over them:
  persons_1_or_2, audio_min_duration, para_equal_length, audio_longer_than_frame_num,
  frame_num_4n_plus_1, frame_num_min, bbox_count, motion_frame_below_frame_num,
  motion_frame_4n_plus_1, size_multiple_of_16, rope_positions, teacache_text_scale_one,
  empty_output.
Frame / audio arithmetic comes from mtlib.frames, model geometry and dtypes from mtlib.spec.
Policies (config.generation): frame_num 'auto' | int, short_audio 'pad' | 'snap' | 'error'.

Where it sits: run.prepare.prepare_run() calls plan() first and refuses an invalid plan
(`ShapePlan.raise_if_invalid()`); mtlib.media.audio pads each waveform to `pad_to_samples`;
notebooks/02_shape_inspection.ipynb renders it with `plan_table`, `explain` and
`plot_frame_grouping`; mtlib.inspect.shapecheck runs the engine and compares every recorded shape
with the plan (tests/test_plan_live.py).
"""

from __future__ import annotations

import math
from os import PathLike
from typing import Any

from mtlib.buckets import bucket_table, choose_bucket
from mtlib.frames import SAMPLE_RATE as AUDIO_SR
from mtlib.frames import (
    embedding_frames,
    frames_needed,
    is_4n_plus_1,
    is_valid_frame_num,
    latent_frames,
    samples_for_frames,
    snap_frame_num,
    snap_frame_num_up,
    video_frames_of,
)
from mtlib.io import InputError
from mtlib.plan.costs import _costs
from mtlib.plan.records import (
    AUDIO_ASSERT,
    CLIP_FRAMES,
    LOUDNESS_BLOCK_S,
    ROPE_POSITIONS,
    ModelSizes,
    PlanError,
    PlanInputs,
    PolicyAction,
    ShapePlan,
    Violation,
    model_sizes,
)
from mtlib.plan.tensors import _dit_options, _schedule, _tensors
from mtlib.plan.violations import _audio_violation, _frame_violation, _snap_ok


def _config(config: Any):
    from mtlib.config import ConfigError, RunConfig, load_config

    if isinstance(config, RunConfig):
        return config
    if config is not None and not isinstance(config, str | dict | PathLike):
        raise PlanError(
            f"config: expected a preset name, a YAML path, a dict or a RunConfig, got {type(config).__name__}."
        )
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
        raise PlanError(
            "image: no size given. Fix: pass an image file or PlanInputs(image_size=(w, h))."
        )
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
        isinstance(b, tuple | list)
        and len(b) == 4
        and all(isinstance(x, int) and not isinstance(x, bool) for x in b)
        for b in bbox
    )
    if not ok:
        raise PlanError(
            f"bbox: expected one [row_min, col_min, row_max, col_max] of integers per speaker, got {bbox!r}."
        )


def plan(
    config: Any = None, inputs: PlanInputs | None = None, model: str | ModelSizes | None = None
) -> ShapePlan:
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
    n_persons = (
        len(inputs.audio_frames)
        if inputs.audio_frames is not None
        else len(inputs.audio_samples_16k)
    )
    text_one = math.isclose(g.text_guide_scale, 1.0)
    p = ShapePlan(
        model=m.name,
        mode=g.mode,
        size=cfg.model.size,
        buckets=cfg.model.buckets,
        precision=cfg.model.precision,
        persons=n_persons,
        audio_type=audio_type,
        frame_num_requested=req,
        motion_frame=g.motion_frame,
        sampling_steps=g.sampling_steps,
        passes_per_step=2 if text_one else 3,
        loras=loras,
    )
    p.dit_options = _dit_options(cfg)
    if m.name == "tiny":
        p.notes.append(
            "model tiny: the small random-weight test model, not MultiTalk-14B (for the real "
            "shapes: --config multitalk-480)"
        )
    v = p.violations

    # --- image -> bucket -> latent grid
    if inputs.target_size is not None:
        H, W = int(inputs.target_size[0]), int(inputs.target_size[1])
        p.bucket_key = None
        p.notes.append(f"target size {H}x{W} given directly (the size buckets are bypassed)")
    else:
        src_w, src_h = inputs.image_size
        p.bucket_key, (H, W) = choose_bucket(
            src_h, src_w, bucket_table(cfg.model.size, cfg.model.buckets)
        )
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
        v.append(
            Violation(
                "persons_1_or_2",
                {"persons": P},
                None,
                f"MultiTalk supports one or two speakers (got {P}): its audio attention hard-codes "
                "two L-RoPE position ranges and splits the audio tokens in two halves.",
                ("pass one speech track per visible speaker (1 or 2 files)",),
            )
        )
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
                v.append(
                    Violation(
                        "audio_min_duration",
                        {"person": i + 1, "samples_16k": n, "seconds": n / AUDIO_SR},
                        "ValueError: Audio must have length greater than the block size.",
                        f"speaker {i + 1}'s audio is {n / AUDIO_SR:.3f} s; loudness normalisation "
                        f"(BS.1770) needs at least one {LOUDNESS_BLOCK_S} s block.",
                        (f"use at least {LOUDNESS_BLOCK_S} s of speech",),
                    )
                )
        if P == 2 and audio_type == "para" and raw[0] != raw[1]:
            v.append(
                Violation(
                    "para_equal_length",
                    {"samples_16k": raw},
                    f"ValueError: operands could not be broadcast together with shapes ({raw[0]},) ({raw[1]},) ",
                    "audio_type 'para' (both speak at once) sums the two tracks sample by sample for the "
                    f"soundtrack, so they must be equally long; they have {raw[0]} and {raw[1]} samples at 16 kHz.",
                    (
                        "trim or pad the two recordings to the same length",
                        "or use audio_type 'add' if they speak one after the other",
                    ),
                )
            )
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
            p.policy_actions.append(
                PolicyAction(
                    "short_audio=pad",
                    f"audio has {L_min} embedding frames, the reference needs more than frame_num {F}: "
                    f"silence appended to {n_pad} samples ({secs:.2f} s, {need} frames); the video is "
                    f"trimmed back to the real audio ({want} frames)",
                    {"pad_to_samples": n_pad, "audio_frames": need},
                    avoided=AUDIO_ASSERT,
                )
            )
        elif frame_ok and g.short_audio == "snap" and _snap_ok(snap_frame_num(L_min - 1), g):
            F = snap_frame_num(L_min - 1)
            p.policy_actions.append(
                PolicyAction(
                    "short_audio=snap",
                    f"frame_num {F0} -> {F}: the largest 4n+1 below the audio's {L_min} embedding frames",
                    {"frame_num": F},
                    avoided=AUDIO_ASSERT,
                )
            )
        else:
            v.append(_audio_violation(F, frames, tracks, g))
    p.frame_num = F
    p.pad_to_samples = tuple(pad_to)
    p.padded_audio_frames = tuple(eff)
    if not frame_ok:
        v.append(_frame_violation(F, lat_h, lat_w, L_min, tracks, want))
    # the person masks (and their bbox assertion) are built per clip, after the frame mask
    if bbox is not None and len(bbox) != P:
        v.append(
            Violation(
                "bbox_count",
                {"bbox": len(bbox), "persons": P},
                "AssertionError",
                f"{len(bbox)} bounding boxes for {P} speakers: the reference asserts one box per audio track.",
                (f"give exactly {P} boxes, or none (default: left / right halves of the image)",),
            )
        )
    if g.mode == "streaming" and frame_ok:
        if g.motion_frame >= F:
            v.append(
                Violation(
                    "motion_frame_below_frame_num",
                    {"motion_frame": g.motion_frame, "frame_num": F},
                    None,
                    f"streaming re-uses the last motion_frame={g.motion_frame} frames of a clip to start the "
                    f"next one; with frame_num {F} no new frames would be generated (the reference loops "
                    "without progress or builds a negative zero-padding).",
                    (
                        f"set motion_frame to {snap_frame_num(min(25, F - 1))} (must be 4n+1 and below frame_num)",
                    ),
                )
            )
        if not is_4n_plus_1(g.motion_frame):
            good = snap_frame_num(g.motion_frame)
            v.append(
                Violation(
                    "motion_frame_4n_plus_1",
                    {"motion_frame": g.motion_frame},
                    None,
                    f"motion_frame={g.motion_frame} is not 4n+1: the VAE groups frames 1+4+4+..., so the "
                    "motion frames and the zero frames would share a latent frame; the reference does not "
                    "fail, it silently conditions on a mix.",
                    (f"set motion_frame to {good} or {good + 4}",),
                )
            )
    if H % 16 or W % 16:
        v.append(
            Violation(
                "size_multiple_of_16",
                {"H": H, "W": W},
                None,
                f"the VAE divides H and W by 8 and the DiT patches by 2, so both must be multiples of 16 "
                f"(got {H}x{W}); otherwise the latent grid and the patch grid disagree and the Euler update "
                "fails to broadcast (or the VAE latent size drifts from H//8).",
                (
                    f"use {H // 16 * 16}x{W // 16 * 16}, or let the size buckets choose (no explicit target size)",
                ),
            )
        )
    T = latent_frames(F) if F >= 1 else 0
    nh, nw = lat_h // m.patch[1], lat_w // m.patch[2]
    if frame_ok and (T > ROPE_POSITIONS or nh > ROPE_POSITIONS or nw > ROPE_POSITIONS):
        v.append(
            Violation(
                "rope_positions",
                {"T": T, "N_h": nh, "N_w": nw},
                None,
                f"the 3-D RoPE tables hold {ROPE_POSITIONS} positions per axis; the token grid "
                f"{T}x{nh}x{nw} exceeds them.",
                ("use fewer frames per clip (mode streaming) or a smaller image size",),
            )
        )
    if g.teacache and text_one:
        v.append(
            Violation(
                "teacache_text_scale_one",
                {"teacache": True, "text_guide_scale": g.text_guide_scale},
                None,
                "TeaCache assumes 3 DiT calls per step (cond, drop_text, uncond), each with its own cached "
                "residual; text_guide_scale 1 makes 2 calls per step (cond, drop_audio), and the reference's "
                "mod-3 bookkeeping then mixes the branches' caches (multitalk-facts §3.10). mtlib refuses it "
                "rather than silently dropping TeaCache or copying the mix-up.",
                (
                    "set generation.teacache=false (text_guide_scale 1 already saves a third of the DiT calls)",
                    "or set generation.text_guide_scale to a value other than 1 to keep TeaCache",
                ),
            )
        )
    if v:
        return p

    # --- valid: grid, schedule, tensors, costs
    p.token_grid = (T, nh, nw)
    p.seq_len = T * nh * nw
    _schedule(p, g, F, eff, lat_h, lat_w, m)
    if p.video_frames == 0 and len(p.miss) == 2 and p.miss[0] == 0:
        # reachable with per-person embedding lengths (PlanInputs.audio_frames) that differ,
        # streaming capped by max_frames_num: person 1 needs no tail padding, person 2 does
        v.append(
            Violation(
                "empty_output",
                {"miss": list(p.miss), "max_frames_num": g.max_frames_num},
                None,
                f"streaming stops at max_frames_num={g.max_frames_num}; person 2's audio is shorter "
                f"and gets {p.miss[1]} frames of tail padding, person 1's none, and the reference "
                "cuts person 1's padding with video[:-0], which is empty: it returns no frames "
                "(mtlib's engine skips a cut of 0 and would keep them).",
                (
                    "give both speakers the same audio length (pad the shorter track with silence)",
                    "or raise generation.max_frames_num to cover the longer track",
                ),
            )
        )
        return p
    if any(a.policy == "short_audio=pad" for a in p.policy_actions):
        p.output_frames = min(p.video_frames, want)
    else:
        p.output_frames = p.video_frames
    if p.output_frames != p.video_frames:
        p.notes.append(
            f"the video is trimmed from {p.video_frames} to {p.output_frames} frames (real audio length)"
        )
    if inputs.text_tokens is None:
        p.notes.append("T5 context lengths depend on the prompt's token count: not planned")
    _tensors(p, m, H, W, F, T, lat_h, lat_w, P, raw, tracks, pad_to, eff, inputs, g)
    _costs(p, m, P)
    from mtlib.plan.guards import plan_warnings  # frames beyond training, audio the video cuts off

    p.notes += plan_warnings(p, g)
    from mtlib.plan.parallel import plan_parallel, ranks_of

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


def plan_for(
    config: Any = "tiny",
    image: str | None = None,
    audio: list[str] | str | None = None,
    **generation: Any,
) -> ShapePlan:
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
        overrides["inputs.audio"] = [
            where(str(a)) for a in ([audio] if isinstance(audio, str) else audio)
        ]
    try:
        cfg = load_config(config, overrides)
    except ConfigError as e:
        raise PlanError(str(e)) from None
    return plan(cfg)
