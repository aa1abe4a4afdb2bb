"""Optional fp8 matmuls for the DiT blocks (Hopper GPUs), off by default.

`enable_fp8(model)` replaces every nn.Linear inside `model.blocks` by `FP8Linear`: the weight is
stored once as float8 e4m3 with one scale per output channel, and each call quantises its input
per token (one scale per row) and multiplies with `torch._scaled_mm` (fp8 tensor cores, bf16
output, bias fused). Norms and the fp32 islands are unchanged (bf16 / fp32); `enable_fp8_dit`
also moves the self-attention to the Triton fp8 flash kernel (mtlib.kernels.attention).

The GEMMs use fast accumulation: the partial sums stay in the tensor cores' accumulator instead
of being promoted to fp32 every few k-steps, as fp8 inference stacks run their forward GEMMs. On
the H200 it takes 4.5% off a 480p DiT pass; its error against the exact product of the same
e4m3 inputs, 0.2-0.3% relative, is a tenth of the quantisation's own 3.7%
(benchmarks/results/h200_dit_fp8_profile.json).

This changes the numbers beyond bf16 noise: `mtlib bench --what deviation` measures how far
(against an fp32 reference, next to the plain bf16 path's own error). Use it for drafts and
previews; the default path keeps the reference numerics.
"""

from __future__ import annotations

import torch
from torch import nn

E4M3_MAX = 448.0  # largest finite float8_e4m3fn value


class FP8Linear(nn.Module):
    """y = x W^T + b with W in e4m3 (per-output-channel scale) and x quantised per row."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()  # [N, K]
        scale = (w.abs().amax(dim=1, keepdim=True) / E4M3_MAX).clamp(min=1e-12)  # [N, 1]
        self.register_buffer("weight_fp8", (w / scale).to(torch.float8_e4m3fn))  # [N, K]
        self.register_buffer("weight_scale", scale.t().contiguous())  # [1, N] fp32
        self.bias = (
            None
            if linear.bias is None
            else nn.Parameter(linear.bias.detach().to(torch.bfloat16), requires_grad=False)
        )
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.fast_accum = True  # partial sums stay in the tensor cores' accumulator (see above)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)  # [M, K]
        x_scale = (x2.abs().amax(dim=1, keepdim=True).float() / E4M3_MAX).clamp(min=1e-12)  # [M, 1]
        x_fp8 = (x2.float() / x_scale).to(torch.float8_e4m3fn)
        y = torch._scaled_mm(
            x_fp8,
            self.weight_fp8.t(),
            scale_a=x_scale,
            scale_b=self.weight_scale,
            bias=self.bias,
            out_dtype=torch.bfloat16,
            use_fast_accum=self.fast_accum,
        )
        return y.reshape(*lead, self.out_features)


def fp8_block(block: nn.Module) -> nn.Module:
    """Swap the Linear layers of one block for FP8Linear in place (int8 QuantLinear layers of
    the reference's int8 checkpoint too: from their dequantised weight)."""
    from mtlib.accel.quant import QuantLinear

    for module in list(block.modules()):
        for child_name, child in list(module.named_children()):
            if (
                isinstance(child, nn.Linear | QuantLinear)
                and child.in_features % 16 == 0
                and child.out_features % 16 == 0
            ):
                setattr(module, child_name, FP8Linear(child))
    return block


def enable_fp8(model: nn.Module) -> nn.Module:
    """Swap the Linear layers of `model.blocks` for FP8Linear in place (CUDA, bf16 model)."""
    for block in model.blocks:
        fp8_block(block)
    return model


def enable_fp8_dit(model: nn.Module, device=None) -> nn.Module:
    """The whole fp8 option of the DiT: fp8 block linears, and the self-attention on mtlib's
    Triton fp8 flash kernel where Triton can run and the head dim suits fp8 tensor cores
    (32..256; else it stays on SDPA in bf16: the tiny model's 16)."""
    from mtlib.accel.compile import set_attention_kernel
    from mtlib.kernels.attention import available, head_dim_ok

    enable_fp8(model)
    if available(device) and head_dim_ok(model.config.head_dim, fp8=True):
        set_attention_kernel(model, "triton-fp8", device=device)
    return model
