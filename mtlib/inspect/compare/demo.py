"""Pairs to compare: a synthetic stand-in (no weights needed) and two tiny pipeline runs that
differ in one setting (`tiny_pair`, notebook 04).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mtlib import trace
from mtlib.inspect.compare.report import Comparison
from mtlib.io import InputError


def _demo_run(matmul_dtype: str, steps: int = 4) -> None:
    """Encoder (fp32 in both runs, like the VAE) -> `steps` denoising updates whose matmuls
    run in `matmul_dtype` (like the bf16 DiT) -> decoder. All points are float32."""
    import torch

    g = torch.Generator().manual_seed(0)
    w_enc = torch.randn(32, 64, generator=g) / 32**0.5
    w_den = torch.randn(64, 64, generator=g) / 8
    w_dec = torch.randn(64, 16, generator=g) / 8
    cond = torch.randn(8, 32, generator=g)
    noise = torch.randn(8, 64, generator=g)
    low = getattr(torch, matmul_dtype)

    def den_mm(x, w):
        return (x.to(low) @ w.to(low)).float()

    with trace.scope("demo"):
        trace.point("cond", cond)
        context = trace.point("encoder.out", torch.nn.functional.gelu(cond @ w_enc))  # [8, 64]
        latent = trace.point("noise", noise)
        for i in range(steps):
            with trace.scope(f"step{i}"):
                trace.point("latent_in", latent)
                pred = trace.point("noise_pred", torch.tanh(den_mm(latent + context, w_den)))
                latent = trace.point("latent_out", latent - 0.25 * pred)
        trace.point("decoder.out", latent @ w_dec)


def demo_traces(directory: str | Path, steps: int = 4) -> tuple[Path, Path]:
    """Two small traces of the same stand-in computation, all points in full: A with the
    denoising matmuls in bfloat16 ("my GPU run"), B in float32 (the reference).
    Returns (trace A dir, trace B dir)."""
    directory = Path(directory)
    paths = []
    for label, dtype in (("bf16", "bfloat16"), ("fp32", "float32")):
        p = directory / f"demo_{label}"
        with (
            trace.TraceWriter(p, level="full", meta={"demo": label}, overwrite=True) as tw,
            trace.recording(tw),
        ):
            _demo_run(dtype, steps)
        paths.append(p)
    return paths[0], paths[1]


# The deliberate change of the notebook's default pair: the audio guidance scale only
# enters where the three DiT predictions of a step are combined, so the runs agree up to
# e2e.clip0.step0.noise_pred and part there (then every later step and the video follow).
TINY_PAIR_CHANGE: dict[str, Any] = {"generation.audio_guide_scale": 3.5}


def tiny_pair(
    directory: str | Path,
    change: dict[str, Any] | None = None,
    base: Any = "tiny",
    frame_num: int = 13,
    models: Any = None,
) -> tuple[Path, Path]:
    """Two tiny runs made on the spot with generation.generate_video, traced at level full:
    A with `change` applied (default TINY_PAIR_CHANGE), B the unchanged reference.

    Each is a run directory (video.mp4 + trace/) that `load_trace`, `compare` and
    `mtlib compare` read. `base`: a preset name, YAML path or RunConfig (its tiny weights
    folder is reused; a non-tiny config falls back to the tiny preset, as the pair is meant
    to be cheap); `models`: loaded networks to reuse. Returns (run A dir, run B dir)."""
    from mtlib.config import RunConfig, load_config
    from mtlib.run import generation

    cfg = base if isinstance(base, RunConfig) else load_config(base)
    if cfg.model.name != "tiny":
        cfg = load_config("tiny")
    cfg = cfg.replace(
        **{"generation.frame_num": frame_num, "trace.level": "full", "trace.full": []}
    )
    change = dict(TINY_PAIR_CHANGE if change is None else change)
    if not change:
        raise InputError(
            "tiny_pair: `change` is empty; the two runs would be identical. "
            "Fix: give one setting to change, e.g. {'generation.seed': 43}."
        )
    changed = cfg.replace(**change)
    if models is None:
        models = generation.load_models(cfg)
    directory = Path(directory)
    label = ",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in change.items())
    paths = []
    for name, c in ((f"run_a_{label}", changed), ("run_b_reference", cfg)):
        d = directory / re.sub(r"[^A-Za-z0-9_.,=-]", "_", name)
        generation.generate_video(
            c, d / "video.mp4", trace_dir=d / "trace", progress=False, models=models
        )
        paths.append(d)
    return paths[0], paths[1]


def resolve_pair(
    run_a: str, run_b: str, workdir: str | Path, base: Any = "tiny", demo: str = "tiny"
) -> tuple[Path | str, Path | str]:
    """The two traces a notebook compares: `run_a` / `run_b` as given, or when both are
    empty a pair made in `workdir`: demo "tiny" = two tiny generate_video runs (`tiny_pair`,
    from config `base`), "synthetic" = the stand-in computation of `demo_traces`."""
    if not run_a and not run_b:
        if demo == "synthetic":
            return demo_traces(Path(workdir) / "demo")
        if demo != "tiny":
            raise InputError(f"demo {demo!r}: use 'tiny' or 'synthetic'.")
        return tiny_pair(Path(workdir) / "tiny_pair", base=base)
    if not run_a or not run_b:
        raise InputError(
            f"run_a={run_a!r}, run_b={run_b!r}: give both traces (or neither, for the demo)."
        )
    from mtlib.reference.archive import resolve  # a reference trace archive (.tar.gz) is unpacked

    return resolve(run_a), resolve(run_b)


def heatmap_point(cmp: Comparison, point: str = "") -> str | None:
    """The point to draw: `point` if given, else the first divergence, else the last point
    compared as tensors on both sides (None if there is none)."""
    if point:
        if point not in cmp.a or point not in cmp.b:
            raise InputError(
                f"point {point!r}: not in both traces. Fix: pick a name from the table."
            )
        return point
    if cmp.first_divergence and cmp[cmp.first_divergence].mode == "tensor":
        return cmp.first_divergence
    tensors = [r.name for r in cmp.compared if r.mode == "tensor"]
    return tensors[-1] if tensors else None
