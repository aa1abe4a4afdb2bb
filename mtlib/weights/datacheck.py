"""`mtlib setup --verify --full`: read every tensor of every checkpoint and find NaN / inf.

The header verification (mtlib.weights) never reads tensor data, so it cannot see a damaged
data byte: one flipped exponent turns a weight into NaN and the whole video black. This full
check reads each file once (memory-mapped, tensor by tensor, in chunks) and names the first
non-finite tensor of each file. Its cost is one read of the checkpoints: on the published
14B set (~96 GB: DiT shards 66 GB, multitalk 10 GB, T5 11 GB, CLIP 4.8 GB, VAE 0.5 GB,
wav2vec2 0.4 GB) about the disk's read time, bounded by the isfinite rate measured in
docs/reliability.md. Generation itself checks each tensor at load (mtlib.plan.guards).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

CHUNK_ELEMENTS = 1 << 24  # 16 M elements per isfinite call: bounded temporary memory


def _tensors(path: Path):
    """(key, tensor) pairs of a .safetensors or torch checkpoint, memory-mapped."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            for k in f.keys():
                yield k, f.get_tensor(k)
        return
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) .pth
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    yield from sd.items()


def first_nonfinite(path: str | Path) -> tuple[str, int, int, int] | None:
    """(key, NaN count, inf count, bytes read) of the first tensor holding non-finite values,
    else None (every tensor finite)."""
    import torch

    from mtlib.finite import all_finite

    for key, t in _tensors(Path(path)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            continue
        flat = t.reshape(-1)
        for chunk in flat.split(CHUNK_ELEMENTS):
            if not all_finite(chunk):
                nan, inf = int(torch.isnan(flat).sum()), int(torch.isinf(flat).sum())
                return key, nan, inf, t.numel() * t.element_size()
    return None


def weight_files(layout: Any) -> list[Path]:
    """Every file holding tensors of a layout (mtlib.weights.WeightsLayout)."""
    files = [*layout.dit_files(), layout.vae_file, layout.clip_file, layout.t5_file,
             layout.wav2vec_weights]  # fmt: skip
    return [f for f in files if Path(f).is_file()]


def check_layout_finite(layout: Any, report: Any, progress: bool = True) -> dict:
    """Add one row per weight file to `report` (a mtlib.weights.VerifyReport): finite, or a
    problem naming the first non-finite tensor. Returns {"bytes", "seconds", "gb_per_s"}."""
    from tqdm.auto import tqdm

    from mtlib.weights import Problem

    files = weight_files(layout)
    total = sum(f.stat().st_size for f in files)
    t0 = time.perf_counter()
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="full data check", disable=not progress)
    for f in files:
        bad = first_nonfinite(f)
        bar.update(f.stat().st_size)
        if bad is None:
            report.add(str(f), "ok", "every tensor finite (full data check)")
            continue
        key, nan, inf, _ = bad
        report.fail(Problem(
            "nonfinite", str(f),
            f"{f.name}: tensor {key!r} holds {nan} NaN and {inf} inf values: the file is "
            "damaged (a corrupted download or disk) and would give a black or noisy video. "
            "Fix: delete it and re-download (`mtlib setup --download`).",
        ), str(f), "damaged")  # fmt: skip
    bar.close()
    dt = time.perf_counter() - t0
    return {"bytes": total, "seconds": dt, "gb_per_s": total / 1e9 / dt if dt > 0 else None}
