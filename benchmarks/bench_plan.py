"""Timing of mtlib.plan.plan() from metadata (target: < 10 ms per call).

Run: python benchmarks/bench_plan.py  (CPU only; no files, no models). Prints the median and
the worst time per call for a few typical plans. Timings are reported, never asserted in tests.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mtlib.config import load_config  # noqa: E402
from mtlib.plan import PlanInputs, plan  # noqa: E402

CASES = {
    "tiny auto, 1.79 s": ("tiny", {}, PlanInputs.from_metadata((110, 80), [1.79])),
    "user's error (43, 16:9)": (
        "multitalk-480",
        {"generation.frame_num": 43},
        PlanInputs.from_metadata((1280, 720), [1.79]),
    ),
    "14B 480p clip 81, 1 person": (
        "multitalk-480",
        {"generation.frame_num": 81},
        PlanInputs.from_metadata((1280, 720), [5.0]),
    ),
    "14B clip 81, 2 persons": (
        "multitalk-480",
        {},
        PlanInputs.from_metadata((1280, 720), [5.0, 5.0]),
    ),
    "14B streaming 40 s (18 clips)": (
        "multitalk-480",
        {"generation.mode": "streaming"},
        PlanInputs.from_metadata((1280, 720), [40.0]),
    ),
    "720p streaming 15 s": (
        "multitalk-720",
        {"generation.mode": "streaming"},
        PlanInputs.from_metadata((1920, 1080), [15.0]),
    ),
}


def main(repeats: int = 200) -> None:
    print(f"{'case':<32} {'median ms':>10} {'max ms':>8}  tensors  valid")
    for name, (preset, overrides, inputs) in CASES.items():
        cfg = load_config(preset, overrides)
        plan(cfg, inputs)  # warm imports
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            p = plan(cfg, inputs)
            times.append((time.perf_counter() - t0) * 1e3)
        print(
            f"{name:<32} {statistics.median(times):>10.3f} {max(times):>8.3f}  {len(p.tensors):>7}  {p.valid}"
        )


if __name__ == "__main__":
    main()
