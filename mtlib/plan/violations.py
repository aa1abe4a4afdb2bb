"""The diagnoses of the frame and audio rules: the reference's exact message, why, and the fixes."""

from __future__ import annotations

import math

from mtlib.frames import SAMPLE_RATE as AUDIO_SR
from mtlib.frames import (
    frames_needed,
    is_4n_plus_1,
    samples_for_frames,
    snap_frame_num,
    snap_frame_num_up,
    video_frames_of,
)
from mtlib.plan.records import AUDIO_ASSERT, Violation


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
        fixes.append(
            f"set frame_num to {snapped} (snap: the largest 4n+1 below the audio's {L} frames)"
        )
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
    real = (
        f"{tracks[0] / AUDIO_SR:.2f} s" if tracks and tracks[0] is not None else "the real length"
    )
    if L <= up:
        fixes.append(
            f"pad the audio to >= {math.ceil(need / AUDIO_SR * 100) / 100:.2f} s and generate {up} frames, "
            f"trimmed back to {real} (frame_num=auto, short_audio=pad)"
        )
    else:
        fixes.append(f"set frame_num to {up}")
    return Violation(
        rule,
        {"frame_num": F, "lat_h": lat_h, "lat_w": lat_w, "audio_frames": L},
        msg,
        why,
        tuple(fixes),
    )
