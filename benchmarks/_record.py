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
