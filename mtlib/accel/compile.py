"""Speed options applied to a built DiT: `compile_blocks` (torch.compile of the shared block
body) and `set_attention_kernel` (SDPA or the Triton kernels).
"""

from __future__ import annotations

import torch

from mtlib.models.dit.attention import ATTENTION_KERNELS
from mtlib.models.dit.blocks import Block
from mtlib.models.dit.model import MultiTalkDiT


def compile_blocks(model: MultiTalkDiT, rope_fp32: bool = False, **compile_kwargs) -> MultiTalkDiT:
    """Speed mode for GPUs: torch.compile the block body once (shared by all blocks: the
    parameters are graph inputs) so the fp32 islands, casts and RoPE fuse into a few kernels
    instead of ~40 separate element-wise passes over [L, C]. Numerics stay those of the
    reference up to kernel order. RoPE keeps the model's rope_dtype (model.rope_precision in a
    run config); `rope_fp32=True` sets float32 (within the golden tolerance, see tests).
    Tracing falls back to the eager body."""
    if rope_fp32:
        model.rope_dtype = torch.float32
    body = torch.compile(Block.body, dynamic=False, **compile_kwargs)
    for block in model.blocks:
        block.compiled_body = body
    return model


def set_attention_kernel(model: MultiTalkDiT, kernel: str, device=None) -> MultiTalkDiT:
    """Choose the self-attention kernel of every block (see ATTENTION_KERNELS). The Triton
    kernels need CUDA and Triton; asking for them elsewhere fails here, before any compute.
    `device`: where the blocks compute (default: where the parameters are; give it with
    block offload, whose weights live on the host)."""
    if kernel not in ATTENTION_KERNELS:
        raise ValueError(
            f"attention kernel must be one of {', '.join(ATTENTION_KERNELS)}; got {kernel!r}"
        )
    if kernel != "sdpa":
        from mtlib.kernels.attention import available, head_dim_ok, min_head_dim

        d, fp8 = model.config.head_dim, kernel == "triton-fp8"
        if not head_dim_ok(d, fp8):
            raise ValueError(
                f"attention kernel {kernel!r} needs a head dim that is a power of two in "
                f"{min_head_dim(fp8)}..256; this DiT's is {d}. Use the default 'sdpa'"
            )

        device = device if device is not None else next(model.parameters()).device
        if not available(device):
            raise RuntimeError(
                f"attention kernel {kernel!r} needs Triton and a CUDA GPU (the model is on {device}); "
                "use the default 'sdpa'"
            )
    for block in model.blocks:
        block.self_attn.kernel = kernel
    return model
