"""Frames -> mp4 (H.264 + AAC) and back, through PyAV (no system ffmpeg).

The last step of a run: the video [3, N, H, W] in [-1, 1] returned by `mtlib.pipeline.generate`
is written at 25 fps with the speech track muxed in, like the reference's `save_video_ffmpeg`
(facts §9.5): pixels become uint8 by ((x + 1) / 2 · 255, clipped, TRUNCATED — no rounding),
the video is H.264 yuv420p, the audio AAC cut to the video's length (N / fps seconds). The
file appears atomically (mtlib.io.atomic_path) and carries the run's resolved config and seed
as a JSON `comment` tag. `read_mp4` decodes a file back for tests and notebooks; `frame_strip`
draws a few frames for a quick look.
"""

from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtlib.extras import require
from mtlib.io import InputError, atomic_path

AAC_FRAME_SIZE = 1024  # samples per AAC frame


def to_uint8_frames(frames: torch.Tensor | np.ndarray) -> np.ndarray:
    """[3, N, H, W] float in [-1, 1] (or uint8 [N, H, W, 3] as is) -> uint8 [N, H, W, 3].

    Float pixels map like the reference: (x + 1) / 2 · 255, clipped to [0, 255], truncated.
    """
    if isinstance(frames, np.ndarray) and frames.dtype == np.uint8:
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise InputError(f"uint8 frames must be [N, H, W, 3], got {list(frames.shape)}.")
        return np.ascontiguousarray(frames)
    x = torch.as_tensor(frames)
    if x.dtype == torch.uint8:
        return to_uint8_frames(x.cpu().numpy())
    if x.ndim != 4 or x.shape[0] != 3:
        raise InputError(
            f"video frames must be [3, N, H, W] floats in [-1, 1] (generate()'s output) or uint8 "
            f"[N, H, W, 3], got {list(x.shape)} {x.dtype}."
        )
    x = ((x.detach().float().cpu() + 1) / 2 * 255).clamp(0, 255).to(torch.uint8)  # truncates
    return x.permute(1, 2, 3, 0).contiguous().numpy()  # [N, H, W, 3]


def _load_audio(audio: Any) -> tuple[np.ndarray, int] | None:
    """(mono float32 samples, sample rate) from None, (samples, sr) or an audio file path."""
    if audio is None:
        return None
    if isinstance(audio, (str, os.PathLike)):
        import soundfile as sf

        from mtlib.io import resolve_local

        path = resolve_local(audio)
        if not path.exists():
            raise InputError(f"audio {str(audio)!r}: file not found. Fix: pass an existing path.")
        samples, sr = sf.read(str(path), dtype="float32", always_2d=True)
        return samples.mean(axis=1).astype(np.float32), int(sr)
    try:
        samples, sr = audio
    except (TypeError, ValueError):
        raise InputError(
            "audio must be None, a file path, or a (samples, sample_rate) pair of mono float32 "
            "samples and an int rate."
        ) from None
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1:
        raise InputError(f"audio samples must be mono [n], got shape {list(samples.shape)}.")
    return samples, int(sr)


def write_mp4(
    frames: torch.Tensor | np.ndarray,
    path: str | os.PathLike,
    fps: int = 25,
    audio: Any = None,
    metadata: dict | None = None,
    crf: int = 18,  # x264 constant quality (0 lossless, 23 x264's default)
) -> Path:
    """Write `frames` ([3, N, H, W] in [-1, 1] or uint8 [N, H, W, 3]) as an H.264 mp4.

    audio: None, (mono float32 samples, sample_rate) or an audio file; it is trimmed to
    N / fps seconds (silence-padded if shorter) and encoded as AAC. metadata: a JSON-able dict
    (resolved config, seed, ...) stored in the `comment` tag. Returns the written path; on any
    failure nothing is left at `path`.
    """
    import av

    video = to_uint8_frames(frames)  # [N, H, W, 3]
    n, height, width, _ = video.shape
    if n == 0:
        raise InputError("write_mp4: the video has no frames.")
    if height % 2 or width % 2:
        raise InputError(
            f"write_mp4: {height}x{width} frames: yuv420p needs an even height and width. Fix: "
            "crop one row / column (bucket sizes are always even)."
        )
    sound = _load_audio(audio)
    path = Path(path)
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            if metadata:
                container.metadata["comment"] = json.dumps(metadata, sort_keys=True, default=str)
            vstream = container.add_stream("libx264", rate=Fraction(fps))
            vstream.width, vstream.height = width, height
            vstream.pix_fmt = "yuv420p"
            # mbtree=0: with x264's macroblock-tree rate control the same frames gave different
            # bitstreams from run to run (measured on small frames); without it they do not
            vstream.options = {"crf": str(crf), "x264-params": "mbtree=0"}
            # x264's frame threads rather than PyAV's default slice threads, which split each
            # 448-row frame into thin slices and scale worse over many cores (the write took
            # 2.5 s for 81 frames on the H200's 16-core host); output is the same run to run
            vstream.codec_context.thread_type = "FRAME"
            astream = None
            if sound is not None:
                samples, sr = sound
                astream = container.add_stream("aac", rate=sr)
                astream.layout = "mono"
            for i, image in enumerate(video):
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                # explicit timestamps: x264's rate control and the muxer read them
                frame.pts = i
                frame.time_base = Fraction(1, fps)
                for packet in vstream.encode(frame):
                    container.mux(packet)
            for packet in vstream.encode():
                container.mux(packet)
            if astream is not None:
                # the speech track covers exactly the video: N / fps seconds
                n_samples = int(round(n * sr / fps))
                samples = samples[:n_samples]
                if samples.shape[0] < n_samples:
                    samples = np.pad(samples, (0, n_samples - samples.shape[0]))
                for start in range(0, n_samples, AAC_FRAME_SIZE):
                    chunk = samples[start : start + AAC_FRAME_SIZE][None, :]  # [1, n] planar
                    aframe = av.AudioFrame.from_ndarray(
                        np.ascontiguousarray(chunk), format="fltp", layout="mono"
                    )
                    aframe.sample_rate = sr
                    aframe.pts = start
                    aframe.time_base = Fraction(1, sr)
                    for packet in astream.encode(aframe):
                        container.mux(packet)
                for packet in astream.encode():
                    container.mux(packet)
    return path


def read_mp4(path: str | os.PathLike) -> tuple[np.ndarray, tuple[np.ndarray, int] | None, dict]:
    """Decode an mp4: (frames uint8 [N, H, W, 3], (mono float32 samples, sr) or None, info).

    info: fps, width, height, n_frames, duration_s (video), audio_duration_s, codec names and
    `metadata` (the JSON comment tag decoded, or {}).
    """
    import av

    path = Path(path)
    if not path.exists():
        raise InputError(f"read_mp4: {str(path)!r} not found.")
    with av.open(str(path)) as container:
        comment = container.metadata.get("comment", "")
        try:
            meta = json.loads(comment) if comment else {}
        except json.JSONDecodeError:
            meta = {"comment": comment}
        vstream = container.streams.video[0]
        fps = float(vstream.average_rate) if vstream.average_rate else None
        info: dict[str, Any] = dict(
            fps=fps,
            width=vstream.codec_context.width,
            height=vstream.codec_context.height,
            video_codec=vstream.codec_context.name,
            pix_fmt=vstream.codec_context.pix_fmt,
            metadata=meta,
        )
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    audio = None
    with av.open(str(path)) as container:
        if container.streams.audio:
            astream = container.streams.audio[0]
            sr = astream.codec_context.sample_rate
            chunks = [f.to_ndarray() for f in container.decode(audio=0)]  # [channels, n] fltp
            samples = np.concatenate(chunks, axis=1).mean(axis=0).astype(np.float32)
            info["audio_codec"] = astream.codec_context.name
            # the stream duration excludes the encoder's priming and the last frame's padding
            duration = float(astream.duration * astream.time_base) if astream.duration else None
            info["audio_duration_s"] = duration
            if duration is not None:
                samples = samples[: int(round(duration * sr))]
            audio = (samples, sr)
    video = (
        np.stack(frames) if frames else np.zeros((0, info["height"], info["width"], 3), np.uint8)
    )
    info["n_frames"] = int(video.shape[0])
    info["duration_s"] = info["n_frames"] / fps if fps else None
    return video, audio, info


def frame_strip(video: torch.Tensor | np.ndarray, n: int = 8, title: str | None = None):
    """A matplotlib figure with n evenly spaced frames of the video (for notebooks)."""
    plt = require("matplotlib.pyplot", "notebooks", "the frame plot")

    frames = to_uint8_frames(video)  # [N, H, W, 3]
    count = min(n, frames.shape[0])
    idx = np.linspace(0, frames.shape[0] - 1, count).round().astype(int)
    h, w = frames.shape[1:3]
    fig, axes = plt.subplots(1, count, figsize=(2.2 * count * w / max(h, w), 2.4), squeeze=False)
    for ax, i in zip(axes[0], idx, strict=True):
        ax.imshow(frames[i])
        ax.set_title(f"frame {i}", fontsize=8)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
