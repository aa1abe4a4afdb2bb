"""The newest-stack check (`make newest-stack`, run by `make test` and so by CI).

A user's environment (a Colab, a Modal image) already holds torch and recent numpy,
transformers, huggingface_hub and Pillow. Installing mtlib there must downgrade none of them,
and mtlib must work on them. This script:

1. makes a fresh virtualenv (.venv-newest) holding the CPU torch build (2.13.0) and the newest
   numpy, transformers, huggingface_hub and Pillow the registry serves;
2. asks pip what installing mtlib (core + notebooks + s3 extras) would change
   (`pip install --dry-run --report`) and fails if any installed package would be downgraded
   or replaced;
3. installs it, plus pytest and librosa (the audio golden tests compare against librosa), and
   runs mtlib's core test subset there: plan, preprocessing, encoders, tiny generation, with
   their golden cases (MTLIB_NEWEST_TESTS overrides the list).

It prints the versions, the dry-run verdict and pytest's summary. Takes a few minutes (pip
installs, as the dry run resolves).
Usage: python tools/newest_stack.py [--python python3] [--keep]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-newest"
CPU_TORCH = os.environ.get("CPU_TORCH", "torch==2.13.0")
NEWEST = ["numpy", "transformers", "huggingface_hub", "Pillow"]
EXTRAS = "notebooks,s3"
# plan, preprocessing (image + audio, wav2vec2 included), encoders, one tiny generation; the
# golden cases among them compare with the official tensors
TESTS = os.environ.get(
    "MTLIB_NEWEST_TESTS",
    "tests/test_shapes.py tests/test_image.py tests/test_audio.py tests/test_encoders.py "
    "tests/test_extras.py tests/test_t5_fastpath.py "
    "tests/test_generation.py::test_auto_frame_num_pads_the_short_audio_and_trims_the_video",
).split()


def sh(*cmd: str, **kw) -> subprocess.CompletedProcess:
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=True, **kw)


def install(py: str, *reqs: str) -> None:
    """pip, as the dry run that decided: uv took soundfile's tag-less wheel (no libsndfile
    inside) from the first local index where pip picks the manylinux one."""
    sh(py, "-m", "pip", "install", "-q", "--disable-pip-version-check", *reqs)


def versions(py: str) -> dict[str, str]:
    out = subprocess.run(
        [py, "-m", "pip", "list", "--format", "json", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {canon(p["name"]): p["version"] for p in json.loads(out)}


def canon(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def main(argv: list[str]) -> int:
    python = argv[argv.index("--python") + 1] if "--python" in argv else "python3"
    t0 = time.perf_counter()
    shutil.rmtree(VENV, ignore_errors=True)
    sh(python, "-m", "venv", str(VENV))
    py = str(VENV / "bin" / "python")
    sh(py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--upgrade", "pip")
    install(py, CPU_TORCH, *NEWEST)
    before = versions(py)
    print("newest stack:", ", ".join(f"{n} {before[canon(n)]}" for n in ["torch", *NEWEST]))

    report_path = VENV / "mtlib-dry-run.json"
    sh(
        py,
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "-q",
        "--dry-run",
        "--report",
        str(report_path),
        "-e",
        f"{ROOT}[{EXTRAS}]",
    )
    from packaging.version import Version

    report = json.loads(report_path.read_text())
    changed, added = [], []
    for item in report["install"]:
        name, ver = canon(item["metadata"]["name"]), item["metadata"]["version"]
        if name == "mtlib":
            continue
        if name in before:
            changed.append((name, before[name], ver, Version(ver) < Version(before[name])))
        else:
            added.append(f"{name}=={ver}")
    print(
        f"dry run (pip install -e .[{EXTRAS}]): {len(added)} packages added, "
        f"{len(changed)} already-installed packages changed"
    )
    for name, old, new, down in changed:
        print(f"  {'DOWNGRADE' if down else 'upgrade'} {name} {old} -> {new}")
    kept = [n for n in ["torch", *NEWEST] if canon(n) not in {c[0] for c in changed}]
    print("  kept as they were:", ", ".join(f"{n} {before[canon(n)]}" for n in kept))
    downgrades = [c for c in changed if c[3]]
    if downgrades:
        print(
            "FAIL: installing mtlib would downgrade "
            + ", ".join(f"{n} {o} -> {v}" for n, o, v, _ in downgrades)
        )
        return 1

    # what pip's dry run listed, plus the test tools
    install(py, "-e", f"{ROOT}[{EXTRAS}]", "pytest>=8", "hypothesis>=6.100", "librosa>=0.10")
    after = versions(py)
    moved = [n for n in ["torch", *NEWEST] if after[canon(n)] != before[canon(n)]]
    if moved:
        print("FAIL: the test tools moved " + ", ".join(moved))
        return 1
    env = dict(os.environ, MTLIB_VERSIONS_NOTE="newest-stack")
    rc = subprocess.run(
        [py, "-m", "pytest", *TESTS, "-q", "-p", "no:cacheprovider", "-m", "not slow"],
        cwd=ROOT,
        env=env,
    ).returncode
    print(f"newest-stack check: pytest rc {rc}, {time.perf_counter() - t0:.0f} s in all")
    if "--keep" not in argv and rc == 0:
        shutil.rmtree(VENV, ignore_errors=True)
    return rc


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
