"""mtlib.reference.tracing on the OFFICIAL pipeline (golden tiny weights, official_cpu fixture).

* every golden e2e case traced from the official code equals the case's recorded tensors at
  every point, in the golden execution order;
* tracing does not change the run (video bit for bit);
* mtlib fed only from a reference trace (its conditioning and its draws) reproduces it, and
  `mtlib compare` says so;
* one changed setting in the official run is named as the first divergence.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from mtlib import trace
from mtlib.inspect.compare import compare
from mtlib.reference import tracing
from mtlib.reference.noise import trace_draws
from mtlib.trace import load_trace
from tests import official_ref as R
from tests.golden import E2E_TOL, assert_close, get_case, golden_cases
from tests.test_golden_e2e import golden_models, replay_trace  # noqa: F401  (fixture)

pytestmark = [pytest.mark.golden, pytest.mark.slow]


@pytest.fixture(scope="module")
def official(golden, tmp_path_factory):
    """(fixture module, the official tiny MultiTalkPipeline, a scratch dir, traced runs)."""
    oc = R.official_cpu()
    tmp = tmp_path_factory.mktemp("official")
    return oc, oc.tiny_pipeline(str(golden.weights), str(tmp)), tmp, {}


def traced_run(golden, official, name: str, level: str = "full"):
    """The case run by the official code under the tracer (cached per module)."""
    oc, pipe, tmp, cache = official
    key = (name, level)
    if key not in cache:
        out = tmp / f"trace_{name}_{level}"
        with tracing(out, level=level):
            video = R.run_official(oc, pipe, golden, golden.case(name), tmp)
        cache[key] = (out, video)
    return cache[key]


@pytest.mark.parametrize("case_name", golden_cases("e2e"), ids=str)
def test_official_trace_equals_golden_case(golden, official, case_name):
    case = get_case(golden, case_name)
    out, video = traced_run(golden, official, case_name)
    ref = load_trace(out)
    gold = load_trace(case.dir / f"{case_name}.json")
    e2e_names = [n for n in gold.names if n.startswith("e2e.")]
    # every golden point recorded, in the golden execution order
    assert [n for n in ref.names if n in set(e2e_names)] == e2e_names
    cmp = compare(ref, gold, points="e2e.*")
    assert cmp.passed, cmp.summary()
    assert cmp.only_in_b == []
    for name in e2e_names:  # the recorded tensors themselves, not only their statistics
        assert ref.has_tensor(name), name
        assert_close(ref.tensor(name), gold.tensor(name), name, E2E_TOL)
    assert_close(video, case["e2e.video"], "e2e.video", E2E_TOL)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "complete" and meta["source"] == "official"
    official_meta = meta["reference"]["official"]
    assert official_meta["matches_golden_commit"] is True, official_meta
    settings = meta["official_runs"][0]
    assert settings["generate"]["seed"] == case.params["generate_kwargs"]["seed"]
    assert settings["pipeline"]["param_dtype"] == "float32"


def test_tracing_does_not_change_the_video(golden, official):
    """Streaming case (motion draws, in-place re-noising): traced == untraced, bit for bit,
    and every patched attribute is restored after the block."""
    import wan.multitalk as wm

    oc, pipe, tmp, _ = official
    before = (
        wm.MultiTalkPipeline.generate,
        torch.randn,
        torch.randn_like,
        wm.match_and_blend_colors,
    )
    _, traced = traced_run(golden, official, "e2e_stream_1p", level="stats")
    assert (
        wm.MultiTalkPipeline.generate,
        torch.randn,
        torch.randn_like,
        wm.match_and_blend_colors,
    ) == before
    untraced = R.run_official(oc, pipe, golden, golden.case("e2e_stream_1p"), tmp)
    assert torch.equal(traced, untraced)


def test_stats_trace_stores_draws_and_conditioning(golden, official):
    out, _ = traced_run(golden, official, "e2e_stream_1p", level="stats")
    ref = load_trace(out)
    case = golden.case("e2e_stream_1p")
    stored = {n for n in ref.names if ref.has_tensor(n)}
    draws = [d["name"] for d in case.params["random_draws_in_order"]]
    assert set(draws) <= stored
    for n in draws:
        assert torch.equal(ref.tensor(n), case[n]), n
    assert {
        "e2e.clip0.cond_image",
        "e2e.clip0.context",
        "e2e.clip0.context_null",
        "e2e.clip0.ref_target_masks",
        "e2e.input.audio_embedding.person1",
    } <= stored
    assert "e2e.clip0.step0.cond" not in stored  # statistics only
    assert (
        ref.stats("e2e.clip0.step0.cond")["hash"]
        == load_trace(case.dir / "e2e_stream_1p.json").stats("e2e.clip0.step0.cond")["hash"]
    )


def test_mtlib_replays_the_reference_trace(golden, official, golden_models, tmp_path):  # noqa: F811
    """mtlib's loop fed ONLY from the reference trace (its conditioning and its draws)
    reproduces the official run at every point; `mtlib compare` passes. Both traces hold full
    tensors: a comparison passes only what it checked (statistics alone prove nothing)."""
    from mtlib.cli import main

    out, _ = traced_run(golden, official, "e2e_stream_1p", level="full")
    ref = load_trace(out)
    draws, seed = trace_draws(out)
    assert seed == 7
    case = golden.case("e2e_stream_1p")
    run_dir = tmp_path / "mtlib_trace"
    with trace.TraceWriter(run_dir, "full", meta={"config": {"generation": {"seed": seed}}}) as w:
        with trace.recording(w):
            replay_trace(golden_models, case, ref, draws, seed)
    cmp = compare(run_dir, out)
    assert cmp.passed, cmp.summary()
    assert len(cmp.compared) >= 80
    assert main(["compare", str(run_dir), str(out)]) == 0


@pytest.mark.parametrize(
    "change,first",
    [
        ({"seed": 8}, "e2e.clip0.rand.noise"),
        ({"audio_guide_scale": 3.5}, "e2e.clip0.step0.noise_pred"),
    ],
    ids=["seed", "audio_scale"],
)
def test_changed_official_setting_is_named(golden, official, change, first, capsys):
    from mtlib.cli import main

    oc, pipe, tmp, _ = official
    case = golden.case("e2e_clip_1p")
    out = tmp / f"changed_{next(iter(change))}"
    with tracing(out, level="stats"):
        R.run_official(oc, pipe, golden, case, tmp, **change)
    base, _ = traced_run(golden, official, "e2e_clip_1p")
    cmp = compare(out, base)
    assert cmp.first_divergence == first
    assert main(["compare", str(out), str(base)]) == 1
    text = capsys.readouterr().out
    assert f">>> FIRST DIVERGENCE: {first}" in text
    key, value = next(iter(change.items()))
    base_value = case.params["generate_kwargs"][key]
    # the settings difference is printed first, before the tensor table
    head = text.split("\n\n")[0]
    assert head.startswith("settings that differ (A | B):"), head
    assert re.search(rf"^  {key}\s+{value} \| {base_value}$", head, re.M), head
