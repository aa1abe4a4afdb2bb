"""GPU check for issue #17: the transformers-backed umT5 encoder and CLIP vision tower against
the hand-written ones they replaced (kept here, verbatim, as the baseline only), at real size
with random weights: same output and not slower.

    python benchmarks/bench_encoders_hf.py [--no-compile] [--out DIR]   # needs CUDA
    python benchmarks/bench_encoders_hf.py --cpu-overhead    # ops + dispatch time per call, CPU
    python benchmarks/bench_encoders_hf.py --tiny-cpu        # smoke run of both parts, CPU

Prints one JSON object (and writes it to DIR/encoders_hf.json, DIR defaults to $OUT or .).

umT5-XXL (24 layers, 4096 wide) in bf16 (the reference's precision, every weight bf16) on
2 x 512 tokens (prompt + negative prompt, as generate() encodes them), four ways:
  handwritten         the encoder mtlib had before #17 (the baseline, 31.4 ms in the first record)
  transformers_plain  UMT5EncoderModel exactly as transformers ships it (the first record's
                      "transformers" row, 52.2 ms)
  transformers_fast   the same class with mtlib's speed settings (mtlib.models.t5_fastpath):
                      what mtlib runs
  transformers_fast_compiled  the same under torch.compile (its compile time is reported)
Each row: median ms per call, the GPU busy time of one call (sum of its kernels) and its top
kernels (so a row slower than its GPU time is launch-bound), and its distance from the float32
encoder on the same weights (max / mean abs difference of the [2, 512, 4096] output, padding
rows included). Weights are random with the official init's scales (wan/modules/t5.py
init_weights), so the network is as well conditioned as a trained one; all rows load one
official-layout state dict.
CLIP ViT-H/14 visual (31 of 32 blocks) in fp16 autocast ("reference" precision) on one
224x224 frame, three ways: hand-written (the baseline), transformers' CLIPVisionModel as
shipped (`fast=False`), and the same model with mtlib's lean forward (mtlib.models.clip_fastpath,
what mtlib runs: one fused q/k/v projection per layer, no autocast casts). Each: ms, GPU busy
time and kernel count (one frame of 257 tokens is launch-bound: a few GFLOP per block), max abs
differences; and transformers as shipped under torch.compile. `--cpu-overhead` also counts the
CLIP ops per call on the CPU (31 blocks at width 64).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mtlib import trace  # noqa: E402
from mtlib.io import InputError  # noqa: E402
from mtlib.models import clip as clip_mod  # noqa: E402
from mtlib.models import t5 as t5_mod  # noqa: E402
from mtlib.models.clip import CLIPConfig  # noqa: E402
from mtlib.models.t5 import StandInTokenizer, T5Config  # noqa: E402


# ------------------------------------------------------------ the replaced code (baseline)
def relative_position_buckets(
    length: int, num_buckets: int, max_distance: int, device=None
) -> torch.Tensor:
    """Bidirectional T5 bucket of (key - query) for a square [length, length] grid.

    Half the buckets hold keys after the query. Within a half, distances below a quarter of
    num_buckets map one to one, larger ones logarithmically up to max_distance, then clamp.
    """
    rel = (
        torch.arange(length, device=device)[None, :] - torch.arange(length, device=device)[:, None]
    )  # [Lq, Lk]
    half = num_buckets // 2
    exact = half // 2
    bucket = (rel > 0).long() * half
    dist = rel.abs()
    # float32 log exactly as the reference computes it, so bucket edges agree
    far = (
        exact
        + (torch.log(dist.float() / exact) / math.log(max_distance / exact) * (half - exact)).long()
    )
    far = far.clamp(max=half - 1)
    return bucket + torch.where(dist < exact, dist, far)


class RelativePositionBias(nn.Module):
    def __init__(self, num_buckets: int, num_heads: int, max_distance: int):
        super().__init__()
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.embedding = nn.Embedding(num_buckets, num_heads)

    def forward(self, length: int) -> torch.Tensor:
        buckets = relative_position_buckets(
            length, self.num_buckets, self.max_distance, self.embedding.weight.device
        )
        return self.embedding(buckets).permute(2, 0, 1).unsqueeze(0)  # [1, n, Lq, Lk]


class RMSNorm(nn.Module):
    """T5 LayerNorm: no mean, no bias; statistics in fp32, cast to a half weight dtype
    before the gain."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return self.weight * x


class Attention(nn.Module):
    def __init__(self, dim: int, dim_attn: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim_attn, bias=False)
        self.k = nn.Linear(dim, dim_attn, bias=False)
        self.v = nn.Linear(dim, dim_attn, bias=False)
        self.o = nn.Linear(dim_attn, dim, bias=False)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape  # [B, L, C]
        n = self.num_heads
        q, k, v = (
            proj(x).view(b, s, n, -1).transpose(1, 2) for proj in (self.q, self.k, self.v)
        )  # [B, n, L, d]
        # T5 folds the 1/sqrt(d) into its init, hence scale=1; `bias` carries positions + padding
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
        return self.o(x.transpose(1, 2).reshape(b, s, -1))


class FeedForward(nn.Module):
    def __init__(self, dim: int, dim_ffn: int):
        super().__init__()
        # `gate` is a Sequential in the official layout (key gate.0); its activation is applied here
        self.gate = nn.Sequential(nn.Linear(dim, dim_ffn, bias=False))
        self.fc1 = nn.Linear(dim, dim_ffn, bias=False)
        self.fc2 = nn.Linear(dim_ffn, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x) * F.gelu(self.gate(x), approximate="tanh"))


class EncoderBlock(nn.Module):
    def __init__(self, cfg: T5Config):
        super().__init__()
        self.norm1 = RMSNorm(cfg.dim, cfg.eps)
        self.attn = Attention(cfg.dim, cfg.dim_attn, cfg.num_heads)
        self.norm2 = RMSNorm(cfg.dim, cfg.eps)
        self.ffn = FeedForward(cfg.dim, cfg.dim_ffn)
        if not cfg.shared_pos:
            self.pos_embedding = RelativePositionBias(
                cfg.num_buckets, cfg.num_heads, cfg.max_distance
            )

    def forward(
        self, x: torch.Tensor, pad: torch.Tensor, shared_bias: torch.Tensor | None
    ) -> torch.Tensor:
        pos = (
            shared_bias if shared_bias is not None else self.pos_embedding(x.shape[1])
        )  # [1, n, L, L]
        bias = (
            pos.to(x.dtype)
            .expand(x.shape[0], -1, -1, -1)
            .masked_fill(pad, torch.finfo(x.dtype).min)
        )
        x = x + self.attn(self.norm1(x), bias)
        return x + self.ffn(self.norm2(x))


class LegacyT5Encoder(nn.Module):
    """umT5 encoder in the official key layout. forward(ids, mask) -> [B, L, dim] at every
    position, padding included (callers trim with the mask)."""

    def __init__(self, config: T5Config | str | None = None):
        super().__init__()
        self.config = cfg = config
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.dim)
        if cfg.shared_pos:
            self.pos_embedding = RelativePositionBias(
                cfg.num_buckets, cfg.num_heads, cfg.max_distance
            )
        self.blocks = nn.ModuleList([EncoderBlock(cfg) for _ in range(cfg.num_layers)])
        self.norm = RMSNorm(cfg.dim, cfg.eps)

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids [B, L] int, mask [B, L] (1 = token, 0 = padding) -> [B, L, dim]."""
        if ids.ndim != 2 or ids.shape != mask.shape:
            raise InputError(
                f"T5 input: ids {tuple(ids.shape)} and mask {tuple(mask.shape)} must both be [B, L]. "
                "Fix: tokenize with padding to text_len."
            )
        device = self.token_embedding.weight.device
        ids, mask = ids.to(device), mask.to(device)
        x = self.token_embedding(ids)  # [B, L, C]
        pad = (mask == 0)[:, None, None, :]  # [B, 1, 1, Lk]: padded keys are never attended
        shared = self.pos_embedding(ids.shape[1]) if self.config.shared_pos else None
        for block in self.blocks:
            x = block(x, pad, shared)
        x = self.norm(x)
        if trace.active():
            trace.point("t5.out_full", x)
        return x


class LayerNormFP32(nn.LayerNorm):
    """LayerNorm whose statistics and affine run in fp32 whatever the weight dtype (the
    official fp16 path normalises in fp32 and casts back to the stream dtype)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        with torch.autocast(x.device.type, enabled=False):
            y = F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps)
        return y.to(x.dtype)


class VisionAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.to_qkv = nn.Linear(dim, 3 * dim)  # rows [q | k | v], each head-major
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, c = x.shape  # [B, L, C]
        n = self.num_heads
        q, k, v = self.to_qkv(x).view(b, s, 3, n, c // n).permute(2, 0, 3, 1, 4)  # 3 x [B, n, L, d]
        x = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(d), no mask
        return self.proj(x.transpose(1, 2).reshape(b, s, c))


class VisionBlock(nn.Module):
    """Pre-norm transformer block; `mlp` keeps the official Sequential indices 0 and 2."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int, eps: float):
        super().__init__()
        self.norm1 = LayerNormFP32(dim, eps=eps)
        self.attn = VisionAttention(dim, num_heads)
        self.norm2 = LayerNormFP32(dim, eps=eps)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class LegacyVisionTransformer(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        dim = cfg.vision_dim
        self.patch_embedding = nn.Conv2d(3, dim, cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.cls_embedding = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.zeros(1, cfg.num_tokens, dim))
        self.pre_norm = LayerNormFP32(dim, eps=cfg.norm_eps)
        self.transformer = nn.Sequential(
            *[
                VisionBlock(dim, cfg.vision_heads, cfg.vision_mlp_ratio, cfg.norm_eps)
                for _ in range(cfg.vision_layers)
            ]
        )
        # In the checkpoint, unused by MultiTalk (features are taken before them).
        self.post_norm = LayerNormFP32(dim, eps=cfg.norm_eps)
        self.head = nn.Parameter(torch.zeros(dim, cfg.embed_dim))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, 3, S, S] normalised -> residual stream after the second-to-last block
        [B, num_tokens, vision_dim]."""
        x = pixels.to(self.patch_embedding.weight.dtype)
        x = self.patch_embedding(x).flatten(2).transpose(1, 2)  # [B, num_patches, C]
        x = torch.cat([self.cls_embedding.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        x = self.pre_norm(x + self.pos_embedding.to(x.dtype))  # [B, num_tokens, C]
        for block in self.transformer[:-1]:  # use_31_block: the last block is skipped
            x = block(x)
        return x


# ------------------------------------------------------------------------------ measure


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _median_ms(fn, n: int = 10) -> float:
    fn()
    _sync()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        _sync()
        times.append((time.perf_counter() - t) * 1e3)
    return round(statistics.median(times), 2)


def _kernel_profile(fn, top: int = 6) -> dict:
    """GPU busy time of one call (sum of its kernels' time) and the heaviest kernels."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    _sync()
    cuda = torch.cuda.is_available()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        fn()
        _sync()
    kind = torch.autograd.DeviceType.CUDA if cuda else torch.autograd.DeviceType.CPU
    rows = [e for e in prof.key_averages() if e.device_type == kind]
    if not cuda:  # --tiny-cpu smoke run: CPU ops stand in for kernels
        rows = [e for e in rows if e.key.startswith("aten::")]
    rows.sort(key=lambda e: e.self_device_time_total, reverse=True)
    busy = sum(e.self_device_time_total for e in rows) / 1e3
    return {
        "gpu_busy_ms": round(busy, 2),
        "kernels": sum(e.count for e in rows),
        "top": [
            [e.key[:90], e.count, round(e.self_device_time_total / 1e3, 2)] for e in rows[:top]
        ],
    }


def _random_state(model: nn.Module, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) * (0.02 if v.ndim > 1 else 0.1) + (1.0 if "norm" in k and v.ndim == 1 else 0.0)
            for k, v in model.state_dict().items()}  # fmt: skip


def _t5_official_init(model: nn.Module, cfg: T5Config, seed: int, device: str) -> dict:
    """Random weights with the scales of the official T5 init_weights (std per key)."""
    dim, dim_attn, n, ffn = cfg.dim, cfg.dim_attn, cfg.num_heads, cfg.dim_ffn
    std = {"token_embedding": 1.0, "attn.q": (dim * dim_attn) ** -0.5, "attn.k": dim**-0.5,
           "attn.v": dim**-0.5, "attn.o": (n * dim_attn) ** -0.5, "ffn.gate": dim**-0.5,
           "ffn.fc1": dim**-0.5, "ffn.fc2": ffn**-0.5,
           "pos_embedding": (2 * cfg.num_buckets * n) ** -0.5}  # fmt: skip
    g = torch.Generator(device).manual_seed(seed)
    out = {}
    for k, v in model.state_dict().items():
        if "norm" in k:
            out[k] = torch.ones(v.shape, device=device)
            continue
        s = next(val for key, val in std.items() if key in k)
        out[k] = torch.randn(v.shape, generator=g, device=device) * s
    return out


def _t5(dev: str, compile_too: bool, emit, cfg: T5Config | None = None) -> dict:
    cfg = cfg or t5_mod.CONFIGS["multitalk-14b"]
    with torch.device("meta"):
        shape_model = LegacyT5Encoder(cfg)
    sd = _t5_official_init(shape_model, cfg, 0, dev)  # fp32 on the GPU
    ids, mask = StandInTokenizer(cfg.vocab_size, cfg.text_len)(
        ["a woman talks to the camera in a quiet room", t5_mod.DEFAULT_NEGATIVE_PROMPT]
    )
    ids, mask = ids.to(dev), mask.to(dev)
    res: dict = {"weights": "random, official init scales", "tokens": list(ids.shape)}

    def build(kind: str, dtype):
        with torch.device("meta"):
            m = (
                LegacyT5Encoder(cfg)
                if kind == "handwritten"
                else t5_mod.T5Encoder(cfg, fast=kind != "transformers_plain")
            )
        m.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, strict=True, assign=True)
        return m.eval().requires_grad_(False)

    ref = build("handwritten", torch.float32)  # the float32 encoder (TF32 off: torch's default)
    torch.backends.cuda.matmul.allow_tf32 = False
    ref_out = ref(ids, mask).float()
    res["fp32_max_abs"] = round(float(ref_out.abs().max()), 4)
    res["fp32_ms"] = _median_ms(lambda r=ref: r(ids, mask), n=3)
    ref = None
    if dev == "cuda":
        torch.cuda.empty_cache()

    def row(fn, model=None) -> dict:
        out = fn().float()
        d = (out - ref_out).abs()
        r = {"ms": _median_ms(fn), "vs_fp32_max_abs": round(float(d.max()), 4),
             "vs_fp32_mean_abs": round(float(d.mean()), 5)}  # fmt: skip
        if model is not None:
            r["param_dtypes"] = sorted({str(p.dtype) for p in model.parameters()})
        r.update(_kernel_profile(fn))
        return r

    outs = {}
    for kind in ("handwritten", "transformers_plain", "transformers_fast"):
        m = build(kind, torch.bfloat16)
        res[kind] = row(lambda m=m: m(ids, mask), m)
        outs[kind] = m(ids, mask).float()
        if kind == "transformers_fast" and compile_too:
            try:
                t0 = time.perf_counter()
                m.hf = torch.compile(m.hf, dynamic=False)
                m(ids, mask)
                torch.cuda.synchronize()
                c = {"compile_s": round(time.perf_counter() - t0, 1)}
                c.update(row(lambda m=m: m(ids, mask)))
            except Exception as e:  # noqa: BLE001  a failed compile is a result too
                c = {"error": f"{type(e).__name__}: {e}"[:300]}
            res["transformers_fast_compiled"] = c
        del m
        if dev == "cuda":
            torch.cuda.empty_cache()
        emit(res)
    res["fast_vs_handwritten_max_abs"] = float(
        (outs["transformers_fast"] - outs["handwritten"]).abs().max()
    )
    res["plain_vs_handwritten_max_abs"] = float(
        (outs["transformers_plain"] - outs["handwritten"]).abs().max()
    )
    res["speedup_fast_vs_handwritten"] = round(
        res["handwritten"]["ms"] / res["transformers_fast"]["ms"], 3
    )
    return res


def _clip(dev: str, compile_too: bool = False, ccfg: CLIPConfig | None = None) -> dict:
    ccfg = ccfg or clip_mod.CONFIGS["multitalk-14b"]
    with torch.device("meta"):
        fastc = clip_mod.XLMRobertaCLIP(ccfg, with_text_tower=False)
        newc = clip_mod.XLMRobertaCLIP(ccfg, with_text_tower=False, fast=False)
        oldc = LegacyVisionTransformer(ccfg)
    sd = _random_state(newc, 1)
    for m in (newc, fastc):
        m.load_state_dict(sd, assign=True)
    oldc.load_state_dict({k[len("visual.") :]: v for k, v in sd.items()}, strict=True, assign=True)
    newc, fastc = (m.to(dev, torch.float16).eval() for m in (newc, fastc))
    for m in (newc, fastc):
        m.visual.rebuild_buffers()
        m.precision = "reference"
    oldc = oldc.to(dev, torch.float16).eval()
    s = ccfg.image_size
    pixels = torch.randn(1, 3, s, s, device=dev)

    def run_new():
        with torch.autocast("cuda", dtype=torch.float16):
            return newc.visual(pixels)

    def run_fast():
        with torch.autocast("cuda", dtype=torch.float16):
            return fastc.visual(pixels)

    def run_old():
        with torch.autocast("cuda", dtype=torch.float16):
            return oldc(pixels)

    a, f, b = run_new().float(), run_fast().float(), run_old().float()
    res = {"max_abs_diff": float((a - b).abs().max()), "max_abs_ref": float(b.abs().max()),
           "max_abs_diff_fast_vs_handwritten": float((f - b).abs().max()),
           "max_abs_diff_fast_vs_transformers": float((f - a).abs().max()),
           "ms_transformers": _median_ms(run_new), "ms_fast": _median_ms(run_fast),
           "ms_handwritten": _median_ms(run_old),
           "profile_transformers": _kernel_profile(run_new),
           "profile_fast": _kernel_profile(run_fast),
           "profile_handwritten": _kernel_profile(run_old)}  # fmt: skip
    res["speedup_fast_vs_handwritten"] = round(res["ms_handwritten"] / res["ms_fast"], 3)
    if compile_too:  # one 257-token frame: launch-bound; compiled, the launches fuse
        try:
            t0 = time.perf_counter()
            newc.visual.hf = torch.compile(newc.visual.hf, dynamic=False)
            run_new()
            _sync()
            res["compiled"] = {"compile_s": round(time.perf_counter() - t0, 1),
                               "ms_transformers": _median_ms(run_new),
                               "max_abs_diff": float((run_new().float() - b).abs().max())}  # fmt: skip
        except Exception as e:  # noqa: BLE001  a failed compile is a result too
            res["compiled"] = {"error": f"{type(e).__name__}: {e}"[:300]}
    return res


def _per_call(fn) -> dict:
    """aten ops of one call (torch.profiler) and its wall time over 30 calls, on the CPU."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    ops = sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))
    times = []
    for _ in range(30):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return {"aten_ops_per_call": ops, "min_ms": round(min(times), 2),
            "median_ms": round(statistics.median(times), 2)}  # fmt: skip


def clip_overhead() -> dict:
    """The CLIP tower's ops per call on the CPU: its real depth (31 of 32 blocks run) at width
    64 on one 56x56 frame (17 tokens), fp32, so a call costs its Python and dispatch only."""
    ccfg = CLIPConfig(image_size=56, patch_size=14, vision_dim=64, vision_heads=4,
                      vision_layers=32, embed_dim=16, vocab_size=50, text_dim=16, text_heads=2,
                      text_layers=1)  # fmt: skip
    with torch.device("meta"):
        models = {"handwritten": LegacyVisionTransformer(ccfg),
                  "transformers_plain": clip_mod.XLMRobertaCLIP(ccfg, False, fast=False),
                  "transformers_fast": clip_mod.XLMRobertaCLIP(ccfg, False)}  # fmt: skip
    sd = _random_state(models["transformers_fast"], 0)
    pixels = torch.randn(1, 3, 56, 56)
    out, outs = {}, {}
    for name, m in models.items():
        if name == "handwritten":
            m.load_state_dict({k[len("visual.") :]: v for k, v in sd.items()}, assign=True)
            fn = lambda m=m: m(pixels)  # noqa: E731
        else:
            m.load_state_dict(sd, assign=True)
            m.visual.rebuild_buffers()
            fn = lambda m=m: m.visual(pixels)  # noqa: E731
        out[name] = _per_call(fn)
        outs[name] = fn()
    out["fast_vs_plain_max_abs"] = float(
        (outs["transformers_fast"] - outs["transformers_plain"]).abs().max()
    )
    out["fast_vs_handwritten_max_abs"] = float(
        (outs["transformers_fast"] - outs["handwritten"]).abs().max()
    )
    return out


@torch.no_grad()
def cpu_overhead() -> dict:
    """Dispatch cost per call, on the CPU: umT5's 24 layers at width 64 on 2 x 8 tokens, so
    the arithmetic is nothing and the time is Python + one dispatch per op (what a GPU run
    pays on its host thread to launch the same ops). aten ops counted by torch.profiler."""
    import transformers

    torch.set_num_threads(1)
    cfg = T5Config(vocab_size=1000, dim=64, dim_attn=64, dim_ffn=128, num_heads=4,
                   num_layers=24, text_len=8)  # fmt: skip
    with torch.device("meta"):
        models = {"handwritten": LegacyT5Encoder(cfg),
                  "transformers_plain": t5_mod.T5Encoder(cfg, fast=False),
                  "transformers_fast": t5_mod.T5Encoder(cfg)}  # fmt: skip
    sd = _random_state(models["transformers_fast"], 0)
    ids, mask = StandInTokenizer(cfg.vocab_size, cfg.text_len)(["a woman", "x y z"])
    out = {"transformers": transformers.__version__, "torch": torch.__version__}
    for name, m in models.items():
        m.load_state_dict(sd, assign=True)
        out[name] = _per_call(lambda m=m: m(ids, mask))
    out["clip"] = clip_overhead()
    return out


@torch.no_grad()
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    ap.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for encoders_hf.json")
    ap.add_argument(
        "--tiny-cpu",
        action="store_true",
        help="smoke run on the CPU: T5 at width 256, 3 layers; CLIP at width 64, 3 layers",
    )
    ap.add_argument(
        "--cpu-overhead",
        action="store_true",
        help="count the ops and time one call at width 64 on the CPU (dispatch cost)",
    )
    args = ap.parse_args(argv)
    if args.cpu_overhead:
        print(json.dumps(cpu_overhead(), indent=1))
        return 0
    if args.tiny_cpu:
        cfg = T5Config(
            vocab_size=1000, dim=256, dim_attn=256, dim_ffn=384, num_heads=8, num_layers=3
        )
        ccfg = CLIPConfig(image_size=56, patch_size=14, vision_dim=64, vision_heads=4,
                          vision_layers=3, embed_dim=16, vocab_size=50, text_dim=16,
                          text_heads=2, text_layers=1)  # fmt: skip
        out = {"t5": _t5("cpu", False, lambda r: None, cfg), "clip": _clip("cpu", False, ccfg)}
        print(json.dumps(out, indent=1))
        return 0
    if not torch.cuda.is_available():
        print("needs CUDA", file=sys.stderr)
        return 2
    import transformers

    out = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(),
           "transformers": transformers.__version__}  # fmt: skip
    path = Path(args.out) / "encoders_hf.json"

    def emit(t5_partial):
        out["t5"] = t5_partial
        path.write_text(json.dumps(out, indent=1))

    out["t5"] = _t5("cuda", not args.no_compile, emit)
    torch.cuda.empty_cache()
    out["clip"] = _clip("cuda", not args.no_compile)
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
