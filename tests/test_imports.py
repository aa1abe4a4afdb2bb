"""Importing mtlib (every module) pulls in none of the reference's optional GPU accelerators."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ACCELERATORS = ("xformers", "flash_attn", "flash_attn_interface", "xfuser", "optimum", "sageattention", "decord")


def test_importing_every_mtlib_module_pulls_no_accelerator():
    modules = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for p in (ROOT / "mtlib").rglob("*.py")
        if p.name != "__main__.py"
    )
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"print(sorted(a for a in {ACCELERATORS!r} if a in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert len(modules) > 20
    assert out.stdout.strip() == "[]"
