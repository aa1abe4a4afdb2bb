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

import re

import numpy as np
import pytest
import torch

from mtlib import trace
from mtlib.inspect import compare as cmpmod
from mtlib.inspect.compare import compare, register_model_stages, replay
from mtlib.io import InputError
from mtlib.models.wav2vec import Wav2VecGeometry, load_wav2vec
from mtlib.run.load import DiTCall, PromptEncoder
from mtlib.run.loop import Models, encode_prompts, generate
from mtlib.run.noise import InjectedNoise
from mtlib.trace import Trace, load_trace
from tests.golden import dit_passes, fail_case, generate_kwargs, get_case, golden_cases
from tests.pipeline_replay import n_clips
from tests.test_golden_e2e import (  # noqa: F401
    _negative_prompt,
    _settings,
    case_conditioning,
    dit_for_case,
    golden_models,
)


@pytest.fixture
def bound_stages(golden, golden_models):  # noqa: F811
    """bind(case): STAGES bound to the golden tiny networks (the DiT with the case's LoRA
    merged when it has one) for one test; the registry restored after."""
    saved = dict(cmpmod.STAGES)
    cfg = golden.tiny_configs["wav2vec2"]["tiny"]
    audio = load_wav2vec(
        golden.weights / "wav2vec2",
        expected=Wav2VecGeometry(cfg["num_hidden_layers"], cfg["hidden_size"]),
    )

    def bind(case=None):
        return register_model_stages(
            {
                "dit": golden_models["dit"] if case is None else dit_for_case(golden_models, case),
                "vae": golden_models["vae"],
                "clip": golden_models["clip"],
                "text_encoder": golden_models["text"],
                "audio_encoder": audio,
            }
        )

    yield bind
    cmpmod.STAGES.clear()
    cmpmod.STAGES.update(saved)


def _dit_step(case) -> int:
    """The step whose DiT pass the perturbation tests use: the second, or the only one."""
    return min(1, case.params["generate_kwargs"]["sampling_steps"] - 1)


def _at_step(case, *names: str) -> list[str]:
    return [n.replace("step1.", f"step{_dit_step(case)}.") for n in names]


def _stage_calls(case) -> list[tuple[str, str]]:
    """(stage, scope) of every network call recorded in an e2e case."""
    calls = [("t5", "e2e.t5.call0.")]
    steps = case.params["generate_kwargs"]["sampling_steps"]
    for c in range(n_clips(case)):
        scope = f"e2e.clip{c}."
        calls += [("clip", scope), ("vae.encode", scope)]
        for i in range(steps):
            for kind in dit_passes(case):
                calls.append((cmpmod.dit_stage(kind), f"{scope}step{i}."))
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
    bound_stages(case)
    a = load_trace(case.file(f"{case.name}.json"))
    calls = _stage_calls(case)
    assert {s for s, _ in calls} >= {"t5", "clip", "vae.encode", "vae.decode", "dit"}
    for stage, scope in calls:
        res = replay(a, stage, prefix=scope, trace_b=a)
        assert not res.local, f"{stage} @ {scope}: {res.verdict}"
        assert res.comparison.passed and res.inputs_differ == [] and res.outputs_differ == []
        assert "no local difference" in res.verdict
    # the DiT pass reads the step's own inputs and its clip's conditioning
    (scope,) = _at_step(case, "e2e.clip0.step1.")
    res = replay(a, "dit", prefix=scope)
    assert res.inputs == [
        f"{scope}latent_in", f"{scope}t", "e2e.clip0.context",
        "e2e.clip0.clip_fea", "e2e.clip0.y", "e2e.clip0.audio", "e2e.clip0.ref_target_masks",
    ]  # fmt: skip
    assert [r.name for r in res.comparison.rows] == [f"{scope}cond"]


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
    bound_stages(case)
    scope, output = _at_step(case, scope, output)
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
    bound_stages(case)
    scope, changed, output = _at_step(case, scope, changed, output)
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
    bound_stages()
    a = load_trace(case.file(f"{case.name}.json"))
    if "audio.input_values" not in a:  # two-speaker cases record the combined tracks only
        assert "audio.embedding1" in a or "audio.embedding" not in a
        return
    res = replay(a, "audio.encoder")
    assert not res.local, res.verdict
    assert res.comparison.rows[0].max_abs <= 1e-4 * max(
        1.0, float(a.tensor("audio.embedding").abs().max())
    )


def dit_case_call(golden, case):
    """(e2e case, clip, step, pass kind) of a single-stage DiT case, from its note
    "inputs of DiT call #<n> of <e2e case>" and that case's pass layout and steps."""
    m = re.fullmatch(r"inputs of DiT call #(\d+) of (\S+)", case.params.get("note", ""))
    if m is None:
        fail_case(case, f"its note {case.params.get('note')!r} does not name the e2e call")
    n, e2e = int(m.group(1)), golden.case(m.group(2))
    passes = dit_passes(e2e)
    steps = e2e.params["generate_kwargs"]["sampling_steps"]
    return e2e, n // (len(passes) * steps), n // len(passes) % steps, passes[n % len(passes)]


@pytest.mark.golden
@pytest.mark.parametrize("case_name", golden_cases("dit") + golden_cases("vae"), ids=str)
def test_golden_single_stage_cases_replay(golden, bound_stages, case_name):
    case = get_case(golden, case_name)
    a = load_trace(case.file(f"{case.name}.json"))
    if case.stage == "dit":
        e2e, c, i, kind = dit_case_call(golden, case)
        bound_stages(e2e)
        # the call really is that pass of the e2e run: same latent in, same prediction out
        assert torch.equal(a.tensor("dit.in.x"), e2e[f"e2e.clip{c}.step{i}.latent_in"])
        assert torch.equal(a.tensor("dit.out"), e2e[f"e2e.clip{c}.step{i}.{kind}"])
        stage = cmpmod.dit_stage(kind)
    else:
        bound_stages()
        stage = "vae.encode" if "vae.encode.in" in a else "vae.decode"
    res = replay(a, stage)
    assert not res.local, res.verdict
    assert res.comparison.rows[0].tol == 1e-4  # single-stage tolerance, not the e2e one


def test_dit_stage_names_every_pass_kind():
    assert [cmpmod.dit_stage(k) for k in ("cond", "drop_text", "uncond", "drop_audio")] == [
        "dit", "dit.drop_text", "dit.uncond", "dit.drop_audio",
    ]  # fmt: skip
    assert all(cmpmod.dit_stage(k) in cmpmod.STAGES for k in cmpmod.DIT_PASSES)
    with pytest.raises(InputError) as e:
        cmpmod.dit_stage("audio")
    assert str(e.value) == (
        "replay: no DiT pass kind 'audio'. The reference's passes are cond, drop_text, uncond, "
        "drop_audio (stages dit, dit.drop_text, dit.uncond, dit.drop_audio)."
    )


def test_replay_in_a_pipeline_trace_names_the_scopes_when_prefix_is_missing(tmp_path):
    with trace.TraceWriter(tmp_path / "t", level="full") as tw, trace.recording(tw):
        with trace.scope("e2e.clip0"):
            trace.point("clip_in", torch.ones(1, 3, 1, 4, 4))
            trace.point("clip_fea", torch.ones(1, 2, 3))
    with pytest.raises(InputError) as e:
        replay(tmp_path / "t", "clip", run_stage=lambda x: torch.ones(1, 2, 3))
    assert "ran in these scopes of A: e2e.clip0.; pass one as prefix=." in str(e.value)
    res = replay(
        tmp_path / "t", "clip", run_stage=lambda x: torch.ones(1, 2, 3), prefix="e2e.clip0"
    )
    assert not res.local and res.inputs == ["e2e.clip0.clip_in"]


# --------------------------------------------------------------------------- whole runs


def _run_golden_case(golden, golden_models, case, recorder) -> None:  # noqa: F811
    """mtlib's pipeline on the case's inputs, golden tiny weights (the case's LoRA merged),
    injected golden noise."""
    params = case.params
    kw = generate_kwargs(case)
    cond, masks, audio_embs = case_conditioning(golden, case)
    models = Models(
        dit=DiTCall(dit_for_case(golden_models, case)), vae=golden_models["vae"],
        clip=golden_models["clip"],
    )  # fmt: skip
    noise = InjectedNoise({k: v for k, v in case.tensors.items() if ".rand." in k}, seed=kw["seed"])
    with trace.recording(recorder):
        context, context_null = encode_prompts(
            PromptEncoder(golden_models["text"]),
            params["input_data"]["prompt"],
            _negative_prompt(case),
        )
        generate(models, cond, audio_embs, context, context_null, masks, _settings(case), noise)


@pytest.mark.golden
@pytest.mark.parametrize("case_name", golden_cases("e2e"), ids=str)
def test_golden_pipeline_run_trace_compares_clean_with_the_golden_case(
    golden,
    golden_models,  # noqa: F811
    tmp_path,
    case_name,
):
    case = get_case(golden, case_name)
    with trace.TraceWriter(tmp_path / "run", level="full") as tw:
        _run_golden_case(golden, golden_models, case, tw)
    run = load_trace(tmp_path / "run")
    ref = load_trace(case.file(f"{case.name}.json"))
    ref = Trace.from_tensors({n: ref.tensor(n) for n in ref.names if not n.startswith("lora.")})
    res = compare(run, ref)  # the merged LoRA weights are no trace point of the run
    assert res.only_in_b == []  # every golden point was recorded by the run
    assert len(res.compared) == len(ref.names)
    assert res.first_divergence is None and res.passed, res.summary()
    assert all(r.tol >= 1e-3 for r in res.compared if r.mode == "tensor")  # E2E tolerances
    assert {r.mode for r in res.compared} <= {"tensor", "exact"}
    # the run recorded more than the golden case (network internals): only in A, not failures
    assert any(".dit." in n for n in res.only_in_a)
    assert np.isfinite([r.max_abs for r in res.compared]).all()
