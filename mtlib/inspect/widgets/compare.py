"""Notebook 04's view: comparison table, error plot, heatmap of two runs (`compare_view`)."""

from __future__ import annotations

import html
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mtlib.extras import require
from mtlib.inspect.widgets.preprocessing import _local
from mtlib.inspect.widgets.view import RenderedView, View, is_interactive
from mtlib.io import InputError


def _run_dirs(root: str | os.PathLike = "runs") -> list[str]:
    base = Path(_local(str(root)))
    if not base.is_dir():
        return []
    return sorted(
        str(p)
        for p in base.iterdir()
        if p.is_dir() and ((p / "trace").is_dir() or (p / "index.jsonl").exists())
    )


def _comparison(state: dict):
    key = (state["run_a"], state["run_b"])
    cache = state.setdefault("_cache", {})
    if key not in cache:
        comparer = state.get("comparer")
        if comparer is None:
            from mtlib.inspect.compare import compare as comparer
        cache.clear()
        cache[key] = comparer(_local(state["run_a"]), _local(state["run_b"]))
    return cache[key]


def render_compare(state: dict) -> RenderedView:
    """04: comparison table, error along the pipeline, and the difference heatmap of `point`
    (default: the first divergence, else the last point compared as tensors)."""
    if not state["run_a"] or not state["run_b"]:
        raise InputError("compare: pick two runs (trace directories or run directories).")
    cmp = _comparison(state)
    names = [r.name for r in cmp.rows]
    point = state.get("point") or ""
    if not point:
        fd = cmp.first_divergence
        tensor_rows = [r.name for r in cmp.compared if getattr(r, "mode", "tensor") == "tensor"]
        point = fd if fd in tensor_rows else (tensor_rows[-1] if tensor_rows else "")
    figures = [cmp.plot_pipeline()]
    note = ""
    if point:
        try:
            figures.append(cmp.plot_heatmap(point))
        except (KeyError, ValueError) as e:
            note = f"no heatmap for {point!r}: {e}"
    text = cmp.summary() + "\n\n" + cmp.table()
    if note:
        text += "\n" + note
    html_table = cmp._repr_html_() if hasattr(cmp, "_repr_html_") else None
    page = None
    if html_table:
        page = (
            f"<div style='font-family:sans-serif'><b>{html.escape(cmp.summary())}</b>"
            f"{'<br>' + html.escape(note) if note else ''}"
            f"<div style='max-height:320px;overflow:auto'>{html_table}</div></div>"
        )
    data = {
        "summary": cmp.summary(),
        "first_divergence": cmp.first_divergence,
        "point": point,
        "points": names,
        "failures": [r.name for r in cmp.failures],
    }
    return RenderedView("04 compare", text=text, html=page, figures=figures, data=data)


def compare_view(
    run_a: str | os.PathLike = "",
    run_b: str | os.PathLike = "",
    point: str | None = None,
    runs_dir: str | os.PathLike = "runs",
    comparer: Callable | None = None,
    comparison: Any = None,
    interactive: bool | None = None,
) -> View:
    """04: compare trace A with the reference B (run dirs, trace dirs or golden cases, as
    mtlib.inspect.compare.load_trace reads them). `comparison`: an mtlib.inspect.compare.Comparison of this
    very pair already computed (not computed again). `comparer(a, b)` replaces
    mtlib.inspect.compare.compare. Interactive: two combo boxes listing run dirs under `runs_dir`
    (free text allowed) and a dropdown of the compared points."""
    # "_cache" is shared by the shallow state copies each render gets: one compare per pair
    state = {
        "run_a": str(run_a),
        "run_b": str(run_b),
        "point": point or "",
        "comparer": comparer,
        "_cache": {},
    }
    if comparison is not None:
        state["_cache"][(state["run_a"], state["run_b"])] = comparison
    choices = _run_dirs(runs_dir)

    def controls() -> dict:
        w = require("ipywidgets", "notebooks", "mtlib.inspect.widgets")

        lay = {"style": {"description_width": "90px"}, "layout": w.Layout(width="720px")}
        return {
            "run_a": lambda: w.Combobox(
                options=choices,
                description="run A",
                ensure_option=False,
                continuous_update=False,
                **lay,
            ),
            "run_b": lambda: w.Combobox(
                options=choices,
                description="run B (ref)",
                ensure_option=False,
                continuous_update=False,
                **lay,
            ),
        }

    def point_picker(view: View) -> None:
        w = require("ipywidgets", "notebooks", "mtlib.inspect.widgets")

        names = view.rendered.data.get("points", [])
        opts = [("(first divergence)", "")] + [(n, n) for n in names]
        if not view.extra_box.children:
            dd = w.Dropdown(
                options=opts,
                value="",
                description="point",
                layout=w.Layout(width="720px"),
                style={"description_width": "90px"},
            )
            dd.observe(view._changed("point"), names="value")
            view.controls["point"] = dd
            view.extra_box.children = (dd,)
        dd = view.controls["point"]
        if [o[1] for o in dd.options] != [o[1] for o in opts]:
            keep = view.state.get("point", "")
            with view.quiet():
                dd.options = opts
                dd.value = keep if keep in names else ""

    return View(
        "04 compare",
        render_compare,
        state,
        controls() if is_interactive(interactive) else None,
        interactive,
        after_render=point_picker,
    )
