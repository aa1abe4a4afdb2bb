"""Speed settings for transformers' `UMT5EncoderModel` (mtlib's umT5 encoder), no numerics change.

Why this exists: on an H200 the plain transformers encoder took 52.2 ms per 2 x 512-token bf16
call where mtlib's former hand-written one took 31.4 ms (benchmarks/results/h200_encoders_hf.json).
Reading transformers' UMT5 code (5.17, what the GPU image runs) finds three costs the old
encoder did not have; each is removed here with transformers' own classes kept:

1. The SDPA mask. transformers' `compute_bias` returns the relative position bias as
   `embedding(buckets).permute(2, 0, 1)`: a [1, n, Lq, Lk] view whose heads are the fastest
   memory dimension, and 5.17's `create_position_bias_mask` merges the padding mask into it with
   `torch.where`, which keeps that layout. The [B, n, Lq, Lk] additive mask SDPA receives is then
   not contiguous along keys (stride n), so the fused kernels first re-pack it from strided
   reads, every layer (transformers 5.24 adds a `.contiguous()` there for this reason).
   `compute_bias` below gathers the bias head-major and contiguous instead: the same values.
2. The bucket grid. transformers recomputes the [Lq, Lk] relative-position buckets (about 15
   small kernels) in each of the 24 layers; the buckets depend only on the lengths (every layer
   owns its bias table, but not its buckets), so they are computed once per (Lq, Lk, device) with
   transformers' own `_relative_position_bucket` and reused. The per-layer bias lookup stays.
3. The padding mask. Given a 2-D mask, transformers builds the attention mask itself and checks
   `mask.all()` on the host (a GPU sync) first. `attention_mask_4d` gives it the [B, 1, 1, Lk]
   boolean mask (True = attend) that its SDPA path expects, which it uses as is.

Also: transformers spells the FFN activation "gelu_new", a Python tanh formula of seven
elementwise kernels; `umt5_config(fused_gelu=True)` picks "gelu_pytorch_tanh", the same function
as one fused kernel (computed in fp32 inside, so closer to the fp32 result; the reference's
bf16 Python formula rounds after each step). `_keep_in_fp32_modules = ["wo"]` plays no part:
transformers applies it only in `from_pretrained` with float16, and mtlib loads through its
key map and casts the whole encoder to the reference's bf16 (`load_t5(precision="reference")`).
"""

from __future__ import annotations

import functools

import torch


def uses_attention_interface(hf_model) -> bool:
    """True where transformers' UMT5 attention runs through its attention interface with SDPA
    (transformers >= 5): then a 4-D boolean mask is taken as is. transformers 4.x hard-codes
    the eager attention (a 4-D mask would be read differently there)."""
    from transformers.models.umt5 import modeling_umt5

    return (
        hasattr(modeling_umt5, "ALL_ATTENTION_FUNCTIONS")
        and getattr(hf_model.config, "_attn_implementation", None) == "sdpa"
    )


def attention_mask_4d(mask: torch.Tensor) -> torch.Tensor:
    """[B, L] (1 = token, 0 = padding) -> [B, 1, 1, L] bool, True = attend."""
    return mask.bool()[:, None, None, :]


def _bias_head_major(self, query_length, key_length, device=None, **kwargs):
    """transformers' UMT5Attention.compute_bias with the buckets cached and the result laid
    out [1, n, Lq, Lk] contiguous (transformers returns a heads-last permuted view).
    Decoding offsets (a KV cache) fall back to transformers' own method."""
    if kwargs.get("past_seen_tokens") or kwargs.get("cache_position") is not None:
        return type(self).compute_bias(self, query_length, key_length, device, **kwargs)
    weight = self.relative_attention_bias.weight  # [num_buckets, n]
    device = weight.device if device is None else device
    key = (int(query_length), int(key_length), str(device))
    buckets = self._mtlib_buckets.get(key)
    if buckets is None:
        rel = (
            torch.arange(key_length, dtype=torch.long, device=device)[None, :]
            - torch.arange(query_length, dtype=torch.long, device=device)[:, None]
        )  # [Lq, Lk]: key position - query position, as transformers computes it
        buckets = self._relative_position_bucket(rel)
        self._mtlib_buckets.clear()  # one length at a time: mtlib pads every prompt to 512
        self._mtlib_buckets[key] = buckets
    n = weight.shape[1]
    table = weight.t().contiguous()  # [n, num_buckets]: tiny
    return table.index_select(1, buckets.flatten()).view(1, n, query_length, key_length)


def install(hf_model) -> None:
    """Switch every self-attention of `hf_model` (a UMT5EncoderModel) to the head-major,
    bucket-cached position bias. One bucket cache is shared by all layers."""
    cache: dict = {}
    for module in hf_model.modules():
        if getattr(module, "has_relative_attention_bias", False) and hasattr(
            module, "_relative_position_bucket"
        ):
            module._mtlib_buckets = cache
            # a partial of a module-level function: pickles (a bound method set on an
            # instance would not) and deep-copies with its module
            module.compute_bias = functools.partial(_bias_head_major, module)
