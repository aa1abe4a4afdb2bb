"""Old module names from before the package layout (docs/architecture.md, "Move map").

`import mtlib.audio` (and the like) still works: it warns once with a DeprecationWarning naming
the new home and gives the very module object of that home, so every name in it is the same
object. The table is the one place these aliases live; nothing in mtlib imports an old name.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

# old name -> new home (the modules that moved whole; split modules keep re-export shims:
# mtlib.shapes, mtlib.generation, mtlib.pipeline, mtlib.compare, mtlib.widgets)
MOVED = {
    "mtlib.audio": "mtlib.media.audio",
    "mtlib.image": "mtlib.media.image",
    "mtlib.video": "mtlib.media.video",
    "mtlib.probe": "mtlib.media.probe",
    "mtlib.sampling": "mtlib.run.sampling",
    "mtlib.color": "mtlib.run.color",
    "mtlib.runner": "mtlib.run.notebooks",
    "mtlib.guards": "mtlib.plan.guards",
    "mtlib.shapecheck": "mtlib.inspect.shapecheck",
    "mtlib.fp8": "mtlib.accel.fp8",
    "mtlib.offload": "mtlib.accel.offload",
    "mtlib.quant": "mtlib.accel.quant",
    "mtlib.dit_load": "mtlib.accel.dit_load",
    "mtlib.runopts": "mtlib.accel.options",
    "mtlib.bench": "mtlib.accel.bench",
    "mtlib.lora": "mtlib.weights.lora",
    "mtlib.recipes": "mtlib.weights.recipes",
    "mtlib.datacheck": "mtlib.weights.datacheck",
    "mtlib.random_weights": "mtlib.weights.random",
    "mtlib.setup_extras": "mtlib.weights.recipe_files",
    "mtlib.models.tiny": "mtlib.weights.tiny",
    "mtlib.parallel.layout": "mtlib.plan.parallel",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old name and loads it as its new home's module object."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        new = MOVED[spec.name]
        warnings.warn(
            f"{spec.name} moved to {new}; import it from there (the old name will go)",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(new)

    def exec_module(self, module):  # the new home is already imported
        pass


def install() -> None:
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())
