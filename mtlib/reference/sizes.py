"""What a reference trace's download holds, part by part (printed by `python -m mtlib.reference`).

    rows = part_sizes("colab_trace")          # [(part, stored bytes, deflated bytes)]
    print(format_sizes(rows, archive_bytes))

"stored" is the bytes in the trace directory (tensors as stored: u8-unit images, byte
planes; see mtlib.trace.codec), "deflated" what they take in the .tar.gz (each part
compressed on its own with the archive's deflate level 6, so the sum is close to, not
equal to, the archive's size).
"""

from __future__ import annotations

import fnmatch
import json
import os
import zlib
from pathlib import Path

# (part, globs), first match wins; the globs are trace point names
PARTS = (
    ("random draws", ("*.rand.*",)),
    ("conditioning image", ("*.cond_image",)),
    ("audio embeddings", ("e2e.input.audio_embedding.*",)),
    ("text (contexts, ids, masks)", ("*.context", "*.context_null", "e2e.t5.*")),
    ("person masks", ("*.ref_target_masks",)),
)
OTHER = "other stored tensors (--keep / level full)"


def part_of(name: str) -> str:
    for part, globs in PARTS:
        if any(fnmatch.fnmatchcase(name, g) for g in globs):
            return part
    return OTHER


def part_sizes(trace_dir: str | os.PathLike) -> list[tuple[str, int, int]]:
    """[(part, stored bytes, deflated bytes)] for the stored tensors, the statistics
    (index.jsonl) and meta.json; parts with nothing stored are left out."""
    import torch
    from safetensors import safe_open

    d = Path(trace_dir)
    entries = [
        json.loads(line) for line in (d / "index.jsonl").read_text().splitlines() if line.strip()
    ]
    stored: dict[str, list[int]] = {}
    handles: dict[str, object] = {}
    for e in entries:
        shard = e.get("shard")
        if not shard or not (d / shard).exists():
            continue
        if shard not in handles:
            handles[shard] = safe_open(str(d / shard), framework="pt")
        t = handles[shard].get_tensor(e["name"]).contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""  # bf16 too
        acc = stored.setdefault(part_of(e["base"]), [0, 0])
        acc[0] += len(raw)
        acc[1] += len(zlib.compress(raw, 6))
    rows = [(part, *stored[part]) for part, _ in PARTS if part in stored]
    if OTHER in stored:
        rows.append((OTHER, *stored[OTHER]))
    for name, label in (("index.jsonl", "statistics (index.jsonl)"), ("meta.json", "meta.json")):
        raw = (d / name).read_bytes()
        rows.append((label, len(raw), len(zlib.compress(raw, 6))))
    return rows


def format_sizes(rows: list[tuple[str, int, int]], archive_bytes: int | None = None) -> str:
    width = max(len(r[0]) for r in rows + [("total", 0, 0)])
    lines = [f"{'part':<{width}}  {'stored MB':>9}  {'deflated MB':>11}"]
    for part, raw, deflated in rows:
        lines.append(f"{part:<{width}}  {raw / 1e6:>9.3f}  {deflated / 1e6:>11.3f}")
    lines.append(
        f"{'total':<{width}}  {sum(r[1] for r in rows) / 1e6:>9.3f}  "
        f"{sum(r[2] for r in rows) / 1e6:>11.3f}"
    )
    if archive_bytes is not None:
        lines.append(f"{'archive (.tar.gz)':<{width}}  {'':>9}  {archive_bytes / 1e6:>11.3f}")
    return "\n".join(lines)
