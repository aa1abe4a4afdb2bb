"""mtlib's Triton flash attention vs torch SDPA (cuDNN) at the DiT's self-attention shape.

    python benchmarks/flash_attention.py [--out FILE]

For each kernel: relative L2 error against float64 math on fresh random inputs (q, k with the
DiT's RMS-normalised scale), every output element written (NaN-poisoned buffer), and the median
time (triton.testing.do_bench) at 480p (L = 32,928, 40 heads of 128) with the achieved TFLOP/s
(4 L^2 d H flops per call). Timed as the model calls it: inputs [B, L, H, d] in bf16, output
[B, L, H, d]; the fp8 row includes its quantisation of q, k, v and the kernel alone.
Needs a CUDA GPU and Triton.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F


def exact(q, k, v):
    """float64 attention on [B, L, H, d] (chunked over heads to bound memory)."""
    outs = []
    for h in range(q.shape[2]):
        qh, kh, vh = (t[:, :, h].double() for t in (q, k, v))
        w = torch.softmax(qh @ kh.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        outs.append(w @ vh)
    return torch.stack(outs, dim=2)


def sdpa(q, k, v):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION], set_priority=True):
        return F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        ).transpose(1, 2)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the JSON record here")
    parser.add_argument("--seq", type=int, default=32928)
    parser.add_argument("--heads", type=int, default=40)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 2
    from triton.testing import do_bench

    from mtlib.kernels import attention as fa

    dev = torch.device("cuda")
    g = torch.Generator(dev).manual_seed(0)
    kernels = {
        "sdpa_cudnn": sdpa,
        "triton_bf16": lambda q, k, v: fa.attention(q, k, v, "bf16"),
        "triton_fp8": lambda q, k, v: fa.attention(q, k, v, "fp8"),
    }
    rec = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "accuracy": {},
        "speed": {},
    }

    # accuracy on shapes that exercise partial tiles, several batches and head dims
    for B, Lq, Lk, H, d in [(1, 1000, 1000, 4, 128), (2, 333, 777, 3, 64), (1, 4096, 4096, 2, 128)]:
        q, k, v = (
            torch.randn(B, L, H, d, device=dev, generator=g, dtype=torch.bfloat16)
            for L in (Lq, Lk, Lk)
        )
        ref = exact(q, k, v)
        for name, fn in kernels.items():
            out = fn(q, k, v)
            err = ((out.double() - ref).norm() / ref.norm()).item()
            rec["accuracy"][f"{name} B{B} Lq{Lq} Lk{Lk} H{H} d{d}"] = {
                "rel_l2": round(err, 6),
                "all_finite": bool(torch.isfinite(out).all()),
            }
            print(f"{name:12s} B{B} Lq{Lq} Lk{Lk} H{H} d{d}: rel-L2 {err:.2e}", flush=True)

    # speed at the DiT's shape
    L, H, d = args.seq, args.heads, 128
    q, k, v = (
        torch.randn(1, L, H, d, device=dev, generator=g, dtype=torch.bfloat16) for _ in range(3)
    )
    flops = 4 * L * L * d * H
    ref_out = sdpa(q, k, v).float()
    for name, fn in kernels.items():
        out = fn(q, k, v)
        dev_rel = ((out.float() - ref_out).norm() / ref_out.norm()).item()
        ms = do_bench(lambda fn=fn: fn(q, k, v), warmup=200, rep=2000, return_mode="median")
        rec["speed"][name] = {
            "ms": round(ms, 3),
            "tflops": round(flops / ms / 1e9, 1),
            "rel_l2_vs_cudnn": round(dev_rel, 6),
        }
        print(
            f"{name:12s} L={L}: {ms:.2f} ms  {flops / ms / 1e9:.0f} TFLOP/s  rel-L2 vs cuDNN {dev_rel:.2e}",
            flush=True,
        )
    quant = fa.quantize_fp8(q, k, v)
    ms = do_bench(lambda: fa._flash_fp8(*quant), warmup=200, rep=2000, return_mode="median")
    rec["speed"]["triton_fp8_kernel_only"] = {
        "ms": round(ms, 3),
        "tflops": round(flops / ms / 1e9, 1),
    }
    print(f"triton_fp8 kernel only: {ms:.2f} ms  {flops / ms / 1e9:.0f} TFLOP/s", flush=True)
    # in the model the quantisation runs inside the compiled block graph: time it compiled
    quantize = torch.compile(fa.quantize_fp8)
    ms = do_bench(lambda: quantize(q, k, v), warmup=200, rep=1000, return_mode="median")
    rec["speed"]["fp8_quantize_compiled"] = {"ms": round(ms, 3)}
    print(f"fp8 quantisation of q, k, v (compiled): {ms:.2f} ms", flush=True)
    rec["tuned_configs"] = {
        str(k): str(c) for k, c in getattr(fa._flash_fwd_tuned, "cache", {}).items()
    }
    for k, c in rec["tuned_configs"].items():
        print("tuned:", k, "->", c)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rec, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
