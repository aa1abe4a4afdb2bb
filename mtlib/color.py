"""Colour correction of decoded clips against the reference image (CIE-Lab mean/std transfer).

Step 13 of the per-clip loop (facts §9.3): each decoded clip is pulled towards the colour
statistics of the ORIGINAL conditioning image before its last frames become the next clip's
motion frames, which keeps long streaming videos from drifting in colour. The arithmetic
follows the reference exactly (skimage rgb2lab / lab2rgb per frame, numpy float32 statistics,
population std), so the golden `e2e.clip<c>.color_corrected` tensors are reproduced.
"""

from __future__ import annotations

import numpy as np
import torch


def match_and_blend_colors(
    frames: torch.Tensor, reference: torch.Tensor, strength: float
) -> torch.Tensor:
    """Transfer the Lab mean/std of `reference` onto every frame, blended with `strength`.

    frames: [1, 3, F, H, W] in [-1, 1]; reference: [1, 3, 1, H, W] in [-1, 1]; strength in
    [0, 1] (0: frames returned unchanged). Per frame and Lab channel:
    (src − mean_src)·(std_ref / std_src) + mean_ref (mean_ref alone where std_src == 0), then
    back to RGB, clipped to [0, 1] and blended (1 − s)·src + s·corrected. Returns a tensor of
    the frames' shape, dtype and device.
    """
    if strength == 0.0:
        return frames
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"color_correction_strength must be between 0 and 1, got {strength}.")
    if frames.ndim != 5 or frames.shape[0] != 1 or frames.shape[1] != 3:
        raise ValueError(f"frames must be [1, 3, F, H, W], got {list(frames.shape)}.")
    if reference.ndim != 5 or reference.shape[:3] != (1, 3, 1):
        raise ValueError(f"reference must be [1, 3, 1, H, W], got {list(reference.shape)}.")
    if frames.is_cuda:  # the same arithmetic in torch, on the GPU (skimage: one CPU core)
        from mtlib.color_gpu import match_and_blend_colors_torch

        return match_and_blend_colors_torch(frames, reference, strength)
    from skimage import color

    # [1, 3, F, H, W] -> [F, H, W, 3] in [0, 1], as skimage wants channels last
    src = frames[0].permute(1, 2, 3, 0).detach().cpu().numpy()
    ref = reference[0, :, 0].permute(1, 2, 0).detach().cpu().numpy()
    src = np.clip((src + 1.0) / 2.0, 0.0, 1.0)
    ref = np.clip((ref + 1.0) / 2.0, 0.0, 1.0)
    ref_lab = color.rgb2lab(ref)
    ref_mean = [ref_lab[:, :, c].mean() for c in range(3)]
    ref_std = [ref_lab[:, :, c].std() for c in range(3)]

    out = []
    for frame in src:  # [H, W, 3]
        lab = color.rgb2lab(frame)
        corrected = lab.copy()
        for c in range(3):  # L, a, b
            mean_src, std_src = lab[:, :, c].mean(), lab[:, :, c].std()
            if std_src == 0:
                corrected[:, :, c] = ref_mean[c]
            else:
                corrected[:, :, c] = (corrected[:, :, c] - mean_src) * (
                    ref_std[c] / std_src
                ) + ref_mean[c]
        rgb = np.clip(color.lab2rgb(corrected), 0.0, 1.0)
        out.append((1 - strength) * frame + strength * rgb)
    video = np.stack(out, axis=0) * 2.0 - 1.0  # [F, H, W, 3] in [-1, 1]
    video = torch.from_numpy(video).permute(3, 0, 1, 2).unsqueeze(0).contiguous()
    return video.to(device=frames.device, dtype=frames.dtype)
