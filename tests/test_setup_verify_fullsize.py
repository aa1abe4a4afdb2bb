"""`mtlib setup --verify` on the full-size checkpoint layout (90 GB of real names, keys, shapes
and dtypes from the golden manifests, as sparse files: tools/sparse_layout.py) passes and reads
headers only: no hole of any file is ever materialised (st_blocks unchanged). Timing lives in
benchmarks/results/cpu_setup_verify_fullsize.json, not here."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtlib import weights as W
from tools.sparse_layout import allocated_blocks, build


@pytest.mark.slow
@pytest.mark.golden
def test_verify_full_size_sparse_layout_reads_headers_only(golden, tmp_path):
    info = build(tmp_path, golden.root / "manifest")
    assert info["files"] == 19
    assert info["tensor_bytes"] > 90e9  # the real sizes: DiT 65.6 + 9.9 GB, T5 11.4, CLIP, VAE
    before = allocated_blocks(tmp_path)
    assert sum(before.values()) * 512 < 50e6  # sparse: a few MB on disk
    layout = W.resolve_layout(root=str(tmp_path), check_files=False)
    W.expected_maps("multitalk-14b")  # model-code imports first: only the verify's reads count
    read_before = _bytes_read()
    report = W.verify_layout(layout, "multitalk-14b", strict=False)
    read = _bytes_read() - read_before
    table = report.table()
    assert report.ok, table
    assert "T5 encoder: 242 tensors, 11.36 GB, BF16" in table
    assert "CLIP: 784 tensors, 2.39 GB, F16" in table
    assert "1633 keys = expected, 18.88 B params, shapes match" in table
    assert allocated_blocks(tmp_path) == before  # no hole was written to
    # bytes this process read(): headers, pickles and zip directories, not tensor data (90 GB)
    assert read < 20e6, f"verify read {read} bytes"


def _bytes_read() -> int:
    """rchar of /proc/self/io: bytes passed through read() calls by this process."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")
