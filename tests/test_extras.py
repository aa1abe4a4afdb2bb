"""The core (library + CLI) imports without the optional extras; a missing extra is named."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mtlib.extras import MissingExtraError, require

OPTIONAL = ("matplotlib", "papermill", "ipywidgets", "IPython", "librosa", "s3fs", "nbformat")


def test_core_modules_import_no_optional_package():
    code = (
        "import sys\n"
        "import mtlib.cli, mtlib.plan, mtlib.run.generation, mtlib.inspect.compare, mtlib.weights, "
        "mtlib.media.audio, mtlib.media.image, mtlib.media.video, mtlib.run.notebooks, "
        "mtlib.inspect.widgets, mtlib.cli.plan, mtlib.cli.generate, mtlib.cli.compare, mtlib.cli.setup\n"
        f"print(sorted(m for m in {OPTIONAL!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_missing_extra_names_the_extra():
    with pytest.raises(MissingExtraError) as e:
        require("mtlib_no_such_package.sub", "notebooks", "the frame plot")
    assert str(e.value) == (
        "the frame plot needs the package 'mtlib_no_such_package', which is not installed. "
        "Fix: pip install 'mtlib[notebooks]' (or pip install mtlib_no_such_package)."
    )


def test_mtlib_run_without_papermill_names_the_notebooks_extra(tmp_path):
    """papermill blocked (as if not installed): `mtlib run` says which extra to install."""
    code = (
        "import sys\nsys.modules['papermill'] = None\n"
        "from mtlib.run.notebooks import run_notebooks\n"
        f"try:\n    run_notebooks('tiny', runs_dir={str(tmp_path)!r})\n"
        "except ImportError as e:\n    print(type(e).__name__, e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == (
        "MissingExtraError mtlib run (the notebooks, headless) needs the package 'papermill', "
        "which is not installed. Fix: pip install 'mtlib[notebooks]' (or pip install papermill)."
    )
