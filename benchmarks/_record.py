"""What every GPU benchmark record carries: the commit it measured.

Imported by the benchmark scripts as `from _record import commit` (a script's own folder is
first on sys.path)."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def commit() -> str:
    """HEAD of the checkout, or the COMMIT file a copied tree (no .git, as on the device
    machine) carries; "unknown" when neither is there."""
    c = ROOT / "COMMIT"
    if c.exists():
        return c.read_text().strip()
    try:
        return subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=ROOT, text=True).strip()
    except Exception:  # noqa: BLE001 - a tree without .git still measures
        return "unknown"


def header(what: str) -> dict:
    """The fields every record starts with: what it measured, the commit, the device, torch's
    and Triton's versions."""
    import torch

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:  # the CPU-only runs
        triton_version = None
    return {
        "what": what,
        "commit": commit(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "triton": triton_version,
    }


def save(filename: str, rec: dict) -> str:
    """Write `rec` as JSON to $OUT (what the device tool brings back) and benchmarks/results/,
    whole or not at all: a temporary name, then a rename. Returns the text."""
    import json
    import os

    text = json.dumps(rec, indent=1)
    for d in (os.environ.get("OUT"), ROOT / "benchmarks" / "results"):
        if d:
            Path(d).mkdir(parents=True, exist_ok=True)
            tmp = Path(d) / f".{filename}.tmp"
            tmp.write_text(text)
            tmp.replace(Path(d) / filename)
    return text
