"""Frame and audio arithmetic of MultiTalk: the one home of every rule that counts frames.

Where it sits: below everything. The shape plan (`mtlib.plan`), the engine
(`mtlib.run.loop.generate`), the audio front-end (`mtlib.media.audio`, `mtlib.media.probe`) and the
wav2vec2 encoder import these numbers and functions instead of re-deriving them, so that
plan and engine cannot drift apart. Pure Python: no torch, no numpy.

The rules (multitalk-facts §9, golden README §2.7):
- every speech track is resampled to SAMPLE_RATE (16 kHz, wav2vec2's rate);
- the video runs at VIDEO_FPS (25): N samples give int(N / 16000 * 25) audio embedding
  frames (the reference's float expression, kept in its order);
- a clip has frame_num = 4n+1 pixel frames (n >= 1): the causal VAE keeps frame 0 alone and
  packs the others in groups of TIME_STRIDE = 4, so it has (frame_num - 1) // 4 + 1 latent frames;
- a clip needs strictly more audio frames than frame_num (the reference's assertion);
- each video frame reads an audio window of 5 frames (offsets -2..+2), clamped to the track;
- streaming: clip k+1 starts frame_num - motion_frame frames after clip k and is conditioned
  on clip k's last motion_frame frames; at the end the tracks are extended by reflection
  (`clip_schedule`).
"""

from __future__ import annotations

from dataclasses import dataclass

SAMPLE_RATE = 16000  # Hz: every waveform in mtlib, wav2vec2's input rate (librosa.load(sr=16000))
VIDEO_FPS = 25  # the reference hard-codes 25 video frames (= audio embedding frames) per second
TIME_STRIDE = 4  # pixel frames per latent frame after frame 0 (the causal VAE's time stride)
MIN_FRAME_NUM = 5  # 4n+1 with n >= 1: two latent frames (the audio adapter needs a later one)
TAIL_EXTRA = 3  # reflection frames the reference adds beyond the last clip's end (miss + 3)


# ------------------------------------------------------------------------------ frame counts


def is_4n_plus_1(frame_num: int) -> bool:
    """frame_num = 4n+1 (n >= 0): frame 0 alone, the rest in groups of 4."""
    return frame_num >= 1 and (frame_num - 1) % TIME_STRIDE == 0


def is_valid_frame_num(frame_num: int) -> bool:
    """4n+1 and at least MIN_FRAME_NUM (two latent frames)."""
    return is_4n_plus_1(frame_num) and frame_num >= MIN_FRAME_NUM


def snap_frame_num(n: int) -> int:
    """The largest valid frame count 4k+1 <= n (at least 1)."""
    return max(1, TIME_STRIDE * ((int(n) - 1) // TIME_STRIDE) + 1)


def snap_frame_num_up(n: int) -> int:
    """The smallest valid frame count 4k+1 >= n, and at least 5 (two latent frames)."""
    return max(MIN_FRAME_NUM, TIME_STRIDE * (-(-(int(n) - 1) // TIME_STRIDE)) + 1)


def pixel_frames(latent_frames: int) -> int:
    """Pixel frames of a clip with this many latent frames: 4 (T - 1) + 1."""
    return TIME_STRIDE * (latent_frames - 1) + 1


def latent_frames(frame_num: int) -> int:
    """Latent frames of frame_num pixel frames (also of motion_frame conditioning frames)."""
    return (frame_num - 1) // TIME_STRIDE + 1


def seq_len(frame_num: int, lat_h: int, lat_w: int, patch: tuple[int, int, int] = (1, 2, 2)) -> int:
    """DiT tokens of one clip: T * (lat_h / patch_h) * (lat_w / patch_w)."""
    return latent_frames(frame_num) * (lat_h // patch[1]) * (lat_w // patch[2])


# ------------------------------------------------------------------------------ audio lengths


def embedding_frames(samples_16k: int, sr: int = SAMPLE_RATE, fps: int = VIDEO_FPS) -> int:
    """Audio embedding frames of the reference: int(len(audio) / 16000 * 25), same float order."""
    return int(samples_16k / sr * fps)


def samples_for_frames(frames: int) -> int:
    """The fewest 16 kHz samples whose embedding has `frames` frames: int(N/16000*25) >= frames.
    Searched with the reference's own float expression, so float truncation cannot bite."""
    n = frames * SAMPLE_RATE // VIDEO_FPS
    while embedding_frames(n) < frames:
        n += 1
    while n > 0 and embedding_frames(n - 1) >= frames:
        n -= 1
    return n


def video_frames_of(samples_16k: int) -> int:
    """Video frames (25 fps) needed to show all of `samples_16k` samples: ceil(N*25/16000)."""
    return -(-samples_16k * VIDEO_FPS // SAMPLE_RATE)


def frames_needed(frame_num: int) -> int:
    """Audio embedding frames the reference needs for one clip of frame_num: strictly more."""
    return frame_num + 1


def audio_padding(samples_16k: int, frame_num: int) -> tuple[int, int]:
    """(pad_to_samples, samples_to_append) so that a 16 kHz track of `samples_16k` samples
    feeds a clip of frame_num: silence appended up to the first length whose embedding has
    frame_num + 1 frames. (0 appended when it is long enough already.)"""
    target = max(samples_16k, samples_for_frames(frames_needed(frame_num)))
    return target, target - samples_16k


def largest_frame_num_for(audio_frames: int) -> int:
    """The largest 4n+1 frame_num an embedding of `audio_frames` frames can feed (< audio_frames)."""
    return snap_frame_num(audio_frames - 1)


# ------------------------------------------------------------------------------ clip schedule


@dataclass(frozen=True)
class ClipSpan:
    """One clip of the schedule: which audio frames feed it and what it adds to the video."""

    index: int
    is_first: bool
    n_cond: int  # conditioning frames: 1 (the image) for clip 0, motion_frame after
    audio_start: int  # audio frames [audio_start, audio_end) feed this clip's video frames
    audio_end: int
    kept: int  # frames this clip adds to the video (clip 0: all; later: without the motion frames)
    audio_len: tuple[
        int, ...
    ]  # per person embedding length this clip reads (tail padding included)
    window_range: tuple[int, int]  # first / last audio frame the +-window//2 windows read (clamped)


@dataclass(frozen=True)
class ClipSchedule:
    """The reference's clip loop bookkeeping (multitalk-facts §9.3 steps 14-17), computed once."""

    frame_num: int
    motion_frame: int
    max_frames: int  # the reference's max_frames_num: frame_num in clip mode
    clips: tuple[ClipSpan, ...]
    miss: tuple[int, ...]  # per person: reflection frames appended before the last clip
    video_frames: int  # frames generate() returns


def max_frames_of(mode: str, frame_num: int, max_frames_num: int) -> int:
    """The reference's max_frames_num: frame_num in clip mode, the cap when streaming."""
    return frame_num if mode == "clip" else max_frames_num


def streaming_clip_count(
    frame_num: int, motion_frame: int, max_frames: int, audio_frames: int
) -> int:
    """Clips the streaming loop runs (closed form of `clip_schedule`, for refusing huge plans)."""
    if max_frames <= frame_num:
        return 1
    horizon = min(max_frames, audio_frames)
    step = frame_num - motion_frame
    return 2 + max(0, horizon - 2 * frame_num + motion_frame) // step


def clip_schedule(
    frame_num: int,
    motion_frame: int,
    max_frames: int,
    audio_lengths: list[int] | tuple[int, ...],
    window: int = 5,
) -> ClipSchedule:
    """Every clip of a run, by the reference's bookkeeping.

    audio_lengths: per person embedding frames (after the short-audio padding). Clip mode is
    max_frames <= frame_num (one clip). Streaming: clips advance by frame_num - motion_frame;
    once a clip's end reaches min(max_frames, person 1's length) it is the last one, and every
    person whose track ends before it gets `end - length + 3` frames appended, time-reversed
    (at most the whole track). The video is the kept frames, capped at max_frames, minus
    person 1's reflection frames. A cut of 0 keeps everything: the reference's `video[:-0]`
    would be empty; the plan refuses that case (shapes' empty_output rule).
    """
    F, motion = frame_num, motion_frame
    if F < 1 or (max_frames > F and not 1 <= motion < F):
        raise ValueError(f"clip_schedule: frame_num {F} / motion_frame {motion} cannot advance.")
    L = [int(x) for x in audio_lengths]
    P = len(L)
    half = window // 2
    start, end, cur, first, last = 0, F, 1, True, False
    miss = [0] * P
    clips: list[ClipSpan] = []
    total = 0
    while True:
        kept = F if first else F - cur
        rng = (max(0, start - half), min(L[0] - 1, end - 1 + half))
        clips.append(ClipSpan(len(clips), first, cur, start, end, kept, tuple(L), rng))
        total += kept
        if last:
            break
        first, cur = False, motion
        start += F - cur
        end = start + F
        if end >= min(max_frames, L[0]):
            last = True
            for i in range(P):
                if end >= L[i]:
                    miss[i] = end - L[i] + TAIL_EXTRA
                    L[i] += min(miss[i], L[i])  # time-reversed tail: at most the whole track
        if max_frames <= F:
            break
    out = min(total, max_frames)
    if max_frames > F and miss[0] > 0:
        out = max(out - miss[0], 0)
    return ClipSchedule(F, motion, max_frames, tuple(clips), tuple(miss), out)
