"""What the loop takes its sizes from: `GenerationSettings` (the sampler's knobs), `LoopPlan` (the
plan's sizes, clips, tail reflection and video length, or the same arithmetic from
`mtlib.frames` when no plan is given), `PlanDriftError` (an observed shape that differs from the
plan), the input checks, and the loop's results (`ClipInfo`, `GenerationResult`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from mtlib import frames
from mtlib.io import InputError
from mtlib.run import sampling
from mtlib.spec import SPECS

VAE_STRIDE = SPECS["multitalk-14b"].vae_stride  # pixel frames / rows / columns per latent cell
PATCH_SIZE = SPECS["multitalk-14b"].patch  # DiT patchify of the latent (t, h, w)
LATENT_CHANNELS = SPECS["multitalk-14b"].z_dim  # the same in every spec (tests/test_spec.py)

# --------------------------------------------------------------------------------------------
# Settings and result
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationSettings:
    # clip: one clip of frame_num frames. streaming: clips chained through motion frames
    # until the audio (or max_frames_num) is used up.
    mode: Literal["clip", "streaming"] = "clip"
    frame_num: int = 81  # pixel frames per clip, 4n+1
    motion_frame: int = 25  # frames of the previous clip that condition the next one
    max_frames_num: int = 1000  # streaming cap (the reference's 40 s); clip mode uses frame_num
    sampling_steps: int = 40
    shift: float = 7.0  # schedule shift: 7 at 480p, 11 at 720p (the CLI defaults)
    text_guide_scale: float = 5.0  # 1.0 switches to 2 DiT passes per step (cond, drop_audio)
    audio_guide_scale: float = 4.0
    color_correction_strength: float = 1.0  # 0 disables; the CLI always passes 1.0
    use_apg: bool = False  # adaptive projected guidance instead of plain CFG
    apg_momentum: float = -0.75
    apg_norm_threshold: float = 55.0
    seed: int = 42  # recorded in the result / video metadata; the NoiseSource draws
    progress: bool = True  # tqdm bars per clip and per step

    @property
    def frames_cap(self) -> int:
        """The reference's max_frames_num: frame_num in clip mode, the cap when streaming."""
        return self.frame_num if self.mode == "clip" else self.max_frames_num

    @classmethod
    def from_config(
        cls, generation: Any, size: str = "multitalk-480", **overrides
    ) -> GenerationSettings:
        """From a `mtlib.config.GenerationConfig` whose frame_num is already resolved."""
        g = generation
        if g.frame_num == "auto":
            raise ValueError(
                "generation.frame_num is 'auto': resolve it from the audio length first "
                "(mtlib.plan) and pass the resolved config."
            )
        values = dict(
            mode=g.mode,
            frame_num=int(g.frame_num),
            motion_frame=g.motion_frame,
            max_frames_num=g.max_frames_num,
            sampling_steps=g.sampling_steps,
            shift=g.resolved_shift(size),
            text_guide_scale=g.text_guide_scale,
            audio_guide_scale=g.audio_guide_scale,
            color_correction_strength=g.color_correction_strength,
            use_apg=g.use_apg,
            apg_momentum=g.apg_momentum,
            apg_norm_threshold=g.apg_norm_threshold,
            seed=g.seed,
        )
        values.update(overrides)
        return cls(**values)


@dataclass
class ClipInfo:
    """Bookkeeping of one generated clip (the golden JSON's `clips` entries)."""

    index: int
    audio_start: int
    audio_end: int
    n_cond: int  # conditioning frames: 1 for the first clip, motion_frame after
    frames_kept: int


@dataclass
class GenerationResult:
    video: torch.Tensor  # [3, N, H, W] float32 in [-1, 1], on the CPU
    clips: list[ClipInfo] = field(default_factory=list)
    miss_lengths: list[int] = field(default_factory=list)  # tail padding per person ([]: clip mode)
    seed: int | None = None
    stages: dict[str, float] = field(default_factory=dict)  # seconds per loop stage (StageTimer)


# --------------------------------------------------------------------------------------------
# Checks before compute
# --------------------------------------------------------------------------------------------


def check_inputs(
    cond_image: torch.Tensor,
    audio_embs: list[torch.Tensor],
    ref_target_masks: torch.Tensor,
    settings: GenerationSettings,
) -> None:
    """Refuse what the loop would fail on later, naming the input, the rule and the fix."""
    s = settings
    sampling.check_frame_num(s.frame_num)
    if cond_image.ndim != 5 or cond_image.shape[:3] != (1, 3, 1):
        raise InputError(
            f"cond_image must be [1, 3, 1, H, W] in [-1, 1] (mtlib.media.image output), got "
            f"{list(cond_image.shape)}."
        )
    H, W = cond_image.shape[-2:]
    unit = VAE_STRIDE[1] * PATCH_SIZE[1]
    if H % unit or W % unit:
        raise InputError(
            f"cond_image is {H}x{W}: height and width must be multiples of {unit} (VAE stride 8 x "
            f"DiT patch 2). Fix: use a size from the bucket tables (mtlib.buckets)."
        )
    if not 1 <= len(audio_embs) <= 2:
        raise InputError(f"audio_embs: MultiTalk takes 1 or 2 persons, got {len(audio_embs)}.")
    for p, emb in enumerate(audio_embs):
        if emb.ndim != 3:
            raise InputError(
                f"audio_embs[{p}] must be [L_a, layers, width] (wav2vec2 embedding), got "
                f"{list(emb.shape)}."
            )
        if torch.isnan(emb).any():
            raise InputError(f"audio_embs[{p}] contains NaN. Fix: recompute the embedding.")
        if emb.shape[0] <= s.frame_num:
            raise InputError(
                f"audio_embs[{p}] has {emb.shape[0]} frames but frame_num = {s.frame_num}: the "
                f"reference needs audio strictly longer than frame_num (it asserts 'Aduio file not "
                f"exists or length not satisfies frame nums.'). Fix: a frame_num of at most "
                f"{frames.largest_frame_num_for(emb.shape[0])}, or longer audio."
            )
    lat_h, lat_w = H // VAE_STRIDE[1], W // VAE_STRIDE[2]
    if tuple(ref_target_masks.shape) != (3, lat_h, lat_w):
        raise InputError(
            f"ref_target_masks must be [3, {lat_h}, {lat_w}] (person 1, person 2, background on "
            f"the latent grid), got {list(ref_target_masks.shape)}."
        )
    if s.mode == "streaming" and not 1 <= s.motion_frame < s.frame_num:
        raise InputError(
            f"motion_frame = {s.motion_frame} must be between 1 and frame_num - 1 = "
            f"{s.frame_num - 1} in streaming mode."
        )


def plan_clips(audio_lengths: list[int], settings: GenerationSettings) -> list[tuple[int, int]]:
    """The [audio_start, audio_end) of every clip (mtlib.frames.clip_schedule)."""
    s = settings
    sched = frames.clip_schedule(s.frame_num, s.motion_frame, s.frames_cap, audio_lengths)
    return [(c.audio_start, c.audio_end) for c in sched.clips]


# --------------------------------------------------------------------------------------------
# The plan, as the loop consumes it
# --------------------------------------------------------------------------------------------


class PlanDriftError(RuntimeError):
    """What the engine computed differs from the shape plan: a bug, named where it happened."""


@dataclass(frozen=True)
class LoopPlan:
    """The sizes and the clip schedule generate() runs, taken from a `mtlib.plan.ShapePlan`
    (`from_plan`) or, for callers without one (replay tests, bench), from the same arithmetic
    (`from_settings`, mtlib.frames). The loop computes no size itself."""

    frame_num: int
    target_hw: tuple[int, int]  # (H, W) of the conditioning image
    lat: tuple[int, int, int]  # (T, lat_h, lat_w)
    seq_len: int
    clips: tuple[
        Any, ...
    ]  # per clip: index, is_first, n_cond, audio_start, audio_end, kept, audio_len
    miss: tuple[int, ...]  # per person: reflection frames before the last clip
    video_frames: int  # frames generate() returns
    audio_frames: (
        tuple[int, ...] | None
    )  # per person embedding frames the loop is given (None: any)
    source: str  # "plan" or "settings": named in drift errors

    @classmethod
    def from_plan(cls, plan: Any) -> LoopPlan:
        if not plan.valid:
            raise InputError(
                "generate(plan=...): the plan is invalid (see plan.violations); the loop runs "
                "valid plans only. Fix: change the inputs as the diagnosis says."
            )
        clips = tuple(
            frames.ClipSpan(
                c.clip, c.is_first_clip, c.cur_motion_frames_num, c.audio_start_idx,
                c.audio_end_idx, c.kept_frames, tuple(c.audio_len), tuple(c.audio_index_range),
            )
            for c in plan.clips
        )  # fmt: skip
        return cls(
            frame_num=int(plan.frame_num), target_hw=tuple(plan.target_hw),
            lat=(int(plan.token_grid[0]), *plan.lat_hw), seq_len=int(plan.seq_len), clips=clips,
            miss=tuple(plan.miss), video_frames=int(plan.video_frames),
            audio_frames=tuple(plan.padded_audio_frames) or None, source="plan",
        )  # fmt: skip

    @classmethod
    def from_settings(
        cls, settings: GenerationSettings, hw: tuple[int, int], audio_frames: list[int]
    ) -> LoopPlan:
        s, (H, W) = settings, hw
        lat_h, lat_w = H // VAE_STRIDE[1], W // VAE_STRIDE[2]
        sched = frames.clip_schedule(s.frame_num, s.motion_frame, s.frames_cap, audio_frames)
        return cls(
            frame_num=s.frame_num, target_hw=(H, W),
            lat=(frames.latent_frames(s.frame_num), lat_h, lat_w),
            seq_len=frames.seq_len(s.frame_num, lat_h, lat_w, PATCH_SIZE), clips=sched.clips,
            miss=sched.miss, video_frames=sched.video_frames,
            audio_frames=tuple(audio_frames), source="settings",
        )  # fmt: skip

    def check(self, where: str, observed: Any, planned: Any) -> None:
        """Raise PlanDriftError unless observed == planned (shapes compared as lists)."""
        o = list(observed) if isinstance(observed, tuple | torch.Size) else observed
        p = list(planned) if isinstance(planned, tuple) else planned
        if o != p:
            raise PlanDriftError(
                f"plan drift at {where}: the {self.source} says {p}, the engine has {o}. The "
                "loop runs the shapes the plan computed (mtlib.plan / mtlib.frames); a "
                "difference is a bug in mtlib or a plan made for other inputs or settings."
            )
