"""Sampler arithmetic of the MultiTalk generation loop, as plain functions.

`mtlib.run.loop.generate` calls these once per clip / step; nothing here touches a network.

    timesteps(steps, shift)            shifted flow-matching schedule, [steps + 1] (ends at 0)
    frame_mask(F, n_cond, h, w)        which pixel frames are given (the 4 mask channels of y)
    audio_windows(emb, start, F)       the 5-frame audio context of every video frame
    guide / guide_text_one             classifier-free guidance over the text and audio terms
    MomentumBuffer, apg / guide_apg    adaptive projected guidance (APG, arXiv 2410.02416)
    euler_step(latent, noise_pred, ..) one Euler step of the flow ODE
    renoise_motion(motion, t, noise)   motion-frame latents noised to level t (streaming clips)

Conventions follow the reference (facts §9.3, golden README §2.7): the DiT predicts the flow
velocity v = noise - x0 (x_sigma = (1 - sigma) x0 + sigma noise). The loop negates the guided
velocity (`noise_pred = -guide(...)`) and steps `latent + noise_pred * (t_i - t_{i+1}) / 1000`.
All arithmetic is float32 torch in the reference's operation order, so results are bitwise
those of the official code on the same inputs.
"""

from __future__ import annotations

import numpy as np
import torch

from mtlib.frames import TIME_STRIDE as VAE_TIME_STRIDE  # pixel frames per later latent frame
from mtlib.frames import is_4n_plus_1, snap_frame_num
from mtlib.spec import SPECS

NUM_TRAIN_TIMESTEPS = 1000  # the Wan flow schedule runs t in [0, 1000]
AUDIO_WINDOW = SPECS["multitalk-14b"].audio_window  # audio frames around each video frame (-2..2)


def timesteps(steps: int, shift: float, num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """The shifted schedule t'_0 = 1000 > ... > t'_{steps-1} > t'_steps = 0, float32 [steps + 1].

    t = linspace(1000, 1, steps) (numpy float32) with 0 appended; sigma = t / 1000 is shifted to
    shift·sigma / (1 + (shift − 1)·sigma) and scaled back by 1000, in float32 like the reference.
    """
    if steps < 1:
        raise ValueError(f"sampling_steps must be >= 1, got {steps}.")
    t = np.linspace(num_timesteps, 1, steps, dtype=np.float32)
    t = torch.cat([torch.from_numpy(t), torch.zeros(1, dtype=torch.float32)])  # [steps + 1]
    sigma = t / num_timesteps
    sigma = shift * sigma / (1 + (shift - 1) * sigma)
    return sigma * num_timesteps


def check_frame_num(frame_num: int) -> None:
    """frame_num must be 4n+1: frame 0 is its own latent, the rest go in groups of 4."""
    if not is_4n_plus_1(frame_num):
        lower = snap_frame_num(frame_num)
        raise ValueError(
            f"frame_num = {frame_num} is not of the form 4n+1 (the VAE keeps frame 0 alone and "
            f"packs the remaining frames in groups of 4; the reference fails later with a "
            f"'shape ... is invalid' error in the mask view). Fix: use {lower} or {lower + 4}."
        )


def frame_mask(frame_num: int, n_cond: int, lat_h: int, lat_w: int) -> torch.Tensor:
    """The 4 mask channels of y: 1 where a pixel frame is given (the first n_cond), else 0.

    Frame 0 is repeated 4 times in front so that F + 3 frames group into T = (F − 1)/4 + 1 latent
    frames of 4; channel c of latent k is pixel frame max(0, 4k + c − 3). Returns float32
    [1, 4, T, lat_h, lat_w].
    """
    check_frame_num(frame_num)
    msk = torch.ones(1, frame_num, lat_h, lat_w)
    msk[:, n_cond:] = 0
    msk = torch.cat([msk[:, :1].repeat_interleave(VAE_TIME_STRIDE, dim=1), msk[:, 1:]], dim=1)
    msk = msk.view(1, (frame_num + 3) // VAE_TIME_STRIDE, VAE_TIME_STRIDE, lat_h, lat_w)
    return msk.transpose(1, 2).contiguous()  # [1, 4, T, lat_h, lat_w]


def audio_windows(
    full_emb: torch.Tensor, start: int, frame_num: int, window: int = AUDIO_WINDOW
) -> torch.Tensor:
    """Audio context of video frames start .. start+frame_num−1: [F, window, layers, C].

    Row f holds embedding frames start + f − window//2 ... start + f + window//2, clamped to the
    embedding's first and last frame (facts §3.7a). `full_emb` is one person's [L_a, layers, C].
    """
    half = window // 2
    idx = torch.arange(start, start + frame_num)[:, None] + torch.arange(-half, half + 1)[None, :]
    idx = idx.clamp(0, full_emb.shape[0] - 1)  # [F, window]
    return full_emb[idx]


def guide(
    noise_pred_cond: torch.Tensor,
    noise_pred_drop_text: torch.Tensor,
    noise_pred_uncond: torch.Tensor,
    text_guide_scale: float,
    audio_guide_scale: float,
) -> torch.Tensor:
    """3-pass guidance: uncond + s_t·(cond − drop_text) + s_a·(drop_text − uncond).

    cond = (prompt, audio), drop_text = (negative prompt, audio), uncond = (negative prompt,
    no audio). Returns the guided velocity; the loop's `noise_pred` is its negation.
    """
    return (
        noise_pred_uncond
        + text_guide_scale * (noise_pred_cond - noise_pred_drop_text)
        + audio_guide_scale * (noise_pred_drop_text - noise_pred_uncond)
    )


def guide_text_one(
    noise_pred_cond: torch.Tensor, noise_pred_drop_audio: torch.Tensor, audio_guide_scale: float
) -> torch.Tensor:
    """2-pass guidance used when the text scale is 1: drop_audio + s_a·(cond − drop_audio)."""
    return noise_pred_drop_audio + audio_guide_scale * (noise_pred_cond - noise_pred_drop_audio)


class MomentumBuffer:
    """APG running average of one guidance difference: avg ← diff + momentum·avg (starts at 0).

    One buffer per guidance term, created fresh for every clip (as the reference does).
    """

    def __init__(self, momentum: float):
        self.momentum = momentum
        self.running_average: torch.Tensor | float = 0.0

    def update(self, diff: torch.Tensor) -> torch.Tensor:
        self.running_average = diff + self.momentum * self.running_average
        return self.running_average


def apg(
    diff: torch.Tensor,
    noise_pred_cond: torch.Tensor,
    momentum_buffer: MomentumBuffer | None,
    norm_threshold: float,
    eta: float = 0.0,
) -> torch.Tensor:
    """Adaptive projected guidance of one difference term (all dims of [C, T, h, w] at once).

    Momentum average, then rescale by min(1, threshold / ||diff||_2), then keep the component
    orthogonal to `noise_pred_cond` (plus eta × the parallel one), the projection in float64.
    """
    dims = [-1, -2, -3, -4]
    if momentum_buffer is not None:
        diff = momentum_buffer.update(diff)
    if norm_threshold > 0:
        diff_norm = diff.norm(p=2, dim=dims, keepdim=True)
        diff = diff * torch.minimum(torch.ones_like(diff), norm_threshold / diff_norm)
    v0, v1 = diff.double(), noise_pred_cond.double()
    v1 = torch.nn.functional.normalize(v1, dim=dims)
    parallel = (v0 * v1).sum(dim=dims, keepdim=True) * v1
    orthogonal = v0 - parallel
    return orthogonal.to(diff.dtype) + eta * parallel.to(diff.dtype)


def guide_apg(
    noise_pred_cond: torch.Tensor,
    noise_pred_drop_text: torch.Tensor,
    noise_pred_uncond: torch.Tensor,
    text_guide_scale: float,
    audio_guide_scale: float,
    text_buffer: MomentumBuffer,
    audio_buffer: MomentumBuffer,
    norm_threshold: float,
) -> torch.Tensor:
    """APG form of `guide`: cond + (s_t−1)·APG(cond − drop_text) + (s_a−1)·APG(drop_text − uncond)."""
    text_term = apg(
        noise_pred_cond - noise_pred_drop_text, noise_pred_cond, text_buffer, norm_threshold
    )
    audio_term = apg(
        noise_pred_drop_text - noise_pred_uncond, noise_pred_cond, audio_buffer, norm_threshold
    )
    return (
        noise_pred_cond + (text_guide_scale - 1) * text_term + (audio_guide_scale - 1) * audio_term
    )


def guide_apg_text_one(
    noise_pred_cond: torch.Tensor,
    noise_pred_drop_audio: torch.Tensor,
    audio_guide_scale: float,
    audio_buffer: MomentumBuffer,
    norm_threshold: float,
) -> torch.Tensor:
    """APG form of `guide_text_one`: cond + (s_a−1)·APG(cond − drop_audio)."""
    audio_term = apg(
        noise_pred_cond - noise_pred_drop_audio, noise_pred_cond, audio_buffer, norm_threshold
    )
    return noise_pred_cond + (audio_guide_scale - 1) * audio_term


def euler_step(
    latent: torch.Tensor,
    noise_pred: torch.Tensor,
    t: torch.Tensor,
    t_next: torch.Tensor,
    num_timesteps: int = NUM_TRAIN_TIMESTEPS,
) -> torch.Tensor:
    """latent + noise_pred·(t − t_next)/1000, with `noise_pred` the NEGATED guided velocity.

    latent, noise_pred: [C, T, h, w] float32; t, t_next: [1] float32.
    """
    dt = (t - t_next) / num_timesteps  # [1]
    return latent + noise_pred * dt[:, None, None, None]


def renoise_motion(
    latent_motion: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    num_timesteps: int = NUM_TRAIN_TIMESTEPS,
) -> torch.Tensor:
    """Motion-frame latents brought to noise level t: (1 − t/1000)·latent_motion + t/1000·noise.

    latent_motion, noise: [C, T_m, h, w]; t: [1]. At t = 0 the motion latents come back exactly.
    """
    sigma = t.float() / num_timesteps
    sigma = sigma.view(sigma.shape + (1,) * (noise.ndim - 1))
    return (1 - sigma) * latent_motion.float() + sigma * noise.float()
