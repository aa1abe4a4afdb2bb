"""Sampler arithmetic and colour correction against the golden e2e traces (data-driven)."""

from __future__ import annotations

import pytest
import torch

from mtlib.run import sampling
from mtlib.run.color import match_and_blend_colors
from tests.golden import (
    E2E_TOL,
    assert_close,
    case_settings,
    dit_passes,
    get_case,
    golden_cases,
)
from tests.pipeline_replay import golden_audio_embs


def clip_indices(case):
    return range(len(case.params["clips"]))


def steps_of(case) -> int:
    return case_settings(case).sampling_steps


@pytest.mark.golden
@pytest.mark.parametrize("case_name", golden_cases("e2e"), ids=str)
def test_golden_timesteps(golden, case_name):
    case = get_case(golden, case_name)
    s = case_settings(case)
    ts = sampling.timesteps(s.sampling_steps, s.shift)
    for c in clip_indices(case):
        assert ts.dtype == torch.float32
        assert_close(ts, case[f"e2e.clip{c}.timesteps"], "timesteps", 1e-6)
        assert ts.tolist() == pytest.approx(case.params["clips"][c]["timesteps"], abs=1e-4)
        for i in range(steps_of(case)):
            assert_close(ts[i : i + 1], case[f"e2e.clip{c}.step{i}.t"], f"step{i}.t", 1e-6)


@pytest.mark.golden
@pytest.mark.parametrize("case_name", golden_cases("e2e"), ids=str)
def test_golden_frame_mask(golden, case_name):
    case = get_case(golden, case_name)
    for c, clip in enumerate(case.params["clips"]):
        msk = sampling.frame_mask(
            clip["frame_num"], clip["cur_motion_frames_num"], clip["lat_h"], clip["lat_w"]
        )
        assert torch.equal(msk, case[f"e2e.clip{c}.mask"])


@pytest.mark.golden
@pytest.mark.parametrize("case_name", golden_cases("e2e"), ids=str)
def test_golden_audio_windows(golden, case_name):
    """Windows of the ORIGINAL embedding, plus the reflected tail on the last streaming clip."""
    case = get_case(golden, case_name)
    embs = golden_audio_embs(golden, case)
    clips = case.params["clips"]
    for c, clip in enumerate(clips):
        start, end = clip["audio_start_idx"], clip["audio_end_idx"]
        padded = []
        for emb in embs:
            if len(clips) > 1 and c == len(clips) - 1 and end >= emb.shape[0]:
                miss = end - emb.shape[0] + 3
                emb = torch.cat([emb, emb[-miss:].flip(0)])
            padded.append(emb)
        audio = torch.stack([sampling.audio_windows(e, start, end - start) for e in padded])
        assert_close(audio, case[f"e2e.clip{c}.audio"], f"clip{c}.audio", E2E_TOL)


def test_audio_windows_clamp_both_ends():
    emb = torch.arange(6.0)[:, None, None]  # [6, 1, 1], frame i holds i
    win = sampling.audio_windows(emb, 0, 6)[..., 0, 0]
    assert win[0].tolist() == [0, 0, 0, 1, 2]
    assert win[5].tolist() == [3, 4, 5, 5, 5]


def guided_velocity(case, passes, preds, buffers):
    """The guided velocity of one step from the case's pass layout and guidance settings
    (plain CFG or APG with the case's momentum / threshold; buffers: one per term, per clip)."""
    s = case_settings(case)
    if passes == ("cond", "drop_text", "uncond"):
        cond, drop_text, uncond = (preds[k] for k in passes)
        if not s.use_apg:
            return sampling.guide(cond, drop_text, uncond, s.text_guide_scale, s.audio_guide_scale)
        return sampling.guide_apg(
            cond, drop_text, uncond, s.text_guide_scale, s.audio_guide_scale,
            buffers[0], buffers[1], s.apg_norm_threshold,
        )  # fmt: skip
    cond, drop_audio = (preds[k] for k in passes)  # ("cond", "drop_audio"): text scale 1
    if not s.use_apg:
        return sampling.guide_text_one(cond, drop_audio, s.audio_guide_scale)
    return sampling.guide_apg_text_one(
        cond, drop_audio, s.audio_guide_scale, buffers[1], s.apg_norm_threshold
    )


@pytest.mark.golden
@pytest.mark.parametrize("case_name", golden_cases("e2e"), ids=str)
def test_golden_guidance_and_euler(golden, case_name):
    """noise_pred = −guide(the case's passes, its guidance), latent_{i+1} = euler_step(...)."""
    case = get_case(golden, case_name)
    passes = dit_passes(case)
    s = case_settings(case)
    ts = sampling.timesteps(s.sampling_steps, s.shift)
    for c in clip_indices(case):
        # APG: one momentum buffer per guidance term, fresh for every clip
        buffers = [sampling.MomentumBuffer(s.apg_momentum) for _ in range(2)]
        for i in range(steps_of(case)):
            p = f"e2e.clip{c}.step{i}."
            absent = [k for k in ("drop_text", "uncond", "drop_audio") if k not in passes]
            assert not any(p + k in case.tensors for k in absent), f"{p}: passes beyond {passes}"
            velocity = guided_velocity(case, passes, {k: case[p + k] for k in passes}, buffers)
            assert_close(-velocity, case[p + "noise_pred"], p + "noise_pred", E2E_TOL)
            updated = sampling.euler_step(
                case[p + "latent_in"], case[p + "noise_pred"], ts[i : i + 1], ts[i + 1 : i + 2]
            )
            if c == 0:  # no motion re-noising: the update is the next input
                nxt = (
                    case[f"e2e.clip{c}.step{i + 1}.latent_in"]
                    if i + 1 < steps_of(case)
                    else case[f"e2e.clip{c}.x0"][0]
                )
                assert_close(updated, nxt, p + "latent_updated", E2E_TOL)
            else:
                assert_close(updated, case[p + "latent_updated"], p + "latent_updated", E2E_TOL)


@pytest.mark.golden
@pytest.mark.parametrize("case_name", golden_cases("e2e"), ids=str)
def test_golden_motion_renoising(golden, case_name):
    case = get_case(golden, case_name)
    for c in list(clip_indices(case))[1:]:
        p = f"e2e.clip{c}."
        motion = case[p + "latent_motion_frames"]
        n_cond = case.params["clips"][c]["cur_motion_frames_num"]
        assert torch.equal(motion, case[p + "vae_latent"][:, :, : 1 + (n_cond - 1) // 4][0])
        draws = [("add_noise_init", "rand.motion_init")] + [
            (f"add_noise_step{i}", f"rand.motion_step{i}") for i in range(steps_of(case))
        ]
        for point, rand in draws:
            out = sampling.renoise_motion(motion, case[p + point + ".t"], case[p + rand])
            assert_close(out, case[p + point + ".out"], p + point, E2E_TOL)
        # the last re-noising is at t = 0: the motion latents come back exactly
        assert torch.equal(out, motion)


@pytest.mark.golden
def test_golden_set_has_streaming_case(golden):
    """Guards the motion tests above against silently testing nothing."""
    assert any(len(c.params["clips"]) > 1 for c in golden.cases("e2e"))


@pytest.mark.golden
@pytest.mark.parametrize("case_name", golden_cases("e2e"), ids=str)
def test_golden_color_correction(golden, case_name):
    case = get_case(golden, case_name)
    strength = case_settings(case).color_correction_strength
    for c in clip_indices(case):
        p = f"e2e.clip{c}."
        assert torch.equal(
            case[p + "color_ref"], case["e2e.clip0.cond_image"]
        )  # the ORIGINAL image
        out = match_and_blend_colors(case[p + "decoded"], case[p + "color_ref"], strength)
        assert_close(out, case[p + "color_corrected"], p + "color_corrected", E2E_TOL)


def test_color_correction_strength_zero_and_flat_frame():
    frames = torch.rand(1, 3, 2, 8, 8) * 2 - 1
    ref = torch.rand(1, 3, 1, 8, 8) * 2 - 1
    assert match_and_blend_colors(frames, ref, 0.0) is frames
    flat = torch.zeros(1, 3, 1, 8, 8)  # std_src == 0 in every channel -> reference means
    out = match_and_blend_colors(flat, ref, 1.0)
    assert out.shape == flat.shape and (out - out[..., :1, :1]).abs().max() < 1e-6
    with pytest.raises(ValueError, match="between 0 and 1"):
        match_and_blend_colors(frames, ref, 1.5)


def test_timesteps_shift_one_is_linspace_and_ends_at_zero():
    ts = sampling.timesteps(4, 1.0)
    assert ts.tolist() == pytest.approx([1000, 667, 334, 1, 0])


def test_frame_mask_layout_for_motion_frames():
    """Channel c of latent k is pixel frame max(0, 4k + c − 3): 25 motion frames -> 7 latents."""
    msk = sampling.frame_mask(81, 25, 1, 1)[0, :, :, 0, 0]  # [4, T]
    for k in range(msk.shape[1]):
        for ch in range(4):
            assert msk[ch, k] == float(max(0, 4 * k + ch - 3) < 25)
    assert msk.shape == (4, 21) and msk[:, :7].all() and not msk[:, 7:].any()


def test_frame_mask_rejects_bad_frame_num():
    with pytest.raises(ValueError, match=r"frame_num = 43 is not of the form 4n\+1"):
        sampling.frame_mask(43, 1, 56, 112)


def test_apg_projection_and_momentum():
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(4, 2, 3, 3, generator=g)
    diff = torch.randn(4, 2, 3, 3, generator=g)
    out = sampling.apg(diff, cond, None, norm_threshold=0)
    assert abs((out.double() * cond.double()).sum().item()) < 1e-5  # orthogonal to cond
    big = 1e3 * diff
    clipped = sampling.apg(big, cond, None, norm_threshold=1.0)
    assert clipped.norm().item() <= 1.0 + 1e-5
    buf = sampling.MomentumBuffer(-0.75)
    first = buf.update(diff)
    assert torch.equal(first, diff)
    second = buf.update(diff)
    assert torch.allclose(second, diff - 0.75 * diff)


def test_guide_text_one():
    cond, drop_audio = torch.full((2,), 3.0), torch.full((2,), 1.0)
    assert sampling.guide_text_one(cond, drop_audio, 2.0).tolist() == [5.0, 5.0]
