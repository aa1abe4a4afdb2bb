"""The opt-in fp8 path: e4m3 weights with per-channel scales, inputs quantised per token."""

import torch

from mtlib.accel.fp8 import E4M3_MAX, FP8Linear, enable_fp8
from mtlib.models.dit import CONFIGS, build_dit


def test_fp8_linear_is_close_to_bf16_and_quantises_per_channel():
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(64, 32).to(torch.bfloat16)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(32, 64, generator=g) * torch.logspace(-2, 1, 32).unsqueeze(1))
    f = FP8Linear(lin)
    assert f.weight_fp8.dtype == torch.float8_e4m3fn and tuple(f.weight_scale.shape) == (1, 32)
    # every output channel uses the full e4m3 range: its largest weight maps to 448
    assert torch.allclose(f.weight_fp8.float().abs().amax(dim=1), torch.full((32,), E4M3_MAX))
    x = torch.randn(3, 5, 64, generator=g).to(torch.bfloat16)
    y, ref = f(x).float(), lin(x).float()
    assert y.shape == ref.shape == (3, 5, 32) and y.dtype == torch.float32
    rel = ((y - ref).norm() / ref.norm()).item()
    assert 1e-4 < rel < 0.08  # fp8 error: clearly not bf16-exact, still small


def test_enable_fp8_swaps_only_block_linears():
    model = build_dit(CONFIGS["tiny"], device="cpu").to(torch.bfloat16)
    linears = [m for m in model.blocks.modules() if isinstance(m, torch.nn.Linear)]
    # fp8 tensor cores need both dims divisible by 16 (tiny kv_linear: 40 -> 128 stays bf16)
    eligible = [m for m in linears if m.in_features % 16 == 0 and m.out_features % 16 == 0]
    assert 0 < len(eligible) < len(linears)
    enable_fp8(model)
    assert sum(isinstance(m, FP8Linear) for m in model.blocks.modules()) == len(eligible)
    left = [m for m in model.blocks.modules() if isinstance(m, torch.nn.Linear)]
    assert len(left) == len(linears) - len(eligible) and all(m.in_features % 16 for m in left)
    assert isinstance(model.text_embedding[0], torch.nn.Linear)  # outside the blocks: unchanged
