"""Make the small example inputs in data/ (images drawn with Pillow, speech with espeak-ng).

Run from the repository root:  python data/make_data.py
Needs: Pillow, numpy, soundfile, soxr (all mtlib dependencies) and the espeak-ng program
(apt install espeak-ng). Deterministic: the same espeak-ng version gives the same bytes.

Outputs (see data/README.md):
  portrait.png            480x832 (WxH) drawn portrait: one face on a vertical gradient
  landscape_16x9.png      640x360 drawn landscape (no person)
  two_person_16x9.png     640x360 two drawn faces, left and right half
  speech_1p79s.wav        1.79 s, 16 kHz mono PCM_16, espeak-ng voice en-us (28640 samples, 44 frames)
  speech_5s.wav           5.00 s, same voice
  speech_b_1p79s.wav      1.79 s, second speaker: espeak-ng voice en-us+f3
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
SR = 16000  # wav2vec2 rate: the files need no resampling

# ---------------------------------------------------------------------------------------
# images


def vertical_gradient(
    w: int, h: int, top: tuple[int, int, int], bottom: tuple[int, int, int]
) -> Image.Image:
    t = np.linspace(0.0, 1.0, h)[:, None, None]
    rows = (1 - t) * np.array(top, float) + t * np.array(bottom, float)  # [h, 1, 3]
    return Image.fromarray(np.repeat(rows, w, axis=1).round().astype(np.uint8))


def draw_person(
    d: ImageDraw.ImageDraw, cx: int, top: int, head_w: int, skin, hair, shirt, bottom: int
) -> None:
    """A face-ish figure: shoulders, neck, head, hair, eyes, nose, mouth (centre cx)."""
    head_h = int(head_w * 1.3)
    # shoulders and shirt down to the bottom edge
    d.ellipse(
        [cx - int(1.6 * head_w), top + int(1.45 * head_h), cx + int(1.6 * head_w), bottom + head_h],
        fill=shirt,
    )
    d.rectangle(
        [cx - head_w // 5, top + int(0.85 * head_h), cx + head_w // 5, top + int(1.55 * head_h)],
        fill=skin,
    )
    # hair behind the head, then the head
    d.ellipse(
        [
            cx - int(0.56 * head_w),
            top - int(0.08 * head_h),
            cx + int(0.56 * head_w),
            top + int(0.75 * head_h),
        ],
        fill=hair,
    )
    d.ellipse([cx - head_w // 2, top, cx + head_w // 2, top + head_h], fill=skin)
    d.chord(
        [
            cx - int(0.52 * head_w),
            top - int(0.06 * head_h),
            cx + int(0.52 * head_w),
            top + int(0.5 * head_h),
        ],
        180,
        360,
        fill=hair,
    )
    # eyes
    ey = top + int(0.45 * head_h)
    for sx in (-1, 1):
        ex = cx + sx * int(0.2 * head_w)
        d.ellipse(
            [ex - head_w // 10, ey - head_w // 18, ex + head_w // 10, ey + head_w // 18],
            fill=(250, 250, 250),
        )
        d.ellipse(
            [ex - head_w // 28, ey - head_w // 28, ex + head_w // 28, ey + head_w // 28],
            fill=(40, 30, 30),
        )
        d.line(
            [ex - head_w // 8, ey - head_w // 7, ex + head_w // 8, ey - head_w // 7 - 2],
            fill=hair,
            width=max(2, head_w // 40),
        )
    # nose and mouth
    ny = top + int(0.62 * head_h)
    d.line(
        [cx, ey + head_w // 12, cx - head_w // 24, ny, cx + head_w // 24, ny],
        fill=(170, 110, 90),
        width=max(2, head_w // 60),
    )
    my = top + int(0.76 * head_h)
    d.arc(
        [cx - head_w // 6, my - head_w // 14, cx + head_w // 6, my + head_w // 14],
        10,
        170,
        fill=(150, 60, 60),
        width=max(2, head_w // 40),
    )


def make_portrait() -> Image.Image:
    w, h = 480, 832
    im = vertical_gradient(w, h, (70, 110, 160), (200, 215, 230))
    draw_person(
        ImageDraw.Draw(im), w // 2, 190, 220, (230, 190, 160), (60, 40, 30), (40, 70, 110), h
    )
    return im


def make_landscape() -> Image.Image:
    w, h = 640, 360
    im = vertical_gradient(w, h, (120, 170, 230), (235, 225, 200))
    d = ImageDraw.Draw(im)
    d.ellipse([470, 50, 540, 120], fill=(255, 220, 120))
    d.polygon(
        [
            (0, 250),
            (120, 150),
            (260, 240),
            (380, 130),
            (520, 230),
            (640, 170),
            (640, 360),
            (0, 360),
        ],
        fill=(90, 120, 90),
    )
    d.polygon(
        [(0, 300), (200, 250), (420, 290), (640, 260), (640, 360), (0, 360)], fill=(60, 100, 60)
    )
    d.rectangle([90, 270, 110, 320], fill=(90, 60, 40))
    d.ellipse([60, 220, 140, 290], fill=(40, 90, 50))
    return im


def make_two_person() -> Image.Image:
    w, h = 640, 360
    im = vertical_gradient(w, h, (180, 160, 140), (110, 90, 80))
    d = ImageDraw.Draw(im)
    draw_person(d, w // 4, 70, 110, (235, 195, 165), (50, 35, 25), (150, 50, 50), h)
    draw_person(d, 3 * w // 4, 80, 105, (180, 130, 100), (20, 20, 20), (50, 90, 140), h)
    return im


# ---------------------------------------------------------------------------------------
# speech


def espeak(text: str, voice: str, speed: int) -> tuple[np.ndarray, int]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "tts.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(out), text], check=True
        )
        x, sr = sf.read(out, dtype="float32")
    return x, sr


def trim_silence(x: np.ndarray, threshold: float = 1e-3) -> np.ndarray:
    idx = np.flatnonzero(np.abs(x) > threshold)
    return x[idx[0] : idx[-1] + 1] if idx.size else x


def speech_clip(text: str, voice: str, seconds: float, lead_s: float = 0.05) -> np.ndarray:
    """espeak-ng speech fitted into exactly `seconds` at 16 kHz: the slowest espeak speed
    whose trimmed speech fits (with `lead_s` of silence in front), zero-padded at the end."""
    n = int(round(seconds * SR))
    lead = int(round(lead_s * SR))
    for speed in range(150, 400, 10):
        x, sr = espeak(text, voice, speed)
        y = soxr.resample(trim_silence(x), sr, SR, quality="HQ").astype(np.float32)
        if lead + len(y) <= n - int(0.05 * SR):
            break
    else:
        raise RuntimeError(f"{text!r} does not fit into {seconds} s")
    out = np.zeros(n, np.float32)
    out[lead : lead + len(y)] = y
    peak = np.abs(out).max()
    return out * (0.7 / peak)  # leave headroom; loudness is normalised later anyway


def main() -> None:
    make_portrait().save(HERE / "portrait.png", optimize=True)
    make_landscape().save(HERE / "landscape_16x9.png", optimize=True)
    make_two_person().save(HERE / "two_person_16x9.png", optimize=True)
    clips = {
        "speech_1p79s.wav": ("Hello there, nice to meet you.", "en-us", 1.79),
        "speech_5s.wav": (
            "Hello there, nice to meet you. Today I will tell you a short story about a talking picture.",
            "en-us",
            5.0,
        ),
        "speech_b_1p79s.wav": ("Hi! Good to see you again.", "en-us+f3", 1.79),
    }
    for name, (text, voice, seconds) in clips.items():
        sf.write(HERE / name, speech_clip(text, voice, seconds), SR, subtype="PCM_16")
    for f in sorted(HERE.iterdir()):
        if f.suffix in (".png", ".wav"):
            print(f"{f.name:24s} {f.stat().st_size:8d} bytes")


if __name__ == "__main__":
    main()
