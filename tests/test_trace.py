"""TraceWriter round trip, load_trace on golden data, module hooks, tracing off."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch

from mtlib import trace
from mtlib.io import InputError
from mtlib.trace import Trace
from mtlib.trace import stats as trace_stats
from mtlib.trace import writer as trace_writer
from tests.golden import get_case, golden_cases, golden_dir


def _independent_stats(x: torch.Tensor) -> dict:
    x64 = x.detach().double()
    return {
        "mean": x64.mean().item(),
        "std": x64.std().item() if x.numel() > 1 else 0.0,
        "absmax": x64.abs().max().item(),
    }


def _write(tmp_path, points, **kw):
    with trace.TraceWriter(tmp_path / "t", **kw) as tw, trace.recording(tw):
        for name, x in points:
            trace.point(name, x)
    return tmp_path / "t"


def test_point_is_identity_when_no_recorder():
    x = torch.randn(3)
    assert not trace.active()
    assert trace.point("anything", x) is x
    obj = object()
    assert trace.point("x", obj) is obj


def test_point_returns_same_object_while_recording(tmp_path):
    x = torch.randn(4, 5)
    before = x.clone()
    with trace.TraceWriter(tmp_path / "t", full=("*",)) as tw, trace.recording(tw):
        assert trace.point("a", x) is x
    assert torch.equal(x, before)


def test_round_trip_stats_full_and_order(tmp_path):
    g = torch.Generator().manual_seed(0)
    pts = [
        ("enc.in", torch.randn(4, 8, generator=g)),
        ("enc.out", torch.randn(2, 3, 5, generator=g) * 3 + 1),
        ("bf", torch.randn(16, generator=g).bfloat16()),
        ("ids", torch.arange(10, dtype=torch.int64)),
        ("flag", torch.tensor([True, False, True])),
        ("one", torch.tensor([2.5])),
        ("dec.out", torch.randn(7, 7, generator=g)),
    ]
    d = _write(tmp_path, pts, full=("enc.*", "ids"))
    t = trace.load_trace(d)
    assert t.kind == "mtlib"
    assert t.names == [n for n, _ in pts]
    for i, (name, x) in enumerate(pts):
        s = t.stats(name)
        assert s["i"] == i
        assert s["shape"] == list(x.shape)
        assert s["dtype"] == str(x.dtype).removeprefix("torch.")
        ref = _independent_stats(x)
        for k, tol in (("mean", 1e-12), ("std", 1e-12), ("absmax", 0.0)):
            assert math.isclose(s[k], ref[k], rel_tol=tol, abs_tol=1e-12), (name, k, s[k], ref[k])
        assert s["nan"] == 0 and s["inf"] == 0
        assert t.has_tensor(name) == (name.startswith("enc.") or name == "ids")
    assert torch.equal(t.tensor("enc.out"), pts[1][1])
    assert torch.equal(t.tensor("ids"), pts[3][1])
    with pytest.raises(KeyError, match="only statistics were recorded"):
        t.tensor("dec.out")
    times = [t.stats(n)["t"] for n in t.names]
    assert times == sorted(times)
    meta = json.loads((d / "meta.json").read_text())
    assert meta["format"] == "mtlib-trace" and meta["status"] == "complete" and meta["points"] == 7
    assert meta["environment"]["torch"] == torch.__version__


def test_hash_equal_for_identical_tensors_only(tmp_path):
    x = torch.randn(5, 6)
    y = x.clone()
    z = x.clone()
    z[2, 3] += 1e-7
    d = _write(tmp_path, [("x", x), ("y", y), ("z", z), ("xt", x.t()), ("xbf", x.bfloat16())])
    t = trace.load_trace(d)
    h = {n: t.stats(n)["hash"] for n in t.names}
    assert h["x"] == h["y"]
    assert h["z"] != h["x"]
    assert h["xt"] == trace.tensor_hash(x.t().contiguous()) != h["x"]
    assert h["xbf"] != h["x"]
    assert h["x"] == "sha1:" + hashlib.sha1(x.numpy().tobytes()).hexdigest()


def test_sha1_chunks_and_mix128_device_hash(monkeypatch):
    x = torch.randn(1001)
    whole = trace.tensor_hash(x)
    mix = trace.tensor_hash(x, "mix128")
    monkeypatch.setattr(trace_stats, "_HASH_CHUNK_BYTES", 24)  # many pieces, last one padded
    assert trace.tensor_hash(x) == whole
    assert trace.tensor_hash(x, "mix128") == mix
    assert mix.startswith("mix128:") and len(mix) == 7 + 32
    y = x.clone()
    y[1000] = y[1000].item() + 1e-6
    assert trace.tensor_hash(y, "mix128") != mix
    assert trace.tensor_hash(x.bfloat16(), "mix128") != trace.tensor_hash(
        x.bfloat16()[:-1], "mix128"
    )
    odd = torch.randn(9).bfloat16()[1:]  # 16 bytes starting 2 bytes into its storage
    assert trace.tensor_hash(odd, "mix128") == trace.tensor_hash(odd.clone(), "mix128")
    assert trace.tensor_hash(odd) == trace.tensor_hash(odd.clone())
    z = torch.zeros(8)
    assert trace.tensor_hash(z, "mix128") != trace.tensor_hash(torch.zeros(16), "mix128")
    with pytest.raises(ValueError, match="use 'auto', 'sha1' or 'mix128'"):
        trace.tensor_hash(x, "md5")


def test_nan_inf_counts(tmp_path):
    x = torch.tensor([1.0, float("nan"), float("inf"), -float("inf"), float("nan"), 2.0])
    t = trace.load_trace(_write(tmp_path, [("x", x)]))
    s = t.stats("x")
    assert (s["nan"], s["inf"]) == (2, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.int64])
def test_stats_chunked_reduction_matches_direct(monkeypatch, dtype):
    x = (torch.randn(1000, dtype=torch.float64) * 5 + 3).to(dtype)
    monkeypatch.setattr(trace_stats, "_STATS_CHUNK", 7)
    s = trace.tensor_stats(x)
    ref = _independent_stats(x)
    for k in ref:
        assert math.isclose(s[k], ref[k], rel_tol=1e-12), k


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_stats_nan_in_a_later_chunk_propagates(monkeypatch, dtype):
    x = torch.arange(20, dtype=dtype)
    x[15] = float("nan")
    monkeypatch.setattr(trace_stats, "_STATS_CHUNK", 7)
    s = trace.tensor_stats(x)
    assert math.isnan(s["mean"]) and math.isnan(s["std"]) and math.isnan(s["absmax"])
    assert (s["nan"], s["inf"]) == (1, 0)


def test_shards_rotate_and_are_atomic(tmp_path):
    pts = [(f"p{i}", torch.full((1024,), float(i))) for i in range(10)]  # 4 KB each
    d = _write(tmp_path, pts, level="full", shard_mb=8 / 1024)  # 8 KB shards
    files = sorted(p.name for p in d.iterdir())
    assert files == ["index.jsonl", "meta.json"] + [
        f"tensors-{i:05d}.safetensors" for i in range(5)
    ]
    t = trace.load_trace(d)
    assert [t.stats(n)["shard"] for n in t.names] == [
        f"tensors-{i // 2:05d}.safetensors" for i in range(10)
    ]
    for i, n in enumerate(t.names):
        assert torch.equal(t.tensor(n), pts[i][1])


def test_crashed_run_reads_back_stats_only(tmp_path):
    d = tmp_path / "t"
    tw = trace.TraceWriter(d, level="full", shard_mb=1, background=True)
    with trace.recording(tw):
        trace.point("a", torch.ones(3))
        trace.point("b", torch.zeros(2))
    tw.wait()  # the index lines are on disk (the writer flushes them at least every 0.2 s)
    # no close(): the shard never reached the disk, like a killed process
    assert not list(d.glob("tensors-*"))
    assert not list(d.glob(".*tmp*"))
    with open(d / "index.jsonl", "a") as f:
        f.write('{"i": 2, "name": "tor')  # torn last line
    t = trace.load_trace(d)
    assert t.names == ["a", "b"]
    assert not t.has_tensor("a")
    assert t.stats("a")["mean"] == 1.0
    assert json.loads((d / "meta.json").read_text())["status"] == "recording"


def test_repeated_names_get_call_index(tmp_path):
    d = _write(
        tmp_path,
        [("blk", torch.ones(1)), ("blk", torch.ones(1) * 2), ("blk", torch.ones(1) * 3)],
        full=("blk",),
    )
    t = trace.load_trace(d)
    assert t.names == ["blk", "blk#1", "blk#2"]
    assert [t.stats(n)["call"] for n in t.names] == [0, 1, 2]
    assert [t.stats(n)["base"] for n in t.names] == ["blk"] * 3
    assert t.tensor("blk#2").item() == 3.0


def test_hook_modules_records_block_outputs_per_call(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    x = torch.randn(3, 4)
    with trace.hook_modules(model, "net", ["0", "2"]) as hooks:
        assert hooks.names == ["net.0", "net.2"]
        with trace.TraceWriter(tmp_path / "t", level="full") as tw, trace.recording(tw):
            model(x)
            out2 = model(x * 2)
        model(x)  # not recording: nothing happens
    assert not model[0]._forward_hooks
    t = trace.load_trace(tmp_path / "t")
    assert t.names == ["net.0", "net.2", "net.0#1", "net.2#1"]
    assert torch.equal(t.tensor("net.0"), model[0](x))
    assert torch.equal(t.tensor("net.2#1"), out2)


def test_scope_prefixes_points(tmp_path):
    with trace.TraceWriter(tmp_path / "t") as tw, trace.recording(tw):
        with trace.scope("e2e.clip0"), trace.scope("step1"):
            trace.point("cond", torch.ones(2))
    assert trace.load_trace(tmp_path / "t").names == ["e2e.clip0.step1.cond"]


def test_existing_trace_is_not_overwritten(tmp_path):
    _write(tmp_path, [("a", torch.ones(1))])
    with pytest.raises(InputError, match="already holds a trace"):
        trace.TraceWriter(tmp_path / "t")
    trace.TraceWriter(tmp_path / "t", overwrite=True).close()
    assert trace.load_trace(tmp_path / "t").names == []


def test_run_dir_and_bad_path(tmp_path):
    with trace.TraceWriter(tmp_path / "run" / "trace") as tw, trace.recording(tw):
        trace.point("a", torch.ones(1))
    assert trace.load_trace(tmp_path / "run").names == ["a"]
    with pytest.raises(InputError, match="not a trace"):
        trace.load_trace(tmp_path / "nothing")


@pytest.mark.golden
@pytest.mark.parametrize(
    "case", golden_cases("e2e") + golden_cases("dit") + golden_cases("audio"), ids=str
)
def test_golden_case_as_trace(golden, case):
    c = get_case(golden, case)
    for source in (c.file(f"{c.name}.json"), c.file(f"{c.name}.safetensors"), golden.root / c.name):
        t = trace.load_trace(source)
        assert t.kind == "golden-case"
        assert sorted(t.names) == sorted(c.tensor_index)
        order = c.params.get("trace_order")
        if order:
            assert t.names[: len(order)] == order
        for name, entry in c.tensor_index.items():
            s = t.stats(name)
            assert s["shape"] == entry["shape"] and s["dtype"] == entry["dtype"]
            assert t.has_tensor(name)
            if "mean" in entry:
                for k in ("mean", "std", "absmax"):
                    assert math.isclose(s[k], entry[k], rel_tol=1e-9, abs_tol=1e-12), (name, k)


@pytest.mark.golden
def test_golden_dir_as_trace(golden):
    t = trace.load_trace(golden.root)
    assert t.kind == "golden-dir"
    expected = [f"{c.name}/{n}" for c in golden.cases() for n in c.tensor_index]
    assert sorted(t.names) == sorted(expected)
    c = golden.cases("vae")[0]
    name = next(iter(c.tensor_index))
    assert torch.equal(t.tensor(f"{c.name}/{name}"), c[name])
    entry = c.tensor_index[name]
    assert math.isclose(t.stats(f"{c.name}/{name}")["std"], entry["std"], rel_tol=1e-9)
    with pytest.raises(InputError, match="not in"):
        trace.load_trace(golden_dir(), case="no_such_case")


def test_trace_from_memory_recorder():
    rec = trace.MemoryRecorder(["k.*"])
    with trace.recording(rec):
        trace.point("k.b", torch.ones(2))
        trace.point("z", torch.ones(2))
        trace.point("k.a", torch.zeros(3))
    t = Trace.from_recorder(rec)
    assert t.names == ["k.b", "k.a"] and t.kind == "memory"
    assert t.stats("k.a")["shape"] == [3] and t.stats("k.b")["mean"] == 1.0


@pytest.mark.parametrize("background", [True, False])
def test_in_place_changes_after_point_do_not_leak_into_the_trace(tmp_path, background):
    x = torch.ones(4)
    with (
        trace.TraceWriter(tmp_path / "t", level="full", background=background) as tw,
        trace.recording(tw),
    ):
        trace.point("x", x)
        x.add_(41)
        trace.point("x", x)
    t = trace.load_trace(tmp_path / "t")
    assert t.stats("x")["mean"] == 1.0 and t.stats("x#1")["mean"] == 42.0
    assert torch.equal(t.tensor("x"), torch.ones(4)) and torch.equal(
        t.tensor("x#1"), torch.full((4,), 42.0)
    )


def test_writer_thread_errors_reach_the_caller(tmp_path, monkeypatch):
    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(trace_writer, "tensor_stats", broken)
    tw = trace.TraceWriter(tmp_path / "t", background=True)
    tw.record("a", torch.ones(1))
    with pytest.raises(RuntimeError, match="writing the trace failed: OSError: disk full"):
        tw.close()


def test_bounded_queue_still_records_everything(tmp_path):
    pts = [(f"p{i}", torch.full((4096,), float(i))) for i in range(20)]  # 16 KB each
    with (
        trace.TraceWriter(tmp_path / "t", background=True, max_queue_mb=0.02) as tw,
        trace.recording(tw),
    ):
        for n, x in pts:
            trace.point(n, x)
    t = trace.load_trace(tmp_path / "t")
    assert [t.stats(n)["mean"] for n in t.names] == [float(i) for i in range(20)]


def test_std_of_a_near_constant_tensor_survives():
    g = torch.Generator().manual_seed(3)
    x = 0.25 + 1e-8 * torch.randn(5000, generator=g)  # std far below the mean's fp32 rounding step
    s = trace.tensor_stats(x)
    assert math.isclose(s["std"], x.double().std().item(), rel_tol=1e-9)


def test_include_limits_the_points(tmp_path):
    with trace.TraceWriter(tmp_path / "t", include=("e2e.*",)) as tw, trace.recording(tw):
        trace.point("dit.block0.out", torch.ones(1))
        trace.point("e2e.clip0.x0", torch.ones(1))
        trace.point("e2e.clip0.x0", torch.ones(1))
    t = trace.load_trace(tmp_path / "t")
    assert t.names == ["e2e.clip0.x0", "e2e.clip0.x0#1"] and [t.stats(n)["i"] for n in t.names] == [
        0,
        1,
    ]


def test_include_exclusions_last_match_decides_and_full_is_always_recorded(tmp_path):
    include = ("e2e.*", "!*.dit.*", "e2e.*.dit.out")
    with (
        trace.TraceWriter(tmp_path / "t", include=include, full=("*.vae.decode.out",)) as tw,
        trace.recording(tw),
    ):
        for name in (
            "e2e.clip0.step0.dit.block0.out",
            "e2e.clip0.step0.dit.out",
            "e2e.clip0.step0.cond",
            "e2e.clip0.vae.decode.out",
            "audio.embedding",
        ):
            trace.point(name, torch.ones(2))
    t = trace.load_trace(tmp_path / "t")
    assert t.names == [
        "e2e.clip0.step0.dit.out",
        "e2e.clip0.step0.cond",
        "e2e.clip0.vae.decode.out",
    ]
    assert [n for n in t.names if t.has_tensor(n)] == ["e2e.clip0.vae.decode.out"]


def test_from_config_default_include_leaves_network_internals_out(tmp_path):
    from mtlib.config import load_config

    names = (
        "e2e.clip0.step0.dit.block0.out",
        "e2e.clip0.vae.encode.in",
        "e2e.clip0.step0.cond",
        "e2e.t5.call0.out",
        "audio.embedding",
        "image.b480.cond",
        "output.video",
        "dit.out",
    )
    cfg = load_config("tiny")
    for level, full, stored, extra in (
        ("stats", (), [], []),
        ("stats", ("e2e.*.dit.block0.*",), [], ["e2e.clip0.step0.dit.block0.out"]),
        (
            "full",
            (),
            [
                "e2e.clip0.step0.cond",
                "e2e.t5.call0.out",
                "audio.embedding",
                "image.b480.cond",
                "output.video",
            ],
            [],
        ),
    ):
        c = cfg.replace(**{"trace.level": level, "trace.full": list(full)})
        d = tmp_path / f"{level}{len(full)}"
        with trace.TraceWriter.from_config(d, c.trace, c) as tw, trace.recording(tw):
            for name in names:
                trace.point(name, torch.ones(2))
        t = trace.load_trace(d)
        assert t.names == extra + [
            "e2e.clip0.step0.cond",
            "e2e.t5.call0.out",
            "audio.embedding",
            "image.b480.cond",
            "output.video",
        ]
        assert [n for n in t.names if t.has_tensor(n)] == stored
        assert t.meta["config"]["trace"]["level"] == level
    assert (
        trace.TraceWriter.from_config(tmp_path / "off", cfg.replace(**{"trace.level": "off"}).trace)
        is None
    )


def test_a_failed_generate_video_leaves_a_readable_trace_marked_failed(tmp_path, monkeypatch):
    import types

    from mtlib.config import load_config
    from mtlib.run import generation

    def broken_preprocess(run, audio_encoder, cache_dir="default"):
        trace.point("audio.raw16k", torch.ones(4))
        raise RuntimeError("disk full")

    monkeypatch.setattr(generation, "preprocess_inputs", broken_preprocess)
    cfg = load_config("tiny", {"generation.frame_num": 13})
    with pytest.raises(RuntimeError, match="disk full"):
        generation.generate_video(
            cfg,
            tmp_path / "v.mp4",
            trace_dir=tmp_path / "trace",
            progress=False,
            models=types.SimpleNamespace(audio_encoder=None),
        )
    t = trace.load_trace(tmp_path / "trace")
    assert t.names == ["audio.raw16k"] and t.meta["status"] == "failed: RuntimeError"
    assert not (tmp_path / "v.mp4").exists()
