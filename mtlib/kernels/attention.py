"""Forward-only flash attention in Triton for the DiT's self-attention (opt-in, CUDA + Triton).

Why it exists: at 480p a pass spends half its time in 40 self-attentions over 32,928 tokens,
and torch's SDPA has no fp8 path. This kernel computes full (unmasked) softmax attention

    out = softmax(q k^T / sqrt(d)) v

tile by tile with an online softmax (one running max and sum per query row, base-2
exponentials), in two flavours:

- "bf16": q, k, v in bf16, products accumulated in fp32, like the flash / cuDNN kernels.
- "fp8": q and k quantised to float8 e4m3 with one scale per (batch, head) (k first centred
  on its mean over the keys, which softmax cannot see), v with one scale per channel, both
  products on the fp8 tensor cores, the softmax probabilities re-quantised to e4m3 before
  p @ v, and each tile's p @ v summed in fp32 outside the MMA accumulator. This changes
  results beyond bf16 noise; `mtlib bench --what deviation` measures by how much. Where
  Triton has tensor descriptors, fp8 mode runs mtlib.kernels.fp8_attention (the same
  arithmetic with TMA tiles, autotuned for Hopper: 689 -> ~780 TFLOP/s on the H200); the
  pointer kernel below is its fallback.

It reads q, k, v in the DiT's natural [B, L, H, d] layout (no transposes) and writes the
output straight into [B, L, H, d], so the attention output needs no copy before `o`.

Inputs are [B, L, H, d] with d a power of two (16..256; 32..256 for fp8) and a contiguous
last dimension.
`available()` says whether the kernel can run here; `attention()` is the entry point and
falls back to nothing: callers decide (mtlib.models.dit keeps SDPA as the default).
"""

from __future__ import annotations

import math

import torch

E4M3_MAX = 448.0
_LOG2E = 1.4426950408889634

try:  # Triton is optional: the CPU install has none
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - depends on the install
    triton = tl = None
    HAVE_TRITON = False


def _interpreting() -> bool:
    """TRITON_INTERPRET=1: Triton runs kernels on the CPU (tests)."""
    import os

    return os.environ.get("TRITON_INTERPRET") == "1"


def available(device: torch.device | str | None = None) -> bool:
    """True when Triton is importable and `device` (default: current CUDA device) is a CUDA
    GPU, or when TRITON_INTERPRET=1 lets the kernel run on the CPU (tests)."""
    if not HAVE_TRITON:
        return False
    if _interpreting():
        return True
    if device is not None and torch.device(device).type != "cuda":
        return False
    return torch.cuda.is_available()


if HAVE_TRITON:

    def _configs():
        out = []
        for bm, bn, warps, stages in [
            (128, 128, 8, 2),
            (128, 128, 8, 3),
            (128, 64, 4, 3),
            (128, 64, 8, 3),
            (64, 128, 4, 3),
            (128, 128, 4, 2),
            (128, 64, 4, 4),
            (64, 64, 4, 4),
        ]:
            out.append(
                triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=stages)
            )
        return out

    @triton.jit
    def _tile(
        acc, l_i, m_i, q, s_scale, k_ptrs, v_ptrs, kv_mask, MASKED: tl.constexpr, FP8: tl.constexpr
    ):
        """One key/value tile: update the running max m_i, sum l_i and accumulator acc."""
        if MASKED:
            k = tl.load(k_ptrs, mask=kv_mask[None, :], other=0.0)  # [d, BLOCK_N]
        else:
            k = tl.load(k_ptrs)
        s = tl.dot(q, k) * s_scale  # log2-domain scores [BLOCK_M, BLOCK_N]
        if MASKED:
            s = tl.where(kv_mask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        if MASKED:
            v = tl.load(v_ptrs, mask=kv_mask[:, None], other=0.0)  # [BLOCK_N, d]
        else:
            v = tl.load(v_ptrs)
        if FP8:
            # each tile's p @ v from a fresh accumulator, summed here in fp32: Hopper's fp8 MMA
            # accumulates with a reduced mantissa, and chaining 258 tiles through it raised a
            # DiT step's deviation from fp32 from 10.6% to 13.4% rel-L2 (for ~4% of the kernel)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        else:
            acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        return acc, l_i, m_new

    @triton.jit
    def _flash_fwd(
        Q,
        K,
        V,
        O,
        QS,
        KS,
        VS,
        sm_scale_log2,
        s_qb,
        s_qm,
        s_qh,
        s_kb,
        s_kn,
        s_kh,
        s_vb,
        s_vn,
        s_vh,
        s_vd,
        s_ob,
        s_om,
        s_oh,
        H,
        Lq,
        Lk,
        HEAD_DIM: tl.constexpr,
        FP8: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)

        q_rows = offs_m < Lq
        q = tl.load(
            Q + b * s_qb + h * s_qh + offs_m[:, None] * s_qm + offs_d[None, :],
            mask=q_rows[:, None],
            other=0.0,
        )
        s_scale = sm_scale_log2
        if FP8:  # one scale per (batch, head) for q and k, folded into the score scale
            s_scale = s_scale * tl.load(QS + bh) * tl.load(KS + bh)

        k_ptrs = K + b * s_kb + h * s_kh + offs_n[None, :] * s_kn + offs_d[:, None]  # [d, BLOCK_N]
        v_ptrs = (
            V + b * s_vb + h * s_vh + offs_n[:, None] * s_vn + offs_d[None, :] * s_vd
        )  # [BLOCK_N, d]
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)

        n_full = (Lk // BLOCK_N) * BLOCK_N
        for _ in range(0, n_full, BLOCK_N):
            acc, l_i, m_i = _tile(acc, l_i, m_i, q, s_scale, k_ptrs, v_ptrs, offs_n, False, FP8)
            k_ptrs += BLOCK_N * s_kn
            v_ptrs += BLOCK_N * s_vn
        if n_full < Lk:  # the last, partial tile: keys past the end get no weight
            kv_mask = offs_n < Lk - n_full
            acc, l_i, m_i = _tile(acc, l_i, m_i, q, s_scale, k_ptrs, v_ptrs, kv_mask, True, FP8)

        acc = acc / l_i[:, None]
        if FP8:  # v's scale per channel
            acc = acc * tl.load(VS + bh * HEAD_DIM + offs_d)[None, :]
        o_ptrs = O + b * s_ob + h * s_oh + offs_m[:, None] * s_om + offs_d[None, :]
        tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=q_rows[:, None])

    # autotuned over tile shapes on the GPU; the interpreter (CPU tests) runs one fixed tile
    _flash_fwd_tuned = triton.autotune(configs=_configs(), key=["Lq", "Lk", "HEAD_DIM", "FP8"])(
        _flash_fwd
    )


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, fp8: bool = False) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"flash attention: q, k, v must be [B, L, H, d]; got {list(q.shape)}, "
            f"{list(k.shape)}, {list(v.shape)}"
        )
    B, _, H, d = q.shape
    if k.shape[0] != B or k.shape[2:] != q.shape[2:] or v.shape != k.shape:
        raise ValueError(
            f"flash attention: k and v must be [B, Lk, H, d] matching q {list(q.shape)}; "
            f"got k {list(k.shape)}, v {list(v.shape)}"
        )
    if not head_dim_ok(d, fp8):
        raise ValueError(
            f"flash attention: head dim must be a power of two in "
            f"{min_head_dim(fp8)}..256{' for fp8' if fp8 else ''}, got {d}"
        )


def min_head_dim(fp8: bool) -> int:
    """fp8 tensor-core products need a reduction dim of at least 32 (q k^T reduces over d)."""
    return 32 if fp8 else 16


def head_dim_ok(d: int, fp8: bool) -> bool:
    """The head dims the kernel takes: powers of two in min_head_dim(fp8)..256."""
    return min_head_dim(fp8) <= d <= 256 and not d & (d - 1)


def _launch(q, k, v, out, qs, ks, vs, v_transposed: bool, fp8: bool) -> torch.Tensor:
    B, Lq, H, d = q.shape
    Lk = k.shape[1]
    if v_transposed:  # v given as [B, H, d, Lk] (fp8: the tensor cores want p @ v K-major)
        s_vb, s_vh, s_vd, s_vn = v.stride()
    else:
        s_vb, s_vn, s_vh, s_vd = v.stride()

    def grid(meta):
        return (triton.cdiv(Lq, meta["BLOCK_M"]), B * H)

    fixed = {}
    kernel = _flash_fwd_tuned
    if _interpreting():
        kernel, fixed = _flash_fwd, {"BLOCK_M": 32, "BLOCK_N": 32}
    kernel[grid](
        q,
        k,
        v,
        out,
        qs,
        ks,
        vs,
        _LOG2E / math.sqrt(d),
        q.stride(0),
        q.stride(1),
        q.stride(2),
        k.stride(0),
        k.stride(1),
        k.stride(2),
        s_vb,
        s_vn,
        s_vh,
        s_vd,
        out.stride(0),
        out.stride(1),
        out.stride(2),
        H,
        Lq,
        Lk,
        HEAD_DIM=d,
        FP8=fp8,
        **fixed,
    )
    return out


@torch.library.custom_op("mtlib::flash_attention_bf16", mutates_args=())
def _flash_bf16(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    out = torch.empty(q.shape, dtype=v.dtype, device=q.device)
    dummy = torch.ones(1, dtype=torch.float32, device=q.device)
    return _launch(q, k, v, out, dummy, dummy, dummy, v_transposed=False, fp8=False)


@_flash_bf16.register_fake
def _(q, k, v):
    return torch.empty(q.shape, dtype=v.dtype, device=q.device)


@torch.library.custom_op("mtlib::flash_attention_fp8", mutates_args=())
def _flash_fp8(
    q8: torch.Tensor,
    k8: torch.Tensor,
    v8t: torch.Tensor,
    q_scale: torch.Tensor,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor,
) -> torch.Tensor:
    from mtlib.kernels import fp8_attention

    if fp8_attention.supported(q8.device):  # the Hopper kernel (TMA tiles; autotuned)
        return fp8_attention.launch(q8, k8, v8t, q_scale, k_scale, v_scale)
    out = torch.empty(q8.shape, dtype=torch.bfloat16, device=q8.device)
    return _launch(q8, k8, v8t, out, q_scale, k_scale, v_scale, v_transposed=True, fp8=True)


@_flash_fp8.register_fake
def _(q8, k8, v8t, q_scale, k_scale, v_scale):
    return torch.empty(q8.shape, dtype=torch.bfloat16, device=q8.device)


def quantize_heads(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L, H, d] -> (e4m3 [B, L, H, d], fp32 scale per (batch, head) [B*H]).

    (One scale per token was measured too: an 8% slower kernel and no change in a DiT step's
    deviation from fp32.)"""
    B, L, H, d = x.shape
    scale = (x.abs().amax(dim=(1, 3)).float() / E4M3_MAX).clamp(min=1e-12)  # [B, H]
    xq = (x.float() / scale[:, None, :, None]).to(torch.float8_e4m3fn)
    return xq, scale.reshape(B * H).contiguous()


def quantize_channels_t(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L, H, d] -> (e4m3 [B, H, d, Lpad] (L fastest, the layout p @ v wants on the fp8
    tensor cores; Lpad: L rounded up to 16 so rows are 16-byte aligned for TMA, the padding
    zeros that no kernel reads), fp32 scale per head channel [B*H, d])."""
    B, L, H, d = x.shape
    scale = (x.abs().amax(dim=1).float() / E4M3_MAX).clamp(min=1e-12)  # [B, H, d]
    xs = x.float() / scale[:, None]
    if L % 16:  # zero keys appended along L: [B, Lpad, H, d]
        xs = torch.nn.functional.pad(xs, (0, 0, 0, 0, 0, -L % 16))
    xq = xs.to(torch.float8_e4m3fn).permute(0, 2, 3, 1).contiguous()
    return xq, scale.reshape(B * H, d).contiguous()


def quantize_fp8(q, k, v):
    """The fp8 kernel's inputs. k is first centred on its mean over the keys (per head and
    channel): softmax ignores a shift shared by a query's scores, so this changes nothing in
    exact arithmetic but takes a common offset out of k before its 3 mantissa bits see it."""
    k = k.float()
    k = k - k.mean(dim=1, keepdim=True)
    q8, qs = quantize_heads(q)
    k8, ks = quantize_heads(k)
    v8, vs = quantize_channels_t(v)
    return q8, k8, v8, qs, ks, vs


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mode: str = "bf16"
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for [B, L, H, d] inputs -> [B, Lq, H, d] (bf16).

    mode "bf16": q and k are cast to v's dtype (as the reference's flash_attention does);
    mode "fp8": all three quantised to e4m3 (see quantize_fp8)."""
    if not HAVE_TRITON:
        raise RuntimeError(
            "flash attention: Triton is not installed; use the SDPA path (the default)"
        )
    if mode not in ("bf16", "fp8"):
        raise ValueError(f"flash attention: mode must be 'bf16' or 'fp8', got {mode!r}")
    _check(q, k, v, fp8=mode == "fp8")
    if mode == "bf16":
        return _flash_bf16(q.to(v.dtype), k.to(v.dtype), v)
    if mode == "fp8":
        return _flash_fp8(*quantize_fp8(q, k, v))
    raise ValueError(f"flash attention: mode must be 'bf16' or 'fp8', got {mode!r}")
