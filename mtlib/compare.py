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

import argparse
import base64
import fnmatch
import html
import io
import json
import math
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mtlib import trace
from mtlib.extras import require
from mtlib.io import InputError, atomic_write, atomic_write_url, is_output_url
from mtlib.trace import Trace, load_trace

# max|a-b| <= tol * max(1, max|ref|); keys are torch dtype names without "torch."
DTYPE_TOLERANCES: dict[str, float] = {
    "float64": 1e-4,
    "float32": 1e-4,
    "float16": 1e-3,
    "bfloat16": 2e-2,
}
# Golden README §5: end-to-end tensors accumulate three sampling steps of feedback.
PATTERN_FLOORS: dict[str, float] = {"e2e.*": 1e-3, "*/e2e.*": 1e-3}

STATUS_PASS = "pass"
STATUS_FAIL = "fail"
STATUS_SHAPE = "shape mismatch"
STATUS_DTYPE = "dtype mismatch"
STATUS_ONLY_A = "only in a"
STATUS_ONLY_B = "only in b"
STATUS_DIFFERS_STATS = "differs (stats only)"  # statistics outside the bound: a divergence
STATUS_UNVERIFIED = "unverified (stats only)"  # statistics agree, which proves nothing
FAILING = (STATUS_FAIL, STATUS_SHAPE, STATUS_DTYPE, STATUS_DIFFERS_STATS)


def _dtype_kind(dtype: str | None) -> str:
    if dtype is None:
        return "none"
    if dtype == "bool":
        return "bool"
    if dtype.startswith(("float", "bfloat")):
        return "float"
    if dtype.startswith("complex"):
        return "complex"
    return "int"


def tolerance_for(name: str, dtype_a: str | None, dtype_b: str | None,
                  overrides: dict[str, float] | None = None) -> float:
    """The tol of one point: user glob override (last match wins), else the looser dtype
    default raised to the pattern floors (e2e.* >= 1e-3); 0 for integer / bool points."""
    kinds = {_dtype_kind(dtype_a), _dtype_kind(dtype_b)}
    if kinds <= {"int", "bool"}:
        return 0.0
    chosen = None
    for pattern, value in (overrides or {}).items():
        if fnmatch.fnmatchcase(name, pattern):
            chosen = float(value)
    if chosen is not None:
        return chosen
    tol = max(DTYPE_TOLERANCES.get(d, 1e-4) for d in (dtype_a, dtype_b) if d is not None)
    for pattern, floor in PATTERN_FLOORS.items():
        if fnmatch.fnmatchcase(name, pattern):
            tol = max(tol, floor)
    return tol


@dataclass
class PointResult:
    """One row of a comparison."""

    name: str
    status: str  # pass | fail | shape mismatch | dtype mismatch | only in a | only in b
    mode: str  # tensor | exact | hash | stats | value | - (how it was compared)
    shape_a: list | None = None
    shape_b: list | None = None
    dtype_a: str | None = None
    dtype_b: str | None = None
    max_abs: float | None = None  # max|a - b| (tensor modes)
    rel_l2: float | None = None  # ||a - b|| / ||b||
    cosine: float | None = None
    stat_diff: float | None = None  # stats mode: max of |Δmean|, |Δstd|, |Δabsmax|
    tol: float | None = None
    bound: float | None = None  # tol * max(1, max|b|): what max_abs (or stat_diff) must not exceed
    nan_a: int = 0
    nan_b: int = 0
    inf_a: int = 0
    inf_b: int = 0
    note: str = ""

    @property
    def passed(self) -> bool:
        return self.status == STATUS_PASS

    @property
    def failed(self) -> bool:
        return self.status in FAILING

    @property
    def error(self) -> float | None:
        """One number for plots: rel_l2 when tensors were compared, else the stats difference
        relative to the bound's scale."""
        if self.rel_l2 is not None:
            return self.rel_l2
        if self.stat_diff is not None and self.bound and self.tol:
            return self.stat_diff / (self.bound / self.tol)
        if self.max_abs is not None:
            return self.max_abs
        return None


def _float(x: Any) -> float:
    return float(x.item() if hasattr(x, "item") else x)


_COMPARE_CHUNK = 1 << 22  # elements per float64 piece: memory stays bounded for any tensor size


def _compare_tensors(row: PointResult, a: Any, b: Any) -> None:
    """Fill max_abs / rel_l2 / cosine / NaN / Inf and pass-fail of a float (or exact) pair.

    Works through both tensors in float64 pieces on the CPU, so a 1 GB activation never
    needs more than a few tens of MB at once, and the two sides may live on different devices."""
    import torch

    fa, fb = a.detach().reshape(-1), b.detach().reshape(-1)
    if _dtype_kind(row.dtype_a) in ("int", "bool") or _dtype_kind(row.dtype_b) in ("int", "bool"):
        row.mode = "exact"
        worst = 0.0
        for s in range(0, fa.numel(), _COMPARE_CHUNK):
            pa = fa[s : s + _COMPARE_CHUNK].to("cpu", torch.float64)
            pb = fb[s : s + _COMPARE_CHUNK].to("cpu", torch.float64)
            worst = max(worst, _float((pa - pb).abs().max()))
        row.max_abs = worst
        row.status = STATUS_PASS if worst == 0.0 else STATUS_FAIL
        return
    row.mode = "tensor"
    max_abs, ref_max = 0.0, 0.0
    nan_mismatch = False
    sum_d2 = sum_a2 = sum_b2 = dot = 0.0
    nan_a = nan_b = inf_a = inf_b = 0
    for s in range(0, fa.numel(), _COMPARE_CHUNK):
        pa = fa[s : s + _COMPARE_CHUNK].to("cpu", torch.float64)
        pb = fb[s : s + _COMPARE_CHUNK].to("cpu", torch.float64)
        na_, nb_ = torch.isnan(pa), torch.isnan(pb)
        nan_a += int(na_.sum())
        nan_b += int(nb_.sum())
        inf_a += int(torch.isinf(pa).sum())
        inf_b += int(torch.isinf(pb).sum())
        same = (pa == pb) | (na_ & nb_)  # equal Infs and NaNs in the same places agree
        diff = torch.where(same, torch.zeros_like(pa), (pa - pb).abs())
        if torch.isnan(diff).any():
            nan_mismatch = True
        else:
            max_abs = max(max_abs, _float(diff.max()))
            sum_d2 += _float(torch.dot(diff, diff))
        fin_b = torch.isfinite(pb)
        if fin_b.any():
            ref_max = max(ref_max, _float(pb[fin_b].abs().max()))
        both = torch.isfinite(pa) & fin_b
        af, bf = pa[both], pb[both]
        sum_a2 += _float(torch.dot(af, af))
        sum_b2 += _float(torch.dot(bf, bf))
        dot += _float(torch.dot(af, bf))
    row.nan_a, row.nan_b, row.inf_a, row.inf_b = nan_a, nan_b, inf_a, inf_b
    row.bound = row.tol * max(1.0, ref_max)
    if nan_mismatch:
        row.max_abs = math.inf
        row.note = _join(row.note, "NaN in one side only")
    else:
        row.max_abs = max_abs
    nd = math.sqrt(sum_d2) if math.isfinite(row.max_abs) else math.inf
    nb = math.sqrt(sum_b2)
    row.rel_l2 = nd / nb if nb > 0 else (0.0 if nd == 0 else math.inf)
    na = math.sqrt(sum_a2)
    if na > 0 and nb > 0:
        row.cosine = dot / (na * nb)
    else:
        row.cosine = 1.0 if na == nb else 0.0
    if nan_a or nan_b or inf_a or inf_b:
        row.note = _join(row.note, f"NaN {nan_a}/{nan_b}, Inf {inf_a}/{inf_b}")
    row.status = STATUS_PASS if row.max_abs <= row.bound else STATUS_FAIL


def _compare_stats(row: PointResult, sa: dict, sb: dict) -> None:
    if sa.get("hash") and sa.get("hash") == sb.get("hash"):
        row.mode = "hash"
        row.max_abs = 0.0
        row.rel_l2 = 0.0
        row.cosine = 1.0
        row.bound = row.tol
        row.status = STATUS_PASS
        row.note = _join(row.note, "identical bytes (hash)")
        return
    row.mode = "stats"
    row.note = _join(row.note, "stats only")
    ha, hb = sa.get("hash") or "", sb.get("hash") or ""
    if ha and hb and ha.split(":", 1)[0] == hb.split(":", 1)[0]:
        # agreeing statistics do not prove equality: say that the bytes differ
        row.note = _join(row.note, "bytes differ (hash)")
    keys = ("mean", "std", "absmax")
    if any(sa.get(k) is None or sb.get(k) is None for k in keys):
        row.status = STATUS_DIFFERS_STATS
        row.note = _join(row.note, "no statistics to compare")
        return
    row.bound = row.tol * max(1.0, abs(sb["absmax"]) if math.isfinite(sb["absmax"]) else 1.0)
    deltas = [abs(sa[k] - sb[k]) if sa[k] != sb[k] else 0.0 for k in keys]
    row.stat_diff = max(deltas) if not any(math.isnan(d) for d in deltas) else math.inf
    counts_equal = (row.nan_a, row.inf_a) == (row.nan_b, row.inf_b)
    if not counts_equal:
        row.note = _join(row.note, f"NaN {row.nan_a}/{row.nan_b}, Inf {row.inf_a}/{row.inf_b}")
    # statistics can only show a difference, never prove agreement
    within = (row.stat_diff == 0.0) if row.tol == 0.0 else (row.stat_diff <= row.bound)
    row.status = STATUS_UNVERIFIED if within and counts_equal else STATUS_DIFFERS_STATS


def _join(note: str, more: str) -> str:
    return f"{note}; {more}" if note else more


def compare_point(name: str, a: Trace, b: Trace, overrides: dict[str, float] | None = None,
                  name_b: str | None = None) -> PointResult:
    """Compare point `name` of A with point `name_b` (default the same name) of B."""
    name_b = name if name_b is None else name_b
    sa, sb = a.stats(name), b.stats(name_b)
    row = PointResult(name, STATUS_FAIL, "-", sa.get("shape"), sb.get("shape"), sa.get("dtype"),
                      sb.get("dtype"))
    row.nan_a, row.nan_b = int(sa.get("nan") or 0), int(sb.get("nan") or 0)
    row.inf_a, row.inf_b = int(sa.get("inf") or 0), int(sb.get("inf") or 0)
    if row.shape_a is None or row.shape_b is None:  # non-tensor values: compare their repr
        row.mode = "value"
        same = row.shape_a is None and row.shape_b is None and sa.get("repr") == sb.get("repr")
        row.status = STATUS_PASS if same else STATUS_FAIL
        row.note = f"{sa.get('repr', '<tensor>')} vs {sb.get('repr', '<tensor>')}"
        return row
    if list(row.shape_a) != list(row.shape_b):
        row.status = STATUS_SHAPE
        row.note = f"shape {list(row.shape_a)} vs {list(row.shape_b)}"
        return row
    ka, kb = _dtype_kind(row.dtype_a), _dtype_kind(row.dtype_b)
    if ka != kb:
        row.status = STATUS_DTYPE
        row.note = f"dtype {row.dtype_a} vs {row.dtype_b}"
        return row
    if row.dtype_a != row.dtype_b:
        row.note = f"dtype {row.dtype_a} vs {row.dtype_b}"
    row.tol = tolerance_for(name, row.dtype_a, row.dtype_b, overrides)
    if a.has_tensor(name) and b.has_tensor(name_b):
        _compare_tensors(row, a.tensor(name), b.tensor(name_b))
    else:
        _compare_stats(row, sa, sb)
    return row


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
            "counts": {"compared": len(self.compared), "failed": len(self.failures),
                       "unverified": len(self.unverified)},
            "incomplete": self.incomplete,
            "tolerances": dict(self.tolerances),
            "points": [{k: clean(v) for k, v in asdict(r).items()} for r in self.rows],
        }

    def rich_table(self, rows: Iterable[PointResult] | None = None):
        from rich.table import Table

        table = Table(title=f"A = {self.a.path or self.a.kind}\nB = {self.b.path or self.b.kind}",
                      title_justify="left")
        for col, just in (("#", "right"), ("point", "left"), ("status", "left"), ("mode", "left"),
                          ("shape", "left"), ("dtype", "left"), ("max|a-b|", "right"),
                          ("bound", "right"), ("rel L2", "right"), ("cosine", "right"),
                          ("note", "left")):
            table.add_column(col, justify=just, overflow="fold")
        fd = self.first_divergence
        for i, r in enumerate(self.rows if rows is None else rows):
            style = "green" if r.passed else ("red" if r.failed else "yellow")
            status = f"[{style}]{r.status}[/{style}]"
            if r.name == fd:
                status = f"[bold red]>> {r.status}[/bold red]"
            dtype = r.dtype_a if r.dtype_a == r.dtype_b or r.dtype_b is None else f"{r.dtype_a}/{r.dtype_b}"
            shape = r.shape_a if r.shape_a is not None else r.shape_b
            err = r.max_abs if r.max_abs is not None else r.stat_diff
            table.add_row(str(i), r.name, status, r.mode, _fmt_shape(shape), dtype or "",
                          _fmt(err), _fmt(r.bound), _fmt(r.rel_l2), _fmt(r.cosine, cos=True), r.note)
        return table

    def table(self, width: int = 160) -> str:
        """The table as plain text (rich layout, no colour codes)."""
        from rich.console import Console

        console = Console(width=width, record=True, file=io.StringIO(), color_system=None,
                          force_jupyter=False)
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
        if target and target in self.a and target in self.b and self.a.has_tensor(target) \
                and self.b.has_tensor(target) and self[target].mode == "tensor":
            figs.append((f"Difference heatmap: {target}", self.plot_heatmap(target)))
        images = "".join(
            f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' "
            f"src='data:image/png;base64,{_png_b64(fig)}'/>" for title, fig in figs
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
        return f"exact values differ (max|a-b| {_fmt(r.max_abs)}; integer / bool points must be equal)"
    if r.status == STATUS_UNVERIFIED:
        return (f"unverified (stats only): max stat diff {_fmt(r.stat_diff)} <= bound "
                f"{_fmt(r.bound)}, which does not prove the tensors close; {r.note}")
    if r.mode == "stats":
        return (f"differs (stats only): max stat diff {_fmt(r.stat_diff)} > bound {_fmt(r.bound)}"
                + (f"; NaN {r.nan_a}/{r.nan_b}, Inf {r.inf_a}/{r.inf_b}"
                   if (r.nan_a, r.inf_a) != (r.nan_b, r.inf_b) else ""))
    return f"max|a-b| {_fmt(r.max_abs)} > bound {_fmt(r.bound)}, rel L2 {_fmt(r.rel_l2)}" + (
        f"; {r.note}" if r.note else "")


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
    head = ("<table><tr><th>#</th><th>point</th><th>status</th><th>mode</th><th>shape</th>"
            "<th>dtype</th><th>max|a-b|</th><th>bound</th><th>rel L2</th><th>cosine</th>"
            "<th>NaN a/b</th><th>Inf a/b</th><th>note</th></tr>")
    out = [head]
    for i, r in enumerate(cmp.rows):
        cls = "pass" if r.passed else ("fail" if r.failed else "only")
        if r.name == fd:
            cls += " first"
        shape = r.shape_a if r.shape_a is not None else r.shape_b
        dtype = r.dtype_a if r.dtype_a == r.dtype_b or r.dtype_b is None else f"{r.dtype_a}/{r.dtype_b}"
        err = r.max_abs if r.max_abs is not None else r.stat_diff
        cells = [str(i), r.name, r.status, r.mode, _fmt_shape(shape), dtype or ""]
        nums = [_fmt(err), _fmt(r.bound), _fmt(r.rel_l2), _fmt(r.cosine, cos=True),
                f"{r.nan_a}/{r.nan_b}", f"{r.inf_a}/{r.inf_b}"]
        out.append(f"<tr class='{cls}'>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells)
                   + "".join(f"<td class='num'>{html.escape(c)}</td>" for c in nums)
                   + f"<td>{html.escape(r.note)}</td></tr>")
    out.append("</table>")
    return "".join(out)


def trace_status(t: Trace) -> str:
    """The recording status of an mtlib trace ("complete", "recording", "failed: ..."); other
    sources (golden cases, safetensors files) are complete by construction."""
    return str(t.meta.get("status", "complete")) if t.kind == "mtlib" else "complete"


def trace_incomplete(t: Trace) -> bool:
    return trace_status(t) != "complete"


def compare(a: Trace | str | Path, b: Trace | str | Path, tolerances: dict[str, float] | None = None,
            points: Iterable[str] | str | None = None) -> Comparison:
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
            rows.append(PointResult(name, STATUS_ONLY_A, "-", shape_a=sa.get("shape"), dtype_a=sa.get("dtype")))
    for name in b.names:
        if selected(name) and name not in a:
            sb = b.stats(name)
            rows.append(PointResult(name, STATUS_ONLY_B, "-", shape_b=sb.get("shape"), dtype_b=sb.get("dtype")))
    return Comparison(a, b, rows, dict(tolerances or {}))


# ---------------------------------------------------------------------------------------
# Plots (matplotlib imported on use; Agg when there is no display)
# ---------------------------------------------------------------------------------------

_STEP_RE = re.compile(r"^(.*?step(\d+))\.(.+)$")


def _pyplot():
    import os

    matplotlib = require("matplotlib", "notebooks", "the comparison plot")

    if not os.environ.get("DISPLAY") and "ipykernel" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png_b64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    _pyplot().close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


_FLOOR = 1e-12  # where log-scale plots put exact agreement


def plot_error_along_pipeline(cmp: Comparison, ax=None):
    """rel L2 per point in execution order (log scale); failing points red, the first
    divergence marked; stats-only points hollow (their value is the stats difference)."""
    plt = _pyplot()
    fig = ax.figure if ax is not None else plt.figure(figsize=(max(6.0, min(18.0, 0.25 * len(cmp.compared) + 4)), 4))
    ax = ax if ax is not None else fig.add_subplot(1, 1, 1)
    rows = cmp.compared
    xs = list(range(len(rows)))
    ys = [max(_FLOOR, r.error) if r.error is not None and math.isfinite(r.error) else None for r in rows]
    top = max([y for y in ys if y is not None] + [1.0])
    ys = [y if y is not None else top * 10 for y in ys]  # NaN / Inf / mismatches: pinned on top
    colors = ["tab:red" if r.failed else "tab:blue" for r in rows]
    solid = [i for i, r in enumerate(rows) if r.mode not in ("stats",)]
    hollow = [i for i, r in enumerate(rows) if r.mode == "stats"]
    ax.plot(xs, ys, color="0.7", lw=0.8, zorder=1)
    ax.scatter([xs[i] for i in solid], [ys[i] for i in solid], c=[colors[i] for i in solid], s=18, zorder=2)
    if hollow:
        ax.scatter([xs[i] for i in hollow], [ys[i] for i in hollow], facecolors="none",
                   edgecolors=[colors[i] for i in hollow], s=24, zorder=2, label="stats only")
        ax.legend(loc="upper left", fontsize=8)
    fd = cmp.first_divergence
    if fd is not None:
        i = [r.name for r in rows].index(fd)
        ax.axvline(i, color="tab:red", ls="--", lw=1)
        ax.annotate(f"first divergence: {fd}", (i, ys[i]), textcoords="offset points", xytext=(4, 6),
                    fontsize=8, color="tab:red")
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
    plt = _pyplot()
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
    ax.set_xticklabels([s.rsplit(".", 1)[-1] if s.count("clip") == 0 else s.split(".", 1)[-1] for s in steps],
                       rotation=45, fontsize=7)
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


def plot_difference_heatmap(a: Trace, b: Trace, name: str, index: tuple | None = None,
                            name_b: str | None = None):
    """A, B and A - B of one point side by side (reduced to 2-D by `reduce_to_2d`)."""
    plt = _pyplot()
    ta = reduce_to_2d(a.tensor(name), index)
    tb = reduce_to_2d(b.tensor(name_b or name), index)
    d = ta - tb
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    lim = max(float(ta.abs().max()), float(tb.abs().max()), 1e-12)
    dlim = max(float(d.abs().max()), 1e-12)
    for ax, img, title, vmax, cmap in ((axes[0], ta, "A", lim, "viridis"), (axes[1], tb, "B (reference)", lim, "viridis"),
                                       (axes[2], d, f"A - B (max {dlim:.3g})", dlim, "RdBu_r")):
        im = ax.imshow(img.numpy(), aspect="auto", cmap=cmap, vmin=-vmax, vmax=vmax, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    shape = list(a.stats(name)["shape"])
    how = [f"[{index}]"] if index is not None else []
    if len(shape) - (len(index) if index is not None else 0) > 2:
        how.append("mean over leading dims")
    fig.suptitle(f"{name} {shape}" + (f"  ({', then '.join(how)})" if how else ""), fontsize=9)
    return fig


# ---------------------------------------------------------------------------------------
# Replay: is the difference made here, or carried from upstream?
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """A piece of the pipeline that can be re-run from recorded inputs.

    `inputs` / `outputs` are the names of a stage traced alone (golden single-stage cases:
    `dit.in.x` ... `dit.out`); `e2e_inputs` / `e2e_outputs` the names the same tensors carry
    inside a pipeline trace, relative to a scope given as `replay(prefix=...)`
    (`e2e.clip0.step1.` + `latent_in`); a name missing there is looked up in the enclosing
    scopes (`context` of a step is `e2e.clip0.context`)."""

    name: str
    inputs: tuple[str, ...]  # point names of the input tensors, in call order
    outputs: tuple[str, ...]  # point names of what the stage produces
    # input tensors (positional, in `inputs` order) -> one tensor, a sequence in `outputs`
    # order, or {output name: tensor}. Networks register theirs; None until they do.
    run: Callable[..., Any] | None = None
    e2e_inputs: tuple[str, ...] = ()  # same inputs, pipeline-trace names (relative to a scope)
    e2e_outputs: tuple[str, ...] = ()  # same outputs, pipeline-trace names
    # the pipeline-trace inputs differ in kind (vae.encode: cond_image + mask, not the
    # zero-padded video): a callable for them; None = `run`
    e2e_run: Callable[..., Any] | None = None


# Stage boundaries of the golden data (golden README §2); `register_model_stages` fills in
# the callables from loaded networks.
STAGES: dict[str, Stage] = {}


def register_stage(name: str, inputs: Iterable[str], outputs: Iterable[str],
                   run: Callable[..., Any] | None = None, e2e_inputs: Iterable[str] = (),
                   e2e_outputs: Iterable[str] = (), e2e_run: Callable[..., Any] | None = None) -> Stage:
    """Add or replace a stage in STAGES (networks call this with their forward)."""
    stage = Stage(name, tuple(inputs), tuple(outputs), run, tuple(e2e_inputs), tuple(e2e_outputs),
                  e2e_run)
    STAGES[name] = stage
    return stage


_DIT_IN = ["dit.in.x", "dit.in.t", "dit.in.context", "dit.in.clip_fea", "dit.in.y", "dit.in.audio",
           "dit.in.ref_target_masks"]


def _dit_e2e_inputs(context: str) -> list[str]:
    return ["latent_in", "t", context, "clip_fea", "y", "audio", "ref_target_masks"]


def _register_boundaries() -> None:
    """The stages with their names only (callables: `register_model_stages`)."""
    register_stage("audio.encoder", ["audio.input_values"], ["audio.embedding"])
    register_stage("clip", ["clip.input"], ["clip.out"], e2e_inputs=["clip_in"], e2e_outputs=["clip_fea"])
    register_stage("t5", ["t5.ids", "t5.mask"], ["t5.out_full"], e2e_inputs=["ids", "mask"],
                   e2e_outputs=["out"])  # e2e scope: e2e.t5.call0.
    register_stage("vae.encode", ["vae.encode.in"], ["vae.y"], e2e_inputs=["cond_image", "mask"],
                   e2e_outputs=["vae_latent"])
    register_stage("vae.decode", ["vae.decode.in"], ["vae.decode.out"], e2e_inputs=["x0"],
                   e2e_outputs=["decoded"])
    # the DiT passes of one denoising step (e2e scope: e2e.clip<c>.step<i>.); alone, each
    # golden dit case records its call's own inputs as dit.in.*
    register_stage("dit", _DIT_IN, ["dit.out"], e2e_inputs=_dit_e2e_inputs("context"), e2e_outputs=["cond"])
    register_stage("dit.drop_text", _DIT_IN, ["dit.out"], e2e_inputs=_dit_e2e_inputs("context_null"),
                   e2e_outputs=["drop_text"])
    register_stage("dit.uncond", _DIT_IN, ["dit.out"], e2e_inputs=_dit_e2e_inputs("context_null"),
                   e2e_outputs=["uncond"])
    register_stage("dit.drop_audio", _DIT_IN, ["dit.out"], e2e_inputs=_dit_e2e_inputs("context"),
                   e2e_outputs=["drop_audio"])


_register_boundaries()

# the reference's DiT passes of one step -> their stage (cond, drop_text, uncond with text
# guidance; cond, drop_audio when the text scale is 1)
DIT_PASSES = {"cond": "dit", "drop_text": "dit.drop_text", "uncond": "dit.uncond",
              "drop_audio": "dit.drop_audio"}  # fmt: skip


def dit_stage(kind: str) -> str:
    """The STAGES name of a DiT pass kind (a golden case's dit_passes_per_step entry)."""
    if kind not in DIT_PASSES:
        raise InputError(
            f"replay: no DiT pass kind {kind!r}. The reference's passes are "
            f"{', '.join(DIT_PASSES)} (stages {', '.join(DIT_PASSES.values())})."
        )
    return DIT_PASSES[kind]


def register_model_stages(models: Any) -> dict[str, Stage]:
    """Bind the STAGES to loaded networks so `replay` can re-run them.

    `models`: anything with the attributes (or dict keys) of generation.LoadedModels that
    are needed: dit (MultiTalkDiT), vae (CausalVAE), clip (visual CLIP), text_encoder
    (T5TextEncoder), audio_encoder (wav2vec AudioEncoder); absent ones are skipped. The
    callables cast their inputs the way the pipeline does (fp32 latent, the DiT's dtype for
    its conditioning), so a replay on the same device / precision reproduces the run.
    Returns the stages bound (also registered in STAGES, replacing earlier bindings)."""
    import torch

    def get(name: str) -> Any:
        return models.get(name) if isinstance(models, dict) else getattr(models, name, None)

    bound: dict[str, Stage] = {}

    def bind(name: str, run: Callable[..., Any], e2e_run: Callable[..., Any] | None = None) -> None:
        st = STAGES[name]
        bound[name] = register_stage(name, st.inputs, st.outputs, run, st.e2e_inputs,
                                     st.e2e_outputs, e2e_run)

    clip, vae, dit, text, audio = (get(n) for n in ("clip", "vae", "dit", "text_encoder", "audio_encoder"))
    if clip is not None:
        bind("clip", lambda cond: clip.encode_image(cond))  # [1, 3, F, H, W] -> [1, 257, C]
    if vae is not None:
        def encode_clip(cond_image, mask):
            # the pipeline encodes the cond frames followed by zeros up to the clip's frames
            from mtlib.frames import pixel_frames

            frames = pixel_frames(mask.shape[2])  # mask [1, 4, T, h, w]
            zeros = cond_image.new_zeros(*cond_image.shape[:2], frames - cond_image.shape[2],
                                         *cond_image.shape[3:])
            return vae.encode(torch.cat([cond_image, zeros], dim=2))

        bind("vae.encode", lambda video: vae.encode(video), encode_clip)
        bind("vae.decode", lambda latent: vae.decode(latent).float())
    if dit is not None:
        def dit_pass(silent_audio: bool):
            def run(latent, t, context, clip_fea, y, audio, ref_target_masks):
                p = next(dit.parameters())
                if silent_audio:  # the reference's null audio: ONE silent person
                    audio = torch.zeros_like(audio)[-1:]
                # [16, T, h, w] -> tokens after the 1x2x2 patching
                seq_len = latent.shape[1] * latent.shape[2] * latent.shape[3] // 4
                out = dit(latent.to(p.device, torch.float32), t.to(p.device),
                          context.to(p.device, p.dtype), clip_fea.to(p.device, p.dtype),
                          y.to(p.device, p.dtype), audio.to(p.device, p.dtype),
                          ref_target_masks.to(p.device, torch.float32), seq_len)
                return out.float()

            return run

        bind("dit", dit_pass(False))
        bind("dit.drop_text", dit_pass(False))
        bind("dit.uncond", dit_pass(True))
        bind("dit.drop_audio", dit_pass(True))
    if text is not None:
        def t5(ids, mask):
            device = next(text.model.parameters()).device
            return text.model(ids.to(device), mask.to(device))  # [B, text_len, dim]

        bind("t5", t5)
    if audio is not None:
        def embed(input_values):
            from mtlib.frames import embedding_frames

            seq_len = embedding_frames(input_values.shape[-1])  # int(N / 16000 * 25)
            hidden = audio.forward(input_values.reshape(1, -1), seq_len)
            return torch.stack(hidden[1:], dim=1)[0].transpose(0, 1).float().cpu()  # [T, layers, hidden]

        bind("audio.encoder", embed)
    return bound


def _resolve_in_scope(a: Trace, prefix: str, name: str) -> str | None:
    """`prefix + name`, else the same name in the enclosing scopes (e2e.clip0.step1.context
    -> e2e.clip0.context), else None."""
    parts = prefix.rstrip(".").split(".") if prefix else []
    for k in range(len(parts), -1, -1):
        candidate = ".".join(parts[:k] + [name])
        if candidate in a:
            return candidate
    return None


def stage_points(a: Trace, stage: Stage, prefix: str = "") -> tuple[list[str], list[str], bool]:
    """(input names, output names, pipeline naming?) of `stage` in trace A under `prefix`.

    The single-stage names (`prefix + inputs`) when A has them, else the pipeline names
    (`e2e_inputs` looked up from the scope `prefix` outwards). Raises InputError naming what
    is missing and, when `prefix` is empty, the scopes of A where the stage ran."""
    plain_in = [prefix + n for n in stage.inputs]
    plain_out = [prefix + n for n in stage.outputs]
    if all(n in a for n in plain_in + plain_out) or not stage.e2e_outputs:
        missing = [n for n in plain_in + plain_out if n not in a]
        if missing:
            raise InputError(f"replay: trace A has no point {missing[0]!r} (stage {stage.name!r}).")
        return plain_in, plain_out, False
    ins = [_resolve_in_scope(a, prefix, n) for n in stage.e2e_inputs]
    outs = [prefix + n for n in stage.e2e_outputs]
    missing = [prefix + n for n, r in zip(stage.e2e_inputs, ins, strict=True) if r is None]
    missing += [n for n in outs if n not in a]
    if missing:
        suffix = "." + stage.e2e_outputs[0]
        scopes = [n[: -len(stage.e2e_outputs[0])] for n in a.names if n.endswith(suffix) and "#" not in n]
        hint = (f" Stage {stage.name!r} ran in these scopes of A: {', '.join(scopes[:8])}"
                f"{' ...' if len(scopes) > 8 else ''}; pass one as prefix=." if scopes else "")
        raise InputError(f"replay: trace A has no point {missing[0]!r} (stage {stage.name!r}, "
                         f"prefix {prefix!r}): neither {plain_out[0]!r} (the stage alone) nor the "
                         f"pipeline's names.{hint}")
    return [n for n in ins if n is not None], outs, True


@dataclass
class ReplayResult:
    """Outputs of a stage re-run on A's recorded inputs, compared with A's recorded outputs."""

    stage: Stage
    comparison: Comparison  # replayed outputs (A side) vs A's recorded outputs (B side)
    inputs_differ: list[str] | None  # inputs that differ between A and trace_b (None: no B)
    outputs_differ: list[str] | None = None  # outputs that differ between A and trace_b
    inputs: list[str] = field(default_factory=list)  # the point names the stage read in A

    @property
    def local(self) -> bool:
        """True when this stage, given the very same inputs, computes something else here:
        the difference is made by the stage itself."""
        return not self.comparison.passed

    @property
    def verdict(self) -> str:
        name = self.stage.name
        if self.local:
            fd = self.comparison.first_divergence
            r = self.comparison[fd] if fd else None
            how = f" ({_describe(r)})" if r is not None else ""
            return (f"stage {name!r}: LOCAL DIFFERENCE IN THIS STAGE: on A's recorded inputs it does "
                    f"not reproduce A's outputs (first: {fd}{how}). Look inside this stage.")
        upstream = ""
        if self.inputs_differ:
            upstream = (f" Its INPUTS DIFFER between the runs ({', '.join(self.inputs_differ)}): the "
                        "difference is CARRIED FROM UPSTREAM.")
        elif self.inputs_differ == [] and self.outputs_differ:
            upstream = (" Its inputs agree between the runs but its outputs do not: the other run "
                        "computes this stage differently (replay it on B's side).")
        elif self.inputs_differ == []:
            upstream = " Its inputs agree between the runs too."
        return (f"stage {name!r} reproduces A's outputs from A's inputs (no local difference): any "
                f"difference at its outputs is carried in from upstream.{upstream}")


def replay(trace_a: Trace | str | Path, stage: str | Stage, run_stage: Callable[..., Any] | None = None,
           tolerances: dict[str, float] | None = None, prefix: str = "",
           trace_b: Trace | str | Path | None = None) -> ReplayResult:
    """Re-run `stage` here on the inputs recorded in trace A; compare with A's outputs.

    `stage`: a STAGES name (bound to networks by `register_model_stages`) or a Stage;
    `run_stage` overrides its callable; `prefix` is the scope of the stage inside a pipeline
    trace ("e2e.clip0." for clip / vae.*, "e2e.clip0.step1." for a DiT pass,
    "e2e.t5.call0." for t5), where the stage's pipeline names apply (Stage.e2e_inputs).
    With `trace_b`, the result also says which inputs (and outputs) already differ between
    A and B: inputs that differ mean the difference is carried from upstream."""
    a = trace_a if isinstance(trace_a, Trace) else load_trace(trace_a)
    if isinstance(stage, str):
        if stage.startswith("dit.") and stage[4:] in DIT_PASSES:
            stage = DIT_PASSES[stage[4:]]  # "dit.cond" names the cond pass too
        if stage not in STAGES:
            raise InputError(f"replay: unknown stage {stage!r}. Known: {', '.join(STAGES)}; "
                             "or pass a Stage(name, inputs, outputs, run).")
        stage = STAGES[stage]
    if prefix and not prefix.endswith("."):
        prefix += "."
    if run_stage is None and stage.run is None and stage.e2e_run is None:
        raise InputError(f"replay: stage {stage.name!r} has no callable yet. Fix: pass run_stage=, "
                         "or bind the networks with register_model_stages(models).")
    in_names, out_names, pipeline_names = stage_points(a, stage, prefix)
    fn = run_stage or (stage.e2e_run if pipeline_names and stage.e2e_run else None) or stage.run
    for n in in_names + out_names:
        if not a.has_tensor(n):
            raise InputError(f"replay: trace A stored only statistics of {n!r}. Fix: record it in "
                             f"full (TraceWriter(full=[{n!r}]) or trace level 'full').")
    import torch

    with torch.no_grad():
        produced = fn(*[a.tensor(n) for n in in_names])
    rel_out = [n[len(prefix):] for n in out_names]
    if isinstance(produced, dict):
        outs = {}
        for k, v in produced.items():
            if k in out_names:
                outs[k] = v
            elif k in rel_out:
                outs[out_names[rel_out.index(k)]] = v
            else:
                outs[k] = v
    elif isinstance(produced, tuple | list):
        outs = dict(zip(out_names, produced, strict=True))
    else:
        outs = {out_names[0]: produced}
    missing = [n for n in out_names if n not in outs]
    if missing:
        raise InputError(f"replay: stage {stage.name!r} did not return {missing}.")
    local = Trace.from_tensors({n: outs[n] for n in out_names}, meta={"replay_of": stage.name})
    recorded = Trace.from_tensors({n: a.tensor(n) for n in out_names})
    cmp = compare(local, recorded, tolerances)
    differ = out_differ = None
    if trace_b is not None:
        b = trace_b if isinstance(trace_b, Trace) else load_trace(trace_b)

        def failing(names: list[str]) -> list[str]:
            present = [n for n in names if n in b]
            sub = compare(a, b, tolerances, points=present) if present else None
            return ([r.name for r in sub.rows if r.failed] if sub else []) + [n for n in names if n not in b]

        differ, out_differ = failing(in_names), failing(out_names)
    return ReplayResult(stage, cmp, differ, out_differ, in_names)


# ---------------------------------------------------------------------------------------
# Pairs to compare: a synthetic stand-in (no weights needed) and two tiny pipeline runs
# ---------------------------------------------------------------------------------------


def _demo_run(matmul_dtype: str, steps: int = 4) -> None:
    """Encoder (fp32 in both runs, like the VAE) -> `steps` denoising updates whose matmuls
    run in `matmul_dtype` (like the bf16 DiT) -> decoder. All points are float32."""
    import torch

    g = torch.Generator().manual_seed(0)
    w_enc = torch.randn(32, 64, generator=g) / 32 ** 0.5
    w_den = torch.randn(64, 64, generator=g) / 8
    w_dec = torch.randn(64, 16, generator=g) / 8
    cond = torch.randn(8, 32, generator=g)
    noise = torch.randn(8, 64, generator=g)
    low = getattr(torch, matmul_dtype)

    def den_mm(x, w):
        return (x.to(low) @ w.to(low)).float()

    with trace.scope("demo"):
        trace.point("cond", cond)
        context = trace.point("encoder.out", torch.nn.functional.gelu(cond @ w_enc))  # [8, 64]
        latent = trace.point("noise", noise)
        for i in range(steps):
            with trace.scope(f"step{i}"):
                trace.point("latent_in", latent)
                pred = trace.point("noise_pred", torch.tanh(den_mm(latent + context, w_den)))
                latent = trace.point("latent_out", latent - 0.25 * pred)
        trace.point("decoder.out", latent @ w_dec)


def demo_traces(directory: str | Path, steps: int = 4) -> tuple[Path, Path]:
    """Two small traces of the same stand-in computation, all points in full: A with the
    denoising matmuls in bfloat16 ("my GPU run"), B in float32 (the reference).
    Returns (trace A dir, trace B dir)."""
    directory = Path(directory)
    paths = []
    for label, dtype in (("bf16", "bfloat16"), ("fp32", "float32")):
        p = directory / f"demo_{label}"
        with trace.TraceWriter(p, level="full", meta={"demo": label}, overwrite=True) as tw, \
                trace.recording(tw):
            _demo_run(dtype, steps)
        paths.append(p)
    return paths[0], paths[1]


# The deliberate change of the notebook's default pair: the audio guidance scale only
# enters where the three DiT predictions of a step are combined, so the runs agree up to
# e2e.clip0.step0.noise_pred and part there (then every later step and the video follow).
TINY_PAIR_CHANGE: dict[str, Any] = {"generation.audio_guide_scale": 3.5}


def tiny_pair(directory: str | Path, change: dict[str, Any] | None = None, base: Any = "tiny",
              frame_num: int = 13, models: Any = None) -> tuple[Path, Path]:
    """Two tiny runs made on the spot with generation.generate_video, traced at level full:
    A with `change` applied (default TINY_PAIR_CHANGE), B the unchanged reference.

    Each is a run directory (video.mp4 + trace/) that `load_trace`, `compare` and
    `mtlib compare` read. `base`: a preset name, YAML path or RunConfig (its tiny weights
    folder is reused; a non-tiny config falls back to the tiny preset, as the pair is meant
    to be cheap); `models`: loaded networks to reuse. Returns (run A dir, run B dir)."""
    from mtlib.config import RunConfig, load_config
    from mtlib.run import generation

    cfg = base if isinstance(base, RunConfig) else load_config(base)
    if cfg.model.name != "tiny":
        cfg = load_config("tiny")
    cfg = cfg.replace(**{"generation.frame_num": frame_num, "trace.level": "full", "trace.full": []})
    change = dict(TINY_PAIR_CHANGE if change is None else change)
    if not change:
        raise InputError("tiny_pair: `change` is empty; the two runs would be identical. "
                         "Fix: give one setting to change, e.g. {'generation.seed': 43}.")
    changed = cfg.replace(**change)
    if models is None:
        models = generation.load_models(cfg)
    directory = Path(directory)
    label = ",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in change.items())
    paths = []
    for name, c in ((f"run_a_{label}", changed), ("run_b_reference", cfg)):
        d = directory / re.sub(r"[^A-Za-z0-9_.,=-]", "_", name)
        generation.generate_video(c, d / "video.mp4", trace_dir=d / "trace", progress=False,
                                  models=models)
        paths.append(d)
    return paths[0], paths[1]


def resolve_pair(run_a: str, run_b: str, workdir: str | Path, base: Any = "tiny",
                 demo: str = "tiny") -> tuple[Path | str, Path | str]:
    """The two traces a notebook compares: `run_a` / `run_b` as given, or when both are
    empty a pair made in `workdir`: demo "tiny" = two tiny generate_video runs (`tiny_pair`,
    from config `base`), "synthetic" = the stand-in computation of `demo_traces`."""
    if not run_a and not run_b:
        if demo == "synthetic":
            return demo_traces(Path(workdir) / "demo")
        if demo != "tiny":
            raise InputError(f"demo {demo!r}: use 'tiny' or 'synthetic'.")
        return tiny_pair(Path(workdir) / "tiny_pair", base=base)
    if not run_a or not run_b:
        raise InputError(f"run_a={run_a!r}, run_b={run_b!r}: give both traces (or neither, for the demo).")
    from mtlib.reference.archive import resolve  # a reference trace archive (.tar.gz) is unpacked

    return resolve(run_a), resolve(run_b)


def heatmap_point(cmp: Comparison, point: str = "") -> str | None:
    """The point to draw: `point` if given, else the first divergence, else the last point
    compared as tensors on both sides (None if there is none)."""
    if point:
        if point not in cmp.a or point not in cmp.b:
            raise InputError(f"point {point!r}: not in both traces. Fix: pick a name from the table.")
        return point
    if cmp.first_divergence and cmp[cmp.first_divergence].mode == "tensor":
        return cmp.first_divergence
    tensors = [r.name for r in cmp.compared if r.mode == "tensor"]
    return tensors[-1] if tensors else None


# ---------------------------------------------------------------------------------------
# CLI: mtlib compare A B
# ---------------------------------------------------------------------------------------


def add_arguments_compare(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a", help="trace dir (or its .tar.gz), run dir (with trace/), golden case .json, golden dir, "
                                  "or <golden dir>/<case>")
    parser.add_argument("b", help="the reference, same kinds as A")
    parser.add_argument("--report", metavar="HTML", help="write a self-contained HTML report here")
    parser.add_argument("--tol", action="append", default=[], metavar="PATTERN=VALUE",
                        help="tolerance override for points matching a glob (repeatable; last match wins), "
                             "e.g. --tol 'e2e.*=1e-3'")
    parser.add_argument("--only", action="append", default=[], metavar="PATTERN",
                        help="compare only points matching this glob (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="compare a trace whose run did not complete (killed / failed)")


def parse_tolerances(items: Iterable[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in items:
        pattern, sep, value = item.rpartition("=")
        try:
            tol = float(value)
        except ValueError:
            tol = -1.0
        if not sep or not pattern or not (tol >= 0):
            raise InputError(f"--tol {item!r}: expected PATTERN=VALUE with VALUE a number >= 0, "
                             "e.g. --tol 'vae.*=1e-3'.")
        out[pattern] = tol
    return out


def run_compare(args: argparse.Namespace) -> int:
    """0: every compared point was checked and passes; 1: something diverges, is unverified
    (stats only) or nothing is in common; 2: usage, unreadable or incomplete trace."""
    from mtlib.reference.archive import resolve

    try:
        tols = parse_tolerances(args.tol)
        a = load_trace(resolve(args.a))  # a trace archive (.tar.gz) is unpacked beside itself
        b = load_trace(resolve(args.b))
        if not args.allow_incomplete:
            for src, t in ((args.a, a), (args.b, b)):
                if trace_incomplete(t):
                    raise InputError(
                        f"trace {src!r}: incomplete (status {trace_status(t)!r}: the run was "
                        "killed or failed while recording), so points are missing and its last "
                        "tensors were never written. Fix: re-run it, or --allow-incomplete to "
                        "compare what was recorded."
                    )
    except InputError as e:
        print(f"mtlib compare: {e}", file=sys.stderr)
        return 2
    from mtlib.reference.settings import format_settings_diff, settings_diff

    cmp = compare(a, b, tols, args.only or None)
    if args.json:
        doc = cmp.to_dict()
        doc["settings_diff"] = [dict(section=s, key=k, a=va, b=vb)
                                for s, k, va, vb in settings_diff(a.meta, b.meta)]
        print(json.dumps(doc, indent=1, default=str))
    else:
        # what the runs were told to do, and where they ran, before any tensor
        block = format_settings_diff(a.meta, b.meta)
        if block:
            print(block)
        print(cmp.table(), end="")
        fd = cmp.first_divergence
        if fd is not None:
            print(f"\n>>> FIRST DIVERGENCE: {fd}\n    {_describe(cmp[fd])}")
        print(f"\n{cmp.summary()}")
    if args.report:
        path = cmp.to_html(args.report)
        print(f"report: {path}", file=sys.stderr)
    return 0 if cmp.passed else 1
