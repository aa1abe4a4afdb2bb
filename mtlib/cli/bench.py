"""`mtlib bench`: argparse and dispatch (the benchmarks are `mtlib.accel.bench` and
`mtlib.run.bench`).
"""

from __future__ import annotations

import json
from dataclasses import asdict

from mtlib.accel.bench import BenchResult, DitShape, bench_deviation, bench_dit, bench_vae
from mtlib.run.bench import bench_clip


def add_arguments_bench(parser) -> None:
    parser.add_argument(
        "--what",
        default="dit,vae",
        help="comma list of: dit, dit-compiled, dit-offload, dit-offload-compiled, dit-fp8-compiled, deviation, vae, clip, clip-fp8 (whole clip, --steps steps)",
    )
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--size", default="448x896", help="HxW in pixels (a bucket size)")
    parser.add_argument("--persons", type=int, default=1)
    parser.add_argument(
        "--steps", type=int, default=2, help="timed denoising steps after one warm-up"
    )
    parser.add_argument("--config", default="multitalk-14b")
    parser.add_argument(
        "--sdpa", default="cudnn", choices=["default", "cudnn"], help="SDPA backend preference"
    )
    parser.add_argument(
        "--attn",
        default="sdpa",
        choices=["sdpa", "triton", "triton-fp8"],
        help="DiT self-attention kernel (triton*: mtlib.kernels, needs Triton)",
    )
    parser.add_argument("--json", help="write the result record here")


def run_bench(args) -> int:
    import torch

    if not torch.cuda.is_available():
        print("mtlib bench: needs a CUDA GPU (the real 14B model does not fit a CPU benchmark).")
        return 2
    h, w = (int(v) for v in args.size.lower().split("x"))
    shape = DitShape(args.frames, h, w, args.persons)
    rec = BenchResult(torch.cuda.get_device_name(), torch.__version__, args.config, asdict(shape))
    for what in [s.strip() for s in args.what.split(",") if s.strip()]:
        if what == "vae":
            rec.results[what] = bench_vae(args.frames, h, w, args.config)
        elif what in ("clip", "clip-fp8"):
            rec.results[what] = bench_clip(shape, args.steps, args.config, fp8=what == "clip-fp8")
        elif what == "deviation":
            rec.results[what] = bench_deviation(shape, args.config)
        elif what in (
            "dit",
            "dit-offload",
            "dit-compiled",
            "dit-offload-compiled",
            "dit-fp8-compiled",
        ):
            key = what if args.sdpa == "cudnn" else f"{what}-sdpa-{args.sdpa}"
            key = key if args.attn == "sdpa" else f"{key}-attn-{args.attn}"
            rec.results[key] = bench_dit(
                shape,
                args.steps,
                args.config,
                offload="offload" in what,
                compile_blocks="compiled" in what,
                backend=args.sdpa,
                fp8="fp8" in what,
                attn=args.attn,
            )
            what = key
        else:
            print(f"mtlib bench: unknown --what entry {what!r}")
            return 2
        print(what, json.dumps(rec.results[what]), flush=True)
        torch.cuda.empty_cache()  # between benchmarks, never inside a loop
    if args.json:  # a local path or an fsspec URL (s3://...), complete or not at all
        from mtlib.io import atomic_write_url

        atomic_write_url(args.json, rec.to_json())
    return 0
