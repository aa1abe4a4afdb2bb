"""Reference image -> conditioning pixels, and the person masks built on the same geometry.

Where it sits: first stage of the flow, beside `mtlib.media.audio`. `load_image` reads any
Pillow-readable file (local, https://, s3://) into RGB; `prepare_image` picks the size
bucket (`mtlib.buckets`), resizes with PIL BILINEAR to cover it, centre-crops and
normalises to the `cond_image` [1, 3, 1, H, W] float32 in [-1, 1] that CLIP and the VAE
consume, bit-exact with the reference's `resize_and_centercrop`. `person_masks` and
`ref_target_masks` build the reference's human masks (pipeline step 7) at the source
size and carry them through the same resize/crop to the latent grid.

Deliberate differences from the reference, all no-ops for plain RGB files:
* EXIF orientation is applied (the reference ignores it and animates a sideways photo).
* Transparent pixels (RGBA, LA, palette with transparency) are composited on WHITE; the
  reference's `.convert('RGB')` drops alpha and shows whatever colour hides underneath.
* 16-bit grayscale is scaled to 8 bits (>> 8) instead of clipped; CMYK goes through
  Pillow's CMYK -> RGB conversion.
* Images whose longer side exceeds `HUGE_SIDE` (4x the largest bucket side) are reduced by
  an integer factor before the bilinear resize, to bound memory; the result then differs
  slightly from the reference, which would resize the full image.
"""

from __future__ import annotations

import hashlib
import io as _stdio
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mtlib import buckets, io, trace
from mtlib.extras import pyplot

if TYPE_CHECKING:
    import torch
    from PIL import Image as PILImage

MIN_SIDE = (
    16  # smallest source side accepted (1 latent pixel is 8 image pixels; 16 = one DiT patch)
)
LARGEST_BUCKET_SIDE = 2048  # multitalk-720's widest bucket (448 x 2048)
HUGE_SIDE = 4 * LARGEST_BUCKET_SIDE  # above this, reduce before resizing (memory)
# decompression-bomb guard, checked on the header before decoding (image and plan alike);
# below Pillow's own DecompressionBombError threshold (2 x 89.5 M px), so mtlib's guard speaks
MAX_PIXELS = 12000 * 12000


def check_pixel_count(w: int, h: int, what: str, name: str) -> None:
    """mtlib's size guard on a header's width x height (before any pixel is decoded)."""
    if w * h > MAX_PIXELS:
        raise ImageInputError(
            f"{what} {name!r}: {w}x{h} = {w * h} pixels exceeds the {MAX_PIXELS}-pixel limit "
            "(decompression-bomb guard). Fix: downscale the picture first."
        )


class ImageInputError(io.InputError):
    """An image input mtlib refuses (unreadable, truncated, too small, too large ...)."""


# ---------------------------------------------------------------------------------------
# loading


def _to_rgb(im: PILImage.Image) -> PILImage.Image:
    from PIL import Image

    if im.mode == "RGB":
        return im
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if im.mode.startswith("I;16") or im.mode == "I":
        arr = np.asarray(im).astype(np.int64)
        arr = (np.clip(arr, 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if im.mode == "F":
        arr = np.clip(np.asarray(im), 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    return im.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def _reduce_huge(im: PILImage.Image) -> PILImage.Image:
    """Integer-factor reduction keeping the longer side >= HUGE_SIDE (JPEG: decode smaller)."""
    longest = max(im.size)
    factor = longest // HUGE_SIDE
    if factor < 2:
        return im
    if im.format == "JPEG":
        im.draft("RGB", (math.ceil(im.size[0] / factor), math.ceil(im.size[1] / factor)))
        if max(im.size) < longest:
            return im
    return im.reduce(factor)


def load_image(src: Any, what: str = "image") -> PILImage.Image:
    """A path / URL / bytes / PIL image -> RGB PIL image (see the module docstring for the
    handling of EXIF, alpha, 16-bit and huge inputs). Refuses non-images, truncated files,
    images smaller than MIN_SIDE and decompression bombs, with one clear error each."""
    from PIL import Image, ImageOps

    if isinstance(src, Image.Image):
        im, name = src, f"<PIL {src.mode} {src.size[0]}x{src.size[1]}>"
    else:
        name = str(src) if not isinstance(src, bytes | bytearray) else "<bytes>"
        data = bytes(src) if isinstance(src, bytes | bytearray) else io.read_bytes(src, what=what)
        if not data:
            raise ImageInputError(
                f"{what} {name!r}: the file is empty (0 bytes). Fix: pass a PNG/JPEG/WebP picture."
            )
        try:
            im = Image.open(_stdio.BytesIO(data))
        except Image.DecompressionBombError:
            raise ImageInputError(
                f"{what} {name!r}: too many pixels to decode safely (more than {MAX_PIXELS} px). "
                "Fix: downscale the picture first."
            ) from None
        except Exception:
            raise ImageInputError(
                f"{what} {name!r}: not an image Pillow can read. Fix: pass a PNG, JPEG, WebP, BMP or TIFF picture."
            ) from None
    w, h = im.size
    check_pixel_count(w, h, what, name)
    if min(w, h) < MIN_SIDE:
        raise ImageInputError(
            f"{what} {name!r}: {w}x{h} pixels is too small; the minimum is {MIN_SIDE}x{MIN_SIDE} "
            "(it is upscaled to the size bucket, e.g. 896x448). Fix: pass a larger picture."
        )
    try:
        im = _reduce_huge(im) if max(w, h) > HUGE_SIDE else im
        im = ImageOps.exif_transpose(im)
        im.load()
        return _to_rgb(im)
    except Exception as e:
        raise ImageInputError(
            f"{what} {name!r}: the image data is damaged ({type(e).__name__}: {e}). "
            "Fix: re-export the picture (the file may be truncated)."
        ) from None


# ---------------------------------------------------------------------------------------
# conditioning pixels


@dataclass
class PreparedImage:
    cond: torch.Tensor  # [1, 3, 1, H, W] float32 in [-1, 1]: cond_image of the pipeline
    crop_u8: np.ndarray  # [H, W, 3] uint8: the centre-cropped pixels (PNG-able)
    bucket: str  # table key (h/w ratio) or "explicit"
    geometry: buckets.ResizeCrop  # source size, cover-resize size, crop offsets, target size

    @property
    def target_hw(self) -> tuple[int, int]:
        return self.geometry.target_h, self.geometry.target_w

    @property
    def cond_sha256(self) -> str:
        """sha256 of the raw float32 bytes, as in the golden `cond_sha256_float32`."""
        return hashlib.sha256(self.cond.contiguous().numpy().tobytes()).hexdigest()


def normalize_u8(crop_u8: np.ndarray) -> torch.Tensor:
    """[H, W, 3] uint8 -> [1, 3, 1, H, W] float32: (u8 / 255 - 0.5) * 2, each step in float32
    exactly as the reference (this order is what makes the result bit-exact)."""
    import torch

    x = torch.from_numpy(np.array(crop_u8, dtype=np.uint8)).permute(2, 0, 1)[
        None
    ]  # [1, 3, H, W] uint8
    x = x / 255
    x = (x - 0.5) * 2
    return x[:, :, None].contiguous()  # [1, 3, 1, H, W]


def _resolve_table(size: str, table_kind: str | dict) -> dict[str, tuple[int, int]]:
    if isinstance(table_kind, dict):
        return table_kind
    try:
        return buckets.bucket_table(size, table_kind)
    except ValueError as e:
        raise ImageInputError(f"image size bucket: {e}") from None


def prepare_image(
    img: Any,
    size: str = "multitalk-480",
    table_kind: str | dict = "official",
    explicit_size: tuple[int, int] | None = None,
) -> PreparedImage:
    """Image (path / URL / PIL) -> PreparedImage for bucket table `size`.

    table_kind: "official" (the reference's tables), "tiny" (golden e2e tables) or a table
    dict {key: (H, W)}. explicit_size (H, W), multiples of 16, bypasses the bucket choice.
    """
    im = load_image(img)
    src_w, src_h = im.size
    if explicit_size is not None:
        th, tw = (int(v) for v in explicit_size)
        if th <= 0 or tw <= 0 or th % 16 or tw % 16:
            raise ImageInputError(
                f"explicit image size {th}x{tw} (HxW): both sides must be positive multiples of 16 "
                "(VAE stride 8 x DiT patch 2). Fix: e.g. "
                f"{max(16, round(th / 16) * 16)}x{max(16, round(tw / 16) * 16)}."
            )
        key = "explicit"
    else:
        key, (th, tw) = buckets.choose_bucket(src_h, src_w, _resolve_table(size, table_kind))
    geo = buckets.resize_crop(src_h, src_w, th, tw)
    from PIL import Image

    resized = im.resize((geo.resized_w, geo.resized_h), resample=Image.BILINEAR)
    arr = np.asarray(resized)  # [h', w', 3] uint8
    crop = np.array(arr[geo.top : geo.top + th, geo.left : geo.left + tw])  # writable copy
    cond = normalize_u8(crop)
    if trace.active():
        tag = size.rsplit("-", 1)[-1] if explicit_size is None else "explicit"
        trace.point(f"image.b{tag}.cond", cond)
    return PreparedImage(cond, crop, key, geo)


# ---------------------------------------------------------------------------------------
# person masks (reference pipeline step 7)


def _check_bbox(bbox, num_persons: int, src_h: int, src_w: int) -> list[tuple[int, int, int, int]]:
    boxes = list(bbox.values()) if isinstance(bbox, dict) else list(bbox)
    if len(boxes) != num_persons:
        raise ImageInputError(
            f"bbox: {len(boxes)} boxes for {num_persons} persons; give one [x_min, y_min, x_max, y_max] "
            "per person (x = row, y = column, as in the reference)."
        )
    out = []
    for i, box in enumerate(boxes):
        if len(box) != 4:
            raise ImageInputError(
                f"bbox of person {i + 1}: {box!r} has {len(box)} numbers; expected 4."
            )
        r0, c0, r1, c1 = (int(v) for v in box)
        if not (0 <= r0 < r1 <= src_h and 0 <= c0 < c1 <= src_w):
            raise ImageInputError(
                f"bbox of person {i + 1}: {list(box)} must satisfy 0 <= x_min < x_max <= {src_h} (rows) "
                f"and 0 <= y_min < y_max <= {src_w} (columns) for a {src_w}x{src_h} image. Fix: the "
                "first and third numbers index the height axis."
            )
        out.append((r0, c0, r1, c1))
    return out


def source_person_masks(
    src_h: int, src_w: int, num_persons: int, bbox=None, face_scale: float = 0.05
) -> torch.Tensor:
    """[3, src_h, src_w] float32 masks [person1, person2, background] at the source size.

    1 person: three masks of ones. 2 persons: the bbox rows a..c / columns b..d, or by
    default the left and right halves shrunk by face_scale; background = neither.
    """
    import torch

    if num_persons == 1:
        return torch.ones(3, src_h, src_w)
    if num_persons != 2:
        raise ImageInputError(f"num_persons {num_persons}: MultiTalk supports 1 or 2 persons.")
    persons = torch.zeros(2, src_h, src_w)
    if bbox is not None:
        for i, (r0, c0, r1, c1) in enumerate(_check_bbox(bbox, 2, src_h, src_w)):
            persons[i, r0:r1, c0:c1] = 1
    else:
        r0, r1 = int(src_h * face_scale), int(src_h * (1 - face_scale))
        half = src_w // 2
        c0, c1 = int(half * face_scale), int(half * (1 - face_scale))
        persons[0, r0:r1, c0:c1] = 1
        persons[1, r0:r1, int(half * face_scale + half) : int(half * (1 - face_scale) + half)] = 1
    background = (persons.sum(0) == 0).float()
    return torch.cat([persons, background[None]], dim=0)


def person_masks(
    src_h: int, src_w: int, H: int, W: int, num_persons: int, bbox=None, face_scale: float = 0.05
) -> torch.Tensor:
    """[3, H, W] float32: source-size masks, nearest-resized with the image's ceil rule and
    centre-cropped exactly like the image."""
    import torch.nn.functional as F

    masks = source_person_masks(src_h, src_w, num_persons, bbox, face_scale)
    geo = buckets.resize_crop(src_h, src_w, H, W)
    resized = F.interpolate(masks[None], size=(geo.resized_h, geo.resized_w), mode="nearest")[0]
    return resized[:, geo.top : geo.top + H, geo.left : geo.left + W].contiguous()


def ref_target_masks(
    src_h: int,
    src_w: int,
    H: int,
    W: int,
    num_persons: int,
    bbox=None,
    face_scale: float = 0.05,
    lat_h: int | None = None,
    lat_w: int | None = None,
) -> torch.Tensor:
    """[3, lat_h, lat_w] float32 0/1: person_masks nearest-resized to the latent grid, > 0.
    lat_h, lat_w default to H // 8, W // 8 (the VAE stride), as the pipeline derives them."""
    import torch.nn.functional as F

    masks = person_masks(src_h, src_w, H, W, num_persons, bbox, face_scale)
    lat_h = H // 8 if lat_h is None else lat_h
    lat_w = W // 8 if lat_w is None else lat_w
    lat = F.interpolate(masks[None], size=(lat_h, lat_w), mode="nearest")[0]
    out = (lat > 0).float()
    if trace.active():
        trace.point("ref_target_masks", out)
    return out


# ---------------------------------------------------------------------------------------
# plots (for notebook 01)


def plot_crop(src: Any, prepared: PreparedImage, masks: torch.Tensor | None = None):
    """Figure: the source with the crop rectangle (in source pixels), the conditioning crop,
    and optionally the person masks [3, H, W] over the crop. Returns a matplotlib Figure."""
    plt = pyplot("the image plot")
    from matplotlib.patches import Rectangle

    im = load_image(src)
    g = prepared.geometry
    sy, sx = g.src_h / g.resized_h, g.src_w / g.resized_w  # resized -> source pixels
    ncols = 3 if masks is not None else 2
    fig, axes = plt.subplots(1, ncols, figsize=(4 * ncols, 4))
    axes[0].imshow(im)
    axes[0].add_patch(
        Rectangle(
            (g.left * sx, g.top * sy),
            g.target_w * sx,
            g.target_h * sy,
            fill=False,
            color="red",
            lw=2,
        )
    )
    axes[0].set_title(f"source {g.src_w}x{g.src_h}, bucket {prepared.bucket}")
    axes[1].imshow(prepared.crop_u8)
    axes[1].set_title(f"cond {g.target_w}x{g.target_h} (resized {g.resized_w}x{g.resized_h})")
    if masks is not None:
        m = masks.float().numpy()
        overlay = np.zeros((*m.shape[1:], 4), np.float32)
        overlay[..., 0] = m[0]
        overlay[..., 2] = m[1] if m.shape[0] > 2 else 0
        overlay[..., 3] = 0.35 * np.clip(m[0] + (m[1] if m.shape[0] > 2 else 0), 0, 1)
        axes[2].imshow(prepared.crop_u8)
        # masks may be at latent resolution: stretch them over the crop
        axes[2].imshow(
            overlay,
            interpolation="nearest",
            extent=(-0.5, g.target_w - 0.5, g.target_h - 0.5, -0.5),
        )
        axes[2].set_title("person 1 (red), person 2 (blue)")
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    return fig
