"""Official trace points outside generate()'s own (mtlib.reference.preprocess_points): the
audio preprocessing at mtlib's `audio.*` names, and the DiT blocks' internals on request.

The official generate_multitalk.py (../shared fixture, unmodified) is loaded as a module and its
own functions run under the tracer on the golden tiny wav2vec2: `audio_prepare_single`
(librosa.load + loudness_norm) and `get_embedding`, as its generate() calls them. mtlib runs
its own preprocessing on the same file; `mtlib compare` passes at every audio point, and a
different input or a skipped step is named at an `audio.*` point.
"""

from __future__ import annotations

import runpy
import warnings

import pytest
import torch

from mtlib import trace
from mtlib.inspect.compare import compare
from mtlib.media import audio as A
from mtlib.models.wav2vec import Wav2VecGeometry, load_wav2vec
from mtlib.reference import tracing
from mtlib.trace import TraceWriter, load_trace
from tests import official_ref as R
from tests.golden import assert_close
from tests.test_golden_e2e import golden_models, replay_trace  # noqa: F401  (fixture)

pytestmark = [pytest.mark.golden, pytest.mark.slow]

AUDIO_POINTS = ["audio.raw16k", "audio.loudnorm", "audio.input_values", "audio.embedding"]


@pytest.fixture(scope="module")
def script(golden):
    """The official script's functions (its `if __name__ == "__main__"` part does not run)."""
    R.official_cpu()
    with warnings.catch_warnings():  # the script switches every warning off for the process
        return runpy.run_path(
            str(R.OFFICIAL_DIR / "MultiTalk" / "generate_multitalk.py"),
            run_name="official_generate_multitalk",
        )


def official_audio(script, golden, wav, out, wav2vec=None):
    with tracing(out, level="full"):
        fe, enc = script["custom_init"]("cpu", str(wav2vec or golden.weights / "wav2vec2"))
        speech = script["audio_prepare_single"](str(wav))
        return script["get_embedding"](speech, fe, enc)


def mtlib_audio(golden, wav, out, loudnorm=True, wav2vec=None):
    cfg = golden.tiny_configs["wav2vec2"]["tiny"]
    enc = load_wav2vec(
        wav2vec or golden.weights / "wav2vec2",
        expected=Wav2VecGeometry(cfg["num_hidden_layers"], cfg["hidden_size"]),
    )
    with TraceWriter(out, "full") as w, trace.recording(w):
        x = A.load_audio(wav)
        if loudnorm:
            x = A.loudness_norm(x)
        return A.embed_audio(x, enc)


def test_official_audio_points_equal_mtlib_and_golden(golden, script, tmp_path):
    case = golden.case("speech_a_1p79s")
    wav = case.dir / "speech_a_1p79s.wav"
    emb = official_audio(script, golden, wav, tmp_path / "official")
    ref = load_trace(tmp_path / "official")
    assert [n for n in ref.names if n.startswith("audio.")] == AUDIO_POINTS
    assert torch.equal(ref.tensor("audio.embedding"), emb)  # what generate_multitalk.py saves
    for name in AUDIO_POINTS:  # the official points are the golden case's tensors
        assert_close(ref.tensor(name), case[name], name, 1e-5)
    mtlib_audio(golden, wav, tmp_path / "mtlib")
    cmp = compare(tmp_path / "mtlib", tmp_path / "official")
    assert cmp.passed and cmp.first_divergence is None, cmp.summary()
    assert [r.name for r in cmp.compared if r.name.startswith("audio.")] == AUDIO_POINTS
    assert cmp.only_in_b == []


def test_audio_divergence_is_named_at_its_audio_point(golden, script, tmp_path):
    wav_a = golden.case("speech_a_1p79s").dir / "speech_a_1p79s.wav"
    wav_b = golden.case("speech_b_1p79s").dir / "speech_b_1p79s.wav"
    official_audio(script, golden, wav_a, tmp_path / "official")
    # another recording on the mtlib side: named at the first point, the loaded audio
    mtlib_audio(golden, wav_b, tmp_path / "other_file")
    cmp = compare(tmp_path / "other_file", tmp_path / "official")
    assert cmp.first_divergence == "audio.raw16k", cmp.summary()
    # loudness normalisation skipped on the mtlib side ("missing preprocessing"): the step is
    # named as missing from one side, and it changes nothing downstream beyond rounding: the
    # feature extractor normalises (do_normalize) what the gain scaled
    mtlib_audio(golden, wav_a, tmp_path / "no_loudnorm", loudnorm=False)
    cmp = compare(tmp_path / "no_loudnorm", tmp_path / "official")
    assert cmp.only_in_b == ["audio.loudnorm"], cmp.summary()
    assert cmp.first_divergence is None and cmp["audio.input_values"].max_abs < 1e-4, cmp.summary()


def test_official_dit_block_points_equal_mtlib(golden, golden_models, tmp_path):  # noqa: F811
    """keep patterns naming DiT internals hook the official blocks; mtlib's loop fed from the
    trace records the same names (three passes: plain, #1, #2) with equal tensors."""
    from mtlib.reference.noise import trace_draws

    oc = R.official_cpu()
    pipe = oc.tiny_pipeline(str(golden.weights), str(tmp_path))
    case = golden.case("e2e_clip_1p")
    out = tmp_path / "official"
    with tracing(out, level="stats", keep=["e2e.clip0.step1.dit.block0.*"]):
        R.run_official(oc, pipe, golden, case, tmp_path)
    ref = load_trace(out)
    # the official conditioning image is exactly uint8-valued: stored as its pixels
    assert ref.entries["e2e.clip0.cond_image"]["codec"] == "u8-unit"
    parts = ["self_attn", "cross_attn", "audio_cross_attn", "out"]
    want = [f"e2e.clip0.step1.dit.block0.{p}{s}" for s in ("", "#1", "#2") for p in parts]
    assert [n for n in ref.names if ".dit." in n] == want
    assert all(ref.has_tensor(n) for n in want)
    draws, seed = trace_draws(out)
    run_dir = tmp_path / "mtlib"
    with (
        TraceWriter(run_dir, "full", include=("e2e.clip0.step1.dit.block0.*",)) as w,
        trace.recording(w),
    ):
        replay_trace(golden_models, case, ref, draws, seed)
    cmp = compare(run_dir, out, points="*.dit.*")
    assert [r.name for r in cmp.compared] == want, cmp.summary()
    assert cmp.passed, cmp.summary()


def test_official_trace_without_draws(golden, tmp_path):
    """draws=False (--no-draws): the draws' statistics only; the replay by trace is refused."""
    from mtlib.io import InputError
    from mtlib.reference.noise import trace_draws

    oc = R.official_cpu()
    pipe = oc.tiny_pipeline(str(golden.weights), str(tmp_path))
    case = golden.case("e2e_clip_1p")
    with tracing(tmp_path / "t", level="stats", draws=False):
        R.run_official(oc, pipe, golden, case, tmp_path)
    ref = load_trace(tmp_path / "t")
    assert not ref.has_tensor("e2e.clip0.rand.noise")
    assert (
        ref.stats("e2e.clip0.rand.noise")["hash"]
        == load_trace(case.dir / f"{case.name}.json").stats("e2e.clip0.rand.noise")["hash"]
    )
    assert ref.has_tensor("e2e.clip0.cond_image") and ref.has_tensor(
        "e2e.input.audio_embedding.person1"
    )
    assert ref.meta["draws"].startswith("left out")
    with pytest.raises(InputError, match="its random draws were left out"):
        trace_draws(tmp_path / "t")


def test_skipped_loudness_norm_named_without_feature_normalisation(golden, script, tmp_path):
    """chinese-wav2vec2-base's extractor does not normalise, by all indications (facts §7.3):
    then a skipped loudness normalisation reaches the features and is named there."""
    import json
    import shutil

    w2v = tmp_path / "wav2vec2"
    shutil.copytree(golden.weights / "wav2vec2", w2v)
    pre = json.loads((w2v / "preprocessor_config.json").read_text())
    (w2v / "preprocessor_config.json").write_text(json.dumps({**pre, "do_normalize": False}))
    wav = golden.case("speech_a_1p79s").dir / "speech_a_1p79s.wav"
    official_audio(script, golden, wav, tmp_path / "official", wav2vec=w2v)
    mtlib_audio(golden, wav, tmp_path / "same", wav2vec=w2v)
    assert compare(tmp_path / "same", tmp_path / "official").passed
    mtlib_audio(golden, wav, tmp_path / "no_loudnorm", loudnorm=False, wav2vec=w2v)
    cmp = compare(tmp_path / "no_loudnorm", tmp_path / "official")
    assert cmp.first_divergence == "audio.input_values", cmp.summary()
    assert cmp.only_in_b == ["audio.loudnorm"]


def test_two_speaker_tracks_equal_mtlib(golden, script, tmp_path):
    """audio_prepare_multi ('add': turns) traced at audio.person1 / person2 (the tracks each
    embedding is made from), equal to mtlib's combine_speakers and to the golden case."""
    case = golden.case("multi_add_ab")
    wavs = [golden.case(n).dir / f"{n}.wav" for n in ("speech_a_1p79s", "speech_b_1p79s")]
    with tracing(tmp_path / "official", level="full"):
        fe, enc = script["custom_init"]("cpu", str(golden.weights / "wav2vec2"))
        p1, p2, _ = script["audio_prepare_multi"](str(wavs[0]), str(wavs[1]), "add")
        for track in (p1, p2):
            script["get_embedding"](track, fe, enc)
    ref = load_trace(tmp_path / "official")
    persons = [n for n in ref.names if n.startswith("audio.person")]
    assert persons == ["audio.person1", "audio.person2"]
    for n in persons:
        assert torch.equal(ref.tensor(n), case[n]), n
    with TraceWriter(tmp_path / "mtlib", "full") as w, trace.recording(w):
        x = [A.loudness_norm(A.load_audio(f)) for f in wavs]
        A.combine_speakers(x[0], x[1], "add")
    cmp = compare(tmp_path / "mtlib", tmp_path / "official", points="audio.*")
    assert [r.name for r in cmp.compared] == [
        "audio.raw16k", "audio.loudnorm", "audio.raw16k#1", "audio.loudnorm#1",
        "audio.person1", "audio.person2",
    ], cmp.summary()  # fmt: skip
    assert cmp.passed, cmp.summary()
