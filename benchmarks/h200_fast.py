"""Issue #20 measurements on one H200 (random weights; no internet, no ../shared needed).

    python benchmarks/h200_fast.py rss    --dir /tmp/dit14b   # (a) write 38 GB bf16 shards, RSS of loading
    python benchmarks/h200_fast.py clip4                      # (b) 4-step lightx2v recipe, fp8 and bf16
    python benchmarks/h200_fast.py clip40                     # (b) 40-step reference recipe, fp8
    python benchmarks/h200_fast.py notebooks                  # (c) mtlib run, notebooks 00-03, random weights

Each writes its JSON record to $OUT/h200_<what>.json and benchmarks/results/h200_<what>.json
(with the git commit). Whole clips go through mtlib.run.generation.generate_video (generate's code
path: plan, load, wav2vec2, T5, CLIP, VAE encode, sampling, VAE decode, colour correction,
mp4), the real-size networks with model.weights.random, 81 frames at 480p (448x896).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _record import header, save  # noqa: E402

# 448x896 bucket (the benchmark shape), 5 s of speech: one 81-frame clip, no padding
INPUTS = [
    "inputs.image=data/landscape_16x9.png",
    "inputs.audio=[data/speech_5s.wav]",
    "generation.frame_num=81",
    "trace.level=off",
]


VIDEOS = Path("/tmp/h200_fast_videos")  # the noise videos stay on the device


def _save(name: str, rec: dict) -> None:
    what = rec.pop("what", name)
    text = save(f"h200_{name}.json", {**header(what), **rec})
    print(text, flush=True)


def _rss_gb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1e6
    return 0.0


# ---------------------------------------------------------------------------- (a) host RSS


def write_shards(d: Path, shard_gb: float = 5.0) -> list[Path]:
    """Random bf16 shards of the real DiT (Wan base + audio adapter keys), ~38 GB."""
    import torch
    from safetensors.torch import save_file

    from mtlib.models.dit import CONFIGS, build_dit

    d.mkdir(parents=True, exist_ok=True)
    done = d / "DONE"
    if done.exists():
        return sorted(d.glob("dit-*.safetensors"))
    shapes = {
        k: tuple(v.shape)
        for k, v in build_dit(CONFIGS["multitalk-14b"], device="meta").state_dict().items()
    }
    g = torch.Generator("cuda").manual_seed(0)
    shard, size, files = {}, 0, []

    def flush():
        nonlocal shard, size
        p = d / f"dit-{len(files):05d}.safetensors"
        save_file(shard, str(p))
        files.append(p)
        print(f"wrote {p.name} ({size / 1e9:.1f} GB)", flush=True)
        shard, size = {}, 0

    for k, s in shapes.items():
        t = (
            torch.randn(s, generator=g, device="cuda", dtype=torch.float32)
            .mul_(0.02)
            .to(torch.bfloat16)
        )
        shard[k] = t.cpu()
        size += t.numel() * 2
        if size >= shard_gb * 1e9:
            flush()
    if shard:
        flush()
    done.write_text("ok")
    return files


def load_once(d: Path, mode: str) -> dict:
    """One process: baseline RSS after CUDA init, then load the 14B DiT from `d` (mtlib.accel.dit_load)."""
    import torch

    from mtlib.accel.dit_load import load_run_dit
    from mtlib.accel.options import resolve_dit_options
    from mtlib.config import load_config
    from mtlib.models.dit import CONFIGS

    torch.zeros(1, device="cuda")
    base = _rss_gb()
    over = ["model.offload.mode=blocks"] if mode == "offload" else []
    opts = resolve_dit_options(load_config("multitalk-480", over), cuda=True)
    files = sorted(d.glob("dit-*.safetensors"))
    t0 = time.perf_counter()
    model = load_run_dit(CONFIGS["multitalk-14b"], "cuda", opts, files=files, progress=True)
    torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB -> GB
    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return {
        "mode": mode,
        "baseline_rss_gb": round(base, 2),
        "peak_rss_gb": round(peak, 2),
        "peak_above_baseline_gb": round(peak - base, 2),
        "rss_after_gb": round(_rss_gb(), 2),
        "weights_gb": round(n_bytes / 1e9, 2),
        "load_s": round(secs, 1),
        "gpu_allocated_gb": round(torch.cuda.memory_allocated() / 1e9, 2),
        "file_gb": round(sum(f.stat().st_size for f in files) / 1e9, 2),
    }


def cmd_rss(args) -> None:
    t0 = time.perf_counter()
    files = write_shards(Path(args.dir))
    print(f"shards ready: {len(files)} files in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = []
    for mode in ("resident", "offload"):
        out = subprocess.run(
            [sys.executable, __file__, "load1", "--dir", args.dir, "--mode", mode],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        print(out.stderr[-2000:], flush=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        row["target_gb"] = 6.0 if mode == "resident" else round(row["weights_gb"] + 4.0, 2)
        row["met"] = row["peak_above_baseline_gb"] <= row["target_gb"]
        print(row, flush=True)
        rows.append(row)
    _save(
        "dit_load_rss",
        {
            "what": "peak host RSS loading the 14B DiT (random bf16 shards) with mtlib.accel.dit_load",
            "rows": rows,
        },
    )


# ---------------------------------------------------------------------------- (b) whole clips


def random_lightx2v_lora(path: Path, rank: int = 32) -> Path:
    """A random LoRA of the lightx2v shape: rank 32 on every Linear of the 40 blocks, the
    reference's key format (diffusion_model.<param>.lora_down/.lora_up.weight)."""
    import torch
    from safetensors.torch import save_file

    from mtlib.models.dit import CONFIGS, build_dit

    if path.exists():
        return path
    model = build_dit(CONFIGS["multitalk-14b"], device="meta")
    g = torch.Generator("cpu").manual_seed(1)
    sd = {}
    for name, m in model.blocks.named_modules():
        if isinstance(m, torch.nn.Linear):
            k = f"diffusion_model.blocks.{name}"
            sd[f"{k}.lora_down.weight"] = (torch.randn(rank, m.in_features, generator=g) * 0.01).to(
                torch.bfloat16
            )
            sd[f"{k}.lora_up.weight"] = (torch.randn(m.out_features, rank, generator=g) * 0.01).to(
                torch.bfloat16
            )
    path.parent.mkdir(parents=True, exist_ok=True)  # a fresh machine has no --dir yet
    save_file(sd, str(path))
    return path


def run_clip(overrides: list[str], out_dir: Path, warm_steps: int | None) -> dict:
    """generate_video with random real-size weights; a warm-up run (compiles the blocks), then
    the timed run with the same loaded models."""
    import torch

    from mtlib.config import load_config
    from mtlib.run.generation import generate_video, summary
    from mtlib.run.load import load_models

    cfg = load_config(overrides[0], overrides[1:])
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    models = load_models(cfg, progress=True)
    load_s = time.perf_counter() - t0
    print(f"loaded in {load_s:.1f} s", file=sys.stderr, flush=True)
    warm = None
    if warm_steps is not None:
        wcfg = cfg.replace(**{"generation.sampling_steps": warm_steps})
        w = generate_video(wcfg, out_dir / "warm.mp4", models=models, progress=True)
        warm = {**w.timings, "stages_in_generate": w.stage_timings}
        print("warm-up:", warm, file=sys.stderr, flush=True)
    torch.cuda.reset_peak_memory_stats()
    r = generate_video(cfg, out_dir / "clip.mp4", models=models, progress=True)
    print(summary(r), file=sys.stderr, flush=True)
    t = dict(r.timings)
    clip_s = t["total"] - t.get("load", 0.0)
    return {
        "config": overrides,
        "load_s": round(load_s, 1),
        "warmup_timings": warm,
        "timings": t,
        "stages_in_generate": r.stage_timings,
        "clip_s_without_load": round(clip_s, 2),
        "frames": r.frames,
        "size": [r.height, r.width],
        "dit_calls": r.dit_calls,
        "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 1e9, 1),
        "dit": r.dit_options,
    }


def cmd_clip4(args) -> None:
    """--precision fp8 | reference | both (both: one subprocess each, one model on the GPU at a time)."""
    base = ["multitalk-480-lightx2v", "model.weights.random=true", "model.compile=true", *INPUTS]
    if (
        not args.no_lora
    ):  # merged at load: the sampling cost is the same without it (mtlib.weights.lora needed)
        lora = random_lightx2v_lora(Path(args.dir) / "random_lightx2v_rank32.safetensors")
        base.append(f"model.loras=[{{path: {lora}, scale: 1.0}}]")
    todo = {"fp8": 25.0, "reference": 35.0}
    if args.precision != "both":
        todo = {args.precision: todo[args.precision]}
    for precision, target in todo.items():
        res = subprocess.run([sys.executable, __file__, "clip1", "--precision", precision, "--", *base],
                             text=True, cwd=ROOT, stdout=subprocess.PIPE)  # fmt: skip
        row = json.loads(res.stdout.strip().splitlines()[-1])
        row.update(target_s=target, met=row["clip_s_without_load"] <= target, lora=not args.no_lora)
        _save(f"clip_4step_lightx2v_{'bf16' if precision == 'reference' else precision}",
              {"what": "81-frame 480p clip, lightx2v recipe (4 steps x 2 passes), random weights + random "
                       "rank-32 LoRA, generate_video after a 1-step warm-up (compile)", **row})  # fmt: skip


def cmd_clip1(args) -> None:
    over = list(args.overrides) + [f"model.precision={args.precision}"]
    rec = run_clip(over, VIDEOS, warm_steps=1)
    print(json.dumps(rec), flush=True)


def cmd_clip40(args) -> None:
    over = [
        "multitalk-480",
        "model.weights.random=true",
        "model.compile=true",
        "model.precision=fp8",
        *INPUTS,
    ]
    rec = run_clip(over, VIDEOS, warm_steps=1)
    rec.update(target_s=270.0, met=rec["clip_s_without_load"] <= 270.0)
    _save(
        "clip_40step_fp8",
        {
            "what": "81-frame 480p clip, reference recipe (40 steps x 3 passes), fp8, random "
            "weights, generate_video after a 1-step warm-up",
            **rec,
        },
    )


def _small_notebook(src: Path, dst: Path, limit: int = 200_000) -> None:
    """Copy an executed notebook, dropping outputs larger than `limit` bytes (embedded video)."""
    import nbformat

    nb = nbformat.read(src, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if len(json.dumps(o)) <= limit]
    nbformat.write(nb, dst)


def cmd_notebooks(args) -> None:
    """mtlib run over notebooks 00-03 with the real configuration and random weights
    (lightx2v recipe: 4 steps x 2 passes, bf16, eager), kept small under $OUT."""
    import shutil
    import tarfile

    from mtlib.run.notebooks import RunError, run_notebooks

    over = ["model.weights.random=true", *args.overrides]
    t0 = time.perf_counter()
    failed, seconds = None, {}
    runs = Path("/tmp/h200_runs")
    try:
        res = run_notebooks(args.preset, over, only="00,01,02,03", runs_dir=runs)
        seconds = {k: round(v, 1) for k, v in res.seconds.items()}
    except RunError as e:  # keep what ran: the failing notebook is the record
        failed = str(e)
        print(failed, flush=True)
    secs = time.perf_counter() - t0
    run_dir = max(runs.iterdir(), key=lambda p: p.stat().st_mtime)
    keep = Path("/tmp/notebooks_random")  # $OUT takes 8 files: the folder goes back as one tar
    shutil.rmtree(keep, ignore_errors=True)
    keep.mkdir(parents=True)
    for p in run_dir.iterdir():
        if p.suffix == ".ipynb":
            _small_notebook(p, keep / p.name)
        elif p.name in (
            "summary.txt",
            "config.yaml",
            "env.json",
            "run.log",
            "plan.json",
            "kernel.log",
        ):
            shutil.copy(p, keep / p.name)
    out = Path(os.environ.get("OUT", "/tmp/out"))
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out / "notebooks_random.tar.gz", "w:gz") as tar:
        tar.add(keep, arcname="notebooks_random")
    _save("notebooks_random", {"what": f"mtlib run (papermill) over notebooks 00-03, preset {args.preset}, "
                                       "model.weights.random=true, on the GPU", "overrides": over,
                               "failed": failed, "total_s": round(secs, 1), "seconds_per_notebook": seconds,
                               "summary": (run_dir / "summary.txt").read_text().splitlines()
                               if (run_dir / "summary.txt").exists() else []})  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["rss", "load1", "clip4", "clip1", "clip40", "notebooks"])
    ap.add_argument("--dir", default="/tmp/dit14b")
    ap.add_argument("--preset", default="multitalk-480-lightx2v", help="notebooks: the config")
    ap.add_argument("--mode", default="resident")
    ap.add_argument("--precision", default="both", choices=["fp8", "reference", "both"])
    ap.add_argument("--no-lora", action="store_true", help="clip4 without the random LoRA")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_intermixed_args()  # options may come before the overrides
    if args.what == "load1":
        print(json.dumps(load_once(Path(args.dir), args.mode)), flush=True)
    else:
        {
            "rss": cmd_rss,
            "clip4": cmd_clip4,
            "clip1": cmd_clip1,
            "clip40": cmd_clip40,
            "notebooks": cmd_notebooks,
        }[args.what](args)


if __name__ == "__main__":
    main()
