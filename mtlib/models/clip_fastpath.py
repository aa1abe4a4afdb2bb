"""A lean forward for transformers' `CLIPVisionModel` (mtlib's CLIP vision tower), same numbers.

Why this exists: one 257-token frame is launch-bound on a GPU. On an H200 the vision tower as
transformers ships it took 15.3 ms per fp16 frame where mtlib's former hand-written one took
13.0 ms, with the same output (benchmarks/results/h200_encoders_hf.json): 732 kernels against
603, for 2.9 ms of GPU work. Reading transformers' CLIP code finds, per layer:

1. q, k and v are three projections, and under the reference's fp16 autocast each one casts
   the fp32 LayerNorm output to fp16 again: six kernels where one [3C, C] projection of an
   fp16 input does it. `fused_qkv` joins the three weights into one block; the model's own
   `q_proj` / `k_proj` / `v_proj` parameters are views into it (no second copy of the weights;
   in-place loads land in the block). The block is built on first use and rebuilt whenever
   something replaced those parameters (`.to()`, a precision cast, an assigning load): every
   call checks their data pointers against it.
2. Each LayerNorm under autocast casts its input, weight and bias to fp32 (three kernels, the
   weight casts are not cached for parameters without grad) and returns fp32. torch's CUDA
   LayerNorm on fp16 tensors accumulates in fp32 with the same vectorised kernel
   (`vec_size = 4` "to avoid different results between float and low-p types" in
   layer_norm_kernel.cu) and rounds once on output, which is what the next fp16 consumer of the
   fp32 result does: so here autocast is switched off and every op runs in the weights'
   dtype, one LayerNorm kernel each.
3. The attention goes through transformers' generic attention interface (kwargs, checks,
   reshapes and `.contiguous()` calls: Python time per layer); here SDPA is called directly on
   the [B, H, L, D] views of the fused projection (the layout the hand-written tower used; no
   copy: the fused kernels take strided heads), with transformers' scale.
4. Whole-model work nobody reads: the position-id gather (the table is used as it is), the
   pooled token's post-LayerNorm, the output dataclass and hooks machinery.

MultiTalk takes the residual stream after the second-to-last block (`use_31_block`); mtlib's
model is built with those 31 layers only (clip.py), so no layer is computed and thrown away.
The MLP activation is the exact (erf) GELU, one kernel already (ViT-H/14 has no quick-GELU).

`forward(hf, pixels)` runs this where it is exact: no autocast on the input's device, or CUDA
autocast in the weights' own dtype (the reference precision: fp16 weights, fp16 autocast), SDPA
attention, and no gradient wanted. Anything else runs transformers' own forward.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

# CLIPAttention -> (weight [3C, C], bias [3C]). Kept outside the modules: a pickled or
# deep-copied model carries no block of its own (its clone builds one on first use). Plain
# pickle keeps no storage sharing, so it writes the whole block for each of q/k/v_proj;
# torch.save and torch.multiprocessing share it.
_BLOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def inner_model(hf):
    """CLIPVisionModel -> the module holding embeddings / encoder (transformers 5 dropped the
    `vision_model` level)."""
    return getattr(hf, "vision_model", hf)


def _in_block(block: torch.Tensor | None, parts) -> bool:
    """True where `parts` are still the consecutive row slices of `block` (same memory)."""
    if block is None or block.dtype != parts[0].dtype or block.device != parts[0].device:
        return False
    ptr, step = block.data_ptr(), parts[0].numel() * block.element_size()
    return all(p.data_ptr() == ptr + i * step for i, p in enumerate(parts))


def _join(params) -> torch.Tensor:
    """One block holding `params` row after row; each parameter then points into it."""
    with torch.inference_mode(False), torch.no_grad():  # a normal tensor: loads may write into it
        block = torch.cat([p.detach() for p in params])
        n = params[0].shape[0]
        for i, p in enumerate(params):
            p.data = block[i * n : (i + 1) * n]
    return block


def fused_qkv(attn) -> tuple[torch.Tensor, torch.Tensor]:
    """The q/k/v projections of a transformers CLIPAttention as one: weight [3C, C] and bias
    [3C], rows [q | k | v]. q_proj, k_proj and v_proj's parameters are views into them."""
    mods = (attn.q_proj, attn.k_proj, attn.v_proj)
    weights, biases = [m.weight for m in mods], [m.bias for m in mods]
    w, b = _BLOCKS.get(attn, (None, None))
    if not (_in_block(w, weights) and _in_block(b, biases)):
        w, b = _join(weights), _join(biases)
        _BLOCKS[attn] = (w, b)
    return w, b


def block_of(attn) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The fused block `attn` runs on now (None before its first call or after `release`)."""
    return _BLOCKS.get(attn)


def release(hf) -> None:
    """Forget the fused blocks (they are rebuilt on the next call). Called before the
    parameters are replaced (`.to()`, a precision cast, a load), so that a block nobody else
    uses any more does not keep its memory until the next call."""
    for layer in inner_model(hf).encoder.layers:
        _BLOCKS.pop(layer.self_attn, None)


def applies(hf, pixels: torch.Tensor) -> bool:
    """Whether `forward` computes exactly what transformers computes here (module docstring)."""
    attn = inner_model(hf).encoder.layers[0].self_attn
    weight = attn.q_proj.weight
    if getattr(hf.config, "_attn_implementation", None) != "sdpa":
        return False
    if torch.is_grad_enabled() and weight.requires_grad:
        return False  # the fused block carries no gradient to q/k/v_proj
    device = pixels.device.type
    if not torch.is_autocast_enabled(device):
        return True
    return device == "cuda" and torch.get_autocast_dtype(device) == weight.dtype


def forward(hf, pixels: torch.Tensor) -> torch.Tensor:
    """pixels [B, 3, S, S] -> `hf(pixel_values=pixels).last_hidden_state` [B, L, C]:
    every layer of `hf`, no post-LayerNorm."""
    if not applies(hf, pixels):
        return hf(pixel_values=pixels).last_hidden_state
    with torch.autocast(pixels.device.type, enabled=False):
        return _forward(inner_model(hf), pixels)


def _forward(model, pixels: torch.Tensor) -> torch.Tensor:
    emb = model.embeddings
    conv = emb.patch_embedding
    if pixels.shape[-2:] != (emb.image_size, emb.image_size):
        raise ValueError(
            f"CLIP pixels: {tuple(pixels.shape)} do not match the model's "
            f"{emb.image_size}x{emb.image_size} input (preprocess resizes to it)"
        )
    b = pixels.shape[0]
    x = F.conv2d(pixels.to(conv.weight.dtype), conv.weight, conv.bias, conv.stride)
    x = x.flatten(2).transpose(1, 2)  # [B, P, C]
    x = torch.cat([emb.class_embedding.expand(b, 1, -1), x], dim=1)
    x = x + emb.position_embedding.weight  # [B, L, C]: row i is position id i
    norm = model.pre_layrnorm
    x = F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
    _, s, c = x.shape
    for layer in model.encoder.layers:
        attn, mlp, n1, n2 = layer.self_attn, layer.mlp, layer.layer_norm1, layer.layer_norm2
        h = F.layer_norm(x, n1.normalized_shape, n1.weight, n1.bias, n1.eps)
        w, bias = fused_qkv(attn)
        qkv = F.linear(h, w, bias).view(b, s, 3, attn.num_heads, attn.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B, H, L, D], strided views
        h = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)  # [B, H, L, D]
        h = h.transpose(1, 2).reshape(b, s, c)
        x = x + F.linear(h, attn.out_proj.weight, attn.out_proj.bias)
        h = F.layer_norm(x, n2.normalized_shape, n2.weight, n2.bias, n2.eps)
        h = F.linear(h, mlp.fc1.weight, mlp.fc1.bias)
        h = F.gelu(h) if mlp.config.hidden_act == "gelu" else mlp.activation_fn(h)
        x = x + F.linear(h, mlp.fc2.weight, mlp.fc2.bias)
    return x
