"""Where an fp8 DiT pass spends its time on one GPU, and the fp8 attention kernel's softmax
variants at the 480p shape.

    python benchmarks/h200_dit_fp8_profile.py [--skip-attention] [--skip-dit] [--att-exps 0 1 2 3]
        [--dit-exps 0 1] [--cdt]

1. Attention [1, 32928, 40, 128]: the TMA fp8 kernel's tile configurations x exponential forms
   (EXP 0: fp32 exp2, 1: fp32 flush-to-zero exp2, 2/3: two half-precision exp2 per instruction,
   row sums in fp32 / fp16), timed in three interleaved rounds (median of triton do_bench each,
   so a clock or thermal drift shows as spread instead of as a winner), and the autotuned call.
   Each row's relative L2 distance from cuDNN bf16 attention on the same inputs.
2. One real-size DiT pass as `mtlib generate` runs it in fp8 mode (random bf16 weights, fp8 block
   linears, the Triton fp8 self-attention, compiled block body): seconds per pass over 5 passes,
   then one pass under the profiler, CUDA time grouped by kernel family.
JSON to $OUT/h200_dit_fp8_profile.json and benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _record import header  # noqa: E402
from _record import save as save_record  # noqa: E402


def attention_rows(exps=(0, 1, 2, 3), L=32928, H=40, d=128, rounds=3) -> dict:
    from triton.testing import do_bench

    from mtlib.kernels import attention as fa
    from mtlib.kernels import fp8_attention as f8

    flops = 4 * L * L * d * H
    g = torch.Generator("cuda").manual_seed(0)
    q, k, v = (
        torch.randn(1, L, H, d, generator=g, device="cuda", dtype=torch.bfloat16) for _ in range(3)
    )
    ref = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    ref = ref.transpose(1, 2).float()
    ins = fa.quantize_fp8(q, k, v)
    variants = {}
    for bm, bn, w, st, exps in (
        (64, 128, 4, 2, (0, 1, 2, 3)),
        (64, 128, 4, 3, (0, 1, 2, 3)),
        (128, 128, 8, 3, (0, 2)),
    ):
        for exp in exps:
            cfg = {"BLOCK_M": bm, "BLOCK_N": bn, "PIPELINE": 0, "SPLIT_D": 0, "EXP": exp,
                   "num_warps": w, "num_stages": st}  # fmt: skip
            variants[f"bm{bm} bn{bn} w{w} s{st} exp{exp}"] = lambda c=cfg: f8.launch(*ins, config=c)
    variants["autotuned"] = lambda: f8.launch(*ins)
    rows = {}
    for name, fn in variants.items():  # compile + check once
        try:
            out = fn()
            torch.cuda.synchronize()
            rel = ((out.float() - ref).norm() / ref.norm()).item()
            rows[name] = {
                "rel_l2_vs_cudnn": round(rel, 5),
                "finite": bool(torch.isfinite(out).all()),
                "ms": [],
            }
        except Exception as e:  # noqa: BLE001 - a variant that does not compile is a result
            rows[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        print(name, rows[name], flush=True)
    for _ in range(rounds):
        for name, fn in variants.items():
            if "ms" in rows[name]:
                rows[name]["ms"].append(
                    round(do_bench(fn, warmup=50, rep=300, return_mode="median"), 3)
                )
    for r in rows.values():
        if r.get("ms"):
            r["tflops_median"] = round(flops / statistics.median(r["ms"]) / 1e9, 1)
    rows["autotuned"]["choice"] = str(getattr(f8._fp8_fwd_tuned, "best_config", None))
    return rows


_MODEL = None
_OUTPUTS: list = []  # each variant's first pass output, to compare variants


def _family(name: str) -> str:
    n = name.lower()
    if "_fp8_fwd" in n or "flash" in n and "fp8" in n:
        return "fp8 self-attention (Triton)"
    if "sdpa" in n or "fmha" in n or "flash" in n or "attention" in n and "triton" not in n:
        return "SDPA (cross-attention, audio, ref map)"
    if "gemm" in n or "nvjet" in n or "cutlass" in n or "sm90_xmma" in n or "scaled_mm" in n:
        return "matmuls"
    if n.startswith("triton_"):
        return "fused element-wise (inductor)"
    return "other"


def gemm_rows() -> dict:
    """The block linears' fp8 GEMM shapes (M = 32928 tokens): torch._scaled_mm with per-row /
    per-column scales, accumulation as default and with use_fast_accum; each one's relative
    error against the exact product of the same e4m3 inputs (fp32 matmul of the dequantised
    values) and against the unquantised bf16 inputs' product."""
    from triton.testing import do_bench

    from mtlib.accel.fp8 import FP8Linear

    g = torch.Generator("cuda").manual_seed(0)
    rows = {}
    for k, n in ((5120, 5120), (5120, 13824), (13824, 5120)):
        m = 32928
        lin = torch.nn.Linear(k, n, device="cuda", dtype=torch.bfloat16)
        x = torch.randn(m, k, device="cuda", generator=g, dtype=torch.bfloat16)
        f = FP8Linear(lin)
        exact_in = x.float() @ lin.weight.float().t() + lin.bias.float()
        x_scale = (x.abs().amax(dim=1, keepdim=True).float() / 448.0).clamp(min=1e-12)
        xq = (x.float() / x_scale).to(torch.float8_e4m3fn).float() * x_scale
        wq = f.weight_fp8.float() * f.weight_scale.t()
        exact_q = xq @ wq.t() + lin.bias.float()
        for fast in (False, True):
            f.fast_accum = fast
            y = f(x).float()
            ms = do_bench(lambda f=f, x=x: f(x), warmup=25, rep=200, return_mode="median")
            rows[f"{m}x{k}->{n} fast_accum={fast}"] = {
                "ms": round(ms, 3),
                "tflops": round(2 * m * k * n / ms / 1e9, 1),
                "rel_l2_vs_exact_same_fp8_inputs": round(
                    ((y - exact_q).norm() / exact_q.norm()).item(), 6
                ),
                "rel_l2_vs_bf16_inputs": round(((y - exact_in).norm() / exact_in.norm()).item(), 6),
            }
            print(f"{m}x{k}->{n} fast={fast}", rows[f"{m}x{k}->{n} fast_accum={fast}"], flush=True)
        del lin, x, f, exact_in, xq, wq, exact_q
    return rows


def dit_profile(
    passes=5, exp=None, compile_options=None, profile_pass=True, fast_accum=False
) -> dict:
    from torch.profiler import ProfilerActivity, profile

    from mtlib.accel.bench import DitShape, dit_inputs, random_init_
    from mtlib.accel.compile import compile_blocks
    from mtlib.accel.fp8 import enable_fp8_dit
    from mtlib.kernels import fp8_attention as f8
    from mtlib.models.dit import CONFIGS, build_dit

    global _MODEL
    cfg = CONFIGS["multitalk-14b"]
    if _MODEL is None:
        model = build_dit(cfg, device="meta", dtype=torch.bfloat16)
        model.to_empty(device="cuda")
        random_init_(model)
        model.eval().requires_grad_(False)
        enable_fp8_dit(model, device=torch.device("cuda"))
        model.rope_dtype = torch.float32  # as mtlib generate runs it compiled (rope_precision auto)
        _MODEL = model
    model = _MODEL
    torch._dynamo.reset()
    f8._fp8_fwd_tuned = f8.tuned(exp)
    from mtlib.accel.fp8 import FP8Linear

    for mod in model.modules():
        if isinstance(mod, FP8Linear):
            mod.fast_accum = fast_accum
    compile_blocks(model, options=compile_options or {})
    inp = dit_inputs(cfg, DitShape(), "cuda", torch.bfloat16)

    def one_pass():
        return model(inp["latent"], inp["t"], context=inp["context"], clip_fea=inp["clip_fea"],
                     y=inp["y"], audio=inp["audio"], ref_target_masks=inp["ref_target_masks"],
                     seq_len=inp["seq_len"])  # fmt: skip

    global _OUTPUTS
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = one_pass()
        _OUTPUTS.append(out[0].float() if isinstance(out, (list, tuple)) else out.float())
        torch.cuda.synchronize()
        first = time.perf_counter() - t0
        times = []
        for _ in range(passes):
            t0 = time.perf_counter()
            one_pass()
            torch.cuda.synchronize()
            times.append(round(time.perf_counter() - t0, 4))
        if not profile_pass:
            return {"fast_accum": fast_accum, "exp": exp, "compile_options": compile_options, "first_pass_s": round(first, 1),
                    "pass_s": times, "pass_s_median": statistics.median(times)}  # fmt: skip
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            one_pass()
            torch.cuda.synchronize()
    events = prof.key_averages()
    total = sum(e.self_device_time_total for e in events)
    fams: dict[str, float] = {}
    for e in events:
        fams[_family(e.key)] = fams.get(_family(e.key), 0.0) + e.self_device_time_total
    top = sorted(events, key=lambda e: -e.self_device_time_total)[:40]
    return {
        "fast_accum": fast_accum,
        "exp": exp,
        "compile_options": compile_options,
        "first_pass_s (compile + autotune)": round(first, 1),
        "pass_s": times,
        "pass_s_median": statistics.median(times),
        "profiled_cuda_s": round(total / 1e6, 4),
        "families_ms": {k: round(v / 1e3, 1) for k, v in sorted(fams.items(), key=lambda x: -x[1])},
        "top_kernels": [
            {"ms": round(e.self_device_time_total / 1e3, 2), "count": e.count, "name": e.key[:140]}
            for e in top
        ],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-attention", action="store_true")
    ap.add_argument("--skip-dit", action="store_true")
    ap.add_argument("--att-exps", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--dit-exps", type=int, nargs="*", default=[0, 1])
    ap.add_argument("--cdt", action="store_true", help="inductor coordinate_descent_tuning")
    ap.add_argument("--gemm", action="store_true", help="fp8 GEMMs, default vs fast accumulation")
    ap.add_argument(
        "--fast-accum", action="store_true", help="DiT pass, default vs fast accumulation"
    )
    args = ap.parse_args(argv)
    rec = header("fp8 DiT pass breakdown and fp8 attention softmax variants (480p, 81 frames)")

    def save():
        save_record("h200_dit_fp8_profile.json", rec)

    if args.gemm:
        rec["gemm"] = gemm_rows()
        save()
    if not args.skip_attention:
        rec["attention"] = attention_rows(args.att_exps)
        save()
    if not args.skip_dit:
        opts = {"coordinate_descent_tuning": True} if args.cdt else None
        rec["dit_passes"] = []
        for i, e in enumerate(args.dit_exps or []):
            last = i == len(args.dit_exps) - 1
            rec["dit_passes"].append(dit_profile(exp=e, compile_options=opts, profile_pass=last))
            save()
        if args.fast_accum:
            for fast in (False, True):
                rec["dit_passes"].append(
                    dit_profile(compile_options=opts, profile_pass=fast, fast_accum=fast)
                )
                save()
            a, b = _OUTPUTS[-2], _OUTPUTS[-1]
            rec["dit_fast_accum_vs_default_rel_l2"] = round(((b - a).norm() / a.norm()).item(), 6)
            save()
    print(json.dumps({k: v for k, v in rec.items() if k != "dit_passes"}, indent=0)[:6000])
    for r in rec.get("dit_passes", []):
        print(
            r.get("fast_accum"),
            r["exp"],
            r["compile_options"],
            r["pass_s"],
            r.get("families_ms"),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
