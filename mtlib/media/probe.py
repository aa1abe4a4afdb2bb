"""Metadata of input files (image size, audio length) without decoding samples or pixels.

The shape plan (`mtlib.plan`) needs only a few numbers from the user's files: the image's
width and height, and each speech track's sample rate and frame count. This module reads
them from file headers (PIL for images, soundfile for wav/flac/ogg, PyAV container metadata
for mp3/m4a/mp4/...), for local paths and URLs alike, so `mtlib plan` answers in
milliseconds and before any model is loaded. Unreadable input raises one `io.InputError`.

It also holds the two pieces of arithmetic the reference applies to an audio length:
librosa's resampled length `N16 = ceil(frames * 16000 / sr)` and the wav2vec2 embedding
length `int(N16 / 16000 * 25)` (25 video frames per second).
"""

from __future__ import annotations

import io as _io
import math
import os
from dataclasses import dataclass
from pathlib import Path

# the reference resamples every speech track to 16 kHz (librosa.load) and hard-codes 25 fps;
# the numbers and the embedding length live in mtlib.frames
from mtlib.frames import SAMPLE_RATE as AUDIO_SR
from mtlib.frames import VIDEO_FPS, embedding_frames  # noqa: F401 (probe's public names)
from mtlib.io import InputError, is_remote, local_file

# EXIF orientations 5..8 are rotations by 90 degrees: the displayed image has w and h swapped.
_EXIF_ORIENTATION = 0x0112
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)
_SOUNDFILE_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif", ".au")


@dataclass(frozen=True)
class ImageInfo:
    width: int  # displayed width (EXIF rotation applied)
    height: int  # displayed height (EXIF rotation applied)
    mode: str  # PIL mode, e.g. "RGB", "RGBA", "L"
    format: str | None  # PIL format name, e.g. "PNG", "JPEG"
    orientation: int = 1  # EXIF orientation tag (1 = none)
    stored_width: int = 0  # width as stored in the file (what PIL.Image.open reports)
    stored_height: int = 0  # height as stored in the file

    @property
    def rotated(self) -> bool:
        return self.orientation in _SWAPPING_ORIENTATIONS


@dataclass(frozen=True)
class AudioInfo:
    duration_s: float  # frames / sample_rate
    sample_rate: int  # native sample rate of the file (Hz)
    channels: int
    frames: int  # samples per channel at the native rate
    format: str  # container / codec name as reported by the reader
    exact: bool = True  # False when the frame count comes from a compressed stream's duration

    @property
    def samples_16k(self) -> int:
        return resampled_length(self.frames, self.sample_rate)

    @property
    def embedding_frames(self) -> int:
        return embedding_frames(self.samples_16k)


def resampled_length(frames: int, sample_rate: int, target_sr: int = AUDIO_SR) -> int:
    """Length after librosa.resample: int(ceil(n * (float(target) / orig))), same float order."""
    if sample_rate == target_sr:
        return int(frames)
    ratio = float(target_sr) / sample_rate
    return int(math.ceil(frames * ratio))


def _open_binary(src: str):
    """A seekable binary file object for a local path or URL (fsspec reads ranges lazily)."""
    if is_remote(src):
        try:
            import fsspec

            return fsspec.open(src, "rb").open()  # lazy range reads: only the header is fetched
        except ImportError:
            if src.startswith(("http://", "https://")):
                return _http_bytes(src)  # fsspec's http backend (aiohttp) is optional
            raise InputError(
                f"{src!r}: no fsspec backend for this URL scheme is installed. Fix: pip install "
                "s3fs / gcsfs, or download the file and pass a local path."
            ) from None
        except Exception as e:
            raise InputError(
                f"{src!r}: cannot be opened ({type(e).__name__}: {e}). Fix: check the URL and "
                "your network / credentials, or pass a local path."
            ) from None
    return open(local_file(src), "rb")


def _http_bytes(url: str) -> _io.BytesIO:
    """The whole body of an http(s) URL, when fsspec cannot read ranges (no aiohttp)."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return _io.BytesIO(r.read())
    except Exception as e:
        raise InputError(
            f"{url!r}: cannot be read ({type(e).__name__}: {e}). Fix: check the URL and your "
            "network, or download the file and pass a local path."
        ) from None


def probe_image(src: str | os.PathLike) -> ImageInfo:
    """Width, height, mode and format from the image header (no pixel decoding)."""
    from PIL import Image, UnidentifiedImageError

    src = str(src)
    with _open_binary(src) as f:
        try:
            with Image.open(f) as im:
                w, h = im.size
                mode, fmt = im.mode, im.format
                try:
                    orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
                except Exception:  # broken EXIF block: treat as unrotated
                    orientation = 1
        except Image.DecompressionBombError:
            w, h = _header_size(src)  # Pillow refused before mtlib's own guard could speak
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise InputError(
                f"image {src!r}: not a readable image ({type(e).__name__}: {e}). "
                "Fix: pass a PNG or JPEG file."
            ) from None
    if w <= 0 or h <= 0:
        raise InputError(f"image {src!r}: empty image ({w}x{h}).")
    from mtlib.media.image import check_pixel_count

    check_pixel_count(w, h, "image", src)
    dw, dh = (h, w) if orientation in _SWAPPING_ORIENTATIONS else (w, h)
    return ImageInfo(dw, dh, mode, fmt, orientation, w, h)


def _header_size(src: str) -> tuple[int, int]:
    """(width, height) from the header with Pillow's bomb check off: mtlib.media.image's guard decides."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with _open_binary(src) as f, Image.open(f) as im:
            return im.size
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def probe_audio(src: str | os.PathLike) -> AudioInfo:
    """Duration, sample rate, channels and frames from the audio header (no decoding)."""
    src = str(src)
    suffix = Path(src.split("?")[0]).suffix.lower()
    if suffix in _SOUNDFILE_SUFFIXES:
        info = _probe_soundfile(src)
        if info is not None:
            return info
    return _probe_av(src)


def _probe_soundfile(src: str) -> AudioInfo | None:
    import soundfile as sf

    with _open_binary(src) as f:
        try:
            info = sf.info(f)
        except Exception:
            return None  # let PyAV try (e.g. a .wav holding a compressed stream)
    if info.frames <= 0 or info.samplerate <= 0:
        raise InputError(
            f"audio {src!r}: no samples (frames={info.frames}). Fix: pass a speech recording."
        )
    return AudioInfo(
        duration_s=info.frames / info.samplerate,
        sample_rate=int(info.samplerate),
        channels=int(info.channels),
        frames=int(info.frames),
        format=str(info.format),
    )


def _probe_av(src: str) -> AudioInfo:
    import av

    with _open_binary(src) as f:
        data = f if not is_remote(src) else _io.BytesIO(f.read())
        try:
            with av.open(data, mode="r") as container:
                streams = container.streams.audio
                if not streams:
                    raise InputError(
                        f"audio {src!r}: the file has no audio stream. Fix: pass a file with speech."
                    )
                st = streams[0]
                sr = int(st.rate or st.codec_context.sample_rate or 0)
                channels = int(st.channels or st.codec_context.channels or 0)
                if st.duration is not None and st.time_base is not None:
                    seconds = float(st.duration * st.time_base)
                elif container.duration is not None:
                    seconds = container.duration / 1_000_000  # av.time_base
                else:
                    seconds = 0.0
                fmt = container.format.name
        except InputError:
            raise
        except Exception as e:
            raise InputError(
                f"audio {src!r}: not a readable audio file ({type(e).__name__}: {e}). "
                "Fix: pass a wav, flac, mp3, m4a or a video with an audio track."
            ) from None
    if sr <= 0 or seconds <= 0:
        raise InputError(f"audio {src!r}: no duration or sample rate in the container metadata.")
    frames = int(round(seconds * sr))
    return AudioInfo(seconds, sr, channels, frames, fmt, exact=False)
