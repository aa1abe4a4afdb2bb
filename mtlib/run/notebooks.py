"""Headless runs of the notebooks: `mtlib run` = papermill over notebooks/ into runs/<id>/.

A run directory holds everything needed to understand the run later:

    runs/<YYYYmmdd-HHMMSS>-<name>/
      config.yaml        the resolved RunConfig (preset/file + overrides)
      env.json           mtlib.env.environment_report()
      run.log            papermill's log, cell outputs included
      00_setup.ipynb ... the EXECUTED notebooks (the sources in notebooks/ are never written)
      summary.txt        one line per notebook headline (written by the notebooks, `note()`)
      ...                artefacts the notebooks write (plan.json, video.mp4, trace/, ...)

Every notebook gets two parameters injected: `config` (path of config.yaml) and `run_dir`.
A failing cell stops the run; the executed notebook is kept and the command exits 1 naming
the notebook, the cell and the error. A missing kernelspec falls back to the current
interpreter's kernel.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from mtlib.config import dump_config, load_config
from mtlib.extras import require
from mtlib.io import atomic_write, project_root

NOTEBOOKS = (
    "00_setup",
    "01_preprocessing",
    "02_shape_inspection",
    "03_inference",
    "04_compare",
    "05_reference",
    "06_batch",
)
# 05_reference captures the official run only with an official checkout (--official-dir);
# without one it runs its demo reference and says so in summary.txt


class RunError(RuntimeError):
    """A notebook failed: names the notebook, the cell and the error."""


@dataclass
class RunResult:
    run_dir: Path
    executed: list[Path] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    failed: str | None = None


@contextlib.contextmanager
def _stderr_to(path: Path):
    """Send this process's fd 2 (inherited by the kernels) to `path` for the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as f:
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _describe_cell(executed: Path, index: int) -> str:
    """'cell N (first line)' for the cell that raised, N counted 1-based in the SOURCE
    notebook (papermill's injected-parameters and error-banner cells are not counted)."""
    import nbformat

    added = ("injected-parameters", "papermill-error-cell-tag")
    try:
        cells = [
            c
            for c in nbformat.read(executed, as_version=4).cells
            if not any(t in c.metadata.get("tags", []) for t in added)
        ]
        for n, cell in enumerate(cells, 1):
            if any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
                first = (cell.source.strip().splitlines() or [""])[0]
                return f"cell {n} (`{first[:60]}`)"
    except Exception:  # unreadable executed notebook: fall back to papermill's index
        pass
    return f"cell index {index}"


def new_run_dir(name: str, runs_dir: str | Path | None = None) -> Path:
    runs = Path(runs_dir) if runs_dir else project_root() / "runs"
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in name) or "run"
    base = runs / f"{stamp}-{safe}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = Path(f"{base}-{i}")
    path.mkdir(parents=True)
    return path


def note(run_dir: str | Path | None, text: str) -> None:
    """Append one headline line to <run_dir>/summary.txt (no-op without a run dir)."""
    if not run_dir:
        return
    path = Path(run_dir) / "summary.txt"
    old = path.read_text() if path.exists() else ""
    atomic_write(path, old + text.rstrip() + "\n")


def select_notebooks(notebook_dir: Path, only: str | None) -> list[Path]:
    found = sorted(notebook_dir.glob("[0-9][0-9]_*.ipynb"))
    if only:
        wanted = [w.strip() for w in only.split(",") if w.strip()]
        unknown = [w for w in wanted if not any(p.name.startswith(w) for p in found)]
        if unknown:
            names = ", ".join(p.stem for p in found)
            raise ValueError(
                f"--only {only!r}: no notebook starts with {', '.join(unknown)}; have {names}."
            )
        found = [p for p in found if any(p.name.startswith(w) for w in wanted)]
    return found


def resolve_kernel(requested: str | None, notebook: Path) -> str:
    """`requested`, else the notebook's own kernelspec, if installed; else the current
    interpreter's kernel ("python3": jupyter_client maps it to sys.executable)."""
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager

    installed = set(KernelSpecManager().find_kernel_specs())
    name = requested or nbformat.read(notebook, as_version=4).metadata.get("kernelspec", {}).get(
        "name"
    )
    if name and name in installed:
        return name
    return "python3"


def run_notebooks(
    config: str | Path = "tiny",
    overrides: list[str] | None = None,
    only: str | None = None,
    kernel: str | None = None,
    notebook_dir: str | Path | None = None,
    runs_dir: str | Path | None = None,
    verbose: bool = True,
    notebook_parameters: dict[str, dict] | None = None,
) -> RunResult:
    pm = require("papermill", "notebooks", "mtlib run (the notebooks, headless)")

    from mtlib.env import write_report

    cfg = load_config(config, overrides)  # ConfigError before anything is created
    notebook_dir = Path(notebook_dir) if notebook_dir else project_root() / "notebooks"
    notebooks = select_notebooks(notebook_dir, only)
    run_dir = new_run_dir(cfg.name, runs_dir)
    result = RunResult(run_dir)
    atomic_write(run_dir / "config.yaml", dump_config(cfg))
    write_report(run_dir / "env.json")

    handler = logging.FileHandler(run_dir / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    pm_logger = logging.getLogger("papermill")
    pm_logger.addHandler(handler)
    pm_logger.setLevel(logging.INFO)
    say = print if verbose else (lambda *a, **k: None)
    say(f"mtlib run: {len(notebooks)} notebook(s), config {cfg.name!r} -> {run_dir}")
    try:
        for i, nb in enumerate(notebooks, 1):
            out = run_dir / nb.name
            t0 = time.perf_counter()
            say(f"[{i}/{len(notebooks)}] {nb.stem} ...", end="", flush=True)
            try:
                with _stderr_to(run_dir / "kernel.log"):  # kernel chatter off the console
                    pm.execute_notebook(
                        str(nb),
                        str(out),
                        parameters={
                            "config": str(run_dir / "config.yaml"),
                            "run_dir": str(run_dir),
                            **(notebook_parameters or {}).get(nb.stem, {}),
                        },
                        kernel_name=resolve_kernel(kernel, nb),
                        cwd=str(project_root()),
                        progress_bar=False,
                        log_output=True,
                    )
            except pm.PapermillExecutionError as e:
                result.failed = nb.stem
                result.executed.append(out)
                say(" FAILED")
                raise RunError(
                    f"notebook {nb.name}, {_describe_cell(out, e.cell_index)} "
                    f"raised {e.ename}: {e.evalue}\nexecuted notebook kept at {out}"
                ) from None
            result.executed.append(out)
            result.seconds[nb.stem] = time.perf_counter() - t0
            say(f" ok ({result.seconds[nb.stem]:.1f} s)")
    finally:
        pm_logger.removeHandler(handler)
        handler.close()
    return result


def describe_run(result: RunResult) -> str:
    lines = [f"results: {result.run_dir}"]
    summary = result.run_dir / "summary.txt"
    if summary.exists():
        lines += ["what they show:"] + [f"  {ln}" for ln in summary.read_text().splitlines()]
    artefacts = sorted(p for p in result.run_dir.rglob("*") if p.is_file() and p.suffix != ".ipynb")
    lines.append("artefacts:")
    for p in artefacts[:40]:
        lines.append(f"  {p.relative_to(result.run_dir)}  ({p.stat().st_size / 1024:.0f} KiB)")
    if len(artefacts) > 40:
        lines.append(f"  ... and {len(artefacts) - 40} more")
    lines.append("executed notebooks: " + ", ".join(p.name for p in result.executed))
    return "\n".join(lines)


@dataclass
class NotebookContext:
    """What a notebook needs after its parameters cell: the config and where to write."""

    config: object
    run_dir: Path
    headless: bool


def notebook_context(
    config: str = "tiny", run_dir: str = "", notebook: str = "notebook"
) -> NotebookContext:
    """Resolve a notebook's `config` / `run_dir` parameters.

    Under `mtlib run` both are injected (the run's config.yaml and directory). Run by hand or
    by nbval, `run_dir` is empty: artefacts then go to runs/_scratch/<notebook>/ (git-ignored).
    """
    import os

    cfg = load_config(
        config
    )  # a preset name or a YAML path (relative paths: cwd, else project root)
    path = Path(run_dir) if run_dir else project_root() / "runs" / "_scratch" / notebook
    path.mkdir(parents=True, exist_ok=True)
    headless = "PAPERMILL_EXECUTION" in os.environ or not sys.stdout.isatty()
    return NotebookContext(cfg, path, headless)
