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

# (BLOCK_M, BLOCK_N, num_warps, num_stages, PIPELINE, SPLIT_D): 128-row tiles need 8 warps (two
# warpgroups of 64 rows) to hold their fp32 tiles in registers. On the H200 at the 480p shape
# (benchmarks/results/h200_fp8_attention.json: 13 variants) 64-row tiles on one warpgroup won
# (two CTAs per SM overlap each other's exponentials and MMAs: 760-800 TFLOP/s against 690 for
# 128-row tiles), two or three pipeline stages (four: 550), without PIPELINE and SPLIT_D (both
# hold more live registers); the search keeps the winners and the best 128-row tile, so that
# other GPUs and shapes still find theirs.
# How the softmax exponentials run (the kernel's EXP): 0 tl.math.exp2, 1 MUFU.EX2 flush-to-zero,
# 2 / 3: one of every 2 / 4 as a polynomial on the FMA pipe (see _exp2_asm). On the H200 at the
# 480p shape none beat 0 (benchmarks/results/h200_dit_fp8_profile.json: 1 within the ~3% spread
# between runs, as it must be: tl.math.exp2 already lowers to ex2.approx.ftz.f32 on sm_90, the
# PTX differs by 4 instructions of 1900; 2 -14%, 3 -8%: the FMA pipe is already busy with the online
# softmax); kept for benchmarks and other GPUs.
EXP_FORM = 0

TUNE_SPACE = [
    (64, 128, 4, 2, 0, 0),
    (64, 128, 4, 3, 0, 0),
    (64, 128, 4, 3, 0, 1),
    (128, 128, 8, 3, 0, 0),
]


def _hexf(v: float) -> str:
    """A float32 constant as PTX writes it (0fXXXXXXXX)."""
    import struct

    return "0f" + struct.pack(">f", v).hex().upper()


# 2^f on [-0.5, 0.5] to 7.7e-5 relative (a least-squares fit in relative error; the result is
# rounded to e4m3, 3 mantissa bits, next)
_POLY = (0.99992894, 0.69327624, 0.24260405, 0.05508868)


def _exp2_asm(n: int, n_poly: int) -> str:
    """PTX for `n` exp2s of x <= 0 ($n.. in, $0.. out): the first n - n_poly on MUFU.EX2
    (flush-to-zero), the last n_poly as Cody-Waite + a cubic on the FMA and integer pipes
    (FlashAttention-4's split of the exponentials between the two units). The polynomial's
    x is clamped at -125 so its exponent stays normal: 2^-125 where MUFU gives 0, both 0 in e4m3."""
    c0, c1, c2, c3 = (_hexf(c) for c in _POLY)
    lines = ["{", ".reg .f32 pt, pj, pf, pp;", ".reg .b32 pe, pb;"]
    for i in range(n - n_poly):
        lines.append(f"ex2.approx.ftz.f32 ${i}, ${n + i};")
    for i in range(n - n_poly, n):
        lines += [
            f"max.ftz.f32 pf, ${n + i}, {_hexf(-125.0)};",
            f"add.rn.ftz.f32 pt, pf, {_hexf(12582912.0)};",  # 1.5 * 2^23: round(pf) in the low bits
            f"sub.rn.ftz.f32 pj, pt, {_hexf(12582912.0)};",
            "sub.rn.ftz.f32 pf, pf, pj;",  # in [-0.5, 0.5]
            f"fma.rn.ftz.f32 pp, pf, {c3}, {c2};",
            f"fma.rn.ftz.f32 pp, pp, pf, {c1};",
            f"fma.rn.ftz.f32 pp, pp, pf, {c0};",
            "mov.b32 pe, pt;",
            "shl.b32 pe, pe, 23;",  # round(pf) moved into the exponent field
            "mov.b32 pb, pp;",
            "add.s32 pb, pb, pe;",
            f"mov.b32 ${i}, pb;",
        ]
    lines.append("}")
    return "\n".join(lines)


if HAVE_TMA:
    _EXP2_ASM_1OF2 = tl.constexpr(_exp2_asm(2, 1))  # kernels read globals only as constexprs
    _EXP2_ASM_1OF4 = tl.constexpr(_exp2_asm(4, 1))

    def _set_blocks(nargs):
        """Autotune pre-hook: the descriptors' block shapes follow the config's tile sizes."""
        bm, bn, d = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["HEAD_DIM"]
        dv = d // (1 + int(nargs.get("SPLIT_D", 0)))  # v and o tiles: half the channels when split
        nargs["desc_q"].block_shape = [1, bm, d]
        nargs["desc_o"].block_shape = [1, bm, dv]
        nargs["desc_k"].block_shape = [1, bn, d]
        nargs["desc_v"].block_shape = [1, dv, bn]

    def _configs(space=None, exp=None):
        exp = EXP_FORM if exp is None else exp
        return [
            triton.Config(
                {"BLOCK_M": bm, "BLOCK_N": bn, "PIPELINE": pipe, "SPLIT_D": split, "EXP": exp},
                num_warps=w,
                num_stages=s,
                pre_hook=_set_blocks,
            )
            for bm, bn, w, s, pipe, split in (space or TUNE_SPACE)
        ]

    @triton.jit
    def _exp2_form(x, EXP: tl.constexpr):
        """exp2(x) of the softmax scores x <= 0 in the form EXP names (see EXP_FORM)."""
        if EXP == 0:  # fp32 exp2
            return tl.math.exp2(x)
        if EXP == 1:  # flush-to-zero MUFU.EX2 (no subnormal fix-up around it)
            return tl.inline_asm_elementwise(
                "ex2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1
            )
        if EXP == 2:  # of every 2 scores: one on MUFU, one polynomial on the FMA pipe
            return tl.inline_asm_elementwise(
                _EXP2_ASM_1OF2, "=f,=f,f,f", [x], dtype=tl.float32, is_pure=True, pack=2
            )
        # of every 4 scores: three on MUFU, one polynomial
        return tl.inline_asm_elementwise(
            _EXP2_ASM_1OF4, "=f,=f,=f,=f,f,f,f,f", [x], dtype=tl.float32, is_pure=True, pack=4
        )

    @triton.jit
    def _pv(acc, alpha, p8, v, CHAIN: tl.constexpr):
        """acc [BLOCK_M, dv] rescaled by alpha plus p8 @ v ([BLOCK_N, dv] e4m3)."""
        if CHAIN:  # through the MMA accumulator (benchmarks only: fp8 MMA accumulates coarsely)
            return tl.dot(p8, v, acc * alpha[:, None])
        return acc * alpha[:, None] + tl.dot(p8, v)

    @triton.jit
    def _tile(
        acc0,
        acc1,
        l_i,
        m_i,
        s,
        desc_v,
        bh,
        n0,
        s_scale,
        BLOCK_N: tl.constexpr,
        DV: tl.constexpr,
        SPLIT_D: tl.constexpr,
        CHAIN: tl.constexpr,
        EXP: tl.constexpr,
    ):
        """One key tile's online-softmax update from raw scores s [BLOCK_M, BLOCK_N] (fp32):
        running max m_i, sum l_i, accumulators acc0 (and acc1: channels DV.. when split)."""
        m_new = tl.maximum(m_i, tl.max(s, 1) * s_scale)
        x = s * s_scale - m_new[:, None]  # one FMA per score; <= 0
        alpha = tl.math.exp2(m_i - m_new)
        p = _exp2_form(x, EXP)
        l_i = l_i * alpha + tl.sum(p, 1)
        p8 = p.to(tl.float8e4nv)
        v = desc_v.load([bh, 0, n0]).reshape([DV, BLOCK_N]).T
        acc0 = _pv(acc0, alpha, p8, v, CHAIN)
        if SPLIT_D:  # the second half of the channels: one [BLOCK_M, DV] product live at a time
            v = desc_v.load([bh, DV, n0]).reshape([DV, BLOCK_N]).T
            acc1 = _pv(acc1, alpha, p8, v, CHAIN)
        return acc0, acc1, l_i, m_new

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
        SPLIT_D: tl.constexpr = 0,
        CHAIN: tl.constexpr = False,
        EXP: tl.constexpr = 0,
    ):
        DV: tl.constexpr = HEAD_DIM // (1 + SPLIT_D)  # channels per p @ v product
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
        acc0 = tl.zeros([BLOCK_M, DV], tl.float32)
        acc1 = tl.zeros([BLOCK_M, DV], tl.float32)  # unused (and dropped) unless SPLIT_D

        n_full = Lk // BLOCK_N
        if PIPELINE:
            if n_full > 0:
                k = desc_k.load([b, 0, col]).reshape([BLOCK_N, HEAD_DIM])
                s = tl.dot(q, k.T)
                for j in range(0, n_full - 1):
                    k = desc_k.load([b, (j + 1) * BLOCK_N, col]).reshape([BLOCK_N, HEAD_DIM])
                    s_next = tl.dot(q, k.T)  # in flight during this tile's softmax
                    acc0, acc1, l_i, m_i = _tile(acc0, acc1, l_i, m_i, s, desc_v, bh, j * BLOCK_N,
                                                 s_scale, BLOCK_N, DV, SPLIT_D, CHAIN, EXP)  # fmt: skip
                    s = s_next
                acc0, acc1, l_i, m_i = _tile(acc0, acc1, l_i, m_i, s, desc_v, bh, (n_full - 1) * BLOCK_N,
                                             s_scale, BLOCK_N, DV, SPLIT_D, CHAIN, EXP)  # fmt: skip
        else:
            for j in range(0, n_full):
                k = desc_k.load([b, j * BLOCK_N, col]).reshape([BLOCK_N, HEAD_DIM])
                s = tl.dot(q, k.T)
                acc0, acc1, l_i, m_i = _tile(acc0, acc1, l_i, m_i, s, desc_v, bh, j * BLOCK_N,
                                             s_scale, BLOCK_N, DV, SPLIT_D, CHAIN, EXP)  # fmt: skip
        n0 = n_full * BLOCK_N
        if n0 < Lk:  # the last, partial tile: keys past the end (read as zeros) get no weight
            k = desc_k.load([b, n0, col]).reshape([BLOCK_N, HEAD_DIM])
            s = tl.dot(q, k.T)
            s = tl.where((tl.arange(0, BLOCK_N) < Lk - n0)[None, :], s, float("-inf"))
            acc0, acc1, l_i, m_i = _tile(acc0, acc1, l_i, m_i, s, desc_v, bh, n0, s_scale,
                                         BLOCK_N, DV, SPLIT_D, CHAIN, EXP)  # fmt: skip

        vs = VS + bh * HEAD_DIM + tl.arange(0, DV)  # v's scale per channel
        out = acc0 / l_i[:, None] * tl.load(vs)[None, :]
        desc_o.store([b, m0, col], out.to(tl.bfloat16).reshape([1, BLOCK_M, DV]))
        if SPLIT_D:
            out = acc1 / l_i[:, None] * tl.load(vs + DV)[None, :]
            desc_o.store([b, m0, col + DV], out.to(tl.bfloat16).reshape([1, BLOCK_M, DV]))

    def _bench(fn, quantiles):
        # the candidates lie within ~5% of each other, about the spread of Triton's default
        # 100 ms timing of a 30 ms kernel: time each for ~0.5 s instead (once per shape)
        return triton.testing.do_bench(fn, warmup=100, rep=500, quantiles=quantiles)

    def tuned(exp=None):
        """The autotuned kernel over TUNE_SPACE with exponential form `exp` (default EXP_FORM)."""
        return triton.autotune(
            configs=_configs(exp=exp), key=["Lq", "Lk", "HEAD_DIM"], do_bench=_bench
        )(_fp8_fwd)

    _fp8_fwd_tuned = tuned()


def supported(device: torch.device) -> bool:
    """Tensor descriptors lower to TMA copies from Hopper (sm_90) on; older GPUs (an Ada card's
    fp8 included) keep mtlib.kernels.attention's pointer kernel. The interpreter runs anywhere."""
    import os

    if not HAVE_TMA:
        return False
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9


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

    config: {"BLOCK_M", "BLOCK_N", "PIPELINE", "num_warps", "num_stages"[, "SPLIT_D", "CHAIN"]} runs
    that one variant (benchmarks); None autotunes (on the GPU) or runs `interpret_blocks`
    tiles (split channels) under TRITON_INTERPRET=1."""
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
        config = {"BLOCK_M": bm, "BLOCK_N": bn, "PIPELINE": False, "SPLIT_D": 1}
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
            "SPLIT_D": meta.get("SPLIT_D", 0),
        }
    )
    extra = (
        {} if interpreting else {k: config[k] for k in ("num_warps", "num_stages") if k in config}
    )
    _fp8_fwd[(triton.cdiv(Lq, meta["BLOCK_M"]), B * H)](*args, HEAD_DIM=d, **meta, **extra)
    return out
