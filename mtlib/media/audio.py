"""Speech front-end: file -> 16 kHz mono waveform -> loudness -> wav2vec2 embedding.

Where it sits: first stage of the flow. `prepare_speech` turns one speaker's file (local
path, https:// or s3://) into the loudness-normalised 16 kHz waveform the reference feeds
to wav2vec2; `combine_speakers` builds the two-person tracks ('para' / 'add');
`embed_audio` runs the encoder of `mtlib.models.wav2vec` (with an on-disk cache) and
returns `audio_embedding` [T, layers, hidden] at 25 video frames per second.

Fidelity: decoding + downmix + resampling reproduce `librosa.load(path, sr=16000)` bit for
bit (soundfile float32 read, mean of the channels, soxr 'HQ', length ceil(n * sr / sr_in))
without importing librosa; loudness is pyloudnorm's BS.1770 meter, as in the reference.
Containers that libsndfile cannot read (mp3, m4a/aac, mp4/mov/webm audio tracks) are
decoded with PyAV, which ships its own FFmpeg: no system ffmpeg is needed. (For video
files the reference first runs `ffmpeg -ar 16000 -ac 2` to a wav, i.e. FFmpeg's resampler;
mtlib decodes at the native rate and resamples with soxr like every other input, so
embeddings of video inputs differ slightly from the reference's.)

Every bad input raises `AudioInputError` (an `io.InputError`) naming the input, the rule
and the fix, before anything is computed or written.
"""

from __future__ import annotations

import hashlib
import io as _stdio
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from mtlib import io, trace
from mtlib.extras import pyplot

# 16 kHz (wav2vec2's rate, every waveform in mtlib) and 25 video frames per second: mtlib.frames
from mtlib.frames import SAMPLE_RATE, VIDEO_FPS, embedding_frames

if TYPE_CHECKING:
    import torch

    from mtlib.models.wav2vec import AudioEncoder

LOUDNESS_TARGET_LUFS = -23.0  # reference `loudness_norm` target
LOUDNESS_BLOCK_S = 0.4  # BS.1770 gating block: pyloudnorm needs at least one

# Which decoder reads which extension. libsndfile (soundfile) is exact and fast for these;
# it is also what librosa.load uses, so the golden wavs decode identically.
SOUNDFILE_EXTS = (".wav", ".flac", ".ogg", ".oga")
# Everything else goes through PyAV (compressed audio, and audio tracks of video files).
PYAV_EXTS = (".mp3", ".m4a", ".aac", ".opus", ".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi")


class AudioInputError(io.InputError):
    """An audio input mtlib refuses (unreadable, empty, silent, too short, NaN ...)."""


# ---------------------------------------------------------------------------------------
# decoding


def _ext_of(src: str) -> str:
    # URLs may carry ?query or #fragment after the file name
    name = src.split("?", 1)[0].split("#", 1)[0]
    return os.path.splitext(name)[1].lower()


def _looks_like_text(data: bytes) -> bool:
    head = data[:512]
    if not head or b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _decode_soundfile(data: bytes) -> tuple[np.ndarray, int]:
    import soundfile as sf

    # float32 as librosa reads it; [N, C] -> [C, N]
    y, sr = sf.read(_stdio.BytesIO(data), dtype="float32", always_2d=True)
    return np.ascontiguousarray(y.T), int(sr)


def _frame_to_float(frame) -> np.ndarray:
    """One PyAV AudioFrame -> float32 [C, n] (PCM scaled as libsndfile scales it)."""
    arr = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if not frame.format.is_planar:  # packed: [1, n * C] interleaved
        arr = arr.reshape(-1, channels).T
    if arr.dtype == np.int16:
        return arr.astype(np.float32) / 32768.0
    if arr.dtype == np.int32:
        return (arr.astype(np.float64) / 2147483648.0).astype(np.float32)
    if arr.dtype == np.uint8:
        return (arr.astype(np.float32) - 128.0) / 128.0
    return arr.astype(np.float32)


def _decode_pyav(data: bytes) -> tuple[np.ndarray, int]:
    import av

    with av.open(_stdio.BytesIO(data), mode="r") as container:
        streams = [s for s in container.streams if s.type == "audio"]
        if not streams:
            raise _NoAudioTrack()
        stream = streams[0]
        chunks = [_frame_to_float(f) for f in container.decode(stream)]
        sr = int(stream.codec_context.sample_rate or stream.rate)
    if not chunks:
        return np.zeros((1, 0), np.float32), sr
    return np.concatenate(chunks, axis=1), sr


class _NoAudioTrack(Exception):
    pass


def decode_audio(data: bytes, src: str = "audio", what: str = "audio") -> tuple[np.ndarray, int]:
    """Bytes of an audio/video file -> (float32 [channels, samples], native sample rate).

    The decoder is chosen by the extension of `src` (soundfile for wav/flac/ogg, PyAV for
    compressed audio and video containers); without an extension both are tried.
    """
    ext = _ext_of(src)
    if not data:
        raise AudioInputError(
            f"{what} {src!r}: the file is empty (0 bytes). Fix: pass a speech recording "
            "(wav, flac, ogg, mp3, m4a, or a video with an audio track)."
        )
    if ext and ext not in SOUNDFILE_EXTS + PYAV_EXTS:
        raise AudioInputError(
            f"{what} {src!r}: unsupported format {ext!r}. Supported: "
            f"{', '.join(SOUNDFILE_EXTS + PYAV_EXTS)}. Fix: convert it to wav (16 kHz mono is ideal)."
        )
    if ext in SOUNDFILE_EXTS or not ext:
        try:
            return _decode_soundfile(data)
        except Exception as e:
            if ext:  # a .wav/.flac/.ogg that neither libsndfile nor FFmpeg parses is broken
                try:  # e.g. an mp3 or A-law payload in a WAVE container
                    y, sr = _decode_pyav(data)
                    if y.shape[-1] > 0:
                        return y, sr
                except Exception:
                    pass
                kind = "a text file, not audio" if _looks_like_text(data) else f"corrupt ({e})"
                raise AudioInputError(
                    f"{what} {src!r}: cannot be decoded as {ext[1:]}: it is {kind}. "
                    "Fix: re-export the recording as a valid wav/flac/ogg file."
                ) from None
    try:
        return _decode_pyav(data)
    except _NoAudioTrack:
        raise AudioInputError(
            f"{what} {src!r}: the container has no audio track. Fix: pass a file with speech audio."
        ) from None
    except Exception as e:
        kind = (
            "a text file, not audio"
            if _looks_like_text(data)
            else f"corrupt ({type(e).__name__}: {e})"
        )
        raise AudioInputError(
            f"{what} {src!r}: cannot be decoded as audio: it is {kind}. "
            "Fix: pass a valid wav, flac, ogg, mp3, m4a or video file."
        ) from None


def downmix(y: np.ndarray) -> np.ndarray:
    """[C, N] -> [N]: mean of the channels in float32 (librosa.to_mono)."""
    return np.mean(y, axis=0) if y.ndim > 1 else y


def resample(x: np.ndarray, orig_sr: int, sr: int = SAMPLE_RATE) -> np.ndarray:
    """librosa.resample(res_type='soxr_hq') without librosa: soxr HQ, then the length is fixed
    to ceil(n * sr / orig_sr) (zero-padded or trimmed), dtype kept."""
    if orig_sr == sr:
        return x
    import soxr

    n_out = int(np.ceil(x.shape[-1] * (float(sr) / orig_sr)))
    y = soxr.resample(x, orig_sr, sr, quality="soxr_hq")
    if y.shape[-1] > n_out:
        y = y[:n_out]
    elif y.shape[-1] < n_out:
        y = np.pad(y, (0, n_out - y.shape[-1]))
    return np.asarray(y, dtype=x.dtype)


def load_audio(src: str | os.PathLike, sr: int = SAMPLE_RATE, what: str = "audio") -> np.ndarray:
    """Any supported file (local, https://, s3://) -> float32 mono waveform at `sr`.

    Equal to `librosa.load(src, sr=sr)[0]` for files libsndfile reads. Refuses files that
    are empty, undecodable, have zero samples or contain NaN/inf.
    """
    src_s = str(src)
    data = io.read_bytes(src_s, what=what)
    y, native_sr = decode_audio(data, src_s, what)
    if y.shape[-1] == 0:
        raise AudioInputError(
            f"{what} {src_s!r}: the file decodes to zero samples. Fix: pass a recording with speech."
        )
    if not np.isfinite(y).all():
        raise AudioInputError(
            f"{what} {src_s!r}: contains NaN or infinite samples. Fix: re-export the recording "
            "(a float wav with invalid values)."
        )
    x = resample(downmix(y), native_sr, sr)
    if trace.active():
        trace.point("audio.raw16k", _as_tensor(x))
    return x


# ---------------------------------------------------------------------------------------
# loudness


def check_loudness_length(x: np.ndarray, sr: int, what: str = "audio") -> None:
    need = int(math.ceil(LOUDNESS_BLOCK_S * sr))
    if len(x) < need:
        raise AudioInputError(
            f"{what}: {len(x) / sr:.3f} s long ({len(x)} samples at {sr} Hz); loudness "
            f"normalisation (BS.1770) needs at least {LOUDNESS_BLOCK_S} s ({need} samples). "
            "Fix: use a longer clip (the video also needs more audio frames than frame_num)."
        )


def integrated_loudness(x: np.ndarray, sr: int = SAMPLE_RATE, what: str = "audio") -> float:
    """BS.1770 integrated loudness in LUFS (pyloudnorm), -inf for silence."""
    import pyloudnorm

    check_loudness_length(x, sr, what)
    return float(pyloudnorm.Meter(sr).integrated_loudness(x))


def loudness_norm(
    x: np.ndarray, sr: int = SAMPLE_RATE, target: float = LOUDNESS_TARGET_LUFS, what: str = "audio"
) -> np.ndarray:
    """Gain-normalise to `target` LUFS like the reference: unchanged when |loudness| > 100
    (silence gives -inf), no clipping protection. Clips shorter than one 0.4 s block raise."""

    loudness = integrated_loudness(x, sr, what)
    if abs(loudness) > 100:
        out = x
    else:
        # pyloudnorm.normalize.loudness is `10 ** (delta / 20) * x`; the gain is cast to x's
        # dtype first, as NumPy 1 did (the reference's stack): NumPy 2 would promote float32
        # audio to float64 here.
        gain = np.power(10.0, (target - loudness) / 20.0)
        out = x * np.asarray(gain, dtype=x.dtype)
    if trace.active():
        trace.point("audio.loudnorm", _as_tensor(out))
    return out


def prepare_speech(
    src: str | os.PathLike, sr: int = SAMPLE_RATE, what: str = "audio"
) -> np.ndarray:
    """One speaker's file -> loudness-normalised float32 waveform (reference
    `audio_prepare_single`).

    Silence policy: the reference passes a silent track through unnormalised and then
    animates a face from it without complaint. A speaker file that is pure digital silence
    (every sample exactly 0) is almost always a wrong export or wrong channel, so mtlib
    refuses it here. A deliberately silent second person is still possible: pass None for
    that speaker to `combine_speakers`, which builds the zero track itself as the
    reference does for 'None'.
    """
    x = load_audio(src, sr, what)
    check_loudness_length(x, sr, f"{what} {str(src)!r}")
    if not np.any(x):
        raise AudioInputError(
            f"{what} {str(src)!r}: is digital silence (every sample is 0); a speaker track must "
            "contain speech. Fix: check the file/channel, or pass None for a silent second "
            "person."
        )
    return loudness_norm(x, sr, what=f"{what} {str(src)!r}")


# ---------------------------------------------------------------------------------------
# two speakers


@dataclass
class SpeakerTracks:
    """The two person tracks fed to wav2vec2 separately, and their sum for muxing."""

    person1: np.ndarray  # [N] waveform of person 1 (16 kHz)
    person2: np.ndarray  # [N] waveform of person 2, same length
    sum: np.ndarray  # [N] person1 + person2, the audio track of the video
    real_samples: tuple[int, int]  # unpadded lengths of the two inputs


def para_length_message(n1: int, n2: int) -> str:
    """The refusal of unequal 'para' tracks (the plan's para_equal_length says the same)."""
    return (
        f"audio_type 'para' (both speak at once): the two tracks have {n1} and {n2} samples at "
        "16 kHz; 'para' sums them sample by sample for the soundtrack, so they must be equally "
        "long (the reference fails with 'operands could not be broadcast'). Fix: trim or pad the "
        "two recordings to the same length, or use audio_type 'add' if they speak one after the other."
    )


def combine_speakers(
    a: np.ndarray | None, b: np.ndarray | None, mode: Literal["para", "add"] = "para"
) -> SpeakerTracks:
    """Reference `audio_prepare_multi` on prepared waveforms.

    'para' (simultaneous): the tracks as they are; they must be equally long (one rule with
    the shape plan's para_equal_length: the reference crashes on unequal lengths, mtlib
    refuses them with the fix).
    'add' (turns): person1 = [a; zeros(len b)], person2 = [zeros(len a); b]. As in the
    reference the zeros are float64, so the 'add' tracks are float64.
    None for one speaker stands for the reference's 'None' path: zeros of the other's length.
    """
    if a is None and b is None:
        raise AudioInputError(
            "combine_speakers: both speakers are None. Fix: pass at least one track."
        )
    if a is None:
        a = np.zeros(b.shape[0])
    if b is None:
        b = np.zeros(a.shape[0])
    real = (int(a.shape[0]), int(b.shape[0]))
    if mode == "para":
        if real[0] != real[1]:
            raise AudioInputError(para_length_message(*real))
        p1, p2 = a, b
    elif mode == "add":
        p1 = np.concatenate([a, np.zeros(b.shape[0])])
        p2 = np.concatenate([np.zeros(a.shape[0]), b])
    else:
        raise AudioInputError(
            f"audio_type {mode!r}: allowed 'para' (simultaneous) or 'add' (turns)."
        )
    tracks = SpeakerTracks(p1, p2, p1 + p2, real)
    if trace.active():
        trace.point("audio.person1", _as_tensor(tracks.person1))
        trace.point("audio.person2", _as_tensor(tracks.person2))
        trace.point("audio.sum", _as_tensor(tracks.sum))
    return tracks


# ---------------------------------------------------------------------------------------
# short audio


def audio_frames(num_samples: int, sr: int = SAMPLE_RATE, fps: int = VIDEO_FPS) -> int:
    """Embedding frames the reference derives from a waveform: int(len / sr * fps)."""
    return embedding_frames(num_samples, sr, fps)


@dataclass
class PaddedWaveform:
    waveform: np.ndarray  # [N_padded] real samples followed by silence
    real_samples: int  # length before padding (trim the video / mux the audio to this)
    frames: int  # audio_frames(N_padded) >= frames_needed


def pad_waveform_for_frames(
    x: np.ndarray, sr: int, frames_needed: int, fps: int = VIDEO_FPS, margin_frames: float = 0.5
) -> PaddedWaveform:
    """Append silence to the waveform (before wav2vec2) so that int(len/sr*fps) >= frames_needed.

    `margin_frames` of extra silence keeps float truncation from landing one frame short.
    The shape plan decides frames_needed (the reference wants STRICTLY more audio frames
    than frame_num, so it asks for frame_num + 1). Unchanged when already long enough.
    Apply it after `loudness_norm` (the gain is measured on the real speech) and before
    `embed_audio`; trim the video to `real_samples` and mux the unpadded audio afterwards.
    """
    n = int(x.shape[0])
    if audio_frames(n, sr, fps) >= frames_needed:
        return PaddedWaveform(x, n, audio_frames(n, sr, fps))
    target = int(math.ceil((frames_needed + margin_frames) * sr / fps))
    while audio_frames(target, sr, fps) < frames_needed:  # defensive; never loops in practice
        target += 1
    padded = np.concatenate([x, np.zeros(target - n, dtype=x.dtype)])
    return PaddedWaveform(padded, n, audio_frames(target, sr, fps))


# ---------------------------------------------------------------------------------------
# embedding (cached)

EMBED_CACHE_VERSION = "1"  # bump when the embedding computation changes


def embedding_cache_key(waveform: np.ndarray, encoder: AudioEncoder, sr: int = SAMPLE_RATE) -> str:
    h = hashlib.sha256()
    x = np.ascontiguousarray(waveform)
    h.update(f"{x.dtype.str}{x.shape}".encode())
    h.update(x.tobytes())
    settings = {
        "v": EMBED_CACHE_VERSION,
        "model": encoder.model_id,
        "fingerprint": encoder.fingerprint,
        "sr": sr,
        "fps": VIDEO_FPS,
    }
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()


def embed_audio(
    waveform: np.ndarray,
    encoder: AudioEncoder,
    cache_dir: str | os.PathLike | None = None,
    sr: int = SAMPLE_RATE,
) -> torch.Tensor:
    """Waveform (16 kHz, already loudness-normalised) -> audio_embedding [T, layers, hidden].

    With `cache_dir`, the result is stored as `<sha256>.safetensors` keyed by the waveform
    bytes, the encoder identity and the settings, with metadata (duration, sample_rate,
    frames, model); the write is atomic, and a hit skips wav2vec2 entirely.
    """
    if sr != SAMPLE_RATE:
        raise AudioInputError(
            f"embed_audio: sample rate {sr} Hz; wav2vec2 needs {SAMPLE_RATE}. Fix: load_audio(..., sr=16000)."
        )
    x = np.asarray(waveform)
    if x.ndim != 1 or x.shape[0] == 0:
        raise AudioInputError(
            f"embed_audio: waveform shape {x.shape}; expected a non-empty 1-D array."
        )
    if not np.isfinite(x).all():
        raise AudioInputError(
            "embed_audio: waveform contains NaN or infinite samples. Fix: check the input file."
        )
    frames = audio_frames(x.shape[0], sr)
    if frames < 1:
        raise AudioInputError(
            f"embed_audio: {x.shape[0] / sr:.3f} s gives {frames} video frames at {VIDEO_FPS} fps; "
            "need at least 1. Fix: pass a longer clip."
        )
    path = None
    if cache_dir is not None:
        from safetensors.torch import load_file

        path = Path(cache_dir) / f"{embedding_cache_key(x, encoder, sr)}.safetensors"
        if path.exists():
            emb = load_file(str(path))["audio_embedding"]
            if trace.active():
                trace.point("audio.embedding", emb)
            return emb
    emb = encoder.embed(x)  # traces audio.input_values ... audio.embedding
    if path is not None:
        from safetensors.torch import save_file

        meta = {
            "duration_s": repr(x.shape[0] / sr),
            "sample_rate": str(sr),
            "frames": str(int(emb.shape[0])),
            "model_id": encoder.model_id,
            "fingerprint": encoder.fingerprint,
        }
        with io.atomic_path(path) as tmp:
            save_file({"audio_embedding": emb.contiguous()}, str(tmp), metadata=meta)
    return emb


def read_embedding_metadata(path: str | os.PathLike) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def _as_tensor(x: Any):
    import torch

    return torch.from_numpy(np.ascontiguousarray(x))


# ---------------------------------------------------------------------------------------
# plots (for notebook 01)


def plot_loudness(raw: np.ndarray, normed: np.ndarray, sr: int = SAMPLE_RATE):
    """Figure: waveform and spectrogram before / after loudness normalisation (2x2),
    titled with the integrated loudness of each. Returns a matplotlib Figure."""
    plt = pyplot("the audio plot")
    fig, axes = plt.subplots(2, 2, figsize=(12, 6), sharex="col")
    for col, (x, label) in enumerate(((raw, "raw 16 kHz"), (normed, "loudness-normalised"))):
        x = np.asarray(x, dtype=np.float32)
        t = np.arange(len(x)) / sr
        try:
            lufs = f"{integrated_loudness(x, sr):.2f} LUFS"
        except AudioInputError:
            lufs = "too short for BS.1770"
        axes[0, col].plot(t, x, lw=0.5)
        axes[0, col].set_title(f"{label}: {lufs}, peak {np.abs(x).max():.3f}")
        axes[0, col].set_ylabel("amplitude")
        with np.errstate(divide="ignore"):  # exact digital silence has -inf dB
            axes[1, col].specgram(x, NFFT=512, Fs=sr, noverlap=384, cmap="magma")
        axes[1, col].set_ylabel("Hz")
        axes[1, col].set_xlabel("s")
    top = max(np.abs(np.asarray(raw)).max(), np.abs(np.asarray(normed)).max(), 1e-6)
    for ax in axes[0]:
        ax.set_ylim(-top, top)  # same scale so the gain is visible
    fig.tight_layout()
    return fig


def plot_embedding(audio_embedding, title: str = "audio_embedding"):
    """Figure: L2 norm over channels of audio_embedding [T, layers, hidden] as a layers x
    frames heatmap, plus the channels of the last layer over time. Returns a Figure."""
    plt = pyplot("the audio plot")
    emb = np.asarray(
        audio_embedding.detach().cpu() if hasattr(audio_embedding, "detach") else audio_embedding,
        dtype=np.float32,
    )
    T, L, C = emb.shape
    fig, axes = plt.subplots(2, 1, figsize=(12, 6))
    im = axes[0].imshow(
        np.linalg.norm(emb, axis=2).T, aspect="auto", origin="lower", interpolation="nearest"
    )
    axes[0].set_title(f"{title} [{T}, {L}, {C}]: per-frame L2 norm by layer")
    axes[0].set_ylabel("layer")
    fig.colorbar(im, ax=axes[0])
    im = axes[1].imshow(
        emb[:, -1, :].T, aspect="auto", origin="lower", interpolation="nearest", cmap="coolwarm"
    )
    axes[1].set_title(f"layer {L - 1}: channels over frames (25 fps)")
    axes[1].set_ylabel("channel")
    axes[1].set_xlabel("frame")
    fig.colorbar(im, ax=axes[1])
    fig.tight_layout()
    return fig
