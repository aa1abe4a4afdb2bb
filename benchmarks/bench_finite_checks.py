"""Cost of mtlib's non-finite checks (issue #16), for the record in benchmarks/results.

Measures, on this machine:
  cpu_isfinite_gbps   torch.isfinite(..).all() over in-memory tensors (fp32, bf16), per GB
  cpu_all_finite_gbps mtlib.finite.all_finite (one sum; isfinite only when the sum is not finite)
  gpu_all_finite_gbps the same on the GPU (the load-time check of the DiT runs there)
  datacheck_gbps      mtlib.weights.datacheck.first_nonfinite on a safetensors file (page cache warm)
and prints the estimated cost of `mtlib setup --verify --full` on the published 14B files
(~96 GB) and of the load-time check of the CPU-read files (T5 11 GB, CLIP 4.8 GB, VAE 0.5 GB).

    python benchmarks/bench_finite_checks.py [--gb 4] [--json $OUT/finite_checks.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch

FULL_14B_GB = 96.0  # DiT shards 66, multitalk 10, T5 11, CLIP 4.8, VAE 0.5, wav2vec2 0.4 (approx.)
CPU_READ_AT_LOAD_GB = 16.3  # T5 + CLIP + VAE: read by mtlib.models.checkpoint on the CPU


def _rate(fn, nbytes: int, repeat: int = 3) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return nbytes * repeat / 1e9 / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=4.0, help="size of the test file")
    ap.add_argument("--json", help="write the record here")
    args = ap.parse_args()
    from mtlib.finite import all_finite

    rec: dict = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    n = int(args.gb * 1e9 / 4)
    for dt in (torch.float32, torch.bfloat16):
        x = torch.randn(n // 4 if dt == torch.float32 else n // 2).to(dt)
        rec[f"cpu_isfinite_gbps_{str(dt)[6:]}"] = _rate(lambda x=x: bool(torch.isfinite(x).all()),
                                                       x.numel() * x.element_size())  # fmt: skip
        rec[f"cpu_all_finite_gbps_{str(dt)[6:]}"] = _rate(lambda x=x: all_finite(x),
                                                         x.numel() * x.element_size())  # fmt: skip
        if torch.cuda.is_available():
            g = x.cuda()
            rec[f"gpu_all_finite_gbps_{str(dt)[6:]}"] = _rate(lambda g=g: all_finite(g),
                                                             g.numel() * g.element_size())  # fmt: skip
            del g
        del x
    from safetensors.torch import save_file

    from mtlib.weights.datacheck import first_nonfinite

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "w.safetensors")
        per = 1 << 26  # 64 M bf16 per tensor (128 MB), like the DiT's largest
        k = max(1, int(args.gb * 1e9 / (per * 2)))
        save_file({f"w{i}": torch.randn(per).to(torch.bfloat16) for i in range(k)}, path)
        size = os.path.getsize(path)
        first_nonfinite(path)  # warm the page cache: measures the check, not the disk
        t0 = time.perf_counter()
        assert first_nonfinite(path) is None
        rec["datacheck_gbps"] = size / 1e9 / (time.perf_counter() - t0)
    rec["estimate_full_verify_s"] = FULL_14B_GB / rec["datacheck_gbps"]
    rec["estimate_load_check_cpu_s"] = CPU_READ_AT_LOAD_GB / rec["cpu_all_finite_gbps_bfloat16"]
    print(json.dumps(rec, indent=1))
    print(f"setup --verify --full on the 14B files: ~{rec['estimate_full_verify_s'] / 60:.1f} min "
          "(check rate, page cache warm; a cold disk adds its read time)")  # fmt: skip
    print(
        f"load-time check of T5 + CLIP + VAE on the CPU: ~{rec['estimate_load_check_cpu_s']:.1f} s"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rec, f, indent=1)


if __name__ == "__main__":
    main()
