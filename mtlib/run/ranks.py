"""One run over several devices: `spawn_generate` runs `generate_video` on parallel.gpus spawned
ranks (mtlib.parallel.launch starts them) and returns rank 0's output. Here, above the loop,
because each rank runs the whole of `mtlib.run.generation`.
"""

from __future__ import annotations

from mtlib.parallel.launch import _is_cuda, check_config, spawn


def _generate_rank(cfg, out, trace_dir, progress: bool, compile: bool, noise=None):
    from mtlib.run.generation import generate_video

    kw = {} if noise is None else {"noise": noise}
    return generate_video(cfg, out, trace_dir=trace_dir, progress=progress, compile=compile, **kw)


def spawn_generate(
    cfg, out, trace_dir=None, progress: bool = True, compile: bool = False, noise=None
):
    """`generate_video` on parallel.gpus spawned ranks; rank 0's GenerationOutput. `noise`
    (a picklable pipeline.NoiseSource, e.g. InjectedNoise) goes to every rank."""
    from mtlib.config import ConfigError

    check_config(cfg)
    n = cfg.parallel.gpus
    if _is_cuda(cfg.model.device):
        import torch

        have = torch.cuda.device_count()
        if have < n and (have or str(cfg.model.device) != "auto"):
            raise ConfigError(
                f"parallel.gpus = {n} but this machine has {have} CUDA device(s). Fix: "
                f"parallel.gpus={max(have, 1)}, or model.device=cpu for {n} CPU processes."
            )
    return spawn(_generate_rank, n, (cfg, out, trace_dir, progress, compile, noise))
