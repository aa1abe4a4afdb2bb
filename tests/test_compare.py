"""compare / replay / CLI: golden self-comparison, perturbations, tolerances, attribution."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mtlib import cli, trace
from mtlib.inspect import compare as cmpmod
from mtlib.inspect.compare import (
    STATUS_DTYPE,
    STATUS_FAIL,
    STATUS_PASS,
    STATUS_SHAPE,
    Stage,
    compare,
    replay,
)
from mtlib.inspect.compare import diff as cmp_diff
from mtlib.io import InputError
from mtlib.trace import Trace, load_trace
from tests.golden import get_case, golden_cases


def _trace_of(tmp_path, name, points, level="full"):
    with trace.TraceWriter(tmp_path / name, level=level) as tw, trace.recording(tw):
        for n, x in points:
            trace.point(n, x)
    return load_trace(tmp_path / name)


def _case_points(case):
    t = load_trace(case.file(f"{case.name}.json"))
    return t, [(n, t.tensor(n)) for n in t.names]


def _middle_float_point(t: Trace) -> str:
    """The middle float trace point of the run (e2e.*: a LoRA case's lora.merged.<param>
    weights are no trace point and have the single-stage tolerance)."""
    floats = [n for n in t.names if t.stats(n)["dtype"].startswith("float") and t.stats(n)["shape"]
              and n.startswith("e2e.")]  # fmt: skip
    return floats[len(floats) // 2]


# --------------------------------------------------------------------------- golden-driven


@pytest.mark.golden
@pytest.mark.parametrize(
    "case", golden_cases("e2e") + golden_cases("dit") + golden_cases("vae"), ids=str
)
def test_golden_case_compared_with_itself_passes(golden, case):
    c = get_case(golden, case)
    res = compare(c.file(f"{c.name}.json"), golden.root / c.name)
    assert res.passed
    assert res.first_divergence is None
    assert [r.name for r in res.rows] == load_trace(c.file(f"{c.name}.json")).names
    assert all(r.max_abs == 0.0 and r.status == STATUS_PASS for r in res.rows)
    assert not res.only_in_a and not res.only_in_b


@pytest.mark.golden
def test_golden_dir_compared_with_itself_passes(golden):
    res = compare(golden.root, golden.root)
    assert res.passed and len(res.compared) == sum(len(c.tensor_index) for c in golden.cases())


@pytest.mark.golden
@pytest.mark.parametrize("case", golden_cases("e2e"), ids=str)
def test_golden_one_corrupted_tensor_is_the_first_divergence(golden, tmp_path, case):
    c = get_case(golden, case)
    ref, pts = _case_points(c)
    target = _middle_float_point(ref)
    delta = 1e-2 * max(1.0, ref.stats(target)["absmax"])  # 10x the e2e bound of README §5
    pts = [(n, x + delta if n == target else x) for n, x in pts]
    mine = _trace_of(tmp_path, "mine", pts)
    res = compare(mine, ref)
    assert res.first_divergence == target
    assert [r.name for r in res.failures] == [target]
    row = res[target]
    assert row.mode == "tensor" and row.status == STATUS_FAIL
    assert math.isclose(row.max_abs, delta, rel_tol=1e-3)
    assert row.tol == 1e-3  # e2e points: golden README §5
    b = ref.tensor(target).double()
    expected_rel = (delta * math.sqrt(b.numel())) / torch.linalg.vector_norm(b).item()
    assert math.isclose(row.rel_l2, expected_rel, rel_tol=1e-3)


@pytest.mark.golden
@pytest.mark.parametrize("case", golden_cases("e2e"), ids=str)
def test_golden_stats_only_trace_against_golden(golden, tmp_path, case):
    c = get_case(golden, case)
    ref, pts = _case_points(c)
    same = compare(_trace_of(tmp_path, "same", pts, level="stats"), ref)
    assert same.passed
    assert {r.mode for r in same.rows} == {"hash"}
    target = _middle_float_point(ref)
    delta = 1e-2 * max(1.0, ref.stats(target)["absmax"])
    bad = [(n, x + delta if n == target else x) for n, x in pts]
    res = compare(_trace_of(tmp_path, "bad", bad, level="stats"), ref)
    assert res.first_divergence == target
    assert res[target].mode == "stats" and "stats only" in res[target].note
    assert [r.name for r in res.failures] == [target]


@pytest.mark.golden
@pytest.mark.parametrize("case", golden_cases("e2e"), ids=str)
def test_golden_dtype_shape_and_missing_points(golden, tmp_path, case):
    c = get_case(golden, case)
    ref, pts = _case_points(c)
    floats = [
        n
        for n in ref.names
        if ref.stats(n)["dtype"] == "float32" and len(ref.stats(n)["shape"]) >= 2
    ]
    to_int, to_shape, to_f64, dropped = floats[1], floats[2], floats[3], floats[4]
    changed = []
    for n, x in pts:
        if n == dropped:
            continue
        if n == to_int:
            x = x.round().to(torch.int64)
        elif n == to_shape:
            x = x.unsqueeze(0)
        elif n == to_f64:
            x = x.double()
        changed.append((n, x))
    changed.append(("extra.point", torch.zeros(2)))
    res = compare(_trace_of(tmp_path, "mine", changed), ref)
    assert res[to_int].status == STATUS_DTYPE and res[to_int].note == "dtype int64 vs float32"
    assert res[to_shape].status == STATUS_SHAPE
    assert (
        res[to_shape].note
        == f"shape {[1] + ref.stats(to_shape)['shape']} vs {ref.stats(to_shape)['shape']}"
    )
    assert res[to_f64].status == STATUS_PASS and res[to_f64].note == "dtype float64 vs float32"
    assert res.only_in_b == [dropped]
    assert res.only_in_a == ["extra.point"]
    assert res.first_divergence == min((to_int, to_shape), key=ref.names.index)
    assert {r.name for r in res.failures} == {to_int, to_shape}
    # rows: A's execution order first, then what only B has
    assert [r.name for r in res.rows] == [n for n, _ in changed] + [dropped]


# --------------------------------------------------------------------------- rules


def test_tolerance_rules():
    tf = cmpmod.tolerance_for
    assert tf("x", "float32", "float32") == 1e-4
    assert tf("x", "float32", "bfloat16") == 2e-2
    assert tf("x", "float16", "float16") == 1e-3
    assert tf("e2e.clip0.x0", "float32", "float32") == 1e-3
    assert tf("e2e.clip0.x0", "bfloat16", "float32") == 2e-2
    assert tf("x", "int64", "int64") == 0.0 and tf("x", "bool", "bool") == 0.0
    assert tf("vae.y", "float32", "float32", {"vae.*": 5e-3, "*.y": 7e-3}) == 7e-3
    assert tf("e2e.x", "float32", "float32", {"e2e.*": 1e-5}) == 1e-5


def test_pass_rule_boundary_and_metrics():
    b = torch.full((10,), 2.0)
    ok = compare(Trace.from_tensors({"p": b + 1.9e-4}), Trace.from_tensors({"p": b}))
    bad = compare(Trace.from_tensors({"p": b + 2.1e-4}), Trace.from_tensors({"p": b}))
    assert ok.passed and ok["p"].bound == pytest.approx(2e-4)
    assert not bad.passed and bad.first_divergence == "p"
    a = torch.tensor([1.0, 0.0, 0.0])
    r = compare(
        Trace.from_tensors({"p": a}), Trace.from_tensors({"p": torch.tensor([0.0, 1.0, 0.0])})
    )["p"]
    assert r.cosine == 0.0 and r.rel_l2 == pytest.approx(math.sqrt(2)) and r.max_abs == 1.0


def test_bf16_points_get_the_looser_tolerance():
    b = torch.linspace(-1, 1, 100)
    a = b.bfloat16()
    res = compare(Trace.from_tensors({"p": a}), Trace.from_tensors({"p": b}))
    assert res.passed and res["p"].tol == 2e-2 and res["p"].note == "dtype bfloat16 vs float32"


def test_nan_handling():
    b = torch.tensor([1.0, 2.0, float("nan")])
    same = compare(Trace.from_tensors({"p": b.clone()}), Trace.from_tensors({"p": b}))
    assert same.passed and same["p"].nan_a == 1
    a = torch.tensor([float("nan"), 2.0, 3.0])
    res = compare(Trace.from_tensors({"p": a}), Trace.from_tensors({"p": b}))
    assert (
        not res.passed and "NaN in one side only" in res["p"].note and res["p"].max_abs == math.inf
    )


def test_integers_compare_exactly():
    b = torch.arange(6)
    assert compare(Trace.from_tensors({"i": b.clone()}), Trace.from_tensors({"i": b})).passed
    res = compare(Trace.from_tensors({"i": b + (b == 5)}), Trace.from_tensors({"i": b}))
    assert res["i"].mode == "exact" and res["i"].status == STATUS_FAIL and res["i"].max_abs == 1.0
    assert res.summary().endswith(
        "FIRST DIVERGENCE: i (exact values differ (max|a-b| 1; integer / bool points must be equal))"
    )


def test_points_filter_and_nothing_in_common():
    a = Trace.from_tensors({"x.1": torch.ones(1), "y.1": torch.ones(1)})
    b = Trace.from_tensors({"x.1": torch.ones(1), "y.1": torch.zeros(1)})
    assert compare(a, b, points=["x.*"]).passed
    assert compare(a, b).first_divergence == "y.1"
    none = compare(a, Trace.from_tensors({"z": torch.ones(1)}))
    assert not none.passed and "Nothing in common" in none.summary()


# --------------------------------------------------------------------------- output


def test_table_dict_html_and_plots(tmp_path):
    a, b = cmpmod.demo_traces(tmp_path)
    res = compare(a, b)
    assert res.first_divergence == "demo.step0.noise_pred"  # first bf16 matmul of the demo
    assert [r.name for r in res.rows[:4]] == [
        "demo.cond",
        "demo.encoder.out",
        "demo.noise",
        "demo.step0.latent_in",
    ]
    assert all(r.passed for r in res.rows[:4])
    text = res.table()
    assert "demo.step0.noise_pred" in text and ">> fail" in text
    d = json.loads(json.dumps(res.to_dict()))
    assert d["first_divergence"] == "demo.step0.noise_pred" and d["passed"] is False
    assert len(d["points"]) == len(res.rows)
    out = res.to_html(tmp_path / "r" / "report.html")
    page = out.read_text()
    assert page.count("data:image/png;base64,iVBOR") == 3  # pipeline, steps, heatmap
    assert "FIRST DIVERGENCE: demo.step0.noise_pred" in page
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]
    fig = res.plot_pipeline()
    assert fig.axes[0].get_yscale() == "log"


def test_reduce_to_2d():
    t = torch.arange(120, dtype=torch.float32).reshape(2, 3, 4, 5)
    assert torch.equal(cmpmod.reduce_to_2d(t), t.double().mean(0).mean(0))
    assert torch.equal(cmpmod.reduce_to_2d(t, (1,)), t[1].double().mean(0))
    assert cmpmod.reduce_to_2d(torch.ones(7)).shape == (1, 7)


# --------------------------------------------------------------------------- replay


def _stage_runs(tmp_path, name, x, stage_fn):
    """A two-stage synthetic run: upstream `x` -> s.in, stage_fn(s.in) -> s.out."""
    with trace.TraceWriter(tmp_path / name, level="full") as tw, trace.recording(tw):
        inp = trace.point("s.in", x * 3)
        trace.point("s.out", stage_fn(inp))
    return load_trace(tmp_path / name)


def _double(x):
    return x * 2


def _changed(x):
    return x * 2 + 1e-2


def test_replay_upstream_change(tmp_path):
    x = torch.linspace(-1, 1, 50)
    a = _stage_runs(tmp_path, "a", x, _double)
    b = _stage_runs(tmp_path, "b", x + 1e-2, _double)  # upstream differs, stage identical
    assert compare(a, b).first_divergence == "s.in"
    stage = Stage("double", ("s.in",), ("s.out",), _double)
    res = replay(a, stage, trace_b=b)
    assert not res.local
    assert res.inputs_differ == ["s.in"]
    assert "carried in from upstream" in res.verdict


def test_replay_local_change(tmp_path):
    x = torch.linspace(-1, 1, 50)
    a = _stage_runs(tmp_path, "a", x, _double)  # the "Colab" run
    b = _stage_runs(tmp_path, "b", x, _changed)  # here: same inputs, the stage differs
    assert compare(a, b).first_divergence == "s.out"
    res = replay(a, Stage("double", ("s.in",), ("s.out",)), run_stage=_changed, trace_b=b)
    assert res.local
    assert res.inputs_differ == []
    assert res.comparison.first_divergence == "s.out"
    assert "LOCAL DIFFERENCE IN THIS STAGE" in res.verdict


def test_replay_registry_prefix_and_multiple_outputs(tmp_path):
    cmpmod.register_stage(
        "test.split", ["in"], ["lo", "hi"], lambda x: (x.clamp(max=0), x.clamp(min=0))
    )
    try:
        x = torch.linspace(-1, 1, 9)
        with trace.TraceWriter(tmp_path / "t", level="full") as tw, trace.recording(tw):
            with trace.scope("e2e.clip0"):
                trace.point("in", x)
                trace.point("lo", x.clamp(max=0))
                trace.point("hi", x.clamp(min=0))
        res = replay(tmp_path / "t", "test.split", prefix="e2e.clip0.")
        assert not res.local and res.inputs_differ is None
        assert [r.name for r in res.comparison.rows] == ["e2e.clip0.lo", "e2e.clip0.hi"]
        as_dict = replay(
            tmp_path / "t",
            "test.split",
            prefix="e2e.clip0.",
            run_stage=lambda x: {"hi": x.clamp(min=0) + 1, "lo": x.clamp(max=0)},
        )
        assert as_dict.local and as_dict.comparison.first_divergence == "e2e.clip0.hi"
        assert as_dict.comparison["e2e.clip0.lo"].passed
    finally:
        del cmpmod.STAGES["test.split"]


def test_replay_errors(tmp_path):
    with trace.TraceWriter(tmp_path / "t") as tw, trace.recording(tw):
        trace.point("s.in", torch.ones(2))
        trace.point("s.out", torch.ones(2))
    with pytest.raises(InputError, match="stored only statistics of 's.in'"):
        replay(tmp_path / "t", Stage("s", ("s.in",), ("s.out",)), run_stage=_double)
    with pytest.raises(InputError, match="unknown stage 'nope'"):
        replay(tmp_path / "t", "nope", run_stage=_double)
    with pytest.raises(InputError, match="has no callable yet"):
        replay(tmp_path / "t", "clip")
    assert cmpmod.STAGES["clip"].inputs == ("clip.input",) and cmpmod.STAGES["clip"].outputs == (
        "clip.out",
    )


# --------------------------------------------------------------------------- CLI


def test_cli_exit_codes_and_output(tmp_path, capsys):
    a, b = cmpmod.demo_traces(tmp_path)
    assert cli.main(["compare", str(a), str(a)]) == 0
    out = capsys.readouterr().out
    assert "16 points compared: 16 pass, 0 fail. No divergence." in out
    assert cli.main(["compare", str(a), str(b), "--report", str(tmp_path / "r.html")]) == 1
    out = capsys.readouterr().out
    assert ">>> FIRST DIVERGENCE: demo.step0.noise_pred" in out
    assert (tmp_path / "r.html").exists()
    assert cli.main(["compare", str(a), str(b), "--tol", "demo.*=0.1"]) == 0
    capsys.readouterr()
    assert cli.main(["compare", str(a), str(b), "--only", "demo.encoder.*", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert [p["name"] for p in d["points"]] == ["demo.encoder.out"] and d["passed"] is True
    assert cli.main(["compare", str(a), str(tmp_path / "missing")]) == 2
    assert "not a trace" in capsys.readouterr().err
    assert cli.main(["compare", str(a), str(b), "--tol", "oops"]) == 2
    assert "expected PATTERN=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["compare", str(a)])
    assert e.value.code == 2


def test_chunked_comparison_matches_whole(monkeypatch):
    g = torch.Generator().manual_seed(1)
    b = torch.randn(1000, generator=g)
    a = b + 1e-3 * torch.randn(1000, generator=g)
    a[17] = float("inf")
    b[17] = float("inf")
    whole = compare(Trace.from_tensors({"p": a}), Trace.from_tensors({"p": b}))["p"]
    monkeypatch.setattr(cmp_diff, "_COMPARE_CHUNK", 7)
    pieces = compare(Trace.from_tensors({"p": a}), Trace.from_tensors({"p": b}))["p"]
    assert pieces.max_abs == whole.max_abs
    assert pieces.rel_l2 == pytest.approx(whole.rel_l2, rel=1e-12)
    assert pieces.cosine == pytest.approx(whole.cosine, rel=1e-12)
    assert (pieces.inf_a, pieces.inf_b) == (1, 1)
    fin = torch.isfinite(b)
    d = (a - b)[fin].double()
    assert whole.rel_l2 == pytest.approx((d.norm() / b[fin].double().norm()).item(), rel=1e-9)
    assert whole.max_abs == pytest.approx(d.abs().max().item(), rel=1e-12)
    ints = compare(
        Trace.from_tensors({"i": torch.arange(20)}),
        Trace.from_tensors({"i": torch.arange(20) * (torch.arange(20) != 13)}),
    )
    assert ints["i"].max_abs == 13.0 and ints["i"].status == STATUS_FAIL


def test_trace_writer_from_config(tmp_path):
    from mtlib.config import TraceConfig

    assert trace.TraceWriter.from_config(tmp_path / "off", TraceConfig(level="off")) is None
    tw = trace.TraceWriter.from_config(
        tmp_path / "t", TraceConfig(level="full", full=("x*",)), {"seed": 3}
    )
    with tw, trace.recording(tw):
        trace.point("x1", torch.ones(2))
        trace.point("y1", torch.ones(2))
    t = load_trace(tmp_path / "t")
    assert t.has_tensor("x1") and not t.has_tensor("y1")
    assert t.meta["config"] == {"seed": 3} and t.meta["level"] == "full"
