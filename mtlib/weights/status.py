"""What notebook 00 and a run ask of the weights: the tiny set's folder, the status table, and
the layout a run config uses (`layout_for_config`).
"""

from __future__ import annotations

from pathlib import Path

from mtlib.weights.files import FIX_DOWNLOAD, WeightsError
from mtlib.weights.layout import WeightsLayout, resolve_layout
from mtlib.weights.verify import verify_layout

# ------------------------------------------------------------------------------------------
# Notebook 00 and `mtlib setup`


def default_tiny_dir() -> Path:
    from mtlib.io import project_root

    return project_root() / ".cache" / "tiny-weights"


def weights_status(config) -> str:
    """The table notebook 00 prints. Tiny: write the tiny checkpoints when missing, verify
    them. Real: verify what is there and say what to do next (never downloads)."""
    model = getattr(config, "model", config)
    wcfg = model.weights
    if model.name == "tiny":
        return verify_layout(layout_for_config(config), "tiny", strict=False).table()
    if wcfg.random:
        from mtlib.weights.random import RANDOM_WEIGHTS_NOTE

        return f"*** {RANDOM_WEIGHTS_NOTE} ***\nNo checkpoint is read (model.weights.random: true)."
    try:
        layout = resolve_layout(wcfg, check_files=False)
    except WeightsError as e:
        return f"{e}\n\nNext: run `{FIX_DOWNLOAD}` in a terminal (about 100 GB), then re-run this cell."
    report = verify_layout(layout, "multitalk-14b", strict=False)
    nxt = ("\n\nNext: run notebook 01." if report.ok
           else f"\n\nNext: fix the problems above (`{FIX_DOWNLOAD}` re-fetches missing or damaged files), then re-run this cell.")  # fmt: skip
    return report.table() + nxt


def layout_for_config(config) -> WeightsLayout:
    """The checkpoints a run uses: the tiny set (written on first use) for model "tiny",
    else the real ones found by resolve_layout (missing files raise, naming them)."""
    model = getattr(config, "model", config)
    wcfg = model.weights
    if model.name == "tiny":
        from mtlib.weights.tiny import write_tiny_checkpoints

        root = Path(wcfg.tiny_dir).expanduser() if wcfg.tiny_dir else default_tiny_dir()
        return write_tiny_checkpoints(root, seed=wcfg.tiny_seed)
    return resolve_layout(wcfg)
