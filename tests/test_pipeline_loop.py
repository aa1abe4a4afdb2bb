"""generate(): the whole clip / streaming loop against the golden e2e traces (replayed networks),
plus its bookkeeping, guidance branches, noise sources and input checks on fake networks."""

from __future__ import annotations

import pytest
import torch

from mtlib import trace
from mtlib.io import InputError
from mtlib.run.loop import Models, encode_prompts, generate
from mtlib.run.loop_plan import GenerationSettings, plan_clips
from mtlib.run.noise import InjectedNoise, SeededNoise
from tests.golden import E2E_TOL, assert_close, case_settings, dit_passes, get_case, golden_cases
from tests.pipeline_replay import (
    ReplayCLIP,
    ReplayDiT,
    ReplayVAE,
    golden_audio_embs,
    golden_contexts,
)


def settings_of(case, **overrides) -> GenerationSettings:
    return case_settings(case, **overrides)


def rand_tensors(case) -> dict:
    return {k: v for k, v in case.tensors.items() if ".rand." in k}


@pytest.mark.golden
@pytest.mark.parametrize("case_name", golden_cases("e2e"), ids=str)
def test_golden_e2e_loop_replay(golden, case_name):
    case = get_case(golden, case_name)
    dit_passes(case)  # the case's pass layout, checked against the reference's rule
    models = Models(dit=ReplayDiT(case), vae=ReplayVAE(case), clip=ReplayCLIP(case))
    recorder = trace.MemoryRecorder(["e2e.*"])
    with trace.recording(recorder):
        result = generate(
            models,
            cond_image=case["e2e.clip0.cond_image"],
            audio_embs=golden_audio_embs(golden, case),
            prompt_context=golden_contexts(case)[0],
            neg_context=golden_contexts(case)[1],
            ref_target_masks=case["e2e.clip0.ref_target_masks"],
            settings=settings_of(case),
            noise_source=InjectedNoise(rand_tensors(case)),
        )
    # every DiT pass, VAE and CLIP call happened, in the golden order
    assert models.dit.calls == models.dit.expected
    assert models.vae.n_encode == models.vae.n_decode == models.clip.n == len(case.params["clips"])
    assert list(result.video.shape) == case.params["video_shape"]
    assert [(c.audio_start, c.audio_end) for c in result.clips] == [
        (c["audio_start_idx"], c["audio_end_idx"]) for c in case.params["clips"]
    ]
    # every golden e2e tensor (but the T5 call, which runs before generate) was recorded, equal
    expected = [k for k in case.tensors if not k.startswith(("e2e.t5.", "lora."))]
    missing = [k for k in expected if k not in recorder]
    assert not missing, f"not recorded: {missing}"
    for name in expected:
        assert_close(recorder[name], case[name], name, E2E_TOL)
    assert_close(result.video, case["e2e.video"], "e2e.video", E2E_TOL)
    # same order of trace points as the reference (context_null aside: the reference records
    # it at its first use, inside the first drop_text pass)
    golden_order = [
        k
        for k in case.params["trace_order"]
        if not k.startswith("e2e.t5.") and "context_null" not in k
    ]
    golden_order += [k for k in ["e2e.video"] if k not in golden_order]  # the return value
    ours = [k for k in recorder.order if k in case.tensors and "context_null" not in k]
    assert ours == golden_order
    # the loop's own names for its draws match the golden draw order
    drawn = [k for k in recorder.order if ".rand." in k]
    assert drawn == [d["name"] for d in case.params["random_draws_in_order"]]


@pytest.mark.golden
@pytest.mark.parametrize("case_name", golden_cases("e2e"), ids=str)
def test_golden_seeded_noise_matches_reference_draws(golden, case_name):
    """One CPU generator seeded with the case's seed gives the reference's draws, in order."""
    case = get_case(golden, case_name)
    noise = SeededNoise(case.params["generate_kwargs"]["seed"])
    for draw in case.params["random_draws_in_order"]:
        got = noise.draw(draw["name"], tuple(draw["shape"]))
        assert torch.equal(got, case[draw["name"]]), draw["name"]


@pytest.mark.golden
@pytest.mark.parametrize("case_name", golden_cases("e2e"), ids=str)
def test_golden_plan_clips(golden, case_name):
    case = get_case(golden, case_name)
    lengths = [e.shape[0] for e in golden_audio_embs(golden, case)]
    assert plan_clips(lengths, settings_of(case)) == [
        (c["audio_start_idx"], c["audio_end_idx"]) for c in case.params["clips"]
    ]


# ---------------------------------------------------------------------------------------------
# Fake networks (no golden data): bookkeeping and branches
# ---------------------------------------------------------------------------------------------


class LinearDiT:
    """A deterministic stand-in: the prediction depends on x, t, the context and the audio."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, context, clip_fea, y, audio, ref_target_masks, seq_len):
        self.calls.append(dict(context=context, audio=audio, t=t.clone(), x=x.clone()))
        return 0.5 * x + 1e-3 * t + context.mean() + audio.mean() + 0.1 * y[0, 4:].mean()


class MeanVAE:
    def encode(self, video):
        _, _, F, H, W = video.shape
        pooled = torch.nn.functional.avg_pool3d(
            torch.cat([video[:, :, :1]] * 4 + [video[:, :, 1:]], dim=2), (4, 8, 8)
        )  # [1, 3, T, h, w]
        return pooled.mean(1, keepdim=True).repeat(1, 16, 1, 1, 1)

    def decode(self, z):
        _, _, T, h, w = z.shape
        up = z[:, :3].repeat_interleave(8, -1).repeat_interleave(8, -2).repeat_interleave(4, 2)
        return up[:, :, 3:].tanh()  # [1, 3, 4(T-1)+1, H, W]


class ZeroCLIP:
    def encode_image(self, cond):
        assert cond.shape[2] == 1
        return torch.zeros(1, 257, 8)


def fake_inputs(lengths, H=16, W=32, persons=None):
    g = torch.Generator().manual_seed(0)
    cond = torch.rand(1, 3, 1, H, W, generator=g) * 2 - 1
    embs = [torch.randn(n, 2, 4, generator=g) for n in lengths]
    masks = torch.ones(3, H // 8, W // 8)
    return cond, embs, torch.randn(5, 6, generator=g), torch.randn(7, 6, generator=g), masks


def run_fake(lengths, **settings):
    cond, embs, ctx, neg, masks = fake_inputs(lengths)
    dit = LinearDiT()
    values = dict(progress=False, sampling_steps=2, color_correction_strength=0.0)
    s = GenerationSettings(**{**values, **settings})
    result = generate(Models(dit, MeanVAE(), ZeroCLIP()), cond, embs, ctx, neg, masks, s)
    return result, dit, ctx, neg


@pytest.mark.parametrize(
    "audio_len, n_frames, n_clips",
    [(82, 79, 2), (137, 134, 2), (138, 135, 3), (250, 247, 5)],
)
def test_streaming_lengths_match_reference_bookkeeping(audio_len, n_frames, n_clips):
    """facts §9.4: F = 81, motion 25 -> output length L_a − 3 and the listed clip counts."""
    s = GenerationSettings(mode="streaming", frame_num=81, motion_frame=25)
    assert len(plan_clips([audio_len], s)) == n_clips
    result, *_ = run_fake(
        [audio_len], mode="streaming", frame_num=81, motion_frame=25, sampling_steps=1
    )
    assert result.video.shape == (3, n_frames, 16, 32)
    assert len(result.clips) == n_clips
    assert result.miss_lengths == [81 + 56 * (n_clips - 1) - audio_len + 3]


def test_clip_mode_one_clip_of_frame_num():
    result, dit, ctx, neg = run_fake([30], mode="clip", frame_num=21)
    assert result.video.shape == (3, 21, 16, 32)
    assert len(result.clips) == 1 and result.miss_lengths == []
    assert len(dit.calls) == 2 * 3  # 3 passes per step
    # order: cond (prompt, audio), drop_text (neg, audio), uncond (neg, one silent person)
    cond, drop_text, uncond = dit.calls[:3]
    assert torch.equal(cond["context"], ctx) and torch.equal(drop_text["context"], neg)
    assert torch.equal(uncond["context"], neg)
    assert cond["audio"].shape == (1, 21, 5, 2, 4) and cond["audio"].any()
    assert uncond["audio"].shape == (1, 21, 5, 2, 4) and not uncond["audio"].any()


def test_two_persons_null_audio_is_one_silent_person():
    result, dit, ctx, neg = run_fake([30, 31], mode="clip", frame_num=13)
    assert dit.calls[0]["audio"].shape == (2, 13, 5, 2, 4)
    assert dit.calls[2]["audio"].shape == (1, 13, 5, 2, 4) and not dit.calls[2]["audio"].any()


def test_text_scale_one_uses_two_passes_with_drop_audio():
    recorder = trace.MemoryRecorder(["*step0.*"])
    with trace.recording(recorder):
        result, dit, ctx, neg = run_fake(
            [30], frame_num=13, text_guide_scale=1.0, audio_guide_scale=2.0
        )
    assert len(dit.calls) == 2 * 2
    cond, drop_audio = dit.calls[:2]
    assert torch.equal(drop_audio["context"], ctx) and not drop_audio["audio"].any()
    assert "e2e.clip0.step0.drop_audio" in recorder and "e2e.clip0.step0.drop_text" not in recorder
    p = "e2e.clip0.step0."
    expected = -(
        recorder[p + "drop_audio"] + 2.0 * (recorder[p + "cond"] - recorder[p + "drop_audio"])
    )
    assert torch.equal(recorder[p + "noise_pred"], expected)


def test_apg_changes_the_update_and_stays_finite():
    plain, *_ = run_fake([30], frame_num=13)
    apg, *_ = run_fake([30], frame_num=13, use_apg=True)
    assert torch.isfinite(apg.video).all()
    assert not torch.equal(plain.video, apg.video)


def test_same_seed_same_video_other_seed_differs():
    a, *_ = run_fake([30], frame_num=13, seed=1)
    b, *_ = run_fake([30], frame_num=13, seed=1)
    c, *_ = run_fake([30], frame_num=13, seed=2)
    assert torch.equal(a.video, b.video) and a.seed == 1
    assert not torch.equal(a.video, c.video)


def test_injected_noise_refuses_missing_name_and_wrong_shape():
    noise = InjectedNoise({"e2e.clip0.rand.noise": torch.zeros(16, 4, 2, 4)})
    with pytest.raises(InputError, match=r"no tensor named 'e2e.clip1.rand.noise'"):
        noise.draw("e2e.clip1.rand.noise", (16, 4, 2, 4))
    with pytest.raises(
        InputError, match=r"shape \[16, 4, 2, 4\] but this run needs \[16, 4, 6, 8\]"
    ):
        noise.draw("e2e.clip0.rand.noise", (16, 4, 6, 8))


def test_frame_num_not_4n_plus_1_fails_before_compute():
    cond, embs, ctx, neg, masks = fake_inputs([60])
    dit = LinearDiT()
    s = GenerationSettings(frame_num=43, progress=False)
    with pytest.raises(
        ValueError, match=r"frame_num = 43 is not of the form 4n\+1.*Fix: use 41 or 45"
    ):
        generate(Models(dit, MeanVAE(), ZeroCLIP()), cond, embs, ctx, neg, masks, s)
    assert dit.calls == []


@pytest.mark.parametrize("audio_len", [44, 45])
def test_audio_not_longer_than_frame_num_is_refused(audio_len):
    cond, embs, ctx, neg, masks = fake_inputs([audio_len])
    s = GenerationSettings(frame_num=45, progress=False)
    with pytest.raises(
        InputError, match=rf"audio_embs\[0\] has {audio_len} frames but frame_num = 45"
    ):
        generate(Models(LinearDiT(), MeanVAE(), ZeroCLIP()), cond, embs, ctx, neg, masks, s)


def test_bad_mask_shape_is_refused():
    cond, embs, ctx, neg, _ = fake_inputs([30])
    s = GenerationSettings(frame_num=13, progress=False)
    with pytest.raises(InputError, match=r"ref_target_masks must be \[3, 2, 4\]"):
        generate(
            Models(LinearDiT(), MeanVAE(), ZeroCLIP()), cond, embs, ctx, neg, torch.ones(3, 4, 4), s
        )


def test_settings_from_config():
    from mtlib.config import load_config

    cfg = load_config("tiny", {"generation.frame_num": 13, "generation.mode": "streaming"})
    s = GenerationSettings.from_config(cfg.generation, cfg.model.size, progress=False)
    assert (s.mode, s.frame_num, s.shift, s.sampling_steps, s.progress) == (
        "streaming",
        13,
        7.0,
        cfg.generation.sampling_steps,
        False,
    )
    assert s.frames_cap == cfg.generation.max_frames_num
    with pytest.raises(ValueError, match="frame_num is 'auto'"):
        GenerationSettings.from_config(load_config("tiny").generation)


def test_encode_prompts_batches_prompt_and_negative_and_records_t5_points():
    class Encoded:
        def __init__(self, texts):
            self.contexts = [torch.full((len(t), 4), float(i)) for i, t in enumerate(texts)]
            self.ids = torch.tensor([[len(t) for t in texts]])
            self.mask = torch.ones(1, 2)
            self.out = torch.zeros(2, 3, 4)

    class FakeT5:
        def __init__(self):
            self.calls = []

        def encode(self, texts):
            self.calls.append(texts)
            return Encoded(texts)

    t5 = FakeT5()
    recorder = trace.MemoryRecorder()
    with trace.recording(recorder):
        context, context_null = encode_prompts(t5, "hello", "bad things")
    assert t5.calls == [["hello", "bad things"]]  # ONE batch, prompt first
    assert context.shape == (5, 4) and not context.any() and (context_null == 1).all()
    assert recorder.order == ["e2e.t5.call0.ids", "e2e.t5.call0.mask", "e2e.t5.call0.out"]


class TypedDiT(torch.nn.Module):
    """An nn.Module DiT whose parameter sets device and dtype; it checks what it is given."""

    def __init__(self, dtype, device="cpu"):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.full((1,), 0.5, dtype=dtype, device=device))
        self.seen = []

    def forward(self, x, t, context, clip_fea, y, audio, ref_target_masks, seq_len):
        dtype, device = self.scale.dtype, self.scale.device
        self.seen.append({k: (v.dtype, v.device.type) for k, v in dict(
            x=x, t=t, context=context, clip_fea=clip_fea, y=y, audio=audio, masks=ref_target_masks
        ).items()})  # fmt: skip
        assert x.device == device and context.device == device and audio.device == device
        out = self.scale * x.to(dtype) + (context.mean() + audio.mean() + 0.1 * y[0, 4:].mean())
        return (out + 1e-3 * t.to(dtype)).to(dtype)


class DeviceVAE(MeanVAE):
    def encode(self, video):
        return super().encode(video.float())

    def decode(self, z):
        return super().decode(z.float())


def typed_run(dtype, device, mode="streaming"):
    cond, embs, ctx, neg, masks = fake_inputs([40])
    dit = TypedDiT(dtype, device)
    s = GenerationSettings(
        mode=mode, frame_num=13, motion_frame=5, sampling_steps=2, progress=False, seed=3,
        color_correction_strength=1.0,
    )  # fmt: skip
    return generate(Models(dit, DeviceVAE(), ZeroCLIP()), cond, embs, ctx, neg, masks, s), dit


def test_dit_dtype_conditioning_in_dit_dtype_latent_in_float32():
    result, dit = typed_run(torch.bfloat16, "cpu")
    seen = dit.seen[0]
    assert seen["x"] == (torch.float32, "cpu") and seen["t"] == (torch.float32, "cpu")
    for key in ("context", "clip_fea", "y", "audio"):
        assert seen[key][0] == torch.bfloat16, key
    assert seen["masks"][0] == torch.float32
    assert result.video.dtype == torch.float32 and result.video.device.type == "cpu"
    assert torch.isfinite(result.video).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_run_matches_cpu_run():
    """Noise is drawn on the CPU, so a GPU run starts from the same tensors as a CPU run."""
    cpu, _ = typed_run(torch.float32, "cpu")
    gpu, dit = typed_run(torch.float32, "cuda")
    assert dit.seen[0]["x"] == (torch.float32, "cuda")
    assert gpu.video.device.type == "cpu" and gpu.video.shape == cpu.video.shape
    assert (gpu.video - cpu.video).abs().max() < 1e-3
    bf16, _ = typed_run(torch.bfloat16, "cuda")
    assert torch.isfinite(bf16.video).all() and bf16.video.shape == cpu.video.shape
