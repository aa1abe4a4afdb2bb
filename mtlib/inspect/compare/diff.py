"""One point of two traces compared (`compare_point` -> `PointResult`): max_abs, rel_l2, cosine,
NaN / Inf counts from the tensors, or the statistics when one side holds only those.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mtlib.inspect.compare.tolerances import (
    FAILING,
    STATUS_DIFFERS_STATS,
    STATUS_DTYPE,
    STATUS_FAIL,
    STATUS_PASS,
    STATUS_SHAPE,
    STATUS_UNVERIFIED,
    _dtype_kind,
    tolerance_for,
)
from mtlib.trace import Trace


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


def compare_point(
    name: str,
    a: Trace,
    b: Trace,
    overrides: dict[str, float] | None = None,
    name_b: str | None = None,
) -> PointResult:
    """Compare point `name` of A with point `name_b` (default the same name) of B."""
    name_b = name if name_b is None else name_b
    sa, sb = a.stats(name), b.stats(name_b)
    row = PointResult(
        name, STATUS_FAIL, "-", sa.get("shape"), sb.get("shape"), sa.get("dtype"), sb.get("dtype")
    )
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
