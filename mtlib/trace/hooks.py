"""Per-module outputs recorded through forward hooks (`hook_modules`)."""

from __future__ import annotations

import fnmatch
from typing import Any

from mtlib.trace.points import _state, point


class ModuleHooks:
    """Handles of the forward hooks set by `hook_modules`; `remove()` or use as a context."""

    def __init__(self, handles: list, names: list[str]):
        self.handles = handles
        self.names = names

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def __enter__(self) -> ModuleHooks:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def hook_modules(
    model: Any, prefix: str, patterns: tuple[str, ...] | list[str] = ("*",)
) -> ModuleHooks:
    """Record the output of every submodule of `model` whose qualified name matches a glob.

    The point name is `prefix + qualified name` (`hook_modules(dit, "dit.", ["blocks.*"])`
    records `dit.blocks.0`, ...); a tuple / list output records each tensor as `<name>.<k>`,
    a dict output as `<name>.<key>`. A module that runs several times per run (one DiT call
    per pass and step) records the same name again: TraceWriter stores the repeats as
    `<name>#1`, `<name>#2`, ... with the call number in the index. Costs nothing while no
    recorder is active."""
    if prefix and not prefix.endswith("."):
        prefix += "."
    handles, names = [], []
    for qualname, module in model.named_modules():
        if not qualname or not any(fnmatch.fnmatchcase(qualname, p) for p in patterns):
            continue
        point_name = prefix + qualname

        def hook(_module, _inputs, output, _name=point_name):
            if not _state.recorders:
                return None
            if isinstance(output, tuple | list):
                for k, item in enumerate(output):
                    if hasattr(item, "detach"):
                        point(f"{_name}.{k}", item)
            elif isinstance(output, dict):
                for k, item in output.items():
                    if hasattr(item, "detach"):
                        point(f"{_name}.{k}", item)
            else:
                point(_name, output)
            return None

        handles.append(module.register_forward_hook(hook))
        names.append(point_name)
    return ModuleHooks(handles, names)
