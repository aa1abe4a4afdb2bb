"""Whole tiny runs compared: one setting changed between two generate_video runs, and
compare (or `mtlib compare` on the two run directories) names the first point that depends
on it. The runs are traced at the configs' default level (stats, default include)."""

from __future__ import annotations

import pytest

from mtlib import cli
from mtlib.config import load_config
from mtlib.inspect import compare as cmpmod
from mtlib.inspect.compare import compare
from mtlib.io import InputError
from mtlib.run.generation import generate_video
from mtlib.run.load import load_models
from mtlib.trace import load_trace


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Reference run + a cache of runs with one override each, keyed by the override."""
    root = tmp_path_factory.mktemp("runs")
    mp = pytest.MonkeyPatch()
    mp.setenv("MTLIB_CACHE", str(root / "cache"))
    base = load_config(
        "tiny", {"model.weights.tiny_dir": str(root / "weights"), "generation.frame_num": 13}
    )
    models = load_models(base)
    made: dict[str, object] = {}

    def run(key: str = "", value=None):
        name = f"{key}={value}" if key else "reference"
        if name not in made:
            cfg = base.replace(**{key: value}) if key else base
            d = root / name
            generate_video(
                cfg, d / "video.mp4", trace_dir=d / "trace", progress=False, models=models
            )
            made[name] = d
        return made[name]

    run.base, run.models = base, models
    yield run
    mp.undo()


def test_audio_guide_scale_change_parts_at_the_first_guided_prediction(tiny_runs):
    ref = tiny_runs()
    changed = tiny_runs("generation.audio_guide_scale", 3.5)
    a, b = load_trace(changed), load_trace(ref)
    assert a.meta["level"] == "stats" and a.meta["config"]["generation"]["audio_guide_scale"] == 3.5
    res = compare(a, b)
    assert res.first_divergence == "e2e.clip0.step0.noise_pred"
    # the three DiT passes of step 0 do not see the scale: identical bytes
    for kind in ("cond", "drop_text", "uncond"):
        row = res[f"e2e.clip0.step0.{kind}"]
        assert row.passed and row.mode == "hash"
    assert res["e2e.clip0.step0.noise_pred"].mode == "stats"
    assert res["e2e.clip0.step1.latent_in"].failed
    # stats-only points whose statistics stay within tolerance still say their bytes differ
    assert "bytes differ (hash)" in res["e2e.video"].note
    # the default include keeps the DiT / VAE internals out of the trace
    assert not [n for n in a.names if ".dit." in n or ".vae." in n]


def test_seed_change_parts_at_the_first_noise_draw(tiny_runs):
    ref = tiny_runs()
    changed = tiny_runs("generation.seed", 43)
    res = compare(changed, ref)
    assert res.first_divergence == "e2e.clip0.rand.noise"
    before = res.compared[: [r.name for r in res.compared].index("e2e.clip0.rand.noise")]
    assert before and all(r.passed for r in before)  # preprocessing and T5 do not see the seed
    assert {"e2e.t5.call0.out", "audio.embedding"} <= {r.name for r in before}


def test_same_settings_give_identical_traces(tiny_runs, tmp_path):
    ref = tiny_runs()
    res = compare(ref, ref)
    assert res.passed and res.first_divergence is None
    assert {r.mode for r in res.compared} == {"hash"}


def test_cli_compare_two_run_directories_with_report(tiny_runs, tmp_path, capsys):
    ref = tiny_runs()
    changed = tiny_runs("generation.audio_guide_scale", 3.5)
    report = tmp_path / "r.html"
    code = cli.main(["compare", str(changed), str(ref), "--report", str(report)])
    out = capsys.readouterr()
    assert code == 1
    assert ">>> FIRST DIVERGENCE: e2e.clip0.step0.noise_pred" in out.out
    assert f"report: {report}" in out.err
    page = report.read_text()
    assert page.startswith("<!DOCTYPE html>") and "e2e.clip0.step0.noise_pred" in page
    assert (
        page.count("data:image/png;base64,") == 2
    )  # pipeline + per-step plots (stats: no heatmap)
    assert cli.main(["compare", str(ref), str(ref)]) == 0
    assert "No divergence." in capsys.readouterr().out


def test_tiny_pair_makes_two_full_run_directories(tiny_runs, tmp_path):
    a, b = cmpmod.tiny_pair(tmp_path, base=tiny_runs.base, models=tiny_runs.models)
    assert a.name == "run_a_audio_guide_scale=3.5" and b.name == "run_b_reference"
    assert (a / "video.mp4").is_file() and (b / "trace" / "index.jsonl").is_file()
    res = compare(a, b)
    assert res.first_divergence == "e2e.clip0.step0.noise_pred"
    row = res["e2e.clip0.step0.noise_pred"]
    assert row.mode == "tensor" and row.max_abs > row.bound  # level full: tensors compared
    assert cmpmod.heatmap_point(res) == "e2e.clip0.step0.noise_pred"
    with pytest.raises(InputError, match="`change` is empty"):
        cmpmod.tiny_pair(tmp_path / "x", change={}, base=tiny_runs.base, models=tiny_runs.models)
