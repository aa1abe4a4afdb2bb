"""mtlib.color_gpu: the torch colour correction (run on the GPU) against skimage's (mtlib.color)."""

import pytest
import torch

from mtlib.color import match_and_blend_colors
from mtlib.color_gpu import lab2rgb, match_and_blend_colors_torch, rgb2lab


def _frames(seed: int, f: int = 3, h: int = 24, w: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    frames = torch.rand(1, 3, f, h, w, generator=g) * 2.2 - 1.1  # a little outside [-1, 1] too
    frames[:, :, 1] = frames[:, :, 1] * 0.2 - 0.5  # a dark, low-contrast frame
    # (a flat frame is left out: whether its float32 std comes out 0 or 1e-7 is rounding luck
    # on either side, and the two rules then give different frames)
    ref = torch.rand(1, 3, 1, h, w, generator=g) * 2 - 1
    return frames, ref


@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_torch_colour_correction_equals_skimage(strength):
    frames, ref = _frames(0)
    want = match_and_blend_colors(frames, ref, strength)  # CPU: skimage
    got = match_and_blend_colors_torch(frames, ref, strength, chunk=2)  # 2 + 1 frames
    assert got.shape == want.shape == frames.shape and got.dtype == torch.float32
    assert (got - want).abs().max().item() < 2e-5


def test_lab_round_trip_matches_skimage():
    from skimage import color

    rgb = torch.rand(50, 3, generator=torch.Generator().manual_seed(1))
    lab = rgb2lab(rgb)
    assert torch.allclose(lab, torch.from_numpy(color.rgb2lab(rgb.numpy())), atol=1e-4)
    assert torch.allclose(lab2rgb(lab), rgb, atol=1e-5)
    out_of_gamut = torch.tensor([[50.0, 0.0, 250.0]])  # z < 0: skimage clips it to 0
    want = torch.from_numpy(color.lab2rgb(out_of_gamut.numpy()[None]))[0].float()
    assert torch.allclose(lab2rgb(out_of_gamut), want, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_frames_are_corrected_on_the_gpu():
    frames, ref = _frames(2)
    got = match_and_blend_colors(frames.cuda(), ref, 1.0)
    assert got.is_cuda
    assert (got.cpu() - match_and_blend_colors(frames, ref, 1.0)).abs().max().item() < 2e-5
