"""The fp8 flash-attention kernel for Hopper: tensor-memory-accelerator (TMA) tile loads and an
optional software-pipelined q k^T (used by mtlib.kernels.attention's "fp8" mode).

Same arithmetic as mtlib.kernels.attention's pointer kernel in fp8 mode (e4m3 q and k with one
scale per (batch, head), e4m3 v with one scale per channel, probabilities re-quantised to e4m3,
each tile's p @ v summed in fp32 outside the MMA accumulator), organised for the H100/H200:

- tiles come through tensor descriptors (host-built `TensorDescriptor`s over 3-D views of the
  inputs), which Triton lowers to TMA bulk copies on sm_90: no per-thread address arithmetic,
  out-of-range rows read as zeros and out-of-range output rows are not written;
- the softmax scale is folded into one fused multiply-add per score (s * c - m);
- PIPELINE: the next tile's q k^T is issued before this tile's softmax, so the tensor cores
  work while the exponentials run (FlashAttention-3's intra-warpgroup overlap, written in the
  source; Triton keeps the product in flight until its first use).

Inputs: q8, k8 [B, L, H, d] e4m3 (contiguous), v8t [B, H, d, Lpad] e4m3 with Lpad a multiple of
16 (TMA strides are 16-byte aligned; mtlib.kernels.attention.quantize_channels_t pads it), fp32
scales; output [B, Lq, H, d] bf16. The autotuner picks tile sizes and PIPELINE per shape; every
choice computes the same function (tile sizes move fp32 rounding only).
"""

from __future__ import annotations

import math

import torch

_LOG2E = 1.4426950408889634

try:  # Triton is optional: the CPU install has none
    import triton
    import triton.language as tl
    from triton.tools.tensor_descriptor import TensorDescriptor

    HAVE_TMA = True
except ImportError:  # pragma: no cover - depends on the install
    triton = tl = TensorDescriptor = None
    HAVE_TMA = False

# (BLOCK_M, BLOCK_N, num_warps, num_stages, PIPELINE): 128-row tiles need 8 warps (two warpgroups
# of 64 rows) to hold the fp32 accumulators in registers without spilling
TUNE_SPACE = [
    (128, 128, 8, 2, False),
    (128, 128, 8, 3, False),
    (128, 64, 8, 3, False),
    (128, 64, 8, 4, False),
    (64, 128, 4, 3, False),
    (128, 128, 8, 2, True),
    (128, 128, 8, 3, True),
    (128, 64, 8, 3, True),
    (64, 128, 4, 3, True),
]


if HAVE_TMA:

    def _set_blocks(nargs):
        """Autotune pre-hook: the descriptors' block shapes follow the config's tile sizes."""
        bm, bn, d = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["HEAD_DIM"]
        nargs["desc_q"].block_shape = [1, bm, d]
        nargs["desc_o"].block_shape = [1, bm, d]
        nargs["desc_k"].block_shape = [1, bn, d]
        nargs["desc_v"].block_shape = [1, d, bn]

    def _configs(space=None):
        return [
            triton.Config(
                {"BLOCK_M": bm, "BLOCK_N": bn, "PIPELINE": pipe},
                num_warps=w,
                num_stages=s,
                pre_hook=_set_blocks,
            )
            for bm, bn, w, s, pipe in (space or TUNE_SPACE)
        ]

    @triton.jit
    def _softmax_pv(acc, l_i, m_i, s, v, s_scale, CHAIN: tl.constexpr):
        """One tile's online-softmax update from raw scores s [BLOCK_M, BLOCK_N] (fp32) and
        v [BLOCK_N, d] (e4m3)."""
        m_new = tl.maximum(m_i, tl.max(s, 1) * s_scale)
        p = tl.math.exp2(s * s_scale - m_new[:, None])  # one FMA + one exp2 per score
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        if CHAIN:  # through the MMA accumulator (benchmarks only: fp8 MMA accumulates coarsely)
            acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        return acc, l_i, m_new

    @triton.jit
    def _fp8_fwd(
        desc_q,
        desc_k,
        desc_v,
        desc_o,
        QS,
        KS,
        VS,
        sm_scale_log2,
        H,
        Lq,
        Lk,
        HEAD_DIM: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        PIPELINE: tl.constexpr,
        CHAIN: tl.constexpr = False,
    ):
        pid_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        m0 = pid_m * BLOCK_M
        col = h * HEAD_DIM  # q, k, o are viewed as [B, L, H * d]; v as [B * H, d, Lpad]
        q = desc_q.load([b, m0, col]).reshape([BLOCK_M, HEAD_DIM])
        s_scale = sm_scale_log2 * tl.load(QS + bh) * tl.load(KS + bh)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)

        n_full = Lk // BLOCK_N
        if PIPELINE:
            if n_full > 0:
                k = desc_k.load([b, 0, col]).reshape([BLOCK_N, HEAD_DIM])
                s = tl.dot(q, k.T)
                for j in range(0, n_full - 1):
                    k = desc_k.load([b, (j + 1) * BLOCK_N, col]).reshape([BLOCK_N, HEAD_DIM])
                    s_next = tl.dot(q, k.T)  # in flight during this tile's softmax
                    v = desc_v.load([bh, 0, j * BLOCK_N]).reshape([HEAD_DIM, BLOCK_N]).T
                    acc, l_i, m_i = _softmax_pv(acc, l_i, m_i, s, v, s_scale, CHAIN)
                    s = s_next
                v = desc_v.load([bh, 0, (n_full - 1) * BLOCK_N]).reshape([HEAD_DIM, BLOCK_N]).T
                acc, l_i, m_i = _softmax_pv(acc, l_i, m_i, s, v, s_scale, CHAIN)
        else:
            for j in range(0, n_full):
                k = desc_k.load([b, j * BLOCK_N, col]).reshape([BLOCK_N, HEAD_DIM])
                s = tl.dot(q, k.T)
                v = desc_v.load([bh, 0, j * BLOCK_N]).reshape([HEAD_DIM, BLOCK_N]).T
                acc, l_i, m_i = _softmax_pv(acc, l_i, m_i, s, v, s_scale, CHAIN)
        n0 = n_full * BLOCK_N
        if n0 < Lk:  # the last, partial tile: keys past the end (read as zeros) get no weight
            k = desc_k.load([b, n0, col]).reshape([BLOCK_N, HEAD_DIM])
            s = tl.dot(q, k.T)
            s = tl.where((tl.arange(0, BLOCK_N) < Lk - n0)[None, :], s, float("-inf"))
            v = desc_v.load([bh, 0, n0]).reshape([HEAD_DIM, BLOCK_N]).T
            acc, l_i, m_i = _softmax_pv(acc, l_i, m_i, s, v, s_scale, CHAIN)

        acc = acc / l_i[:, None]
        vs = tl.load(VS + bh * HEAD_DIM + tl.arange(0, HEAD_DIM))  # v's scale per channel [d]
        acc = acc * vs[None, :]
        desc_o.store([b, m0, col], acc.to(tl.bfloat16).reshape([1, BLOCK_M, HEAD_DIM]))

    _fp8_fwd_tuned = triton.autotune(configs=_configs(), key=["Lq", "Lk", "HEAD_DIM"])(_fp8_fwd)


def launch(
    q8: torch.Tensor,
    k8: torch.Tensor,
    v8t: torch.Tensor,
    q_scale: torch.Tensor,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor,
    config: dict | None = None,
    interpret_blocks: tuple[int, int] = (32, 32),
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v -> [B, Lq, H, d] bf16 (see the module docstring for inputs).

    config: {"BLOCK_M", "BLOCK_N", "PIPELINE", "num_warps", "num_stages"[, "CHAIN"]} runs
    that one variant (benchmarks); None autotunes (on the GPU) or runs `interpret_blocks`
    tiles under TRITON_INTERPRET=1."""
    import os

    B, Lq, H, d = q8.shape
    Lk = k8.shape[1]
    if v8t.shape[:3] != (B, H, d) or v8t.shape[3] < Lk or v8t.shape[3] % 16:
        raise ValueError(
            f"fp8 attention: v must be [B, H, d, Lpad] with Lpad >= {Lk} a multiple "
            f"of 16; got {list(v8t.shape)}"
        )
    out = torch.empty(q8.shape, dtype=torch.bfloat16, device=q8.device)
    q3, k3, o3 = q8.view(B, Lq, H * d), k8.view(B, Lk, H * d), out.view(B, Lq, H * d)
    v3 = v8t.view(B * H, d, v8t.shape[3])
    # the descriptors' shapes bound the reads: v's keys end at Lk, not at the padding
    descs = [
        TensorDescriptor(
            t, list(t.shape) if t is not v3 else [B * H, d, Lk], list(t.stride()), [1, 32, 32]
        )
        for t in (q3, k3, v3, o3)
    ]
    args = (*descs, q_scale, k_scale, v_scale, _LOG2E / math.sqrt(d), H, Lq, Lk)
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    if config is None and not interpreting:

        def grid(meta):
            return (triton.cdiv(Lq, meta["BLOCK_M"]), B * H)

        _fp8_fwd_tuned[grid](*args, HEAD_DIM=d)
        return out
    if config is None:
        bm, bn = interpret_blocks
        config = {"BLOCK_M": bm, "BLOCK_N": bn, "PIPELINE": True}
    meta = {k: v for k, v in config.items() if k not in ("num_warps", "num_stages")}
    _set_blocks(
        {
            "desc_q": descs[0],
            "desc_k": descs[1],
            "desc_v": descs[2],
            "desc_o": descs[3],
            "BLOCK_M": meta["BLOCK_M"],
            "BLOCK_N": meta["BLOCK_N"],
            "HEAD_DIM": d,
        }
    )
    extra = (
        {} if interpreting else {k: config[k] for k in ("num_warps", "num_stages") if k in config}
    )
    _fp8_fwd[(triton.cdiv(Lq, meta["BLOCK_M"]), B * H)](*args, HEAD_DIM=d, **meta, **extra)
    return out
