"""Golden numerics that move with a library's version (not with mtlib): the tolerances, with
their reasons and measurements, so a user's environment is never pinned to keep a test exact.

CI's lock (requirements/ci-lock.txt) holds the versions the golden tensors were made with, where
these comparisons are exact; the newest-stack check (tools/newest_stack.py) runs the same tests
on the newest releases, where the tolerances below apply.
"""

from __future__ import annotations

import numpy as np
import PIL

PILLOW_MAJOR = int(PIL.__version__.split(".")[0])

# Pillow 13 rewrote BILINEAR resampling's rounding: the conditioning crop moves by at most one
# level on a few pixels (measured: 171 of 1,253,376 values, all +-1, on the tall_600x1800 case;
# the other cases stay equal). Bound: +-1 on at most 0.05 % of the values.
PILLOW_RESIZE_MAX_U8 = 1 if PILLOW_MAJOR >= 13 else 0
PILLOW_RESIZE_MAX_FRACTION = 5e-4 if PILLOW_MAJOR >= 13 else 0.0


def assert_crop_equal(actual_u8: np.ndarray, golden_u8: np.ndarray, name: str) -> bool:
    """Equal u8 crops, or within Pillow >= 13's bound. Returns True when bitwise equal."""
    assert actual_u8.shape == golden_u8.shape, f"{name}: {actual_u8.shape} != {golden_u8.shape}"
    diff = np.abs(actual_u8.astype(np.int16) - golden_u8.astype(np.int16))
    n_diff = int((diff > 0).sum())
    assert int(diff.max(initial=0)) <= PILLOW_RESIZE_MAX_U8, (
        f"{name}: max u8 difference {int(diff.max())} > {PILLOW_RESIZE_MAX_U8} (Pillow {PIL.__version__})"
    )
    assert n_diff <= PILLOW_RESIZE_MAX_FRACTION * diff.size, (
        f"{name}: {n_diff} of {diff.size} values differ, more than "
        f"{PILLOW_RESIZE_MAX_FRACTION:.2%} (Pillow {PIL.__version__})"
    )
    return n_diff == 0
