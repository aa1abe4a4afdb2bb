"""The Colab bridge end to end, as notebook 05 runs it (docs/colab-bridge.md):

    capture(official_dir, official_args, trace_dir)   the official command under the tracer,
                                                      in a subprocess (`python -m mtlib.reference`)
                                                      -> the trace archive to download
    reproduce(reference, config, run_dir)             mtlib on the reference's draws
                                                      (generation.noise trace) -> run dir + trace
    demo_reference(workdir)                           without an official checkout: a tiny mtlib
                                                      run standing in for the reference (labelled)

Compare with `mtlib.inspect.compare.compare(run, reference)`; `mtlib.reference.settings` names what
the two were told to do differently.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from mtlib.io import InputError


def capture(
    official_dir: str | os.PathLike,
    official_args: str | list[str],
    trace_dir: str | os.PathLike,
    level: str = "stats",
    keep: list[str] | tuple[str, ...] = (),
    script: str = "generate_multitalk.py",
    python: str = sys.executable,
) -> Path:
    """Run `python -m mtlib.reference --trace trace_dir -- script ARGS` in `official_dir` (the
    official checkout: its script, weights and input.json paths are relative to it) and return
    the archive it wrote. The script's output streams through; a failure raises InputError
    with its exit code (the partial trace stays in trace_dir)."""
    root = Path(official_dir).expanduser().resolve()
    if not (root / script).is_file():
        raise InputError(
            f"official_dir {str(root)!r}: no {script} there. Fix: give the root of the "
            "MeiGen-AI/MultiTalk checkout (the folder the Colab runs the command in)."
        )
    args = shlex.split(official_args) if isinstance(official_args, str) else list(official_args)
    trace_dir = Path(trace_dir).expanduser().resolve()
    cmd = [
        python,
        "-m",
        "mtlib.reference",
        "--trace",
        str(trace_dir),
        "--level",
        level,
        "--overwrite",
    ]
    for k in keep:
        cmd += ["--keep", k]
    cmd += ["--", script, *args]
    env = dict(os.environ)
    import mtlib

    # the official script runs from its checkout; mtlib must stay importable from there
    pkg_root = str(Path(mtlib.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH", "")) if p)
    r = subprocess.run(cmd, cwd=root, env=env)
    if r.returncode != 0:
        raise InputError(
            f"the traced official command failed with exit code {r.returncode}: "
            f"{shlex.join(cmd)} (in {root}); its output above says why."
        )
    return trace_dir.with_name(trace_dir.name + ".tar.gz")


def notebook_parameters(official_dir: str | None, official_args: str | None) -> dict[str, str]:
    """`mtlib run --official-dir DIR [--official-args ARGS]` -> notebook 05's parameters;
    refused before any notebook runs when DIR is no official checkout (ValueError: exit 2)."""
    if not official_dir:
        raise ValueError(
            "--official-args: needs --official-dir (the checkout whose script it runs)."
        )
    root = Path(official_dir).expanduser().resolve()
    if not (root / "generate_multitalk.py").is_file():
        raise ValueError(
            f"--official-dir {official_dir!r}: no generate_multitalk.py there. Fix: give the root "
            "of the MeiGen-AI/MultiTalk checkout (the folder the Colab runs the command in)."
        )
    out = {"official_dir": str(root)}
    if official_args:
        out["official_args"] = official_args
    return out


def demo_reference(workdir: str | os.PathLike, config: Any = "tiny", seed: int = 42) -> Path:
    """A stand-in reference when no official checkout is given: a tiny mtlib run (CPU, seconds)
    traced like a reference trace (its draws and conditioning stored). Only for showing the
    workflow; the notebook says so."""
    from mtlib.config import RunConfig, load_config
    from mtlib.run.generation import generate_video

    cfg = config if isinstance(config, RunConfig) else load_config(config)
    cfg = cfg.replace(
        **{
            "generation.frame_num": 13,
            "generation.sampling_steps": 3,
            "generation.seed": seed,
            "trace.level": "full",
            "trace.full": ["e2e.*.rand.*", "e2e.*.context*", "e2e.clip0.cond_image"],
        }
    )
    out = Path(workdir) / "demo_reference"
    generate_video(cfg, out / "video.mp4", trace_dir=out / "trace", progress=False)
    return out / "trace"


def reproduce(
    reference: str | os.PathLike,
    config: Any,
    run_dir: str | os.PathLike,
    overrides: dict[str, Any] | None = None,
) -> Path:
    """mtlib's run of `config` with the reference's draws injected (generation.noise trace,
    any device), traced into run_dir/trace; returns run_dir. `overrides`: dotted config keys."""
    from mtlib.config import RunConfig, load_config
    from mtlib.reference.archive import resolve
    from mtlib.run.generation import generate_video

    ref = resolve(reference)
    cfg = config if isinstance(config, RunConfig) else load_config(config)
    cfg = cfg.replace(
        **{"generation.noise": "trace", "generation.noise_trace": str(ref), **(overrides or {})}
    )
    run_dir = Path(run_dir)
    generate_video(cfg, run_dir / "video.mp4", trace_dir=run_dir / "trace", progress=False)
    return run_dir
