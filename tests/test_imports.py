"""Importing mtlib (every module) pulls in none of the reference's optional GPU accelerators."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ACCELERATORS = (
    "xformers",
    "flash_attn",
    "flash_attn_interface",
    "xfuser",
    "optimum",
    "sageattention",
    "decord",
)


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
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert len(modules) > 20
    assert out.stdout.strip() == "[]"


def test_no_package_name_hides_one_of_its_modules():
    """A package's __init__ re-exports names; none may bind the name of one of its own modules
    (`mtlib.weights.download` would be the function, not the module: monkeypatching the module
    or `from mtlib.weights import fetch` style imports would silently hit the wrong object)."""
    import importlib
    import types

    clashes = []
    for init in sorted((ROOT / "mtlib").rglob("__init__.py")):
        pkg_dir = init.parent
        pkg = ".".join(pkg_dir.relative_to(ROOT).parts)
        subs = [p.stem for p in pkg_dir.glob("*.py") if p.stem not in ("__init__", "__main__")]
        subs += [d.name for d in pkg_dir.iterdir() if (d / "__init__.py").exists()]
        for sub in subs:
            module = importlib.import_module(f"{pkg}.{sub}")
            bound = getattr(importlib.import_module(pkg), sub)
            if bound is not module:
                kind = "module" if isinstance(bound, types.ModuleType) else type(bound).__name__
                clashes.append(
                    f"{pkg}.{sub} is a {kind} ({bound!r}), not the module {module.__name__}"
                )
    assert not clashes, "\n".join(clashes)


def test_old_module_names_warn_and_give_the_new_module():
    """Every name in mtlib._moved.MOVED: no file left at the old path, a DeprecationWarning
    naming the new home, and the very module object of that home (so its names are the same
    objects)."""
    code = (
        "import importlib, sys, warnings\n"
        "from mtlib._moved import MOVED\n"
        "for old, new in sorted(MOVED.items()):\n"
        "    sys.modules.pop(old, None)\n"
        "    with warnings.catch_warnings(record=True) as w:\n"
        "        warnings.simplefilter('always')\n"
        "        mod = importlib.import_module(old)\n"
        "    msgs = [str(x.message) for x in w if x.category is DeprecationWarning]\n"
        "    print(old, mod is importlib.import_module(new), msgs)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    from mtlib._moved import MOVED

    lines = out.stdout.strip().splitlines()
    assert len(lines) == len(MOVED) >= 20
    for line, (old, new) in zip(lines, sorted(MOVED.items()), strict=True):
        assert line == (
            f"{old} True ['{old} moved to {new}; import it from there (the old name will go)']"
        )
        assert not (ROOT / (old.replace(".", "/") + ".py")).exists()
        assert not (ROOT / old.replace(".", "/")).is_dir()
