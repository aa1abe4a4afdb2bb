"""generate(): the MultiTalk clip / streaming loop around the networks.

Where it sits: the preprocessing (mtlib.media.audio, mtlib.media.image) has produced the conditioning
image [1, 3, 1, H, W], one wav2vec2 embedding [L_a, layers, width] per person, the person masks
on the latent grid and the trimmed T5 contexts. `generate` turns them into the video
[3, N, H, W] in [-1, 1], following `MultiTalkPipeline.generate` of the reference step by step
(facts §9, golden README §2.7):

    per clip:  audio windows -> noise -> frame mask -> CLIP(last cond frame) -> VAE encode of
               cond frames + zeros -> y = [mask, latent] -> (streaming: motion re-noising)
               -> for each step: DiT x 3 (cond / drop_text / uncond) or x 2 (text scale 1)
                  -> guidance -> Euler -> (streaming: motion re-noising)
               -> VAE decode -> colour correction -> keep frames -> next cond frames

The loop is written out in full (diffusers style) so that it can be read against the
reference and debugged with the trace: every intermediate is offered to `mtlib.trace` under
the golden names (`e2e.clip<c>.step<i>.noise_pred`, ...). The networks are duck-typed
(`Models`), so the golden replay test drives this same loop with recorded predictions.

Randomness is explicit: a `NoiseSource` hands out every random tensor by its trace name,
either drawn from one seeded CPU generator in the reference's order (`SeededNoise`) or taken
from a recorded trace (`InjectedNoise`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from mtlib import finite, trace
from mtlib.run import sampling
from mtlib.run.color import match_and_blend_colors
from mtlib.run.loop_plan import (
    LATENT_CHANNELS,
    ClipInfo,
    GenerationResult,
    GenerationSettings,
    LoopPlan,
    check_inputs,
)
from mtlib.run.noise import NoiseSource, SeededNoise
from mtlib.run.stagetimer import StageTimer


class DiT(Protocol):
    def __call__(
        self,
        x: torch.Tensor,  # [16, T, h, w] float32 noisy latent
        t: torch.Tensor,  # [1] float32 timestep in [0, 1000]
        context: torch.Tensor,  # [L, text_dim] trimmed T5 output
        clip_fea: torch.Tensor,  # [1, 257, clip_dim]
        y: torch.Tensor,  # [1, 4 + 16, T, h, w] mask + VAE latent of the cond frames
        audio: torch.Tensor,  # [P, F, 5, layers, width] audio windows
        ref_target_masks: torch.Tensor,  # [3, h, w] float32 person masks
        seq_len: int,
    ) -> torch.Tensor: ...  # [16, T, h, w] velocity prediction


class VAE(Protocol):
    def encode(self, video: torch.Tensor) -> torch.Tensor: ...  # [1,3,F,H,W] -> [1,16,T,h,w]

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...  # [1,16,T,h,w] -> [1,3,F,H,W]


class CLIP(Protocol):
    def encode_image(self, cond: torch.Tensor) -> torch.Tensor: ...  # [1,3,1,H,W] -> [1,257,C]


@dataclass
class Models:
    """The three networks the loop calls (the text encoder runs before, see encode_prompts)."""

    dit: Any  # DiT protocol; an nn.Module whose parameters give device and dtype
    vae: Any  # VAE protocol
    clip: Any  # CLIP protocol


def _device_dtype(module: Any) -> tuple[torch.device, torch.dtype]:
    """Where and in which dtype a network computes: its first parameter, else cpu / float32."""
    params = getattr(module, "parameters", None)
    if callable(params):
        for p in params():
            return p.device, p.dtype
    device = getattr(module, "device", torch.device("cpu"))
    dtype = getattr(module, "dtype", torch.float32)
    return torch.device(device), dtype


# --------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------


def encode_prompts(
    text_encoder: Any, prompt: str, negative_prompt: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """context, context_null = T5([prompt, negative prompt]) (one batch, like the reference).

    `text_encoder.encode(list[str])` returns the trimmed contexts, either as a list or as an
    object with `.contexts` and optionally `.ids`, `.mask`, `.out` (recorded as e2e.t5.call0.*).
    """
    encoded = text_encoder.encode([prompt, negative_prompt])
    contexts = getattr(encoded, "contexts", encoded)
    if trace.active():
        with trace.scope("e2e.t5.call0"):
            for key in ("ids", "mask", "out"):
                value = getattr(encoded, key, None)
                if value is not None:
                    trace.point(key, value)
    return contexts[0], contexts[1]


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def generate(
    models: Models,
    cond_image: torch.Tensor,
    audio_embs: list[torch.Tensor],
    prompt_context: torch.Tensor,
    neg_context: torch.Tensor,
    ref_target_masks: torch.Tensor,
    settings: GenerationSettings,
    noise_source: NoiseSource | None = None,
    plan: Any = None,
) -> GenerationResult:
    """Generate the talking video.

    cond_image: [1, 3, 1, H, W] in [-1, 1]; audio_embs: per person [L_a, layers, width];
    prompt_context / neg_context: [L, text_dim] trimmed T5 outputs of the prompt and the
    negative prompt; ref_target_masks: [3, H/8, W/8] float (person 1, person 2, background);
    noise_source: defaults to SeededNoise(settings.seed).
    plan: the run's `mtlib.plan.ShapePlan`; the loop runs its clips with its sizes and checks
    every clip against it (PlanDriftError names the first difference). None: the same schedule
    from the settings and the inputs' sizes (mtlib.frames).
    Returns the video [3, N, H, W] in [-1, 1] (CPU float32) and the clip bookkeeping.
    """
    s = settings
    check_inputs(cond_image, audio_embs, ref_target_masks, s)
    noise_source = noise_source if noise_source is not None else SeededNoise(s.seed)
    device, dit_dtype = _device_dtype(models.dit)
    H, W = cond_image.shape[-2:]
    lengths = [int(e.shape[0]) for e in audio_embs]
    lp = (
        LoopPlan.from_plan(plan) if plan is not None else LoopPlan.from_settings(s, (H, W), lengths)
    )
    lp.check("settings.frame_num", s.frame_num, lp.frame_num)
    lp.check("cond_image [H, W]", (H, W), lp.target_hw)
    if lp.audio_frames is not None:
        lp.check("audio_embs frames per person", lengths, list(lp.audio_frames))
    F = lp.frame_num
    lat_t, lat_h, lat_w = lp.lat
    seq_len = lp.seq_len
    max_frames = s.frames_cap
    text_scale_one = math.isclose(s.text_guide_scale, 1.0)
    # the same shifted schedule for every clip: [steps + 1], from 1000 down to 0
    timesteps = sampling.timesteps(s.sampling_steps, s.shift).to(device)

    from tqdm.auto import tqdm

    cond_image = cond_image.to(device, torch.float32)
    color_reference = cond_image.detach().cpu().clone()  # the ORIGINAL image, for every clip
    full_audio_embs = [emb.detach().cpu() for emb in audio_embs]  # tail padding extends these
    ref_target_masks = ref_target_masks.to(device, torch.float32)
    context = prompt_context.to(device, dit_dtype)
    context_null = neg_context.to(device, dit_dtype)

    # reflection frames per person (planned); clip mode runs one clip and has no tail
    miss_lengths = list(lp.miss) if max_frames > F else []
    kept_videos: list[torch.Tensor] = []
    videos = cond_image  # replaced by each clip's decoded frames
    clips: list[ClipInfo] = []
    clip_bar = tqdm(total=len(lp.clips), desc="clips", unit="clip", disable=not s.progress)
    timer = StageTimer(device)

    with trace.scope("e2e"):
        for pc in lp.clips:  # the planned clips, in order
            c, is_first_clip, n_cond = pc.index, pc.is_first, pc.n_cond
            audio_start, audio_end = pc.audio_start, pc.audio_end
            if not is_first_clip:
                # the clip is conditioned on the last n_cond (motion_frame) frames of the previous
                cond_image = videos[:, :, -n_cond:].to(device, torch.float32)
            # tail: the last clip's audio runs past the end -> the tracks grow by their last
            # frames time-reversed, to the planned length
            for p, emb in enumerate(full_audio_embs):
                grow = pc.audio_len[p] - emb.shape[0]
                if grow > 0:
                    full_audio_embs[p] = torch.cat([emb, emb[-grow:].flip(0)], dim=0)
            lp.check(
                f"e2e.clip{c} audio frames per person",
                [e.shape[0] for e in full_audio_embs],
                list(pc.audio_len),
            )
            with trace.scope(f"clip{c}"):
                # 1. audio windows of this clip's frames, per person: [P, F, 5, layers, width]
                audio = torch.stack(
                    [sampling.audio_windows(emb, audio_start, F) for emb in full_audio_embs]
                ).to(device, dit_dtype)
                lp.check(f"e2e.clip{c}.audio [P, F]", audio.shape[:2], (len(full_audio_embs), F))
                audio_null = torch.zeros_like(audio)[-1:]  # ONE silent person (reference quirk)

                # 2. the clip's starting noise, drawn on the CPU, used on the device
                noise_name = f"e2e.clip{c}.rand.noise"
                noise = noise_source.draw(noise_name, (LATENT_CHANNELS, lat_t, lat_h, lat_w))
                trace.point("rand.noise", noise)
                latent = noise.to(device, torch.float32, copy=True)  # [16, T, h, w]

                # 3. which pixel frames are given: [1, 4, T, h, w]
                # in the DiT's dtype, as the reference casts it (0/1: exact in any dtype)
                msk = sampling.frame_mask(F, n_cond, lat_h, lat_w).to(device, dit_dtype)

                # 4. CLIP sees the last conditioning frame
                timer.mark("setup")
                clip_in = trace.point("clip_in", cond_image[:, :, -1:])
                clip_fea = models.clip.encode_image(clip_in)
                trace.point("clip_fea", clip_fea)
                clip_fea = clip_fea.to(device, dit_dtype)

                # 5. VAE latent of the cond frames followed by zeros up to F frames
                timer.mark("clip_image_encoder")
                zeros = cond_image.new_zeros(1, 3, F - cond_image.shape[2], H, W)
                vae_latent = models.vae.encode(torch.cat([cond_image, zeros], dim=2))
                trace.point("vae_latent", vae_latent)  # [1, 16, T, h, w]
                lp.check(
                    f"e2e.clip{c}.vae_latent",
                    vae_latent.shape,
                    (1, LATENT_CHANNELS, lat_t, lat_h, lat_w),
                )
                # the reference slices the motion latents from y AFTER its cast to the DiT dtype
                # (bf16 on GPU), so they carry that rounding into the re-noising
                timer.mark("vae_encode")
                vae_latent_dit = vae_latent.to(dit_dtype)
                latent_motion_frames = vae_latent_dit[:, :, : 1 + (n_cond - 1) // 4][0].float()

                # 6. streaming: the motion latents enter at the first noise level
                if not is_first_clip:
                    t_m = latent_motion_frames.shape[1]
                    motion_noise = noise_source.draw(
                        f"e2e.clip{c}.rand.motion_init", tuple(latent_motion_frames.shape)
                    )
                    trace.point("rand.motion_init", motion_noise)
                    with trace.scope("add_noise_init"):
                        trace.point("t", timesteps[0:1])
                        add_latent = sampling.renoise_motion(
                            latent_motion_frames, timesteps[0:1], motion_noise.to(device)
                        )
                        trace.point("out", add_latent)
                    latent[:, :t_m] = add_latent

                y = torch.cat([msk.to(dit_dtype), vae_latent_dit], dim=1)  # [1, 4 + 16, T, h, w]
                trace.point("timesteps", timesteps)
                trace.point("mask", msk)
                trace.point("y", y)  # [1, 20, T, h, w]
                trace.point("audio", audio)
                trace.point("ref_target_masks", ref_target_masks)
                trace.point("context", context)
                trace.point("context_null", context_null)
                trace.point("cond_image", cond_image)
                if not is_first_clip:
                    trace.point("latent_motion_frames", latent_motion_frames)

                shared = dict(
                    clip_fea=clip_fea, y=y, ref_target_masks=ref_target_masks, seq_len=seq_len
                )
                if s.use_apg:  # fresh momentum per clip, as the reference
                    text_buffer = sampling.MomentumBuffer(s.apg_momentum)
                    audio_buffer = sampling.MomentumBuffer(s.apg_momentum)

                step_bar = tqdm(
                    range(s.sampling_steps),
                    desc=f"clip {c} steps",
                    leave=False,
                    disable=not s.progress,
                )
                for i in step_bar:
                    with trace.scope(f"step{i}"):
                        t = trace.point("t", timesteps[i : i + 1])  # [1]
                        latent_in = trace.point("latent_in", latent)
                        x = latent_in.to(device, torch.float32)

                        noise_pred_cond = models.dit(x, t, context=context, audio=audio, **shared)
                        noise_pred_cond = trace.point("cond", noise_pred_cond.float())
                        lp.check(f"e2e.clip{c}.step{i}.cond", noise_pred_cond.shape, latent.shape)
                        if not text_scale_one:
                            noise_pred_drop_text = models.dit(
                                x, t, context=context_null, audio=audio, **shared
                            )
                            noise_pred_drop_text = trace.point(
                                "drop_text", noise_pred_drop_text.float()
                            )
                            noise_pred_uncond = models.dit(
                                x, t, context=context_null, audio=audio_null, **shared
                            )
                            noise_pred_uncond = trace.point("uncond", noise_pred_uncond.float())
                            if s.use_apg:
                                velocity = sampling.guide_apg(
                                    noise_pred_cond, noise_pred_drop_text, noise_pred_uncond,
                                    s.text_guide_scale, s.audio_guide_scale,
                                    text_buffer, audio_buffer, s.apg_norm_threshold,
                                )  # fmt: skip
                            else:
                                velocity = sampling.guide(
                                    noise_pred_cond, noise_pred_drop_text, noise_pred_uncond,
                                    s.text_guide_scale, s.audio_guide_scale,
                                )  # fmt: skip
                        else:
                            noise_pred_drop_audio = models.dit(
                                x, t, context=context, audio=audio_null, **shared
                            )
                            noise_pred_drop_audio = trace.point(
                                "drop_audio", noise_pred_drop_audio.float()
                            )
                            if s.use_apg:
                                velocity = sampling.guide_apg_text_one(
                                    noise_pred_cond, noise_pred_drop_audio, s.audio_guide_scale,
                                    audio_buffer, s.apg_norm_threshold,
                                )  # fmt: skip
                            else:
                                velocity = sampling.guide_text_one(
                                    noise_pred_cond, noise_pred_drop_audio, s.audio_guide_scale
                                )
                        # the reference steps along the negated velocity
                        noise_pred = -velocity

                        latent = sampling.euler_step(
                            latent, noise_pred, timesteps[i : i + 1], timesteps[i + 1 : i + 2]
                        )
                        finite.check_step(
                            f"clip {c} step {i}",
                            latent,
                            {
                                "cond": noise_pred_cond,
                                "drop_text": None if text_scale_one else noise_pred_drop_text,
                                "uncond": None if text_scale_one else noise_pred_uncond,
                                "drop_audio": noise_pred_drop_audio if text_scale_one else None,
                            },
                        )  # one isfinite per step; NonFiniteError names the first bad tensor
                        if not is_first_clip:
                            trace.point("latent_updated", latent)
                        trace.point("noise_pred", noise_pred)

                    # streaming: motion latents brought to the next noise level (exact at t = 0)
                    if not is_first_clip:
                        motion_noise = noise_source.draw(
                            f"e2e.clip{c}.rand.motion_step{i}", tuple(latent_motion_frames.shape)
                        )
                        trace.point(f"rand.motion_step{i}", motion_noise)
                        with trace.scope(f"add_noise_step{i}"):
                            trace.point("t", timesteps[i + 1 : i + 2])
                            add_latent = sampling.renoise_motion(
                                latent_motion_frames,
                                timesteps[i + 1 : i + 2],
                                motion_noise.to(device),
                            )
                            trace.point("out", add_latent)
                        latent[:, :t_m] = add_latent
                    timer.mark("dit_step0" if i == 0 else "dit_steps_after_first")
                step_bar.close()

                # 7. decode, then pull the colours towards the ORIGINAL image
                x0 = trace.point("x0", latent.unsqueeze(0))  # [1, 16, T, h, w]
                timer.mark("setup")
                videos = models.vae.decode(x0)
                timer.mark("vae_decode")
                # colour correction runs where the frames are (torch on a GPU, skimage on the host)
                if s.color_correction_strength == 0 or not videos.is_cuda:
                    videos = videos.cpu()
                videos = trace.point("decoded", videos.detach().float())  # [1, 3, F, H, W]
                lp.check(f"e2e.clip{c}.decoded", videos.shape, (1, 3, F, H, W))
                finite.check_finite(videos, f"clip {c} VAE decode", "decoded frames")
                if s.color_correction_strength > 0:
                    trace.point("color_ref", color_reference)
                    videos = match_and_blend_colors(
                        videos, color_reference, s.color_correction_strength
                    )
                    trace.point("color_corrected", videos)
                timer.mark("color_correction")
                videos = videos.cpu()
                timer.mark("frames_to_host")

                # 8. keep the new frames: all of clip 0, later clips without their motion frames
                kept = videos if is_first_clip else videos[:, :, n_cond:]
                lp.check(f"e2e.clip{c} kept frames", kept.shape[2], pc.kept)
                kept_videos.append(kept)
                clips.append(ClipInfo(c, audio_start, audio_end, n_cond, kept.shape[2]))
                clip_bar.update(1)

        clip_bar.close()

        video = torch.cat(kept_videos, dim=2)[:, :, :max_frames]
        # The reference cuts miss_lengths[0] whenever any person was padded; a cut of 0 would
        # empty the video there ([:-0]), so only a positive cut is applied.
        if max_frames > F and miss_lengths and miss_lengths[0] > 0:
            video = video[:, :, : -miss_lengths[0]]
        lp.check("e2e.video frames", video.shape[2], lp.video_frames)
        video = trace.point("video", video[0].float())  # [3, N, H, W]

    return GenerationResult(
        video=video,
        clips=clips,
        miss_lengths=miss_lengths,
        seed=getattr(noise_source, "seed", None),
        stages=timer.seconds,
    )
