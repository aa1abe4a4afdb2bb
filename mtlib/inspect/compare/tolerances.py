"""The acceptance rule of a comparison: tolerance per dtype and name pattern, and the row statuses.

    pass  <=>  max|a - b| <= tol * max(1, max|b|)        (B is the reference)

tol: float64 / float32 1e-4, float16 1e-3, bfloat16 2e-2 (the looser of the two sides);
integer and bool tensors must be equal. `e2e.*` points get at least 1e-3 (golden README §5).
"""

from __future__ import annotations

import fnmatch

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


def tolerance_for(
    name: str, dtype_a: str | None, dtype_b: str | None, overrides: dict[str, float] | None = None
) -> float:
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
