"""Cost of tracing: a tiny workload run without a recorder, then under TraceWriter.

The workload stands in for a tiny pipeline run: `--steps` x `--blocks` small
"transformer-ish" updates (matmul + tanh on a [tokens, dim] activation), each offering its
output at a trace point, as the DiT blocks do. Prints the wall time of each mode (best of
`--repeat`) and the overhead of stats tracing relative to the untraced run (target: < 5%
of a tiny run's wall time; the lead measures the real tiny pipeline once it lands).

    python benchmarks/bench_trace.py [--tokens 256 --dim 256 --blocks 8 --steps 10]
    python benchmarks/bench_trace.py --tiny-dit ../shared/golden   # the tiny DiT's own points
    python benchmarks/bench_trace.py --tiny-run [--repeat 5]       # whole tiny generate_video runs

--tiny-run: the tiny preset through mtlib.run.generation.generate_video (networks loaded once,
audio embedding cached, frame_num 13) with trace off / stats (the config's default include:
the pipeline's points, no DiT / VAE internals) / stats with every point ("*", DiT and VAE
internals included) / full (tensors of the default include). Rounds are interleaved; the
median per mode is reported (and the min), overhead relative to "off", and the median share
of each traced run's wall time spent inside the TraceWriter (robust on a busy shared CPU,
where the wall times of whole runs swing by 10x).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's mtlib
from mtlib import trace  # noqa: E402


def workload(x: torch.Tensor, weights: list[torch.Tensor], steps: int) -> torch.Tensor:
    for s in range(steps):
        for k, w in enumerate(weights):
            x = torch.tanh(x @ w) + x  # [tokens, dim]
            if trace.active():
                trace.point(f"step{s}.block{k}.out", x)
        if trace.active():
            trace.point(f"step{s}.latent", x)
    return x


def timed(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--blocks", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--tiny-run",
        action="store_true",
        help="instead: whole tiny generate_video runs, "
        "trace off / stats / stats of every point / full (median of --repeat rounds)",
    )
    p.add_argument(
        "--tiny-dit",
        metavar="GOLDEN_DIR",
        help="instead: forwards of the tiny DiT "
        "(golden weights and the dit_2p_step0_cond inputs), all its dit.* points traced",
    )
    args = p.parse_args(argv)
    if args.tiny_run:
        return bench_tiny_run(args.repeat)
    if args.tiny_dit:
        return bench_tiny_dit(Path(args.tiny_dit), args.repeat, args.device)

    g = torch.Generator().manual_seed(0)
    dev = torch.device(args.device)
    x0 = torch.randn(args.tokens, args.dim, generator=g).to(dev)
    weights = [
        (torch.randn(args.dim, args.dim, generator=g) / args.dim**0.5).to(dev)
        for _ in range(args.blocks)
    ]
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    n_points = args.steps * (args.blocks + 1)

    def plain():
        workload(x0, weights, args.steps)
        sync()

    tmp = Path(tempfile.mkdtemp(prefix="bench_trace_"))
    runs = {"n": 0}

    def traced(**kw):
        def run():
            runs["n"] += 1
            with trace.TraceWriter(tmp / f"t{runs['n']}", **kw) as tw, trace.recording(tw):
                workload(x0, weights, args.steps)
                sync()

        return run

    modes = {
        "off": plain,
        "stats": traced(),
        "stats, no hash": traced(hash=False),
        "full": traced(level="full"),
    }
    for fn in modes.values():  # warm-up (allocator, BLAS threads, imports)
        fn()
    # interleaved rounds, best of each: a shared / busy CPU hurts every mode alike
    results = {m: float("inf") for m in modes}
    for _ in range(args.repeat):
        for m, fn in modes.items():
            results[m] = min(results[m], timed(fn, 1))
    base = results["off"]
    print(
        f"workload: {args.steps} steps x {args.blocks} blocks, [{args.tokens}, {args.dim}] on {dev}, "
        f"{n_points} trace points, best of {args.repeat} interleaved rounds"
    )
    for mode, t in results.items():
        extra = (
            ""
            if mode == "off"
            else f"  overhead {100 * (t - base) / base:+7.1f}%  "
            f"({1e6 * (t - base) / n_points:.0f} us/point)"
        )
        print(f"  {mode:<15} {1e3 * t:8.2f} ms{extra}")

    # cost of one stats-level point by tensor size, to extrapolate to any run:
    # overhead ~= sum over points of cost(numel) / wall time of the untraced run
    print("cost of TraceWriter.record at level stats, per point:")
    with trace.TraceWriter(tmp / "sizes") as tw:
        for numel in (1_000, 10_000, 100_000, 1_000_000):
            x = torch.randn(numel, generator=g).to(dev)
            for _ in range(3):
                tw.record("warm", x)
            reps = max(5, 200_000 // numel)
            t0 = time.perf_counter()
            for _ in range(reps):
                tw.record("x", x)
            sync()
            per = (time.perf_counter() - t0) / reps
            print(f"  {numel:>9,} elements  {1e6 * per:8.1f} us")


def bench_tiny_dit(golden: Path, repeat: int, device: str) -> None:
    import json

    from safetensors.torch import load_file

    from mtlib.models.dit import DiTConfig, load_dit  # lands with the networks

    tc = json.loads((golden / "weights" / "tiny_configs.json").read_text())["dit"]
    model = load_dit(
        golden / "weights" / "dit",
        config=DiTConfig.from_official(tc["tiny"], tc["hardcoded_tiny"]),
        precision="fp32",
    ).to(device)
    meta = json.loads((golden / "cases" / "dit" / "dit_2p_step0_cond.json").read_text())
    t = load_file(str(golden / "cases" / "dit" / meta["tensor_file"]))
    args = [
        t["dit.in." + n].to(device)
        for n in ("x", "t", "context", "clip_fea", "y", "audio", "ref_target_masks")
    ]
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    tmp = Path(tempfile.mkdtemp(prefix="bench_trace_dit_"))
    forwards, count = 20, {"n": 0, "points": 0}

    def plain():
        with torch.no_grad():
            for _ in range(forwards):
                model(*args, seq_len=meta["params"]["seq_len"])
        sync()

    def traced():
        count["n"] += 1
        with trace.TraceWriter(tmp / f"t{count['n']}") as tw, trace.recording(tw):
            plain()
        count["points"] = tw.count

    plain()
    traced()
    best = {"off": float("inf"), "stats": float("inf")}
    for _ in range(repeat):
        best["off"] = min(best["off"], timed(plain, 1))
        best["stats"] = min(best["stats"], timed(traced, 1))
    over = best["stats"] - best["off"]
    print(
        f"tiny DiT, {forwards} forwards on {device}, {count['points']} points: off {1e3 * best['off']:.1f} ms, "
        f"stats {1e3 * best['stats']:.1f} ms, overhead {100 * over / best['off']:+.1f}% "
        f"({1e6 * over / count['points']:.0f} us/point)"
    )


def bench_tiny_run(repeat: int) -> None:
    import os
    import statistics

    from mtlib.config import load_config
    from mtlib.run.generation import generate_video
    from mtlib.run.load import load_models

    tmp = Path(tempfile.mkdtemp(prefix="bench_trace_run_"))
    os.environ.setdefault("MTLIB_CACHE", str(tmp / "cache"))
    base = load_config("tiny", {"generation.frame_num": 13})
    models = load_models(base)
    modes = {
        "off": base.replace(**{"trace.level": "off"}),
        "stats": base.replace(**{"trace.level": "stats"}),
        "stats, every point": base.replace(**{"trace.level": "stats", "trace.include": ["*"]}),
        "full": base.replace(**{"trace.level": "full"}),
    }
    count = {"n": 0}
    points: dict[str, int] = {}
    # time spent inside the writer (record + open/close), summed per run: a measure of the
    # overhead that a busy shared CPU disturbs less than the difference of two wall times
    inside = {"s": 0.0}
    spent: dict[str, list[float]] = {m: [] for m in modes}
    share: dict[str, list[float]] = {m: [] for m in modes}  # writer time / that run's wall time

    def timed_method(fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                inside["s"] += time.perf_counter() - t0

        return wrapper

    for meth in ("record", "close", "__init__"):
        setattr(trace.TraceWriter, meth, timed_method(getattr(trace.TraceWriter, meth)))

    def run(mode: str) -> float:
        count["n"] += 1
        d = tmp / f"r{count['n']}"
        inside["s"] = 0.0
        t0 = time.perf_counter()
        generate_video(
            modes[mode], d / "v.mp4", trace_dir=d / "trace", progress=False, models=models
        )
        wall = time.perf_counter() - t0
        spent[mode].append(inside["s"])
        share[mode].append(inside["s"] / wall)
        index = d / "trace" / "index.jsonl"
        points[mode] = sum(1 for _ in open(index)) if index.exists() else 0
        return wall

    for m in modes:  # warm-up: embedding cache, allocator, imports
        run(m)
        spent[m].clear()
        share[m].clear()
    times: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(repeat):
        for m in modes:
            times[m].append(run(m))
    med = {m: statistics.median(v) for m, v in times.items()}
    base_t = med["off"]
    print(
        f"tiny generate_video (frame_num 13, {base.generation.sampling_steps} steps, CPU, "
        f"{torch.get_num_threads()} threads): median of {repeat} interleaved rounds"
    )
    for m, t in med.items():
        extra = "" if m == "off" else f"  overhead {100 * (t - base_t) / base_t:+6.1f}%"
        inner = statistics.median(spent[m])
        writer = (
            ""
            if m == "off"
            else (
                f"; in the writer {1e3 * inner:6.1f} ms = "
                f"{100 * statistics.median(share[m]):.1f}% of the run"
            )
        )
        print(f"  {m:<19} {t:7.3f} s (min {min(times[m]):.3f}){extra}  {points[m]} points{writer}")


if __name__ == "__main__":
    main()
