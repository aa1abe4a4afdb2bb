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


# `pytest -m fast` (make test-fast): the edit loop, under a minute on 2 cores: the quick
# modules below without their golden and slow tests (the rules, the plan, the loop on fake
# networks, the inputs). `make test` (everything, notebooks too) stays the CI gate.
FAST_MODULES = {
    "test_spec", "test_config", "test_plan_cli", "test_pipeline_loop", "test_sampling",
    "test_audio", "test_image", "test_video",
}  # fmt: skip
# the few tests of those modules that take seconds (librosa import, figures, subprocesses)
FAST_EXCLUDE = {
    "test_soundfile_formats_equal_librosa", "test_plot_loudness_and_embedding_figures",
    "test_module_entry_point", "test_urls_are_probed",
}  # fmt: skip


def pytest_configure(config):
    config.addinivalue_line("markers", "fast: in the under-a-minute edit-loop selection (make test-fast)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = getattr(getattr(item, "module", None), "__name__", "").rsplit(".", 1)[-1]
        quick = getattr(item, "originalname", item.name) not in FAST_EXCLUDE
        if module in FAST_MODULES and quick and not any(m.name in ("golden", "slow") for m in item.iter_markers()):
            item.add_marker(pytest.mark.fast)
