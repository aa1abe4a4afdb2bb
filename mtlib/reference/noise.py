"""Where a run's random draws come from: `generation.noise` (cpu | cuda | trace).

cpu    (default) one seeded CPU generator in the reference's draw order (SeededNoise):
       equals the reference run on a CPU, the same on every machine
cuda   the reference's own draws on a GPU: it seeds with torch.manual_seed(seed) and draws
       every tensor on the CUDA default generator (facts §9, golden README "Draw order":
       clip 0 noise; per later clip noise, motion_init, motion_step0..). A CUDA generator
       seeded the same way gives the same stream, so the same seed on the same GPU type
       reproduces the Colab's noise bit for bit (the CUDA kernels' output may depend on
       the GPU model)
trace  the draws recorded in a trace (generation.noise_trace: a reference trace made by
       `python -m mtlib.reference`, or an mtlib run's trace at level full): any device
"""

from __future__ import annotations

import os
from typing import Any

import torch

from mtlib.io import InputError
from mtlib.run.noise import InjectedNoise, SeededNoise

NOISE_MODES = ("cpu", "cuda", "trace")


class CudaNoise:
    """The reference's draws on a GPU: a CUDA generator seeded with `seed` (the state
    torch.manual_seed(seed) gives the default CUDA generator), drawn in the loop's order;
    float32 tensors handed back on the CPU (NoiseSource contract)."""

    def __init__(self, seed: int, device: str | torch.device = "cuda"):
        if not torch.cuda.is_available():
            raise InputError(
                "generation.noise 'cuda': no CUDA device here; the reference's GPU draws can "
                "only be made on a GPU. Fix: generation.noise=trace with the reference's trace "
                "(generation.noise_trace), or generation.noise=cpu."
            )
        self.seed = seed
        self.device = torch.device(device)
        if self.device.type != "cuda":
            self.device = torch.device("cuda")
        self.generator = torch.Generator(self.device).manual_seed(seed)

    def draw(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        x = torch.randn(
            tuple(shape), generator=self.generator, dtype=torch.float32, device=self.device
        )
        return x.cpu()


def trace_draws(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], int | None]:
    """The random draws (`*.rand.*` points stored in full) of a trace and its seed."""
    from mtlib.reference.archive import resolve
    from mtlib.trace import load_trace

    tr = load_trace(resolve(path))
    names = [n for n in tr.names if ".rand." in n]
    missing = [n for n in names if not tr.has_tensor(n)]
    if str(tr.meta.get("draws", "")).startswith("left out"):
        raise InputError(
            f"generation.noise_trace {str(path)!r}: its random draws were left out when it was "
            "traced (--no-draws). Fix: generation.noise=cuda with the trace's seed on the GPU "
            "type it was made on, or trace the reference again without --no-draws."
        )
    if not names or missing:
        raise InputError(
            f"generation.noise_trace {str(path)!r}: "
            + ("records no random draws" if not names else f"has only statistics of {missing[:3]}")
            + ". Fix: use a trace written by `python -m mtlib.reference` (it always stores the "
            "draws) or an mtlib run traced with trace.full including '*.rand.*'."
        )
    return {n: tr.tensor(n) for n in names}, trace_seed(tr.meta)


def trace_seed(meta: dict[str, Any]) -> int | None:
    """The seed a trace's run used, when its meta records it."""
    for run in meta.get("official_runs") or []:
        seed = (run.get("generate") or {}).get("seed")
        if seed is not None:
            return int(seed)
    if meta.get("seed") is not None:
        return int(meta["seed"])
    return None


def check_trace_draws(draws: dict[str, torch.Tensor], clips: int, path: str) -> None:
    """Fail before compute when the trace lacks a clip's initial noise."""
    need = [f"e2e.clip{c}.rand.noise" for c in range(clips)]
    lacking = [n for n in need if n not in draws]
    if lacking:
        raise InputError(
            f"generation.noise_trace {path!r}: the run plans {clips} clip(s) but the trace has "
            f"no {lacking[0]!r}. Fix: trace the reference with the same mode, frame_num, "
            "motion_frame and audio, or use generation.noise=cpu."
        )


def noise_source(generation: Any, device: str = "cpu", clips: int | None = None):
    """The NoiseSource of a config's `generation` section (see the module docstring)."""
    mode = getattr(generation, "noise", "cpu")
    seed = generation.seed
    if mode == "cpu":
        return SeededNoise(seed)
    if mode == "cuda":
        return CudaNoise(seed, device if str(device).startswith("cuda") else "cuda")
    if mode == "trace":
        path = getattr(generation, "noise_trace", None)
        if not path:
            raise InputError(
                "generation.noise 'trace' needs generation.noise_trace: the path of "
                "the trace whose draws to inject."
            )
        draws, seed_used = trace_draws(path)
        if clips is not None:
            check_trace_draws(draws, clips, str(path))
        return InjectedNoise(draws, seed=seed_used if seed_used is not None else seed)
    raise InputError(f"generation.noise {mode!r}: use one of {', '.join(NOISE_MODES)}.")
