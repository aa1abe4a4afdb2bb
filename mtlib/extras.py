"""Optional dependencies: one clear error naming the extra that provides a missing package.

The core (library + CLI: plan, generate, compare, setup) needs none of them. The notebooks
(`mtlib run`), the widgets and the plots need mtlib's `notebooks` extra; s3:// paths need
`s3`. `require("papermill", "notebooks", "mtlib run")` returns the module or raises
MissingExtraError (an ImportError) that says what to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtraError(ImportError):
    """An optional package is missing; the message names the pip extra that brings it."""


def require(module: str, extra: str, what: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        top = module.split(".")[0]
        if e.name is not None and e.name.split(".")[0] != top:
            raise  # a broken install of the package itself, not a missing extra
        raise MissingExtraError(
            f"{what} needs the package {top!r}, which is not installed. Fix: "
            f"pip install 'mtlib[{extra}]' (or pip install {top}).",
            name=top,
        ) from e


def pyplot(what: str) -> ModuleType:
    """matplotlib.pyplot (the `notebooks` extra; `what` names the caller in the error), on the
    Agg backend when nothing can show a figure: no notebook kernel, no DISPLAY and no
    MPLBACKEND chosen by the user."""
    import os
    import sys

    matplotlib = require("matplotlib", "notebooks", what)
    if (
        "ipykernel" not in sys.modules
        and not os.environ.get("DISPLAY")
        and not os.environ.get("MPLBACKEND")
    ):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
