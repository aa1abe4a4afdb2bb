"""Compare two traces tensor by tensor and find where they part: `mtlib compare A B`.

Sits after mtlib.trace in the flow: `load_trace` gives two uniform views (an mtlib trace
directory, a run directory, a golden case or a golden directory), `compare` walks the
points in EXECUTION ORDER (trace A's order, then points only B has) and measures, per point,

    max_abs = max|a - b|, rel_l2 = ||a - b|| / ||b||, cosine(a, b), NaN / Inf counts,

then applies the golden README's acceptance rule with dtype-aware defaults:

    pass  <=>  max|a - b| <= tol * max(1, max|b|)        (B is the reference)

tol: float64 / float32 1e-4, float16 1e-3, bfloat16 2e-2 (the looser of the two sides);
integer and bool tensors must be equal. `e2e.*` points get at least 1e-3 (golden README §5:
three sampling steps amplify differences ~20x). Glob overrides (`{"vae.*": 1e-3}`) replace
these; the last matching pattern wins. Shapes or dtype kinds (float vs int vs bool) that
differ are reported as mismatches, never raised. When one side holds only statistics
(trace level "stats"), equal content hashes prove identity (`hash`, pass); otherwise the row
can never pass, because statistics do not prove two tensors close (colour correction makes
the statistics of different videos equal): it says `differs (stats only)` (failing) when
mean / std / absmax or the NaN / Inf counts are outside the bound, else `unverified (stats
only)`, and the comparison as a whole does not pass. Record the tensors (trace.full) to
decide. A trace whose recording did not complete (status "recording": the run was killed;
"failed: ...") is refused by `mtlib compare` unless --allow-incomplete; `incomplete` names it.

`first_divergence` is the first failing point in execution order: everything before it
agrees, so the cause sits between it and its predecessor. `replay` separates a difference
made by one stage locally from one carried in from upstream: it re-runs the stage here on
the inputs recorded in trace A and compares with A's outputs. `STAGES` names the stages
(clip, t5, vae.encode, vae.decode, the DiT passes dit / dit.drop_text / dit.uncond /
dit.drop_audio, audio.encoder) under their single-stage and their pipeline names;
`register_model_stages(models)` binds them to loaded networks (generation.load_models).
`tiny_pair` makes two tiny generate_video runs that differ in one setting (notebook 04).
"""

from __future__ import annotations

import fnmatch
import html
import io
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mtlib.inspect.compare.diff import PointResult, compare_point
from mtlib.inspect.compare.plots import (
    _STEP_RE,
    _png_b64,
    plot_difference_heatmap,
    plot_error_along_pipeline,
    plot_error_per_step,
)
from mtlib.inspect.compare.tolerances import (
    STATUS_DTYPE,
    STATUS_ONLY_A,
    STATUS_ONLY_B,
    STATUS_SHAPE,
    STATUS_UNVERIFIED,
)
from mtlib.io import atomic_write, atomic_write_url, is_output_url
from mtlib.trace import Trace, load_trace


@dataclass
class Comparison:
    """The result of `compare`: rows in execution order and what they add up to."""

    a: Trace
    b: Trace
    rows: list[PointResult]
    tolerances: dict[str, float] = field(default_factory=dict)

    def __getitem__(self, name: str) -> PointResult:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(name)

    @property
    def compared(self) -> list[PointResult]:
        return [r for r in self.rows if r.status not in (STATUS_ONLY_A, STATUS_ONLY_B)]

    @property
    def failures(self) -> list[PointResult]:
        return [r for r in self.rows if r.failed]

    @property
    def first_divergence(self) -> str | None:
        """Name of the first failing point in execution order (None when all agree)."""
        for r in self.rows:
            if r.failed:
                return r.name
        return None

    @property
    def only_in_a(self) -> list[str]:
        return [r.name for r in self.rows if r.status == STATUS_ONLY_A]

    @property
    def only_in_b(self) -> list[str]:
        return [r.name for r in self.rows if r.status == STATUS_ONLY_B]

    @property
    def unverified(self) -> list[str]:
        """Points whose statistics agree but whose tensors / hashes were not there to prove it."""
        return [r.name for r in self.rows if r.status == STATUS_UNVERIFIED]

    @property
    def incomplete(self) -> list[str]:
        """'A' / 'B' for a side whose recording did not complete (meta status not complete)."""
        return [k for k, t in (("A", self.a), ("B", self.b)) if trace_incomplete(t)]

    @property
    def passed(self) -> bool:
        """Every compared point was checked and passes (at least one), both traces complete."""
        return (bool(self.compared) and not self.failures and not self.unverified
                and not self.incomplete)  # fmt: skip

    def summary(self) -> str:
        n, f, u = len(self.compared), len(self.failures), len(self.unverified)
        head = f"{n} points compared: {n - f - u} pass, {f} fail"
        if u:
            head += f", {u} unverified (stats only)"
        extra = []
        if self.only_in_a:
            extra.append(f"{len(self.only_in_a)} only in A")
        if self.only_in_b:
            extra.append(f"{len(self.only_in_b)} only in B")
        if extra:
            head += " (" + ", ".join(extra) + ")"
        if not n:
            return head + ". Nothing in common: check that both traces name their points alike."
        warn = "".join(
            f" Trace {k} is INCOMPLETE (status {trace_status(t)!r}): its missing points are not compared."
            for k, t in (("A", self.a), ("B", self.b)) if trace_incomplete(t)
        )  # fmt: skip
        fd = self.first_divergence
        if fd is None:
            if u:
                return head + (
                    ". No divergence found, but NOT verified: the unverified points hold "
                    "statistics only (agreeing statistics prove nothing). Record their tensors "
                    "(trace.level full / trace.full) to compare them." + warn
                )
            return head + ". No divergence." + warn
        r = self[fd]
        return head + f". FIRST DIVERGENCE: {fd} ({_describe(r)})" + warn

    # ----- output -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        def clean(v):
            if isinstance(v, float) and not math.isfinite(v):
                return str(v)  # strict JSON has no Infinity / NaN
            return v

        return {
            "a": str(self.a.path or self.a.kind),
            "b": str(self.b.path or self.b.kind),
            "passed": self.passed,
            "first_divergence": self.first_divergence,
            "only_in_a": self.only_in_a,
            "only_in_b": self.only_in_b,
            "counts": {
                "compared": len(self.compared),
                "failed": len(self.failures),
                "unverified": len(self.unverified),
            },
            "incomplete": self.incomplete,
            "tolerances": dict(self.tolerances),
            "points": [{k: clean(v) for k, v in asdict(r).items()} for r in self.rows],
        }

    def rich_table(self, rows: Iterable[PointResult] | None = None):
        from rich.table import Table

        table = Table(
            title=f"A = {self.a.path or self.a.kind}\nB = {self.b.path or self.b.kind}",
            title_justify="left",
        )
        for col, just in (
            ("#", "right"),
            ("point", "left"),
            ("status", "left"),
            ("mode", "left"),
            ("shape", "left"),
            ("dtype", "left"),
            ("max|a-b|", "right"),
            ("bound", "right"),
            ("rel L2", "right"),
            ("cosine", "right"),
            ("note", "left"),
        ):
            table.add_column(col, justify=just, overflow="fold")
        fd = self.first_divergence
        for i, r in enumerate(self.rows if rows is None else rows):
            style = "green" if r.passed else ("red" if r.failed else "yellow")
            status = f"[{style}]{r.status}[/{style}]"
            if r.name == fd:
                status = f"[bold red]>> {r.status}[/bold red]"
            dtype = (
                r.dtype_a
                if r.dtype_a == r.dtype_b or r.dtype_b is None
                else f"{r.dtype_a}/{r.dtype_b}"
            )
            shape = r.shape_a if r.shape_a is not None else r.shape_b
            err = r.max_abs if r.max_abs is not None else r.stat_diff
            table.add_row(
                str(i),
                r.name,
                status,
                r.mode,
                _fmt_shape(shape),
                dtype or "",
                _fmt(err),
                _fmt(r.bound),
                _fmt(r.rel_l2),
                _fmt(r.cosine, cos=True),
                r.note,
            )
        return table

    def table(self, width: int = 160) -> str:
        """The table as plain text (rich layout, no colour codes)."""
        from rich.console import Console

        console = Console(
            width=width, record=True, file=io.StringIO(), color_system=None, force_jupyter=False
        )
        console.print(self.rich_table())
        return console.export_text()

    def _repr_html_(self) -> str:
        return _html_table(self)

    def plot_pipeline(self, ax=None):
        return plot_error_along_pipeline(self, ax=ax)

    def plot_steps(self, ax=None):
        return plot_error_per_step(self, ax=ax)

    def plot_heatmap(self, name: str | None = None, index: tuple | None = None):
        name = name or self.first_divergence
        if name is None:
            raise ValueError("plot_heatmap: no point given and no divergence to show.")
        return plot_difference_heatmap(self.a, self.b, name, index=index)

    def to_html(self, path: str | Path, heatmap: str | None = None) -> Path:
        """Self-contained HTML report (table + PNG plots inline), written atomically."""
        figs = [("Error along the pipeline", self.plot_pipeline())]
        if any(_STEP_RE.search(r.name) for r in self.compared):
            figs.append(("Error per denoising step", self.plot_steps()))
        target = heatmap or self.first_divergence
        if (
            target
            and target in self.a
            and target in self.b
            and self.a.has_tensor(target)
            and self.b.has_tensor(target)
            and self[target].mode == "tensor"
        ):
            figs.append((f"Difference heatmap: {target}", self.plot_heatmap(target)))
        images = "".join(
            f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' "
            f"src='data:image/png;base64,{_png_b64(fig)}'/>"
            for title, fig in figs
        )
        page = (
            "<!DOCTYPE html><html><head><meta charset='utf-8'><title>mtlib compare</title>"
            "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;"
            "font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}td.num{text-align:right;"
            "font-family:monospace}tr.fail{background:#fdd}tr.pass{background:#efe}"
            "tr.only{background:#ffd}tr.first{outline:3px solid #c00}img{max-width:100%}"
            "</style></head><body><h1>mtlib compare</h1>"
            f"<p>A = <code>{html.escape(str(self.a.path or self.a.kind))}</code><br>"
            f"B = <code>{html.escape(str(self.b.path or self.b.kind))}</code> (reference)</p>"
            f"<p><b>{html.escape(self.summary())}</b></p>{images}<h2>All points</h2>"
            f"{_html_table(self)}</body></html>\n"
        )
        if is_output_url(path):  # s3:// ... through fsspec, complete or not at all
            return atomic_write_url(path, page)
        return atomic_write(path, page)


def describe_point(r: PointResult) -> str:
    """One line on how a row failed or passed: the numbers against the bound, or the
    mismatch (what the summary and the CLI print after FIRST DIVERGENCE)."""
    return _describe(r)


def _describe(r: PointResult) -> str:
    if r.status in (STATUS_SHAPE, STATUS_DTYPE) or r.mode == "value":
        return f"{r.status}: {r.note}"
    if r.mode == "exact":
        return (
            f"exact values differ (max|a-b| {_fmt(r.max_abs)}; integer / bool points must be equal)"
        )
    if r.status == STATUS_UNVERIFIED:
        return (
            f"unverified (stats only): max stat diff {_fmt(r.stat_diff)} <= bound "
            f"{_fmt(r.bound)}, which does not prove the tensors close; {r.note}"
        )
    if r.mode == "stats":
        return (
            f"differs (stats only): max stat diff {_fmt(r.stat_diff)} > bound {_fmt(r.bound)}"
            + (
                f"; NaN {r.nan_a}/{r.nan_b}, Inf {r.inf_a}/{r.inf_b}"
                if (r.nan_a, r.inf_a) != (r.nan_b, r.inf_b)
                else ""
            )
        )
    return f"max|a-b| {_fmt(r.max_abs)} > bound {_fmt(r.bound)}, rel L2 {_fmt(r.rel_l2)}" + (
        f"; {r.note}" if r.note else ""
    )


def _fmt(v: float | None, cos: bool = False) -> str:
    if v is None:
        return ""
    if cos:
        return f"{v:.6f}"
    if v == 0:
        return "0"
    return f"{v:.3g}"


def _fmt_shape(shape) -> str:
    return "" if shape is None else "[" + ", ".join(str(s) for s in shape) + "]"


def _html_table(cmp: Comparison) -> str:
    fd = cmp.first_divergence
    head = (
        "<table><tr><th>#</th><th>point</th><th>status</th><th>mode</th><th>shape</th>"
        "<th>dtype</th><th>max|a-b|</th><th>bound</th><th>rel L2</th><th>cosine</th>"
        "<th>NaN a/b</th><th>Inf a/b</th><th>note</th></tr>"
    )
    out = [head]
    for i, r in enumerate(cmp.rows):
        cls = "pass" if r.passed else ("fail" if r.failed else "only")
        if r.name == fd:
            cls += " first"
        shape = r.shape_a if r.shape_a is not None else r.shape_b
        dtype = (
            r.dtype_a if r.dtype_a == r.dtype_b or r.dtype_b is None else f"{r.dtype_a}/{r.dtype_b}"
        )
        err = r.max_abs if r.max_abs is not None else r.stat_diff
        cells = [str(i), r.name, r.status, r.mode, _fmt_shape(shape), dtype or ""]
        nums = [
            _fmt(err),
            _fmt(r.bound),
            _fmt(r.rel_l2),
            _fmt(r.cosine, cos=True),
            f"{r.nan_a}/{r.nan_b}",
            f"{r.inf_a}/{r.inf_b}",
        ]
        out.append(
            f"<tr class='{cls}'>"
            + "".join(f"<td>{html.escape(c)}</td>" for c in cells)
            + "".join(f"<td class='num'>{html.escape(c)}</td>" for c in nums)
            + f"<td>{html.escape(r.note)}</td></tr>"
        )
    out.append("</table>")
    return "".join(out)


def trace_status(t: Trace) -> str:
    """The recording status of an mtlib trace ("complete", "recording", "failed: ..."); other
    sources (golden cases, safetensors files) are complete by construction."""
    return str(t.meta.get("status", "complete")) if t.kind == "mtlib" else "complete"


def trace_incomplete(t: Trace) -> bool:
    return trace_status(t) != "complete"


def compare(
    a: Trace | str | Path,
    b: Trace | str | Path,
    tolerances: dict[str, float] | None = None,
    points: Iterable[str] | str | None = None,
) -> Comparison:
    """Compare trace A with the reference B point by point (see the module docstring).

    `tolerances`: {glob: tol} overrides; `points`: globs selecting the points to look at."""
    a = a if isinstance(a, Trace) else load_trace(a)
    b = b if isinstance(b, Trace) else load_trace(b)
    patterns = [points] if isinstance(points, str) else list(points or [])

    def selected(n: str) -> bool:
        return not patterns or any(fnmatch.fnmatchcase(n, p) for p in patterns)

    rows: list[PointResult] = []
    for name in a.names:
        if not selected(name):
            continue
        if name in b:
            rows.append(compare_point(name, a, b, tolerances))
        else:
            sa = a.stats(name)
            rows.append(
                PointResult(
                    name, STATUS_ONLY_A, "-", shape_a=sa.get("shape"), dtype_a=sa.get("dtype")
                )
            )
    for name in b.names:
        if selected(name) and name not in a:
            sb = b.stats(name)
            rows.append(
                PointResult(
                    name, STATUS_ONLY_B, "-", shape_b=sb.get("shape"), dtype_b=sb.get("dtype")
                )
            )
    return Comparison(a, b, rows, dict(tolerances or {}))
