"""One home per rule: the spec registry, the frame arithmetic, the precision table, and the
engine consuming the plan (a deliberately wrong plan is caught with a named error)."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import torch

from mtlib import frames, spec
from mtlib.cli import main
from mtlib.config import ModelConfig, load_config
from mtlib.plan import MODEL_SIZES, PlanInputs, plan
from mtlib.run.loop import Models, generate
from mtlib.run.loop_plan import GenerationSettings, PlanDriftError
from tests.test_pipeline_loop import LinearDiT, MeanVAE, ZeroCLIP, fake_inputs

USER_ERROR = "RuntimeError: shape '[1, 11, 4, 56, 112]' is invalid for input of size 288512"
DRIFT_TAIL = (
    "The loop runs the shapes the plan computed (mtlib.plan / mtlib.frames); a difference is "
    "a bug in mtlib or a plan made for other inputs or settings."
)

# ---------------------------------------------------------------------------------------------
# the spec registry feeds config, plan, engine and weights
# ---------------------------------------------------------------------------------------------


def test_every_reader_takes_its_geometry_from_the_spec_registry():
    from mtlib.models import dit, wav2vec
    from mtlib.weights import WAV2VEC2_GEOMETRY

    assert set(typing.get_args(typing.get_type_hints(ModelConfig)["name"])) == {
        "tiny",
        "multitalk-14b",
    }
    assert set(spec.SPECS) == {"tiny", "multitalk-14b"}
    assert MODEL_SIZES is spec.SPECS
    # the real DiT config is the constructor's defaults (WanModel's), the tiny one the golden's
    assert dit.CONFIGS["multitalk-14b"] == dit.DiTConfig()
    t = dit.CONFIGS["tiny"]
    assert (t.dim, t.ffn_dim, t.num_heads, t.num_layers, t.text_dim, t.clip_dim) == (
        64,
        96,
        4,
        2,
        32,
        80,
    )
    assert (t.audio_layers, t.audio_width, t.context_tokens, t.intermediate_dim, t.output_dim) == (
        3,
        48,
        6,
        24,
        40,
    )
    assert (wav2vec.REAL_GEOMETRY.num_layers, wav2vec.REAL_GEOMETRY.hidden_size) == (12, 768)
    assert (wav2vec.TINY_GEOMETRY.num_layers, wav2vec.TINY_GEOMETRY.hidden_size) == (3, 48)
    for name, s in spec.SPECS.items():
        w = WAV2VEC2_GEOMETRY[name]
        assert (w["num_hidden_layers"], w["hidden_size"], w["conv_dim"][-1]) == (
            s.audio_layers, s.audio_width, s.w2v_conv_dim,
        )  # fmt: skip
        # the loop's constants (pipeline.VAE_STRIDE, PATCH_SIZE, LATENT_CHANNELS) hold for every spec
        assert (s.vae_stride, s.patch, s.z_dim, s.size_unit) == ((4, 8, 8), (1, 2, 2), 16, 16)


def test_unknown_model_names_the_registry():
    with pytest.raises(ValueError) as e:
        spec.get_spec("wan-1.3b")
    assert str(e.value) == "model 'wan-1.3b': unknown; allowed tiny, multitalk-14b."
    assert spec.get_spec(None).name == "multitalk-14b"


# ---------------------------------------------------------------------------------------------
# frames: the arithmetic, values worked out by hand from the reference's rules
# ---------------------------------------------------------------------------------------------


def test_frame_arithmetic_by_hand():
    assert (frames.SAMPLE_RATE, frames.VIDEO_FPS) == (16000, 25)
    assert [frames.is_valid_frame_num(n) for n in (1, 5, 43, 81, 82)] == [
        False,
        True,
        False,
        True,
        False,
    ]
    assert (
        frames.snap_frame_num(43),
        frames.snap_frame_num_up(43),
        frames.snap_frame_num_up(2),
    ) == (41, 45, 5)
    assert (frames.latent_frames(81), frames.latent_frames(25), frames.pixel_frames(21)) == (
        21,
        7,
        81,
    )
    assert frames.seq_len(81, 56, 112) == 21 * 28 * 56
    assert frames.embedding_frames(28640) == 44  # 1.79 s at 16 kHz
    assert frames.largest_frame_num_for(44) == 41
    assert frames.video_frames_of(28640) == 45  # ceil(44.75)


def test_clip_schedule_streaming_by_hand():
    """F 81, motion 25, 138 audio frames (facts §9.4): clips start 0, 56, 112; the last ends at
    193 > 138, so 193 - 138 + 3 = 58 frames are reflected; 81 + 56 + 56 - 58 = 135 frames."""
    s = frames.clip_schedule(81, 25, 1000, [138])
    assert [(c.audio_start, c.audio_end, c.n_cond, c.kept) for c in s.clips] == [
        (0, 81, 1, 81), (56, 137, 25, 56), (112, 193, 25, 56),
    ]  # fmt: skip
    assert [c.audio_len for c in s.clips] == [(138,), (138,), (196,)]
    assert (s.miss, s.video_frames) == ((58,), 135)
    one = frames.clip_schedule(13, 25, 13, [30])  # clip mode: one clip of frame_num
    assert [(c.audio_start, c.audio_end, c.kept) for c in one.clips] == [(0, 13, 13)]
    assert one.video_frames == 13


# ---------------------------------------------------------------------------------------------
# one precision table for plan and engine
# ---------------------------------------------------------------------------------------------


def test_plan_and_engine_share_the_precision_table():
    """The official code runs CLIP in fp16 (cast + fp16 autocast, facts §1.3), the DiT in bf16."""
    from mtlib.models import dit

    assert spec.component_dtype("reference", "clip") == "float16"
    assert dit.PRECISION_DTYPES == {"fp32": torch.float32, "reference": torch.bfloat16}
    cfg = load_config("multitalk-480")
    p = plan(cfg, PlanInputs(image_size=(896, 448), audio_samples_16k=(80000,)))
    assert p.tensor("clip.out").dtype == "float16"
    assert p.tensor("e2e.clip0.clip_fea").dtype == "float16"
    assert p.tensor("dit.in.clip_fea").dtype == "bfloat16"  # cast to the DiT's dtype
    assert p.tensor("e2e.t5.call0.out").dtype == "bfloat16"
    assert p.tensor("vae.y").dtype == "float32"
    assert p.weight_bytes["clip"] == 2 * 1_193_014_785


# ---------------------------------------------------------------------------------------------
# the engine consumes the plan
# ---------------------------------------------------------------------------------------------


def _plan(mode="clip", frame_num=13, audio_frames=(30,), **gen):
    cfg = load_config("tiny", {"generation.mode": mode, "generation.frame_num": frame_num,
                               "generation.motion_frame": 5, "generation.max_frames_num": 45,
                               **{f"generation.{k}": v for k, v in gen.items()}})  # fmt: skip
    return plan(cfg, PlanInputs(target_size=(16, 32), audio_frames=audio_frames))


def _run(plan, lengths, mode="clip", frame_num=13):
    cond, embs, ctx, neg, masks = fake_inputs(lengths)
    s = GenerationSettings(mode=mode, frame_num=frame_num, motion_frame=5, max_frames_num=45,
                           sampling_steps=1, color_correction_strength=0.0, progress=False)  # fmt: skip
    return generate(
        Models(LinearDiT(), MeanVAE(), ZeroCLIP()), cond, embs, ctx, neg, masks, s, plan=plan
    )


def test_engine_runs_the_planned_clips():
    p = _plan("streaming", audio_frames=(30,))
    assert p.valid and [c.audio_start_idx for c in p.clips] == [0, 8, 16, 24]  # step 13 - 5
    result = _run(p, [30], "streaming")
    assert [(c.audio_start, c.audio_end, c.n_cond, c.frames_kept) for c in result.clips] == [
        (c.audio_start_idx, c.audio_end_idx, c.cur_motion_frames_num, c.kept_frames)
        for c in p.clips
    ]
    assert result.video.shape == (3, p.video_frames, 16, 32)
    assert result.miss_lengths == list(p.miss)


def test_a_wrong_plan_is_caught_where_it_drifts():
    p = _plan()
    wrong_grid = dataclasses.replace(p, token_grid=(5, 1, 2))  # frame_num 13 has 4 latent frames
    with pytest.raises(PlanDriftError) as e:
        _run(wrong_grid, [30])
    assert str(e.value) == (
        "plan drift at e2e.clip0.vae_latent: the plan says [1, 16, 5, 2, 4], the engine has "
        "[1, 16, 4, 2, 4]. " + DRIFT_TAIL
    )
    with pytest.raises(PlanDriftError) as e:  # a plan made for longer audio
        _run(_plan(audio_frames=(40,)), [30])
    assert str(e.value) == (
        "plan drift at audio_embs frames per person: the plan says [40], the engine has [30]. "
        + DRIFT_TAIL
    )
    s = _plan("streaming")
    wrong_kept = dataclasses.replace(
        s, clips=[s.clips[0], dataclasses.replace(s.clips[1], kept_frames=9)] + s.clips[2:]
    )
    with pytest.raises(PlanDriftError) as e:
        _run(wrong_kept, [30], "streaming")
    assert (
        str(e.value)
        == "plan drift at e2e.clip1 kept frames: the plan says 9, the engine has 8. " + DRIFT_TAIL
    )


def test_an_invalid_plan_is_not_run():
    p = _plan(frame_num=11)
    assert not p.valid
    with pytest.raises(ValueError, match=r"^generate\(plan=\.\.\.\): the plan is invalid"):
        _run(p, [30], frame_num=13)


# ---------------------------------------------------------------------------------------------
# planner and engine agree on the rules
# ---------------------------------------------------------------------------------------------


def test_teacache_at_text_scale_one_is_refused_with_the_reason():
    p = _plan(teacache=True, text_guide_scale=1.0)
    assert [v.rule for v in p.violations] == ["teacache_text_scale_one"]
    v = p.violations[0]
    assert v.reference_message is None
    assert v.why.startswith("TeaCache assumes 3 DiT calls per step (cond, drop_text, uncond)")
    assert (
        v.fixes[0]
        == "set generation.teacache=false (text_guide_scale 1 already saves a third of the DiT calls)"
    )
    assert _plan(teacache=True, text_guide_scale=5.0).valid and _plan(text_guide_scale=1.0).valid


def test_plan_cli_defaults_to_the_real_model(capsys):
    """The user's first command, no --config: the real model's latent grid 56x112 and the error."""
    code = main(["plan", "--image", "data/landscape_16x9.png", "--audio", "data/speech_1p79s.wav",
                 "--frame-num", "43"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 2
    assert "model multitalk-14b | mode clip | size multitalk-480 (official buckets)" in out
    assert USER_ERROR in out
    assert "model tiny" not in out
    code = main(["plan", "--config", "tiny", "--image", "data/landscape_16x9.png", "--audio",
                 "data/speech_1p79s.wav", "--frame-num", "41"])  # fmt: skip
    out = capsys.readouterr().out
    assert (
        code == 0
        and "note: model tiny: the small random-weight test model, not MultiTalk-14B" in out
    )
