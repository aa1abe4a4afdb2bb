"""TeaCache: DiT calls skipped, wall time and deviation of the video, per threshold.

    python benchmarks/bench_teacache.py [--config tiny] [--steps 40] [--thresh 0.2 0.3 0.5]
                                        [--json out.json]

Runs the whole pipeline of a run config (default: tiny, CPU, random tiny weights in the real
layout) once without TeaCache and once per threshold, same seed and inputs, and compares each
video with the plain one (relative L2, max |diff|, PSNR on [-1, 1] frames). It also reports how
much e0 (the timestep embedding TeaCache watches) changes between steps.

TeaCache's decisions depend only on e0, i.e. on the schedule and on the trained time-embedding
weights. Random weights move e0 by tens of percent per step, so no threshold near the default
skips anything there: on random weights this shows the mechanism, not the speed-up. Run it with
a config that points at the real checkpoints to measure that. On the GPU the DiT loop's time
scales with the computed calls (a skipped call costs one residual add): its speed-up is
calls / (calls - skipped).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch

from mtlib.config import load_config
from mtlib.run.generation import generate_video
from mtlib.run.load import load_models


def deviation(a: torch.Tensor, b: torch.Tensor) -> dict:
    d = (a.double() - b.double()).flatten()
    mse = float(d.pow(2).mean())
    return {
        "rel_l2": float(d.norm() / b.double().flatten().norm()),
        "max_abs": float(d.abs().max()),
        "psnr_db": math.inf if mse == 0 else 10 * math.log10(4.0 / mse),  # range [-1, 1]: peak 2
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="tiny", help="preset name or run config YAML")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--thresh", type=float, nargs="+", default=[0.2, 0.3, 0.5])
    ap.add_argument("--json", help="write the record here")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        overrides = {"generation.sampling_steps": args.steps, "trace.level": "off"}
        if args.config == "tiny":
            overrides["model.weights.tiny_dir"] = str(Path(tmp) / "weights")
        base = load_config(args.config, overrides)
        models = load_models(base)
        runs = {}
        for thresh in [None, *args.thresh]:
            cfg = (
                base
                if thresh is None
                else base.replace(
                    **{"generation.teacache": True, "generation.teacache_thresh": thresh}
                )
            )
            t0 = time.perf_counter()
            out = generate_video(cfg, Path(tmp) / f"{thresh}.mp4", progress=False, models=models)
            runs[thresh] = (out, time.perf_counter() - t0)

    plain, plain_s = runs[None]
    record = {
        "config": args.config,
        "steps": args.steps,
        "frames": plain.frames,
        "torch": torch.__version__,
        "plain": {"dit_calls": plain.dit_calls, "wall_s": round(plain_s, 2),
                  "generate_s": plain.timings.get("generate")},
        "teacache": [],
    }  # fmt: skip
    print(f"plain: {plain.dit_calls} DiT calls, wall {plain_s:.2f} s")
    for thresh in args.thresh:
        out, wall = runs[thresh]
        dev = deviation(out.video, plain.video)
        computed = out.dit_calls - out.teacache_skipped
        rels = sorted(d[1] for d in out.teacache_decisions if d[1] is not None)
        row = {
            "thresh": thresh,
            "dit_calls": out.dit_calls,
            "skipped": out.teacache_skipped,
            "dit_speedup": round(out.dit_calls / computed, 3),
            "wall_s": round(wall, 2),
            "generate_s": out.timings.get("generate"),
            "e0_rel_change_min": round(rels[0], 4) if rels else None,
            "e0_rel_change_median": round(rels[len(rels) // 2], 4) if rels else None,
            **{k: round(v, 6) if math.isfinite(v) else v for k, v in dev.items()},
        }
        record["teacache"].append(row)
        print(
            f"thresh {thresh}: skipped {out.teacache_skipped}/{out.dit_calls} calls "
            f"(DiT {row['dit_speedup']}x), wall {wall:.2f} s, rel-L2 {dev['rel_l2']:.4f}, "
            f"max|diff| {dev['max_abs']:.4f}, PSNR {dev['psnr_db']:.1f} dB; e0 change per step "
            f"min {row['e0_rel_change_min']}, median {row['e0_rel_change_median']}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
