"""Shared fixtures. The golden suite reads its directory from MTLIB_GOLDEN_DIR."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # worktrees and plain checkouts import their own mtlib
    sys.path.insert(0, str(ROOT))

from tests.golden import GoldenSet, golden_dir  # noqa: E402

_TORCHVISION_SCHEMAS = None


def _torchvision_without_ops() -> None:
    """The reference tests need torchvision's Python transforms (the official code imports
    them); on a CPU machine its PyPI wheel (a CUDA build) cannot load its C++ ops and its
    import fails ("operator torchvision::nms does not exist"), taking transformers' Wav2Vec2
    import down with it. Then declare the two op schemas its Python side registers fake
    kernels for (what the official_cpu fixture does) and import it again; no torchvision C++
    op is ever called. Nothing happens where torchvision is absent or loads normally."""
    global _TORCHVISION_SCHEMAS
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        return
    try:
        import torchvision  # noqa: F401

        return
    except RuntimeError:
        pass
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    import torch

    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    _TORCHVISION_SCHEMAS = lib  # the definitions live as long as this object
    import torchvision  # noqa: F401,F811


_torchvision_without_ops()


@pytest.fixture(scope="session")
def golden() -> GoldenSet:
    return GoldenSet.open_or_skip(golden_dir())


# `pytest -m fast` (make test-fast): the edit loop, under a minute on 2 cores: the quick
# modules below without their golden and slow tests (the rules, the plan, the loop on fake
# networks, the inputs). `make test` (everything, notebooks too) stays the CI gate.
FAST_MODULES = {
    "test_spec", "test_config", "test_plan_cli", "test_pipeline_loop", "test_sampling", "test_layers",
    "test_audio", "test_image", "test_video",
}  # fmt: skip
# the few tests of those modules that take seconds (librosa import, figures, subprocesses)
FAST_EXCLUDE = {
    "test_soundfile_formats_equal_librosa", "test_plot_loudness_and_embedding_figures",
    "test_module_entry_point", "test_urls_are_probed",
}  # fmt: skip


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "fast: in the under-a-minute edit-loop selection (make test-fast)"
    )


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = getattr(getattr(item, "module", None), "__name__", "").rsplit(".", 1)[-1]
        quick = getattr(item, "originalname", item.name) not in FAST_EXCLUDE
        if (
            module in FAST_MODULES
            and quick
            and not any(m.name in ("golden", "slow") for m in item.iter_markers())
        ):
            item.add_marker(pytest.mark.fast)
