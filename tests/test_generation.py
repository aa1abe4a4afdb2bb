"""User cases of `generate_video` / `mtlib generate` with the tiny model on the CPU.

The tiny checkpoints are written once per session in a temporary folder (real file names and
formats) and loaded by the real loaders; the networks are loaded once and shared.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtlib import cli, generation
from mtlib.config import load_config
from mtlib.generation import PlanError, generate_video, load_models, prepare_run
from mtlib.trace import load_trace
from mtlib.video import read_mp4

FRAME_43_MESSAGE = "RuntimeError: shape '[1, 11, 4, 6, 12]' is invalid for input of size 3312"


@pytest.fixture(scope="module")
def tiny_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    mp = pytest.MonkeyPatch()
    mp.setenv("MTLIB_CACHE", str(root / "cache"))
    base = load_config("tiny", {"model.weights.tiny_dir": str(root / "weights")})
    models = load_models(base)
    yield base, models
    mp.undo()


def _cfg(base, **overrides):
    return base.replace(**overrides)


def test_tiny_models_come_from_checkpoints_in_the_real_layout(tiny_env):
    _, models = tiny_env
    assert models.layout.source == "tiny"
    assert (models.layout.wan_dir / "Wan2.1_VAE.pth").is_file()
    assert (models.layout.multitalk_dir / "multitalk.safetensors").is_file()
    assert models.dit.config.dim == 64 and models.audio_encoder.num_layers == 3
    assert models.device == "cpu" and models.precision == "fp32"


def test_auto_frame_num_pads_the_short_audio_and_trims_the_video(tiny_env, tmp_path):
    base, models = tiny_env
    cfg = _cfg(
        base,
        **{"inputs.image": "data/landscape_16x9.png", "inputs.audio": ["data/speech_1p79s.wav"]},
    )
    run = prepare_run(cfg, progress=False)
    assert run.config.generation.frame_num == 45  # smallest 4n+1 covering 1.79 s at 25 fps
    assert run.pad_to_samples[0] > 28640  # silence appended to the 1.79 s track
    out = generate_video(cfg, tmp_path / "v.mp4", progress=False, models=models)
    frames, audio, info = read_mp4(out.path)
    assert 44 <= info["n_frames"] <= 45 and info["n_frames"] == out.frames == run.output_frames
    assert (info["width"], info["height"]) == (96, 48)  # tiny bucket 0.50 of a 16:9 image
    assert frames.shape == (out.frames, 48, 96, 3)
    assert audio is not None and info["audio_codec"] == "aac"
    assert abs(info["audio_duration_s"] - info["duration_s"]) < 0.03
    assert abs(info["duration_s"] - 1.79) < 0.03
    assert np.abs(audio[0]).max() > 0.01  # speech, not the padding's silence
    meta = info["metadata"]
    assert meta["seed"] == 42 and meta["config"]["generation"]["frame_num"] == 45
    assert meta["config"]["inputs"]["image"] == "data/landscape_16x9.png"
    # the loop's stage times (mtlib.stagetimer), every stage of the one clip, in loop order
    assert list(out.stage_timings) == ["setup", "clip_image_encoder", "vae_encode", "dit_step0",
                                       "dit_steps_after_first", "vae_decode", "color_correction",
                                       "frames_to_host"]  # fmt: skip
    assert all(v >= 0 for v in out.stage_timings.values())
    assert sum(out.stage_timings.values()) <= out.timings["generate"]


def test_frame_num_43_is_refused_before_any_weights_load(tiny_env, tmp_path, monkeypatch):
    base, _ = tiny_env

    def forbidden(*a, **k):
        raise AssertionError("weights were loaded for a run the plan refuses")

    monkeypatch.setattr(generation, "load_models", forbidden)
    monkeypatch.setattr("mtlib.weights.layout_for_config", forbidden)
    monkeypatch.setattr("mtlib.models.dit.load_dit", forbidden)
    monkeypatch.setattr("mtlib.models.wav2vec.load_wav2vec", forbidden)
    cfg = _cfg(
        base,
        **{
            "inputs.image": "data/landscape_16x9.png",
            "inputs.audio": ["data/speech_1p79s.wav"],
            "generation.frame_num": 43,
        },
    )
    with pytest.raises(PlanError) as e:
        generate_video(cfg, tmp_path / "v.mp4", progress=False)
    assert FRAME_43_MESSAGE in str(e.value)
    assert [v.rule for v in e.value.violations] == ["frame_num_4n_plus_1"]
    assert "fix: set frame_num to 41" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_cli_frame_num_43_exits_2_with_the_diagnosis(tmp_path, monkeypatch, capsys):
    def forbidden(*a, **k):
        raise AssertionError("weights were loaded for a run the plan refuses")

    monkeypatch.setattr(generation, "load_models", forbidden)
    out = tmp_path / "v.mp4"
    argv = ["generate", "--image", "data/landscape_16x9.png", "--audio", "data/speech_1p79s.wav"]
    code = cli.main([*argv, "--frame-num", "43", "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert FRAME_43_MESSAGE in err and "refused before loading any weights" in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_same_seed_same_frames_other_seed_other_frames(tiny_env, tmp_path):
    base, models = tiny_env
    cfg = _cfg(base, **{"generation.frame_num": 13})
    a = generate_video(cfg, tmp_path / "a.mp4", progress=False, models=models)
    b = generate_video(cfg, tmp_path / "b.mp4", progress=False, models=models)
    c = generate_video(
        cfg.replace(**{"generation.seed": 43}), tmp_path / "c.mp4", progress=False, models=models
    )
    assert a.video.equal(b.video)
    fa, fb, fc = (read_mp4(p)[0] for p in (a.path, b.path, c.path))
    assert np.array_equal(fa, fb)
    assert not np.array_equal(fa, fc)
    assert read_mp4(c.path)[2]["metadata"]["seed"] == 43


def test_two_speakers_para(tiny_env, tmp_path):
    base, models = tiny_env
    cfg = _cfg(
        base,
        **{
            "inputs.image": "data/two_person_16x9.png",
            "inputs.audio": ["data/speech_1p79s.wav", "data/speech_b_1p79s.wav"],
            "inputs.audio_type": "para",
            "generation.frame_num": 21,
        },
    )
    trace_dir = tmp_path / "trace"
    out = generate_video(
        cfg, tmp_path / "v.mp4", trace_dir=trace_dir, progress=False, models=models
    )
    frames, audio, info = read_mp4(out.path)
    assert info["n_frames"] == 21 and frames.shape[1:] == (48, 96, 3)
    assert abs(info["audio_duration_s"] - 21 / 25) < 0.03
    t = load_trace(trace_dir)
    assert t.stats("e2e.clip0.audio")["shape"] == [2, 21, 5, 3, 48]  # both persons' windows
    assert t.stats("e2e.clip0.ref_target_masks")["shape"] == [3, 6, 12]
    assert t.stats("output.video")["shape"] == [3, 21, 48, 96]


def test_streaming_two_clips(tiny_env, tmp_path):
    base, models = tiny_env
    cfg = _cfg(
        base,
        **{
            "generation.mode": "streaming",
            "generation.frame_num": 13,
            "generation.motion_frame": 5,
        },
    )
    run = prepare_run(cfg, progress=False)
    assert len(run.plan.clips) >= 2
    out = generate_video(cfg, tmp_path / "v.mp4", progress=False, models=models)
    _, audio, info = read_mp4(out.path)
    assert info["n_frames"] == out.frames == run.plan.output_frames
    assert out.frames > 13  # more than one clip's worth
    assert audio is not None


def test_teacache_threshold_zero_is_exact_and_huge_skips_every_allowed_call(tiny_env, tmp_path):
    """8 steps x 3 passes = 24 calls; the first 15 (5 steps) always compute. Threshold 0 never
    skips (same video as without TeaCache); an unreachable threshold skips the other 9."""
    base, models = tiny_env
    cfg = _cfg(base, **{"generation.sampling_steps": 8})
    plain = generate_video(cfg, tmp_path / "plain.mp4", progress=False, models=models)
    assert plain.dit_calls == 24 and plain.teacache_skipped is None
    runs = {}
    for thresh in (0.0, 1e9):
        c = _cfg(cfg, **{"generation.teacache": True, "generation.teacache_thresh": thresh})
        runs[thresh] = generate_video(c, tmp_path / f"{thresh}.mp4", progress=False, models=models)
    assert runs[0.0].dit_calls == 24 and runs[0.0].teacache_skipped == 0
    assert torch.equal(runs[0.0].video, plain.video)
    assert runs[1e9].dit_calls == 24 and runs[1e9].teacache_skipped == 9
    decisions = runs[1e9].teacache_decisions
    assert [d[3] for d in decisions] == [True] * 15 + [False] * 9
    assert all(d[1] is None for d in decisions[:15]) and all(d[1] > 0 for d in decisions[15:])
    assert not torch.equal(runs[1e9].video, plain.video)
    assert "TeaCache: 9 of 24 DiT calls answered from the cache" in generation.summary(runs[1e9])


def test_bbox_outside_the_image_is_refused_before_weights(tiny_env, monkeypatch, tmp_path):
    base, _ = tiny_env
    monkeypatch.setattr(generation, "load_models", lambda *a, **k: pytest.fail("loaded"))
    cfg = _cfg(
        base,
        **{
            "inputs.image": "data/two_person_16x9.png",
            "inputs.audio": ["data/speech_1p79s.wav", "data/speech_b_1p79s.wav"],
            "inputs.bbox": [[0, 0, 10, 10], [0, 0, 5000, 10]],
        },
    )
    with pytest.raises(ValueError, match="bbox of person 2"):
        generate_video(cfg, tmp_path / "v.mp4", progress=False)


def test_trace_levels(tiny_env, tmp_path):
    base, models = tiny_env
    cfg = _cfg(base, **{"generation.frame_num": 13, "trace.level": "off"})
    generate_video(
        cfg, tmp_path / "a.mp4", trace_dir=tmp_path / "off", progress=False, models=models
    )
    assert not (tmp_path / "off").exists()
    full = cfg.replace(**{"trace.level": "full", "trace.full": ["e2e.clip0.rand.*", "output.*"]})
    out = generate_video(
        full, tmp_path / "b.mp4", trace_dir=tmp_path / "full", progress=False, models=models
    )
    t = load_trace(tmp_path / "full")
    assert t.meta["status"] == "complete" and t.meta["seed"] == 42
    assert t.meta["config"]["trace"]["level"] == "full"
    assert sorted(n for n in t.names if t.has_tensor(n)) == ["e2e.clip0.rand.noise", "output.video"]
    assert t.tensor("output.video").equal(out.video)
    assert "e2e.clip0.step0.cond" in t and "e2e.clip0.step0.noise_pred" in t
    # the DiT's internals stay out by default ...
    assert not [n for n in t.names if ".dit." in n or ".vae." in n]
    # ... unless trace.full names them: one point per DiT pass (cond, drop_text, uncond)
    inside = cfg.replace(**{"trace.level": "stats", "trace.full": ["e2e.clip0.step0.dit.out"]})
    generate_video(
        inside, tmp_path / "c.mp4", trace_dir=tmp_path / "dit", progress=False, models=models
    )
    t = load_trace(tmp_path / "dit")
    dit_points = [n for n in t.names if ".dit." in n]
    assert dit_points == [
        "e2e.clip0.step0.dit.out", "e2e.clip0.step0.dit.out#1", "e2e.clip0.step0.dit.out#2"
    ]  # fmt: skip
    assert not t.has_tensor("e2e.clip0.step0.dit.out")  # level stats: statistics only


def test_preprocess_and_save(tiny_env, tmp_path):
    base, models = tiny_env
    run = prepare_run(base, progress=False)
    pre = generation.preprocess_inputs(run, models.audio_encoder, cache_dir=tmp_path / "emb")
    assert [e.shape[0] for e in pre.audio_embs] == list(run.plan.padded_audio_frames)
    assert "loudness" in pre.describe() and "planned" in pre.describe()
    assert len(list((tmp_path / "emb").glob("*.safetensors"))) == 1  # cached embedding
    paths = generation.save_preprocessed(pre, tmp_path / "run")
    from safetensors.torch import load_file

    assert load_file(str(paths["audio_embedding"]))["person1"].equal(pre.audio_embs[0])
    assert load_file(str(paths["cond"]))["cond_image"].equal(pre.cond_image)
    assert paths["cond_png"].stat().st_size > 0


def test_cli_generate_writes_the_video_and_prints_the_summary(tiny_env, tmp_path, capsys):
    base, _ = tiny_env
    out = tmp_path / "v.mp4"
    code = cli.main([
        "generate", "--image", "data/portrait.png", "--audio", "data/speech_1p79s.wav",
        "--frame-num", "13", "--seed", "5", "--prompt", "a person talks",
        "-p", f"model.weights.tiny_dir={base.model.weights.tiny_dir}",
        "-p", "generation.sampling_steps=2", "--out", str(out), "--no-progress",
    ])  # fmt: skip
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(out)
    assert lines[1].startswith("13 frames 48x96 @ 25 fps = 0.52 s")
    assert lines[2].startswith("wall ")
    meta = read_mp4(out)[2]["metadata"]
    assert meta["seed"] == 5 and meta["config"]["inputs"]["prompt"] == "a person talks"
    assert meta["config"]["generation"]["sampling_steps"] == 2
