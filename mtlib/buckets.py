"""Aspect-ratio size buckets of MultiTalk, and the resize / centre-crop arithmetic.

The reference picks a target size (H, W) for the conditioning image from a table keyed by
the ratio h/w: the key closest to src_h/src_w wins (ties: the earlier key in table order).
The image is then resized to cover (H, W) and centre-cropped. This module is metadata only
(no pixels), so the shape plan can use it in microseconds; `mtlib.media.image` does the pixels.

Tables are configuration: "official" holds the reference's ASPECT_RATIO_627 (multitalk-480)
and ASPECT_RATIO_960 (multitalk-720); "tiny" holds the small tables the golden end-to-end
runs used, so the whole pipeline runs on a CPU in seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# key (h/w as written in the reference) -> (H, W)
OFFICIAL_TABLES: dict[str, dict[str, tuple[int, int]]] = {
    "multitalk-480": {
        "0.26": (320, 1216),
        "0.38": (384, 1024),
        "0.50": (448, 896),
        "0.67": (512, 768),
        "0.82": (576, 704),
        "1.00": (640, 640),
        "1.22": (704, 576),
        "1.50": (768, 512),
        "1.86": (832, 448),
        "2.00": (896, 448),
        "2.50": (960, 384),
        "2.83": (1088, 384),
        "3.60": (1152, 320),
        "3.80": (1216, 320),
        "4.00": (1280, 320),
    },
    "multitalk-720": {
        "0.22": (448, 2048),
        "0.29": (512, 1792),
        "0.36": (576, 1600),
        "0.45": (640, 1408),
        "0.55": (704, 1280),
        "0.63": (768, 1216),
        "0.76": (832, 1088),
        "0.88": (896, 1024),
        "1.00": (960, 960),
        "1.14": (1024, 896),
        "1.31": (1088, 832),
        "1.50": (1152, 768),
        "1.58": (1216, 768),
        "1.82": (1280, 704),
        "1.91": (1344, 704),
        "2.20": (1408, 640),
        "2.30": (1472, 640),
        "2.67": (1536, 576),
        "2.89": (1664, 576),
        "3.62": (1856, 512),
        "3.75": (1920, 512),
    },
}

# The golden end-to-end runs' tables (golden README §2.7): tiny sizes for CPU runs.
TINY_TABLES: dict[str, dict[str, tuple[int, int]]] = {
    "multitalk-480": {
        "0.50": (48, 96),
        "0.75": (48, 64),
        "1.00": (48, 48),
        "1.33": (64, 48),
        "2.00": (96, 48),
    },
    "multitalk-720": {"0.43": (48, 112), "0.57": (64, 112), "1.00": (64, 64), "1.75": (112, 64)},
}


def bucket_table(size: str, kind: str = "official") -> dict[str, tuple[int, int]]:
    tables = {"official": OFFICIAL_TABLES, "tiny": TINY_TABLES}.get(kind)
    if tables is None:
        raise ValueError(f"bucket table kind {kind!r}: allowed 'official' or 'tiny'.")
    if size not in tables:
        raise ValueError(f"size {size!r}: allowed {', '.join(tables)}.")
    return tables[size]


def table_from_json(entries: dict) -> dict[str, tuple[int, int]]:
    """A table in the reference's JSON form {"0.50": [[48, 96], 1], ...} or {"0.50": [48, 96]}."""
    out = {}
    for key, value in entries.items():
        hw = value[0] if isinstance(value[0], list | tuple) else value
        out[str(key)] = (int(hw[0]), int(hw[1]))
    return out


def choose_bucket(
    src_h: int, src_w: int, table: dict[str, tuple[int, int]]
) -> tuple[str, tuple[int, int]]:
    """The reference's choice: key minimising |float(key) - src_h/src_w|, first on ties."""
    ratio = src_h / src_w
    key = min(table, key=lambda k: abs(float(k) - ratio))  # min() keeps the first on ties
    return key, table[key]


@dataclass(frozen=True)
class ResizeCrop:
    """How a src_h x src_w image becomes target_h x target_w: cover-resize, centre crop."""

    src_h: int
    src_w: int
    resized_h: int
    resized_w: int
    target_h: int
    target_w: int
    top: int
    left: int


def resize_crop(src_h: int, src_w: int, target_h: int, target_w: int) -> ResizeCrop:
    """scale = max(H/h, W/w); resized = ceil(scale * side); crop offsets round((new-target)/2)
    with Python's round (half to even), as torchvision's center_crop computes them."""
    scale = max(target_h / src_h, target_w / src_w)
    new_h = math.ceil(scale * src_h)
    new_w = math.ceil(scale * src_w)
    top = int(round((new_h - target_h) / 2.0))
    left = int(round((new_w - target_w) / 2.0))
    return ResizeCrop(src_h, src_w, new_h, new_w, target_h, target_w, top, left)
