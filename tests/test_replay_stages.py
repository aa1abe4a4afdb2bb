"""Replay of the real stages (register_model_stages) and pipeline runs compared with the
golden end-to-end cases.

A golden e2e case is trace A: each stage re-run here by mtlib's networks on the golden tiny
weights from A's recorded inputs must reproduce A's outputs (no local difference). A
perturbed OUTPUT of a stage makes replay say the difference is local to that stage; a
perturbed INPUT (with the output the stage makes of it) makes replay say the inputs differ,
i.e. the difference is carried from upstream. Then a whole pipeline run recorded by a
TraceWriter at level full compares point by point with the golden case: every common point
passes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtlib import compare as cmpmod
from mtlib import trace
from mtlib.buckets import table_from_json
from mtlib.compare import compare, register_model_stages, replay
from mtlib.generation import DiTCall, PromptEncoder
from mtlib.image import prepare_image, ref_target_masks
from mtlib.models.wav2vec import Wav2VecGeometry, load_wav2vec
from mtlib.pipeline import InjectedNoise, Models, encode_prompts, generate
from mtlib.trace import Trace, load_trace
from tests.golden import get_case, golden_cases
from tests.pipeline_replay import golden_audio_embs, n_clips
from tests.test_golden_e2e import _negative_prompt, _settings, golden_models  # noqa: F401


@pytest.fixture
def bound_stages(golden, golden_models):  # noqa: F811
    """STAGES bound to the golden tiny networks for one test; the registry restored after."""
    saved = dict(cmpmod.STAGES)
    cfg = golden.tiny_configs["wav2vec2"]["tiny"]
    audio = load_wav2vec(
        golden.weights / "wav2vec2",
        expected=Wav2VecGeometry(cfg["num_hidden_layers"], cfg["hidden_size"]),
    )
    bound = register_model_stages(
        {
            "dit": golden_models["dit"],
            "vae": golden_models["vae"],
            "clip": golden_models["clip"],
            "text_encoder": golden_models["text"],
            "audio_encoder": audio,
        }
    )
    yield bound
    cmpmod.STAGES.clear()
    cmpmod.STAGES.update(saved)


def _stage_calls(case) -> list[tuple[str, str]]:
    """(stage, scope) of every network call recorded in an e2e case."""
    calls = [("t5", "e2e.t5.call0.")]
    steps = case.params["generate_kwargs"]["sampling_steps"]
    for c in range(n_clips(case)):
        scope = f"e2e.clip{c}."
        calls += [("clip", scope), ("vae.encode", scope)]
        for i in range(steps):
            for kind in case.params["dit_passes_per_step"]:
                calls.append(("dit" if kind == "cond" else f"dit.{kind}", f"{scope}step{i}."))
        calls.append(("vae.decode", scope))
    return calls


def _case_tensors(case) -> dict[str, torch.Tensor]:
    """The case's tensors in execution order (the order compare walks)."""
    t = load_trace(case.file(f"{case.name}.json"))
    return {n: t.tensor(n) for n in t.names}


def _bump(x: torch.Tensor) -> torch.Tensor:
    """x with every element moved by up to 5% of its range (a smooth ripple): far beyond
    E2E_TOL, and felt downstream even through CLIP's resize."""
    ripple = torch.sin(torch.arange(x.numel(), dtype=torch.float64) * 0.37).reshape(x.shape)
    return (x.double() + 0.05 * max(1.0, float(x.abs().max())) * ripple).to(x.dtype)


@pytest.mark.golden
@pytest.mark.parametrize("case_name", golden_cases("e2e"), ids=str)
def test_golden_every_stage_replays_without_local_difference(golden, bound_stages, case_name):
    case = get_case(golden, case_name)
    a = load_trace(case.file(f"{case.name}.json"))
    calls = _stage_calls(case)
    assert {s for s, _ in calls} >= {"t5", "clip", "vae.encode", "vae.decode", "dit"}
    for stage, scope in calls:
        res = replay(a, stage, prefix=scope, trace_b=a)
        assert not res.local, f"{stage} @ {scope}: {res.verdict}"
        assert res.comparison.passed and res.inputs_differ == [] and res.outputs_differ == []
        assert "no local difference" in res.verdict
    # the DiT pass reads the step's own inputs and its clip's conditioning
    res = replay(a, "dit", prefix="e2e.clip0.step1.")
    assert res.inputs == [
        "e2e.clip0.step1.latent_in", "e2e.clip0.step1.t", "e2e.clip0.context",
        "e2e.clip0.clip_fea", "e2e.clip0.y", "e2e.clip0.audio", "e2e.clip0.ref_target_masks",
    ]  # fmt: skip
    assert [r.name for r in res.comparison.rows] == ["e2e.clip0.step1.cond"]


@pytest.mark.golden
@pytest.mark.parametrize("case_name", golden_cases("e2e"), ids=str)
@pytest.mark.parametrize(
    ("stage", "scope", "output"),
    [
        ("clip", "e2e.clip0.", "e2e.clip0.clip_fea"),
        ("vae.decode", "e2e.clip0.", "e2e.clip0.decoded"),
        ("dit", "e2e.clip0.step1.", "e2e.clip0.step1.cond"),
    ],
)
def test_golden_perturbed_output_is_a_local_difference(
    golden, bound_stages, case_name, stage, scope, output
):
    case = get_case(golden, case_name)
    reference = load_trace(case.file(f"{case.name}.json"))
    tensors = _case_tensors(case)
    tensors[output] = _bump(tensors[output])
    a = Trace.from_tensors(tensors)
    assert compare(a, reference).first_divergence == output
    res = replay(a, stage, prefix=scope, trace_b=reference)
    assert res.local
    assert res.comparison.first_divergence == output
    assert res.inputs_differ == [] and res.outputs_differ == [output]
    assert f"stage {stage!r}: LOCAL DIFFERENCE IN THIS STAGE" in res.verdict


@pytest.mark.golden
@pytest.mark.parametrize("case_name", golden_cases("e2e"), ids=str)
@pytest.mark.parametrize(
    ("stage", "scope", "changed", "output"),
    [
        ("clip", "e2e.clip0.", "e2e.clip0.clip_in", "e2e.clip0.clip_fea"),
        ("vae.decode", "e2e.clip0.", "e2e.clip0.x0", "e2e.clip0.decoded"),
        ("dit", "e2e.clip0.step1.", "e2e.clip0.step1.latent_in", "e2e.clip0.step1.cond"),
    ],
)
def test_golden_perturbed_input_is_carried_from_upstream(
    golden, bound_stages, case_name, stage, scope, changed, output
):
    """A run whose stage input differs (and whose stage computes its output from it)."""
    case = get_case(golden, case_name)
    reference = load_trace(case.file(f"{case.name}.json"))
    tensors = _case_tensors(case)
    tensors[changed] = _bump(tensors[changed])
    res0 = replay(Trace.from_tensors(tensors), stage, prefix=scope)
    tensors[output] = res0.comparison.a.tensor(output)  # what the stage makes of the new input
    a = Trace.from_tensors(tensors)
    res = replay(a, stage, prefix=scope, trace_b=reference)
    assert not res.local
    assert res.inputs_differ == [changed] and res.outputs_differ == [output]
    assert "INPUTS DIFFER" in res.verdict and "CARRIED FROM UPSTREAM" in res.verdict


@pytest.mark.golden
@pytest.mark.parametrize("case_name", golden_cases("audio"), ids=str)
def test_golden_audio_encoder_replays_an_audio_case(golden, bound_stages, case_name):
    case = get_case(golden, case_name)
    a = load_trace(case.file(f"{case.name}.json"))
    if "audio.input_values" not in a:  # two-speaker cases record the combined tracks only
        assert "audio.embedding1" in a or "audio.embedding" not in a
        return
    res = replay(a, "audio.encoder")
    assert not res.local, res.verdict
    assert res.comparison.rows[0].max_abs <= 1e-4 * max(1.0, float(a.tensor("audio.embedding").abs().max()))


@pytest.mark.golden
@pytest.mark.parametrize("case_name", golden_cases("dit") + golden_cases("vae"), ids=str)
def test_golden_single_stage_cases_replay(golden, bound_stages, case_name):
    case = get_case(golden, case_name)
    a = load_trace(case.file(f"{case.name}.json"))
    if case.stage == "dit":
        call = case.name.rsplit("_", 1)[-1] if not case.name.endswith("drop_text") else "drop_text"
        stage = {"cond": "dit", "uncond": "dit.uncond", "drop_text": "dit.drop_text"}[call]
    else:
        stage = "vae.encode" if "vae.encode.in" in a else "vae.decode"
    res = replay(a, stage)
    assert not res.local, res.verdict
    assert res.comparison.rows[0].tol == 1e-4  # single-stage tolerance, not the e2e one


def test_replay_in_a_pipeline_trace_names_the_scopes_when_prefix_is_missing(tmp_path):
    with trace.TraceWriter(tmp_path / "t", level="full") as tw, trace.recording(tw):
        with trace.scope("e2e.clip0"):
            trace.point("clip_in", torch.ones(1, 3, 1, 4, 4))
            trace.point("clip_fea", torch.ones(1, 2, 3))
    with pytest.raises(cmpmod.InputError) as e:
        replay(tmp_path / "t", "clip", run_stage=lambda x: torch.ones(1, 2, 3))
    assert "ran in these scopes of A: e2e.clip0.; pass one as prefix=." in str(e.value)
    res = replay(tmp_path / "t", "clip", run_stage=lambda x: torch.ones(1, 2, 3), prefix="e2e.clip0")
    assert not res.local and res.inputs == ["e2e.clip0.clip_in"]


# --------------------------------------------------------------------------- whole runs


def _run_golden_case(golden, golden_models, case, recorder) -> None:  # noqa: F811
    """mtlib's pipeline on the case's inputs, golden tiny weights, injected golden noise."""
    params = case.params
    kw = params["generate_kwargs"]
    size = kw["size_buckget"]  # (sic) the reference's kwarg name
    image_case = golden.case(params["input_refs"]["image_case"])
    table = table_from_json(golden.tiny_configs["buckets_tiny"][size])
    prepared = prepare_image(image_case.file(image_case.params["source"]["file"]), size, table)
    H, W = prepared.target_hw
    audio_embs = golden_audio_embs(golden, case)
    src = image_case.params[size]
    masks = ref_target_masks(
        src["src_h"], src["src_w"], H, W, len(audio_embs), params["input_refs"]["bbox"],
        kw["face_scale"],
    )  # fmt: skip
    models = Models(
        dit=DiTCall(golden_models["dit"]), vae=golden_models["vae"], clip=golden_models["clip"]
    )
    noise = InjectedNoise({k: v for k, v in case.tensors.items() if ".rand." in k}, seed=kw["seed"])
    with trace.recording(recorder):
        context, context_null = encode_prompts(
            PromptEncoder(golden_models["text"]), params["input_data"]["prompt"], _negative_prompt(case)
        )
        generate(models, prepared.cond, audio_embs, context, context_null, masks, _settings(case), noise)


@pytest.mark.golden
@pytest.mark.parametrize("case_name", golden_cases("e2e"), ids=str)
def test_golden_pipeline_run_trace_compares_clean_with_the_golden_case(
    golden, golden_models, tmp_path, case_name  # noqa: F811
):
    case = get_case(golden, case_name)
    with trace.TraceWriter(tmp_path / "run", level="full") as tw:
        _run_golden_case(golden, golden_models, case, tw)
    run = load_trace(tmp_path / "run")
    ref = load_trace(case.file(f"{case.name}.json"))
    res = compare(run, ref)
    assert res.only_in_b == []  # every golden point was recorded by the run
    assert len(res.compared) == len(ref.names)
    assert res.first_divergence is None and res.passed, res.summary()
    assert all(r.tol >= 1e-3 for r in res.compared if r.mode == "tensor")  # E2E tolerances
    assert {r.mode for r in res.compared} <= {"tensor", "exact"}
    # the run recorded more than the golden case (network internals): only in A, not failures
    assert any(".dit." in n for n in res.only_in_a)
    assert np.isfinite([r.max_abs for r in res.compared]).all()
