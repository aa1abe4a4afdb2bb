"""The import layers of mtlib (docs/architecture.md): imports point down, packages form no cycle.

Every module under mtlib/ is parsed with `ast`; every import counts, at the top of a module, in
a function or under `if TYPE_CHECKING:` (a function-level import is still a dependency, only a
later one). A module belongs to the layer of the longest prefix in LAYERS that names it. An
import of a module of a HIGHER layer fails, naming the module, the line, the import and the
rule; so does a cycle between the packages of one layer (`mtlib.X` units). The checker is
tested on synthetic violations too, so this test can fail.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "mtlib"

# Bottom to top. A module may import its own layer and the layers below it, never above.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "base",
        (
            "mtlib",
            "mtlib.io",
            "mtlib.frames",
            "mtlib.buckets",
            "mtlib.spec",
            "mtlib.extras",
            "mtlib.filehash",
            "mtlib.finite",
            "mtlib.env",
            "mtlib._moved",
        ),
    ),
    ("config", ("mtlib.config",)),
    # reading traces, and the archives of traces made with the official code
    ("trace", ("mtlib.trace", "mtlib.reference.archive")),
    ("kernels", ("mtlib.kernels",)),
    ("models", ("mtlib.models",)),
    ("weights", ("mtlib.weights",)),
    ("accel", ("mtlib.accel", "mtlib.parallel.launch", "mtlib.parallel.sequence")),
    ("media", ("mtlib.media",)),
    ("plan", ("mtlib.plan",)),
    ("run", ("mtlib.run", "mtlib.parallel", "mtlib.reference.noise")),
    # whole workflows over runs: the official code's bridge, batches of jobs; official_args
    # is the argparse spec of the official script (a parser of ITS command line, not mtlib's)
    ("workflows", ("mtlib.reference", "mtlib.batch", "mtlib.cli.official_args")),
    ("inspect", ("mtlib.inspect",)),
    ("cli", ("mtlib.cli", "mtlib.__main__", "mtlib.reference.__main__")),
    # the old module names, kept as re-exports for users; nothing in mtlib may import them
    (
        "shims",
        ("mtlib.shapes", "mtlib.generation", "mtlib.pipeline", "mtlib.compare", "mtlib.widgets"),
    ),
]
# Modules that count as part of another package in the cycle check: the official code's noise
# draws are one of the loop's noise sources (generation.noise), kept beside the rest of the
# official-code bridge; the loop picks them and they implement its NoiseSource.
UNITS = {"mtlib.reference.noise": "mtlib.run"}
LAYER_INDEX = {name: i for i, (name, _) in enumerate(LAYERS)}
PREFIXES = sorted(((p, name) for name, ps in LAYERS for p in ps), key=lambda x: -len(x[0]))


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> tuple[str, str]:
    """(layer, the LAYERS prefix that placed it) for a module name of mtlib."""
    for prefix, name in PREFIXES:
        # `mtlib` (the root __init__) is a module of its own, not a prefix of every module
        if module == prefix or (prefix != "mtlib" and module.startswith(prefix + ".")):
            return name, prefix
    raise AssertionError(
        f"{module}: no layer in tests/test_layers.py LAYERS names it; add it there"
    )


def unit_of(module: str) -> str:
    """The package a module counts for in the cycle check: the LAYERS prefix that placed it
    (or its UNITS entry)."""
    prefix = layer_of(module)[1]
    return UNITS.get(prefix, prefix)


def imports_of(
    source: str, module: str, is_package: bool, known: set[str]
) -> list[tuple[int, str]]:
    """(line, imported mtlib module) for every import in `source`, wherever it sits."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "mtlib"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "mtlib":
                continue
            for a in node.names:  # `from mtlib.x import y`: y may be a module itself
                sub = f"{target}.{a.name}"
                out.append((node.lineno, sub if sub in known else target))
    return out


def violations(sources: dict[str, tuple[str, bool]]) -> list[str]:
    """Messages for every upward import and every package cycle within a layer.
    `sources`: module name -> (source text, is a package __init__)."""
    known = set(sources)
    problems = []
    edges: dict[str, set[str]] = {}
    for module, (source, is_pkg) in sorted(sources.items()):
        layer, _ = layer_of(module)
        for line, target in imports_of(source, module, is_pkg, known):
            t_layer, _ = layer_of(target)
            if LAYER_INDEX[t_layer] > LAYER_INDEX[layer]:
                problems.append(
                    f"{module} (layer {layer}) line {line} imports {target} (layer {t_layer}): "
                    f"a layer imports only itself and the layers below it "
                    f"({' < '.join(n for n, _ in LAYERS)})"
                )
            a, b = unit_of(module), unit_of(target)
            if a != b:
                edges.setdefault(a, set()).add(b)
    problems += [
        f"package cycle {' -> '.join(c)}: packages import each other (move the shared part down a layer)"
        for c in _cycles(edges)
    ]
    return problems


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one package (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(_path_back(sorted(comp)[0], set(comp), edges))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def _path_back(start: str, comp: set[str], edges: dict[str, set[str]]) -> list[str]:
    """The shortest import path from `start` back to itself inside its component."""
    paths = {w: [start, w] for w in sorted(edges.get(start, ())) if w in comp}
    queue = list(paths)
    while queue:
        v = queue.pop(0)
        if v == start:
            return paths[v]
        for w in sorted(edges.get(v, ())):
            if w in comp and w not in paths:
                paths[w] = paths[v] + [w]
                queue.append(w)
    return [start, start]


def mtlib_sources() -> dict[str, tuple[str, bool]]:
    return {
        module_name(p, PKG): (p.read_text(), p.name == "__init__.py")
        for p in sorted(PKG.rglob("*.py"))
    }


def test_imports_point_down_and_packages_form_no_cycle():
    problems = violations(mtlib_sources())
    assert not problems, "import layer violations:\n" + "\n".join(problems)


def test_every_module_has_a_layer():
    for module in mtlib_sources():
        layer_of(module)  # raises, naming the module, when LAYERS misses it


def test_argparse_lives_in_the_cli_package_only():
    users = sorted(
        f"{module} line {line}"
        for module, (source, is_pkg) in mtlib_sources().items()
        if module != "mtlib.cli" and not module.startswith("mtlib.cli.")
        for line, name in _plain_imports(source)
        if name == "argparse"
    )
    assert users == [], (
        "argparse outside mtlib/cli/ (move the command to mtlib/cli/<cmd>.py): " + ", ".join(users)
    )


def test_every_command_is_a_cli_module():
    from mtlib.cli import COMMANDS

    assert {
        name: module
        for name, (module, _) in COMMANDS.items()
        if not module.startswith("mtlib.cli.")
    } == {}


def _plain_imports(source: str) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.append((node.lineno, node.module.split(".")[0]))
    return out


# ------------------------------------------------------------------ the checker itself


def _fake(**modules: str) -> dict[str, tuple[str, bool]]:
    return {name.replace("__", "."): (src, False) for name, src in modules.items()}


def test_checker_flags_an_upward_import_at_any_depth():
    fake = _fake(
        mtlib__models__dit="def f():\n    from mtlib.run.loop import generate\n",
        mtlib__run__loop="from mtlib.models import dit\n",
    )
    assert violations(fake) == [
        "mtlib.models.dit (layer models) line 2 imports mtlib.run.loop (layer run): a layer imports "
        "only itself and the layers below it (" + " < ".join(n for n, _ in LAYERS) + ")",
        "package cycle mtlib.models -> mtlib.run -> mtlib.models: packages import each other "
        "(move the shared part down a layer)",
    ]


def test_checker_flags_a_cycle_within_a_layer_and_resolves_from_imports():
    fake = _fake(
        mtlib__io="from mtlib import frames\n",  # `from mtlib import frames`: the module mtlib.frames
        mtlib__frames="import mtlib.io\n",
    )
    assert violations(fake) == [
        "package cycle mtlib.frames -> mtlib.io -> mtlib.frames: packages import each other "
        "(move the shared part down a layer)"
    ]


def test_checker_flags_a_shim_imported_by_the_library():
    fake = _fake(
        mtlib__cli__plan="from mtlib.shapes import plan\n",
        mtlib__shapes="from mtlib.plan import plan\n",
        mtlib__plan="x = 1\n",
    )
    (msg,) = violations(fake)
    assert msg.startswith("mtlib.cli.plan (layer cli) line 1 imports mtlib.shapes (layer shims)")


def test_checker_accepts_downward_imports():
    fake = _fake(
        mtlib__run__loop="from mtlib.plan import plan\nfrom mtlib import trace\n",
        mtlib__plan="",
        mtlib__trace="",
    )
    assert violations(fake) == []


@pytest.mark.parametrize("module", ["mtlib.nosuch", "mtlib.nosuch.deeper"])
def test_a_module_without_a_layer_is_named(module):
    with pytest.raises(
        AssertionError, match=f"^{module}: no layer in tests/test_layers.py LAYERS names it"
    ):
        layer_of(module)


@pytest.mark.parametrize(
    ("old", "name", "new"),
    [
        ("mtlib.shapes", "plan", "mtlib.plan.planner"),
        ("mtlib.shapes", "PlanInputs", "mtlib.plan.records"),
        ("mtlib.generation", "generate_video", "mtlib.run.generation"),
        ("mtlib.generation", "load_models", "mtlib.run.load"),
        ("mtlib.pipeline", "generate", "mtlib.run.loop"),
        ("mtlib.pipeline", "SeededNoise", "mtlib.run.noise"),
        ("mtlib.compare", "compare", "mtlib.inspect.compare.report"),
        ("mtlib.compare", "replay", "mtlib.inspect.compare.stages"),
        ("mtlib.widgets", "plan_view", "mtlib.inspect.widgets.plan"),
        ("mtlib.trace", "TraceWriter", "mtlib.trace.writer"),
        ("mtlib.weights", "verify_layout", "mtlib.weights.verify"),
        ("mtlib.models.dit", "load_dit", "mtlib.models.dit.load"),
    ],
)
def test_old_public_names_are_the_new_objects(old, name, new):
    """The old module names users call stay importable, as the very objects of their new home."""
    import importlib

    assert getattr(importlib.import_module(old), name) is getattr(
        importlib.import_module(new), name
    )
