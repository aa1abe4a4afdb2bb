"""Sequence parallel on GPUs: one denoising step (3 DiT passes) on 1 GPU and on N GPUs.

The real 14B DiT with random bf16 weights (mtlib.accel.bench.random_init_ on rank 0, broadcast to
every rank so all hold the same model), the inputs of mtlib.accel.bench.dit_inputs (the same on
every rank). Per shape: rank 0 alone runs the step (the other ranks wait), then all N ranks
run it with the tokens split (mtlib.parallel.sequence), then rank 0 compares:

    one_gpu_step_s, n_gpu_step_s, speedup, peak memory per rank,
    n_vs_one: rel-L2 / max abs difference of the step output, N GPUs against 1 GPU,
    bf16_noise: the same for 1 GPU with another SDPA kernel (flash instead of cuDNN) against
                1 GPU: how far two correct bf16 runs already differ (480p only by default)

Run it on one host with N GPUs (no internet needed; it spawns the ranks itself):

    python benchmarks/bench_parallel.py --gpus 2 --json $OUT/bench_parallel.json
    python benchmarks/bench_parallel.py --gpus 2 --sizes 480 --compile --json $OUT/bench_parallel_compiled.json

or under torchrun (`torchrun --nproc-per-node 2 benchmarks/bench_parallel.py ...`). Timings
go to benchmarks/results/, never into tests.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# name -> (frames, height, width, persons): 480p one speaker, 720p two speakers (landscape);
# "smoke": the tiny DiT on the CPU (gloo), to check this script without a GPU
SHAPES = {"480": (81, 448, 896, 1), "720": (81, 704, 1280, 2), "smoke": (9, 48, 80, 2)}


def _metrics(a, b) -> dict:
    a, b = a.double().flatten(), b.double().flatten()
    return {
        "rel_l2": round(((a - b).norm() / b.norm()).item(), 6),
        "max_abs": round((a - b).abs().max().item(), 6),
        "cosine": round(float((a @ b) / (a.norm() * b.norm())), 7),
    }


def _rank_main(args: argparse.Namespace) -> dict | None:
    import torch
    import torch.distributed as dist

    from mtlib.accel import bench
    from mtlib.accel.compile import compile_blocks
    from mtlib.config import load_config
    from mtlib.models.dit import CONFIGS, build_dit
    from mtlib.parallel import join
    from mtlib.parallel.sequence import SequenceParallel

    smoke = args.sizes == "smoke"
    base = "tiny" if smoke else "multitalk-480"
    rank = join(load_config(base, {"parallel.timeout_s": 1800}))
    r, world = rank.rank, rank.world
    cuda = not smoke
    dev = torch.device("cuda", rank.local_rank) if cuda else torch.device("cpu")
    cfg = CONFIGS["tiny" if smoke else "multitalk-14b"]
    dtype = torch.bfloat16 if cuda else torch.float32

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    def peak_gb() -> float:
        return torch.cuda.max_memory_allocated(dev) / 1e9 if cuda else 0.0

    t0 = time.perf_counter()
    model = build_dit(cfg, device="meta", dtype=dtype)
    model.to_empty(device=dev)
    if r == 0:
        bench.random_init_(model)
    for p in model.parameters():  # one model on every rank
        dist.broadcast(p.data, 0)
    model.eval().requires_grad_(False)
    if args.fp8:
        from mtlib.accel.fp8 import enable_fp8_dit

        enable_fp8_dit(model, dev)
    if args.compile:
        compile_blocks(model, rope_fp32=True)  # what model.compile with rope_precision auto runs
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    sync()
    build_s = time.perf_counter() - t0
    sp = SequenceParallel()

    def step(inp, parallel: bool, backend: str = "cudnn", passes: int = 3):
        model.sequence_parallel = sp if parallel else None
        with torch.inference_mode(), bench.attention_backend(backend if cuda else "default"):
            if passes == 3:
                out = bench.denoise_step(model, inp)
            else:  # the cond pass alone
                out = model(inp["latent"], inp["t"], context=inp["context"], audio=inp["audio"],
                            clip_fea=inp["clip_fea"], y=inp["y"],
                            ref_target_masks=inp["ref_target_masks"], seq_len=inp["seq_len"])  # fmt: skip
        sync()
        return out

    def timed_step(inp, parallel: bool):
        # warm-up (cuDNN plans, NCCL buffers; compiled: every graph of the step), then one step
        step(inp, parallel, passes=3 if args.compile else 1)
        if parallel:
            dist.barrier()
        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        t = time.perf_counter()
        out = step(inp, parallel)
        return time.perf_counter() - t, out, peak_gb()

    results = {}
    for name in args.sizes.split(","):
        frames, h, w, persons = SHAPES[name]
        shape = bench.DitShape(frames, h, w, persons)
        inp = bench.dit_inputs(cfg, shape, dev, dtype)
        rec = {"frames": frames, "size": [h, w], "persons": persons, "seq_len": shape.seq_len,
               "tokens_per_rank": -(-shape.seq_len // world)}  # fmt: skip
        if r == 0:
            one_s, one, one_peak = timed_step(inp, parallel=False)
            rec.update(one_gpu_step_s=round(one_s, 3), one_gpu_peak_gb=round(one_peak, 2))
            print(f"[{name}] 1 GPU: step {one_s:.2f} s, peak {one_peak:.1f} GB", flush=True)
            if name in ("480", "smoke") or args.noise_all:
                other = step(inp, parallel=False, backend="default")  # flash first
                rec["bf16_noise"] = _metrics(other, one)
                del other
            one = one.cpu()
        dist.barrier()
        n_s, out, n_peak = timed_step(inp, parallel=True)
        peaks = [None] * world
        dist.all_gather_object(peaks, round(n_peak, 2))
        if r == 0:
            rec.update(
                n_gpu_step_s=round(n_s, 3), n_gpu_peak_gb_per_rank=peaks,
                speedup=round(rec["one_gpu_step_s"] / n_s, 3),
                n_vs_one=_metrics(out.cpu(), one), output_finite=bool(torch.isfinite(out).all()),
            )  # fmt: skip
            noise = rec.get("bf16_noise", {}).get("rel_l2")
            print(
                f"[{name}] {world} GPUs: step {n_s:.2f} s, speed-up {rec['speedup']:.2f}x, "
                f"rel-L2 vs 1 GPU {rec['n_vs_one']['rel_l2']:.2e} (bf16 noise {noise})",
                flush=True,
            )
            results[name] = rec
        del out, inp
        if cuda:
            torch.cuda.empty_cache()
        dist.barrier()
    if r != 0:
        return None
    return {
        "device": torch.cuda.get_device_name(dev) if cuda else "cpu", "torch": torch.__version__, "gpus": world,
        "layout": rank.layout, "compiled": args.compile, "fp8": args.fp8, "sdpa": "cudnn",
        "build_s": round(build_s, 1), "nccl_nvls_enable": os.environ.get("NCCL_NVLS_ENABLE"),
        "results": results,
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--gpus", type=int, default=2, help="ranks to spawn (ignored under torchrun)"
    )
    parser.add_argument(
        "--sizes", default="480,720", help="comma list of: 480 (1 speaker), 720 (2 speakers)"
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the DiT blocks")
    parser.add_argument(
        "--fp8", action="store_true", help="model.precision fp8 (fp8 linears + attention)"
    )
    parser.add_argument("--noise-all", action="store_true", help="bf16 noise floor at every size")
    parser.add_argument("--json", help="write the record here (rank 0)")
    args = parser.parse_args()

    from mtlib.parallel.launch import env_world, spawn

    if env_world() is not None:  # torchrun
        rec = _rank_main(args)
    else:
        rec = spawn(_rank_main, args.gpus, (args,))
    if rec is not None:
        text = json.dumps(rec, indent=1)
        print(text)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
