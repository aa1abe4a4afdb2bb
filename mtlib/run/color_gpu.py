"""Colour correction in torch, for frames that are already on the GPU (mtlib.run.color dispatches here).

The same arithmetic as mtlib.run.color.match_and_blend_colors (skimage's rgb2lab / lab2rgb with the
D65 / 2-degree white, per-frame Lab mean and population std transferred from the reference
image, clip, blend), written in float32 tensor operations over all frames at once, as skimage
computes float32 input in float32. Why: skimage runs frame by frame on one CPU core, 6-7 s for an
81-frame 480p clip on the H200's host; here it is a few milliseconds, and the decoded frames
need no trip to the host before it. Differences from skimage are float32 rounding (powers and
reductions in another order): tests/test_color_gpu.py bounds them.
"""

from __future__ import annotations

import functools

import torch

# sRGB -> XYZ (skimage.color.colorconv.xyz_from_rgb) and the D65 / 2-degree white point
_XYZ_FROM_RGB = [[0.412453, 0.357580, 0.180423],
                 [0.212671, 0.715160, 0.072169],
                 [0.019334, 0.119193, 0.950227]]  # fmt: skip
_WHITE = [0.95047, 1.0, 1.08883]


@functools.lru_cache(maxsize=8)
def _mats(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The colour matrices and white point on `device`, built once per device (each chunk of
    frames converts twice)."""
    m = torch.tensor(_XYZ_FROM_RGB, dtype=torch.float64)
    # skimage inverts in float64 and casts to the image's dtype
    return (m.float().to(device), torch.linalg.inv(m).float().to(device),
            torch.tensor(_WHITE, dtype=torch.float32, device=device))  # fmt: skip


def rgb2lab(rgb: torch.Tensor) -> torch.Tensor:
    """[..., 3] float32 sRGB in [0, 1] -> [..., 3] CIE-Lab (skimage.color.rgb2lab)."""
    xyz_from_rgb, _, white = _mats(rgb.device)
    lin = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = (lin @ xyz_from_rgb.T) / white
    f = torch.where(xyz > 0.008856, xyz.clamp(min=0) ** (1.0 / 3.0), 7.787 * xyz + 16.0 / 116.0)
    x, y, z = f.unbind(-1)
    return torch.stack([116.0 * y - 16.0, 500.0 * (x - y), 200.0 * (y - z)], dim=-1)


def lab2rgb(lab: torch.Tensor) -> torch.Tensor:
    """[..., 3] CIE-Lab -> [..., 3] float32 sRGB clipped to [0, 1] (skimage.color.lab2rgb)."""
    _, rgb_from_xyz, white = _mats(lab.device)
    L, a, b = lab.unbind(-1)
    y = (L + 16.0) / 116.0
    x = a / 500.0 + y
    z = (y - b / 200.0).clamp(min=0)  # skimage sets negative z to 0 (with a warning)
    f = torch.stack([x, y, z], dim=-1)
    xyz = torch.where(f > 0.2068966, f**3, (f - 16.0 / 116.0) / 7.787) * white
    arr = xyz @ rgb_from_xyz.T
    pos = arr.clamp(min=0)  # the power only sees the masked (positive) values, as in skimage
    rgb = torch.where(arr > 0.0031308, 1.055 * pos ** (1 / 2.4) - 0.055, arr * 12.92)
    return rgb.clamp(0.0, 1.0)


def match_and_blend_colors_torch(
    frames: torch.Tensor, reference: torch.Tensor, strength: float, chunk: int = 16
) -> torch.Tensor:
    """mtlib.run.color.match_and_blend_colors on frames' device: frames [1, 3, F, H, W] and
    reference [1, 3, 1, H, W] in [-1, 1] -> [1, 3, F, H, W] of frames' dtype and device.

    Frames go `chunk` at a time (the statistics are per frame, so this changes nothing): the
    float32 temporaries stay near 0.6 GB at 480p instead of ~3 GB for an 81-frame clip."""
    ref = reference[0, :, 0].permute(1, 2, 0).to(frames.device, torch.float32)
    ref = ((ref + 1.0) / 2.0).clamp(0.0, 1.0)  # [H, W, 3]
    ref_lab = rgb2lab(ref).reshape(-1, 3)
    ref_mean, ref_std = ref_lab.mean(0), ref_lab.std(0, correction=0)  # [3]
    out = torch.empty_like(frames)
    for f0 in range(0, frames.shape[2], chunk):
        src = frames[0, :, f0 : f0 + chunk].permute(1, 2, 3, 0).float()  # [f, H, W, 3]
        src = ((src + 1.0) / 2.0).clamp(0.0, 1.0)
        lab = rgb2lab(src)
        flat = lab.reshape(lab.shape[0], -1, 3)
        mean, std = flat.mean(1), flat.std(1, correction=0)  # [f, 3]
        ratio = torch.where(
            std == 0, torch.zeros_like(std), ref_std / torch.where(std == 0, 1.0, std)
        )
        # a flat channel (std 0) gets the reference's mean alone
        corrected = (lab - mean[:, None, None]) * ratio[:, None, None] + ref_mean
        blended = (1 - strength) * src + strength * lab2rgb(corrected)
        out[0, :, f0 : f0 + chunk] = (blended * 2.0 - 1.0).permute(3, 0, 1, 2).to(frames.dtype)
    return out
