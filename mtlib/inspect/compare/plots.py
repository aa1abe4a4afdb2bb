"""Plots of a comparison (matplotlib imported on use; Agg when there is no display): error along
the pipeline, per step, and a difference heatmap of one point.
"""

from __future__ import annotations

import base64
import io
import math
import re
from typing import TYPE_CHECKING, Any

from mtlib.extras import pyplot
from mtlib.trace import Trace

if TYPE_CHECKING:
    from mtlib.inspect.compare.report import Comparison  # annotations only (report imports plots)

_STEP_RE = re.compile(r"^(.*?step(\d+))\.(.+)$")


def _png_b64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    pyplot("the comparison plot").close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


_FLOOR = 1e-12  # where log-scale plots put exact agreement


def plot_error_along_pipeline(cmp: Comparison, ax=None):
    """rel L2 per point in execution order (log scale); failing points red, the first
    divergence marked; stats-only points hollow (their value is the stats difference)."""
    plt = pyplot("the comparison plot")
    fig = (
        ax.figure
        if ax is not None
        else plt.figure(figsize=(max(6.0, min(18.0, 0.25 * len(cmp.compared) + 4)), 4))
    )
    ax = ax if ax is not None else fig.add_subplot(1, 1, 1)
    rows = cmp.compared
    xs = list(range(len(rows)))
    ys = [
        max(_FLOOR, r.error) if r.error is not None and math.isfinite(r.error) else None
        for r in rows
    ]
    top = max([y for y in ys if y is not None] + [1.0])
    ys = [y if y is not None else top * 10 for y in ys]  # NaN / Inf / mismatches: pinned on top
    colors = ["tab:red" if r.failed else "tab:blue" for r in rows]
    solid = [i for i, r in enumerate(rows) if r.mode not in ("stats",)]
    hollow = [i for i, r in enumerate(rows) if r.mode == "stats"]
    ax.plot(xs, ys, color="0.7", lw=0.8, zorder=1)
    ax.scatter(
        [xs[i] for i in solid], [ys[i] for i in solid], c=[colors[i] for i in solid], s=18, zorder=2
    )
    if hollow:
        ax.scatter(
            [xs[i] for i in hollow],
            [ys[i] for i in hollow],
            facecolors="none",
            edgecolors=[colors[i] for i in hollow],
            s=24,
            zorder=2,
            label="stats only",
        )
        ax.legend(loc="upper left", fontsize=8)
    fd = cmp.first_divergence
    if fd is not None:
        i = [r.name for r in rows].index(fd)
        ax.axvline(i, color="tab:red", ls="--", lw=1)
        ax.annotate(
            f"first divergence: {fd}",
            (i, ys[i]),
            textcoords="offset points",
            xytext=(4, 6),
            fontsize=8,
            color="tab:red",
        )
    ax.set_yscale("log")
    ax.set_ylabel(f"rel L2  ||a-b|| / ||b||  (exact: {_FLOOR:g})")
    ax.set_xlabel("trace point (execution order)")
    if len(rows) <= 60:
        ax.set_xticks(xs)
        ax.set_xticklabels([r.name for r in rows], rotation=90, fontsize=6)
    ax.set_title("Error along the pipeline")
    ax.grid(True, which="major", axis="y", alpha=0.3)
    return fig


def plot_error_per_step(cmp: Comparison, ax=None):
    """rel L2 of each kind of per-step point (`...step<i>.<kind>`) against the step, one line
    per kind; clips in streaming runs follow each other on the x axis."""
    plt = pyplot("the comparison plot")
    fig = ax.figure if ax is not None else plt.figure(figsize=(7, 4))
    ax = ax if ax is not None else fig.add_subplot(1, 1, 1)
    steps: list[str] = []
    series: dict[str, dict[str, float]] = {}
    for r in cmp.compared:
        m = _STEP_RE.match(r.name)
        if not m or r.error is None:
            continue
        step, kind = m.group(1), m.group(3)
        if step not in steps:
            steps.append(step)
        err = r.error if math.isfinite(r.error) else math.nan
        series.setdefault(kind, {})[step] = max(_FLOOR, err)
    for kind, vals in series.items():
        xs = [i for i, s in enumerate(steps) if s in vals]
        ax.plot(xs, [vals[steps[i]] for i in xs], marker="o", label=kind)
    ax.set_xticks(range(len(steps)))
    ax.set_xticklabels(
        [s.rsplit(".", 1)[-1] if s.count("clip") == 0 else s.split(".", 1)[-1] for s in steps],
        rotation=45,
        fontsize=7,
    )
    ax.set_yscale("log")
    ax.set_ylabel("rel L2")
    ax.set_title("Error per denoising step")
    if series:
        ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)
    return fig


def reduce_to_2d(tensor: Any, index: tuple | None = None) -> Any:
    """A 2-D float view for a heatmap: `tensor[index]` if given, then the mean over leading
    dims until two remain ([C, T, H, W] -> [H, W]); 1-D becomes one row."""
    import torch

    t = tensor.detach().to("cpu", torch.float64)
    if index is not None:
        t = t[index]
    while t.dim() > 2:
        t = t.mean(dim=0)
    if t.dim() < 2:
        t = t.reshape(1, -1)
    return t


def plot_difference_heatmap(
    a: Trace, b: Trace, name: str, index: tuple | None = None, name_b: str | None = None
):
    """A, B and A - B of one point side by side (reduced to 2-D by `reduce_to_2d`)."""
    plt = pyplot("the comparison plot")
    ta = reduce_to_2d(a.tensor(name), index)
    tb = reduce_to_2d(b.tensor(name_b or name), index)
    d = ta - tb
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    lim = max(float(ta.abs().max()), float(tb.abs().max()), 1e-12)
    dlim = max(float(d.abs().max()), 1e-12)
    for ax, img, title, vmax, cmap in (
        (axes[0], ta, "A", lim, "viridis"),
        (axes[1], tb, "B (reference)", lim, "viridis"),
        (axes[2], d, f"A - B (max {dlim:.3g})", dlim, "RdBu_r"),
    ):
        im = ax.imshow(
            img.numpy(), aspect="auto", cmap=cmap, vmin=-vmax, vmax=vmax, interpolation="nearest"
        )
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    shape = list(a.stats(name)["shape"])
    how = [f"[{index}]"] if index is not None else []
    if len(shape) - (len(index) if index is not None else 0) > 2:
        how.append("mean over leading dims")
    fig.suptitle(f"{name} {shape}" + (f"  ({', then '.join(how)})" if how else ""), fontsize=9)
    return fig
