"""Environment report: what this machine will run MultiTalk with.

`environment_report()` gathers Python, torch, CUDA / cuDNN, the GPU (name, memory, SM
count, driver), which attention backends SDPA can use, TF32 / determinism flags, versions of
every dependency and the project's git commit (and whether the tree is dirty). The runner
writes it as `env.json` into every run directory; `mtlib env` and notebook 00 print it.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from mtlib.io import project_root

# Distributions whose versions matter for parity (golden README §6) or for running at all.
DEPENDENCIES = (
    "torch",
    "numpy",
    "safetensors",
    "transformers",
    "tokenizers",
    "huggingface_hub",
    "librosa",
    "soxr",
    "soundfile",
    "pyloudnorm",
    "Pillow",
    "scikit-image",
    "av",
    "papermill",
    "nbformat",
    "ipykernel",
    "ipywidgets",
    "matplotlib",
    "rich",
    "tqdm",
    "fsspec",
    "PyYAML",
)
# Optional accelerators the reference pulls in; mtlib never needs them, we only report them.
OPTIONAL_ACCELERATORS = (
    "xformers",
    "flash_attn",
    "flash_attn_interface",
    "sageattention",
    "xfuser",
    "optimum-quanto",
)


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def git_state(root: Path | None = None) -> dict[str, Any]:
    root = root or project_root()
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        return {"commit": commit or None, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def attention_backend(device: str = "cuda") -> str:
    """The SDPA backend torch will pick for bf16 attention on `device`, by priority."""
    import torch

    if not (device.startswith("cuda") and torch.cuda.is_available()):
        return "math (CPU: fused C++ SDPA kernel)"
    from torch.backends import cuda as bc

    enabled = []
    for name, flag in (
        ("cudnn", "cudnn_sdp_enabled"),
        ("flash", "flash_sdp_enabled"),
        ("mem_efficient", "mem_efficient_sdp_enabled"),
        ("math", "math_sdp_enabled"),
    ):
        fn = getattr(bc, flag, None)
        if fn is not None and fn():
            enabled.append(name)
    return ", ".join(enabled) or "none enabled"


def tf32_state() -> dict[str, Any]:
    """Where TF32 may stand in for float32 math on a GPU (it moves results at the 1e-3 level,
    the VAE's convolutions first): torch's two flags and NVIDIA_TF32_OVERRIDE ("0" turns TF32
    off in cuBLAS / cuDNN whatever torch asks). Both trace kinds record it in their meta; the
    Colab bridge's settings diff compares it (mtlib.reference.settings)."""
    import os

    import torch

    return {
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
        "nvidia_tf32_override": os.environ.get("NVIDIA_TF32_OVERRIDE"),
    }


def environment_report() -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    tf32 = tf32_state()
    report: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "cuda_available": cuda,
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version()
        if torch.backends.cudnn.is_available()
        else None,
        "cpu_threads": torch.get_num_threads(),
        "gpus": [],
        "driver": None,
        "attention_backend": attention_backend("cuda" if cuda else "cpu"),
        "tf32_matmul": tf32["tf32_matmul"],
        "tf32_cudnn": tf32["tf32_cudnn"],
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "dependencies": {d: _version(d) for d in DEPENDENCIES},
        "optional_accelerators_installed": {
            d: _version(d) for d in OPTIONAL_ACCELERATORS if _version(d)
        },
        "mtlib_imports_accelerators": sorted(
            m
            for m in ("xformers", "flash_attn", "xfuser", "optimum", "sageattention")
            if m in sys.modules
        ),
        "git": git_state(),
    }
    if cuda:
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            report["gpus"].append(
                {
                    "index": i,
                    "name": p.name,
                    "memory_gib": round(p.total_memory / 2**30, 2),
                    "sm_count": p.multi_processor_count,
                    "capability": f"{p.major}.{p.minor}",
                }
            )
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            report["driver"] = out.splitlines()[0] if out else None
        except (OSError, subprocess.SubprocessError):
            pass
    return report


def format_report(report: dict[str, Any]) -> str:
    """A two-column text table (rich-free so that headless logs and nbval stay simple)."""
    rows = [
        ("python", report["python"]),
        ("torch", report["torch"]),
        ("cuda", f"{report['cuda_version']} (available: {report['cuda_available']})"),
        ("cudnn", report["cudnn_version"]),
        (
            "gpu",
            "; ".join(
                f"{g['name']} {g['memory_gib']} GiB, {g['sm_count']} SMs" for g in report["gpus"]
            )
            or "none",
        ),
        ("driver", report["driver"]),
        ("attention", report["attention_backend"]),
        ("tf32 matmul / cudnn", f"{report['tf32_matmul']} / {report['tf32_cudnn']}"),
        (
            "deterministic",
            f"{report['deterministic_algorithms']} (cudnn {report['cudnn_deterministic']})",
        ),
        (
            "git",
            f"{(report['git']['commit'] or '?')[:12]}{' (dirty)' if report['git']['dirty'] else ''}",
        ),
    ]
    rows += [(f"  {k}", v or "missing") for k, v in report["dependencies"].items()]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def write_report(path: str | Path, report: dict[str, Any] | None = None) -> dict[str, Any]:
    from mtlib.io import atomic_write

    report = report or environment_report()
    atomic_write(path, json.dumps(report, indent=1, default=str))
    return report
