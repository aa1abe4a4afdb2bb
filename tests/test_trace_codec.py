"""Compact trace storage (mtlib.trace.codec): every stored tensor reads back bit for bit,
smaller where the encoding allows; the reference archive's parts are sized by name."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from mtlib.io import InputError
from mtlib.reference.noise import trace_draws
from mtlib.reference.sizes import format_sizes, part_sizes
from mtlib.reference.tracer import DRAWS_LEFT_OUT, full_patterns
from mtlib.trace import TraceWriter, load_trace
from mtlib.trace.codec import decode

pytestmark = pytest.mark.fast


def _index(d):
    return {e["name"]: e for e in map(json.loads, (d / "index.jsonl").read_text().splitlines())}


def _stored(d, name):
    with safe_open(str(d / "tensors-00000.safetensors"), framework="pt") as f:
        return f.get_tensor(name) if name in f.keys() else None


def test_compact_trace_reads_back_bit_for_bit(tmp_path):
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (1, 3, 1, 40, 56), dtype=torch.uint8, generator=g)
    image = (pixels / 255 - 0.5) * 2  # the official conditioning image
    near = image.clone()
    near[0, 0, 0, 0, 0] = torch.nextafter(
        near[0, 0, 0, 0, 0], torch.tensor(2.0)
    )  # one ulp off the grid
    noise = torch.randn(16, 3, 20, 30, generator=g)  # 115 KB: byte planes
    ctx = torch.randn(80, 512, generator=g).bfloat16()  # 80 KiB
    small = torch.randn(5, generator=g)
    ids = torch.arange(12)
    points = {
        "image": image,
        "near": near,
        "noise": noise,
        "ctx": ctx,
        "small": small,
        "ids": ids,
        "ctx_again": ctx.clone(),
    }
    d = tmp_path / "t"
    with TraceWriter(d, "full", compact=True) as w:
        for n, t in points.items():
            w.record(n, t)
    tr = load_trace(d)
    for n, t in points.items():
        assert tr.has_tensor(n), n
        back = tr.tensor(n)
        assert back.dtype == t.dtype and back.shape == t.shape and torch.equal(back, t), n
    idx = _index(d)
    assert idx["image"]["codec"] == "u8-unit" and _stored(d, "image").dtype == torch.uint8
    assert torch.equal(_stored(d, "image"), pixels)
    assert "codec" not in idx["near"]  # one value off the uint8 grid: stored as is (26 KB)
    assert idx["noise"]["codec"] == "shuffle" and _stored(d, "noise").shape == (4, noise.numel())
    assert idx["ctx"]["codec"] == "shuffle" and _stored(d, "ctx").shape == (2, ctx.numel())
    assert "codec" not in idx["small"] and "codec" not in idx["ids"]  # < 64 KiB / integers: as is
    assert idx["ctx_again"]["same_as"] == "ctx" and "shard" not in idx["ctx_again"]
    assert _stored(d, "ctx_again") is None  # stored once


def test_writer_without_compact_is_unchanged(tmp_path):
    image = (torch.randint(0, 256, (1, 3, 1, 8, 8), dtype=torch.uint8) / 255 - 0.5) * 2
    with TraceWriter(tmp_path / "t", "full") as w:
        w.record("a", image)
        w.record("b", image)
    idx = _index(tmp_path / "t")
    assert "codec" not in idx["a"] and "same_as" not in idx["b"]
    assert _stored(tmp_path / "t", "a").dtype == torch.float32


def test_unknown_codec_names_the_fix():
    with pytest.raises(InputError) as e:
        decode(torch.zeros(2), {"name": "x", "codec": "zstd9"})
    assert str(e.value) == (
        "trace point 'x': stored with codec 'zstd9', which this mtlib cannot read. "
        "Fix: update mtlib (pip install -U mtlib)."
    )


def test_draws_left_out_patterns_and_replay_refusal(tmp_path):
    assert "e2e.clip*.rand.*" in full_patterns("stats")
    assert "e2e.clip*.rand.*" not in full_patterns("stats", draws=False)
    assert "e2e.clip0.cond_image" in full_patterns("stats", draws=False)
    with pytest.raises(ValueError, match="only at level 'stats'"):
        full_patterns("full", draws=False)
    d = tmp_path / "t"
    with TraceWriter(
        d, "stats", full_patterns("stats", draws=False), meta={"draws": DRAWS_LEFT_OUT}
    ) as w:
        w.record("e2e.clip0.rand.noise", torch.randn(2, 3))
    with pytest.raises(InputError) as e:
        trace_draws(d)
    assert str(e.value) == (
        f"generation.noise_trace {str(d)!r}: its random draws were left out when it was traced "
        "(--no-draws). Fix: generation.noise=cuda with the trace's seed on the GPU type it was made "
        "on, or trace the reference again without --no-draws."
    )


def test_part_sizes_name_each_part(tmp_path):
    d = tmp_path / "t"
    noise = torch.randn(4, 1000)
    with TraceWriter(d, "stats", full_patterns("stats"), compact=True) as w:
        w.record("e2e.clip0.rand.noise", noise)
        w.record("e2e.clip0.context", torch.randn(3, 8))
        w.record("e2e.clip0.step0.cond", torch.randn(3, 8))  # statistics only
        w.record("e2e.clip1.context", torch.randn(3, 8))
    rows = {part: (raw, deflated) for part, raw, deflated in part_sizes(d)}
    assert list(rows) == [
        "random draws",
        "text (contexts, ids, masks)",
        "statistics (index.jsonl)",
        "meta.json",
    ]
    assert rows["random draws"][0] == noise.numel() * 4
    assert rows["text (contexts, ids, masks)"][0] == 2 * 3 * 8 * 4
    text = format_sizes(part_sizes(d), 1234567)
    assert text.splitlines()[0].split() == ["part", "stored", "MB", "deflated", "MB"]
    assert text.splitlines()[-1].split() == ["archive", "(.tar.gz)", "1.235"]
