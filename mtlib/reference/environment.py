"""Which official code runs, on what, with which settings: the facts a reference trace records.

`import_official()` imports the official `wan` package (an unmodified MeiGen-AI/MultiTalk
checkout on sys.path, or given by $MTLIB_OFFICIAL_DIR) and fails with one clear error when it
is missing. `official_version(path)` names the checkout: its git commit when it is a git
work tree, and whether the files that decide the numerics are byte-identical to commit
c1ad840 (the commit mtlib and its golden data follow). `reference_environment()` is the
environment block of meta.json (versions, GPU, attention backends, TF32 / determinism
flags); `generate_settings(pipe, kwargs)` the settings block of one generate() call.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from mtlib.env import tf32_state
from mtlib.io import InputError

GOLDEN_COMMIT = "c1ad84009b99ed36c97ab18e4517ca5f98692438"
# sha256 of the files that decide the numerics, at GOLDEN_COMMIT (from the published tree)
GOLDEN_FILES = {
    "wan/multitalk.py": "26db27262a649da68942cea5c40c5f49e0ee63b8505b51b9f4bdd040f0d48569",
    "wan/modules/multitalk_model.py": "f9d8e28e58d619641f756e5e9c8b1c059d16e34696daa87552693e0de949ffa9",
    "generate_multitalk.py": "9b7292b145d523af360051dcd2e127cc9d10c23e2c4f06003ce88a6cac2b9147",
    "wan/modules/attention.py": "de3b7b27165eff5738c0fdf7a0938096a80e3a41acffc68525d6575de3f62900",
    "wan/utils/multitalk_utils.py": "9c40fdeacc11748e021afb751659e359a831632dc82500a80b8795fc4398b9e2",
}
PACKAGES = (
    "torch", "torchvision", "numpy", "transformers", "diffusers", "accelerate", "xformers",
    "flash_attn", "flash_attn_interface", "sageattention", "xfuser", "optimum.quanto",
    "librosa", "pyloudnorm", "PIL", "skimage", "safetensors", "einops",
)  # fmt: skip


def import_official() -> Any:
    """The official `wan` package, importable from sys.path or $MTLIB_OFFICIAL_DIR."""
    extra = os.environ.get("MTLIB_OFFICIAL_DIR")
    if extra and extra not in sys.path:
        sys.path.insert(0, extra)
    try:
        wan = importlib.import_module("wan")
        importlib.import_module("wan.multitalk")
    except ImportError as e:
        raise InputError(
            f"the official MultiTalk code is not importable ({type(e).__name__}: {e}). Fix: run "
            "from the root of a MeiGen-AI/MultiTalk checkout (the folder holding wan/ and "
            "generate_multitalk.py) with its requirements installed, or set "
            "MTLIB_OFFICIAL_DIR to that folder."
        ) from e
    if not hasattr(wan, "MultiTalkPipeline"):
        raise InputError(
            f"the importable `wan` package ({getattr(wan, '__file__', '?')}) has no "
            "MultiTalkPipeline: it is not the MultiTalk fork of Wan2.1. Fix: put a "
            "MeiGen-AI/MultiTalk checkout first on sys.path (MTLIB_OFFICIAL_DIR)."
        )
    return wan


def official_root(wan: Any | None = None) -> Path:
    wan = wan if wan is not None else sys.modules.get("wan") or import_official()
    return Path(wan.__file__).resolve().parent.parent


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def official_version(root: str | Path | None = None) -> dict[str, Any]:
    """{path, git_commit, files: {file: "same"|"changed"|"missing"}, matches_golden_commit}."""
    root = Path(root) if root is not None else official_root()
    commit = None
    try:
        r = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
        commit = r.stdout.strip() or None if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    files = {}
    for rel, want in GOLDEN_FILES.items():
        got = _sha256(root / rel)
        files[rel] = "missing" if got is None else ("same" if got == want else "changed")
    same = all(v == "same" for v in files.values())
    return {
        "path": str(root),
        "git_commit": commit,
        "files": files,
        "matches_golden_commit": same,
        "version": (
            f"c1ad840-compatible ({commit[:7] if commit else 'no git metadata'})"
            if same
            else f"differs from c1ad840 in {[k for k, v in files.items() if v != 'same']}"
        ),
    }


def _package_version(name: str) -> str | None:
    mod = sys.modules.get(name)
    if mod is None:
        try:
            spec = importlib.util.find_spec(name.split(".")[0])
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            return None
        try:
            from importlib.metadata import version

            dist = {
                "PIL": "Pillow",
                "skimage": "scikit-image",
                "optimum.quanto": "optimum-quanto",
                "flash_attn": "flash-attn",
            }.get(name, name)
            return version(dist)
        except Exception:  # noqa: BLE001  (importable without metadata: say so)
            return "installed"
    return str(getattr(mod, "__version__", "installed"))


def attention_backends() -> dict[str, Any]:
    """Which attention the official modules will use (module flags read, nothing called)."""
    out: dict[str, Any] = {}
    att = sys.modules.get("wan.modules.attention")
    mt = sys.modules.get("wan.modules.multitalk_model")
    if att is not None:
        out["flash_attn_2"] = bool(getattr(att, "FLASH_ATTN_2_AVAILABLE", False))
        out["flash_attn_3"] = bool(getattr(att, "FLASH_ATTN_3_AVAILABLE", False))
        fa = getattr(att, "flash_attention", None)
        out["flash_attention_fn"] = (
            f"{getattr(fa, '__module__', '?')}.{getattr(fa, '__name__', '?')}"
        )
    if mt is not None:
        out["sageattention"] = bool(getattr(mt, "USE_SAGEATTN", False))
    out["xformers"] = _package_version("xformers")
    return out


def reference_environment() -> dict[str, Any]:
    """The environment block of a reference trace's meta.json."""
    import platform

    import torch

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "argv": list(sys.argv),
        "packages": {n: _package_version(n) for n in PACKAGES},
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpu": None,
        **tf32_state(),  # torch's two flags and NVIDIA_TF32_OVERRIDE
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "matmul_precision": torch.get_float32_matmul_precision(),
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env["gpu"] = {
            "name": p.name,
            "capability": f"{p.major}.{p.minor}",
            "memory_gb": round(p.total_memory / 2**30, 1),
            "count": torch.cuda.device_count(),
        }
    try:
        env["official"] = official_version()
    except (InputError, OSError):
        env["official"] = None
    env["attention"] = attention_backends()
    return env


def _dtype(module: Any) -> str | None:
    try:
        return str(next(iter(module.parameters())).dtype).removeprefix("torch.")
    except (StopIteration, AttributeError, TypeError):
        return None


def generate_settings(pipe: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The settings of one official generate() call: its arguments, the `extra_args` flags,
    the pipeline's placement and dtypes (what decides the numerics)."""
    extra = kwargs.get("extra_args")
    flags = dict(vars(extra)) if extra is not None and hasattr(extra, "__dict__") else {}
    call = {k: v for k, v in kwargs.items() if k not in ("extra_args", "input_data")}
    te = getattr(pipe, "text_encoder", None)
    clip = getattr(pipe, "clip", None)
    vae = getattr(pipe, "vae", None)
    model = getattr(pipe, "model", None)
    return {
        "generate": call,
        "input_data": kwargs.get("input_data"),
        "flags": {
            k: v
            for k, v in flags.items()
            if isinstance(v, str | int | float | bool | list | type(None))
        },
        "pipeline": {
            "device": str(getattr(pipe, "device", None)),
            "param_dtype": str(getattr(pipe, "param_dtype", None)).removeprefix("torch."),
            "t5_cpu": getattr(pipe, "t5_cpu", None),
            "vram_management": getattr(pipe, "vram_management", None),
            "sp_size": getattr(pipe, "sp_size", None),
            "use_usp": getattr(pipe, "use_usp", None),
            "dit_dtype": _dtype(model) if model is not None else None,
            "t5_dtype": _dtype(getattr(te, "model", None)) if te is not None else None,
            "clip_dtype": str(getattr(clip, "dtype", None)).removeprefix("torch."),
            "vae_dtype": str(getattr(vae, "dtype", None)).removeprefix("torch."),
            "teacache": bool(getattr(model, "enable_teacache", False)),
        },
    }
