"""Shared fixtures. The golden suite reads its directory from MTLIB_GOLDEN_DIR."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # worktrees and plain checkouts import their own mtlib
    sys.path.insert(0, str(ROOT))

from tests.golden import GoldenSet, golden_dir  # noqa: E402


@pytest.fixture(scope="session")
def golden() -> GoldenSet:
    return GoldenSet.open_or_skip(golden_dir())
