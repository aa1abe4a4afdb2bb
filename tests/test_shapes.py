"""Shape plan: the user's error, golden error cases, golden e2e bookkeeping, rules as properties."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtlib.buckets import bucket_table, choose_bucket
from mtlib.config import load_config
from mtlib.frames import samples_for_frames, snap_frame_num
from mtlib.media.probe import probe_audio, probe_image
from mtlib.plan import MODEL_SIZES, PlanError, PlanInputs, plan, plan_table
from tests.golden import get_case, golden_cases

AUDIO_ASSERT = "AssertionError: Aduio file not exists or length not satisfies frame nums."
USER_ERROR = "RuntimeError: shape '[1, 11, 4, 56, 112]' is invalid for input of size 288512"


def _cfg(preset="multitalk-480", **gen):
    return load_config(preset, {f"generation.{k}": v for k, v in gen.items()})


def _user(frame_num, short_audio="error", size=(1280, 720), mode="clip"):
    return plan(
        _cfg(frame_num=frame_num, short_audio=short_audio, mode=mode),
        PlanInputs.from_metadata(image_size=size, audio_seconds=[1.79]),
    )


# ------------------------------------------------------------------ the user's case


@pytest.mark.parametrize("size", [(1280, 720), (800, 400), (1920, 1080)])
def test_user_case_frame_num_43_reproduces_reference_error(size):
    p = _user(43, size=size)
    assert not p.valid
    assert p.reference_error == USER_ERROR
    (v,) = p.violations
    assert v.rule == "frame_num_4n_plus_1"
    assert v.values["frame_num"] == 43 and (v.values["lat_h"], v.values["lat_w"]) == (56, 112)
    assert "46 is not divisible by 4" in v.why
    assert "audio's 44 frames - 1" in v.why
    assert v.fixes[0].startswith("set frame_num to 41 (snap")
    assert "pad the audio to >= 1.84 s and generate 45 frames, trimmed back to 1.79 s" in v.fixes[1]


@pytest.mark.parametrize("policy", ["pad", "snap", "error"])
def test_user_case_explicit_43_is_refused_under_every_policy(policy):
    assert _user(43, policy).reference_error == USER_ERROR


@pytest.mark.parametrize("frame_num", [45, 81])
@pytest.mark.parametrize("mode", ["clip", "streaming"])
def test_user_case_45_and_81_hit_the_audio_assertion(frame_num, mode):
    p = _user(frame_num, "error", mode=mode)
    assert [v.rule for v in p.violations] == ["audio_longer_than_frame_num"]
    v = p.violations[0]
    assert v.reference_message == AUDIO_ASSERT
    assert "44 <= " + str(frame_num) in v.why
    assert any(f.startswith("set frame_num to 41") for f in v.fixes)
    assert any("do NOT clamp frame_num to audio frames - 1 = 43" in f for f in v.fixes)


def test_user_case_auto_pad_gives_a_valid_plan():
    p = _user("auto", "pad")
    assert p.valid, plan_table(p)
    assert p.frame_num == 45 and p.pad_to_samples == (29440,)
    assert p.padded_audio_frames == (46,) and p.audio_frames == (44,)
    assert p.video_frames == 45 and p.output_frames == 45
    assert p.seq_len == 12 * 28 * 56
    pad = [a for a in p.policy_actions if a.policy == "short_audio=pad"]
    assert pad and pad[0].avoided == AUDIO_ASSERT and pad[0].changes["pad_to_samples"] == 29440


def test_user_case_auto_snap_gives_41():
    p = _user("auto", "snap")
    assert p.valid and p.frame_num == 41 and p.video_frames == 41
    assert p.pad_to_samples == (None,)


def test_pad_of_81_trims_back_to_the_audio():
    p = _user(81, "pad")
    assert p.valid and p.frame_num == 81 and p.video_frames == 81 and p.output_frames == 45
    assert p.padded_audio_frames == (82,)


def test_snap_frame_num_and_pad_samples():
    assert [snap_frame_num(n) for n in (43, 44, 45, 5, 4, 81, 82)] == [41, 41, 45, 5, 1, 81, 81]
    # int(N/16000*25) >= 46 first holds at 29440 samples (1.84 s)
    assert samples_for_frames(46) == 29440
    for f in range(1, 400):
        n = samples_for_frames(f)
        assert int(n / 16000 * 25) >= f and int((n - 1) / 16000 * 25) < f


# ------------------------------------------------------------------ golden error cases


@pytest.mark.golden
@pytest.mark.parametrize("case", golden_cases("errors"), ids=str)
def test_golden_errors(golden, case):
    c = get_case(golden, str(case))
    prm = c.params
    kind = "official" if prm["bucket_table"] == "real" else "tiny"
    image = [f for f in c.meta.get("files", []) if f.endswith(".png")]
    if image:
        info = probe_image(c.file(image[0]))
        size = (info.width, info.height)
    else:
        table = bucket_table(prm["size_buckget"], kind)
        h, w = next(iter(table.values()))  # any image that lands in a valid bucket
        size = (w, h)
    cfg = load_config(
        "multitalk-480",
        {
            "model.size": prm["size_buckget"],
            "model.buckets": kind,
            "generation.frame_num": prm["frame_num"],
            "generation.short_audio": "error",
            "generation.sampling_steps": prm["generate_kwargs"]["sampling_steps"],
        },
    )
    p = plan(cfg, PlanInputs(image_size=size, audio_frames=(prm["audio_frames"],)))
    assert not p.valid
    err = prm["error"]
    assert p.reference_error == f"{err['type']}: {err['message']}"


# ------------------------------------------------------------------ golden audio / e2e bookkeeping


@pytest.mark.golden
@pytest.mark.parametrize("case", golden_cases("audio"), ids=str)
def test_golden_audio_lengths(golden, case):
    c = get_case(golden, str(case))
    src = c.params.get("source_wav")
    if src is None:  # the multi-speaker cases: checked through the e2e plan
        inputs = c.params["inputs"]
        a, b = (get_case(golden, inputs[k]).params["n_samples_16k"] for k in ("person1", "person2"))
        p = plan(
            load_config("tiny", {"generation.frame_num": 5}),
            PlanInputs(
                image_size=(64, 48), audio_samples_16k=(a, b), audio_type=inputs["audio_type"]
            ),
        )
        for k in (
            "audio.person1",
            "audio.person2",
            "audio.sum",
            "audio.embedding1",
            "audio.embedding2",
        ):
            assert list(p.shape_of(k)) == c.tensor_index[k]["shape"], k
            assert p.tensor(k).dtype == c.tensor_index[k]["dtype"], k
        return
    info = probe_audio(c.file(src["file"]))
    assert (info.sample_rate, info.channels, info.frames) == (
        src["sample_rate"],
        src["channels"],
        src["frames"],
    )
    assert info.samples_16k == c.params["n_samples_16k"]
    assert info.embedding_frames == c.params["seq_len"]
    p = plan(
        load_config("tiny", {"generation.frame_num": 5}),
        PlanInputs(image_size=(64, 48), audio_samples_16k=(info.samples_16k,)),
    )
    assert p.valid
    for name, meta in c.tensor_index.items():
        assert list(p.shape_of(name)) == meta["shape"], name


def _e2e_plan(golden, c):
    prm = c.params
    gk = prm["generate_kwargs"]
    refs = prm["input_refs"]
    img = get_case(golden, refs["image_case"]).params["source"]
    samples, audio_type = [], "para"
    for name in refs["audio_cases"]:
        a = get_case(golden, name).params
        if "inputs" in a:
            audio_type = a["inputs"]["audio_type"]
            samples += [
                get_case(golden, a["inputs"][k]).params["n_samples_16k"]
                for k in ("person1", "person2")
            ]
        else:
            samples.append(a["n_samples_16k"])
    cfg = load_config(
        "tiny",
        {
            "model.size": gk["size_buckget"],
            "generation.mode": gk["mode"],
            "generation.frame_num": gk["frame_num"],
            "generation.motion_frame": gk["motion_frame"],
            "generation.sampling_steps": gk["sampling_steps"],
            "generation.max_frames_num": gk["max_frames_num"],
            "generation.text_guide_scale": gk["text_guide_scale"],
            "generation.short_audio": "error",
            "model.loras": [
                {"path": str(c.dir / lo["file"]), "scale": lo["scale"]}
                for lo in ([prm["lora"]] if "lora" in prm else [])
            ],
        },
    )
    return plan(
        cfg,
        PlanInputs(
            image_size=(img["width"], img["height"]),
            audio_samples_16k=tuple(samples),
            audio_type=audio_type,
        ),
    )


@pytest.mark.golden
@pytest.mark.parametrize("case", golden_cases("e2e"), ids=str)
def test_golden_e2e_bookkeeping(golden, case):
    c = get_case(golden, str(case))
    p = _e2e_plan(golden, c)
    assert p.valid, plan_table(p)
    clips = c.params["clips"]
    assert len(p.clips) == len(clips)
    for mine, ref in zip(p.clips, clips, strict=True):
        for key in (
            "audio_start_idx",
            "audio_end_idx",
            "max_seq_len",
            "lat_h",
            "lat_w",
            "cur_motion_frames_num",
            "is_first_clip",
            "frame_num",
        ):
            assert getattr(mine, key) == ref[key], (ref["clip"], key)
        assert (mine.lat_h * 8, mine.lat_w * 8) == (ref["target_h"], ref["target_w"])
    assert [3, p.video_frames, *p.target_hw] == c.params["video_shape"]
    assert list(p.shape_of("e2e.video")) == c.params["video_shape"]
    # the merged LoRA weights (lora.merged.<param>) are planned as the parameters it touches
    merged = sorted(n[len("lora.merged.") :] for n in c.tensor_index if n.startswith("lora."))
    assert [p for lo in p.loras for p in lo["params"]] == merged
    unplanned = []
    for name, meta in c.tensor_index.items():
        if name.startswith("lora."):
            continue
        t = p.tensor(name)
        if t is None:
            unplanned.append(name)
            continue
        assert list(t.shape) == meta["shape"], name
        assert t.dtype == meta["dtype"], name
    # only the T5 context lengths (prompt token counts) are outside a metadata plan
    assert all(n.endswith((".context", ".context_null")) for n in unplanned), unplanned


@pytest.mark.golden
def test_golden_tiny_param_count(golden):
    from safetensors import safe_open

    n = 0
    with safe_open(str(golden.weights / "dit" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        for k in f.keys():
            n += math.prod(f.get_slice(k).get_shape())
    assert MODEL_SIZES["tiny"].dit_params == n


@pytest.mark.golden
def test_golden_real_param_count_matches_manifest(golden):
    summary = json.loads((golden.root / "manifest" / "summary.json").read_text())
    assert MODEL_SIZES["multitalk-14b"].dit_params == summary["dit"]["num_params"]
    counts = dict(MODEL_SIZES["multitalk-14b"].param_counts)
    for k in ("t5", "clip", "vae", "wav2vec2"):
        assert counts[k] == summary[k]["num_params"], k


# ------------------------------------------------------------------ streaming lengths (facts §9.4)


@pytest.mark.parametrize(
    "L_a,clips,frames", [(82, 2, 79), (137, 2, 134), (138, 3, 135), (250, 5, 247)]
)
def test_streaming_lengths(L_a, clips, frames):
    p = plan(
        _cfg(mode="streaming", frame_num=81, short_audio="error"),
        PlanInputs(image_size=(1280, 720), audio_frames=(L_a,)),
    )
    assert p.valid
    assert len(p.clips) == clips and p.video_frames == frames
    assert [c.audio_start_idx for c in p.clips] == [56 * k for k in range(clips)]
    assert [c.audio_end_idx for c in p.clips] == [56 * k + 81 for k in range(clips)]
    assert p.miss == (p.clips[-1].audio_end_idx - L_a + 3,)


def test_streaming_1000_cap():
    p = plan(
        _cfg(mode="streaming", frame_num=81),
        PlanInputs(image_size=(1280, 720), audio_frames=(5000,)),
    )
    assert p.valid and p.video_frames == 1000 and p.miss == (0,)


# ------------------------------------------------------------------ real 14B numbers


@pytest.mark.parametrize(
    "size,seq", [((1280, 720), 32928), ((800, 400), 32928), ((1024, 1024), 33600)]
)
def test_real_seq_len(size, seq):
    p = plan(_cfg(frame_num=81), PlanInputs.from_metadata(image_size=size, audio_seconds=[5.0]))
    assert p.valid and p.seq_len == seq and p.token_grid[0] == 21
    assert p.shape_of("dit.block7.self_attn.q") == (1, 40, seq, 128)
    assert p.shape_of("dit.block39.audio_cross_attn.kv") == (21, 40, 32, 128)


def test_real_flops_and_memory():
    p = plan(
        _cfg(frame_num=81), PlanInputs.from_metadata(image_size=(1280, 720), audio_seconds=[5.0])
    )
    f = p.flops_per_pass
    # 2·L·D·(8D + 2F) per block, 40 blocks, L = 32928: 0.929 PFLOP; 4·L²·D·40: 0.888 PFLOP
    assert f["linear"] == pytest.approx(0.929e15, rel=0.01)
    assert f["self_attention"] == pytest.approx(4 * 32928**2 * 5120 * 40, rel=1e-9)
    assert 5.4e15 < p.flops_per_step < 5.7e15
    assert p.params["dit"] == 18_882_046_784
    assert p.weight_bytes["dit"] == 2 * 18_882_046_784
    assert p.weight_bytes["vae"] == 4 * 126_892_531


def test_two_text_scale_one_means_two_passes():
    cfg = _cfg(frame_num=81, text_guide_scale=1.0)
    p = plan(cfg, PlanInputs.from_metadata(image_size=(1280, 720), audio_seconds=[5.0]))
    assert p.passes_per_step == 2 and p.tensor("e2e.clip0.step3.drop_audio") is not None
    assert p.tensor("e2e.clip0.step3.uncond") is None


# ------------------------------------------------------------------ other rules


def test_para_lengths_must_match():
    p = plan(
        _cfg(frame_num=41), PlanInputs(image_size=(1280, 720), audio_samples_16k=(48000, 50000))
    )
    assert (
        p.reference_error
        == "ValueError: operands could not be broadcast together with shapes (48000,) (50000,) "
    )


def test_add_concatenates():
    p = plan(
        _cfg(frame_num=81),
        PlanInputs(image_size=(1280, 720), audio_samples_16k=(48000, 50000), audio_type="add"),
    )
    assert p.valid and p.audio_frames == (153, 153)


def test_short_audio_loudness_block():
    p = plan(_cfg(frame_num="auto"), PlanInputs(image_size=(1280, 720), audio_samples_16k=(6399,)))
    assert p.reference_error == "ValueError: Audio must have length greater than the block size."
    assert plan(
        _cfg(frame_num="auto"), PlanInputs(image_size=(1280, 720), audio_samples_16k=(6400,))
    ).valid


def test_three_speakers_and_bbox_count():
    p = plan(_cfg(frame_num=41), PlanInputs(image_size=(1280, 720), audio_samples_16k=(48000,) * 3))
    assert [v.rule for v in p.violations] == ["persons_1_or_2"]
    p = plan(
        _cfg(frame_num=41),
        PlanInputs(image_size=(1280, 720), audio_samples_16k=(48000,) * 2, bbox=((0, 0, 10, 10),)),
    )
    assert [v.rule for v in p.violations] == ["bbox_count"]


def test_explicit_target_not_multiple_of_16():
    p = plan(_cfg(frame_num=81), PlanInputs(target_size=(452, 900), audio_samples_16k=(80000,)))
    assert [v.rule for v in p.violations] == ["size_multiple_of_16"]
    assert (
        plan(
            _cfg(frame_num=43), PlanInputs(target_size=(452, 900), audio_frames=(44,))
        ).reference_error
        == USER_ERROR
    )


def test_streaming_motion_rules():
    p = plan(
        _cfg(mode="streaming", frame_num=81, motion_frame=24),
        PlanInputs(image_size=(1280, 720), audio_frames=(300,)),
    )
    assert [v.rule for v in p.violations] == ["motion_frame_4n_plus_1"]
    p = plan(
        _cfg(mode="streaming", frame_num=21, motion_frame=25),
        PlanInputs(image_size=(1280, 720), audio_frames=(300,)),
    )
    assert [v.rule for v in p.violations] == ["motion_frame_below_frame_num"]


@pytest.mark.parametrize(
    "bad",
    [
        dict(image_size=(0, 10), audio_samples_16k=(1000,)),
        dict(image_size=(-3, 10), audio_samples_16k=(1000,)),
        dict(image_size=(10, 10), audio_samples_16k=(-1,)),
        dict(image_size=None, audio_samples_16k=(1000,)),
        dict(image_size=(10, 10), audio_samples_16k=(1000,), audio_type="mix"),
        dict(image_size=(10.5, 10), audio_samples_16k=(1000,)),
    ],
)
def test_bad_metadata_raises_plan_error(bad):
    with pytest.raises(PlanError):
        plan(load_config("tiny"), PlanInputs(**bad))


def test_bad_bbox_and_config_types_raise_plan_error():
    with pytest.raises(PlanError):
        plan(
            load_config("tiny"),
            PlanInputs(image_size=(10, 10), audio_samples_16k=(9000, 9000), bbox=((1, 2, 3),)),
        )
    with pytest.raises(PlanError):
        plan(123, PlanInputs(image_size=(10, 10), audio_samples_16k=(9000,)))
    with pytest.raises(PlanError, match="clips"):
        plan(
            _cfg(mode="streaming", max_frames_num=10**9),
            PlanInputs(image_size=(10, 10), audio_frames=(10**8,)),
        )


def test_clip_audio_windows():
    p = plan(
        _cfg(mode="streaming", frame_num=81),
        PlanInputs(image_size=(1280, 720), audio_frames=(138,)),
    )
    # windows read audio_start-2 .. audio_end+1, clamped to the (reflection-padded) track
    assert [c.audio_index_range for c in p.clips] == [(0, 82), (54, 137), (110, 194)]
    assert p.clips[-1].audio_len == (138 + 58,)


def test_bad_config_raises_plan_error():
    with pytest.raises(PlanError):
        plan(
            {"generation": {"frame_num": 0}},
            PlanInputs(image_size=(10, 10), audio_samples_16k=(1000,)),
        )
    with pytest.raises(PlanError):
        plan(
            {"generation": {"short_audio": "stretch"}},
            PlanInputs(image_size=(10, 10), audio_samples_16k=(1000,)),
        )


def test_to_dict_is_json():
    p = _user(43)
    d = json.loads(p.to_json())
    assert d["valid"] is False and d["reference_error"] == USER_ERROR
    assert d["violations"][0]["rule"] == "frame_num_4n_plus_1"
    q = json.loads(_user("auto", "pad").to_json())
    assert q["valid"] and q["seq_len"] == 18816 and q["tensors"][0]["name"] == "audio.raw16k"


# ------------------------------------------------------------------ properties


def _expected(size, table_kind, samples, audio_type, fn, mode, short, motion):
    """Independent reading of multitalk-facts §10.5 + the documented policies: (valid, F)."""
    P = len(samples)
    if not 1 <= P <= 2:
        return False, None
    if P == 2 and audio_type == "para" and samples[0] != samples[1]:
        return False, None
    if any(n < 6400 for n in samples):
        return False, None
    tracks = [sum(samples)] * 2 if (P == 2 and audio_type == "add") else list(samples)
    L = min(int(n / 16000 * 25) for n in tracks)
    need_video = math.ceil(max(tracks) * 25 / 16000)
    if fn == "auto":
        if mode == "clip":
            F = 5
            while F < need_video:
                F += 4
            F = min(F, 81)
        else:
            F = 81
    else:
        F = fn
    if F % 4 != 1 or F < 5:
        return False, None
    if L <= F:
        if short == "error":
            return False, None
        if short == "snap":
            F = 4 * ((L - 2) // 4) + 1
            if F < 5 or (mode == "streaming" and F <= motion):
                return False, None
    if mode == "streaming" and (motion >= F or (motion - 1) % 4 != 0):
        return False, None
    return True, F


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    w=st.integers(16, 4000),
    h=st.integers(16, 4000),
    table_kind=st.sampled_from(["official", "tiny"]),
    size=st.sampled_from(["multitalk-480", "multitalk-720"]),
    secs=st.lists(st.floats(0.0, 12.0), min_size=1, max_size=3),
    equal=st.booleans(),
    audio_type=st.sampled_from(["para", "add"]),
    fn=st.one_of(st.just("auto"), st.integers(1, 130)),
    mode=st.sampled_from(["clip", "streaming"]),
    short=st.sampled_from(["pad", "snap", "error"]),
    motion=st.sampled_from([1, 5, 9, 24, 25, 29]),
)
def test_plan_accepts_exactly_the_rules(
    w, h, table_kind, size, secs, equal, audio_type, fn, mode, short, motion
):
    if equal and len(secs) == 2:
        secs = [secs[0], secs[0]]
    samples = tuple(int(round(s * 16000)) for s in secs)
    cfg = load_config(
        "tiny",
        {
            "model.size": size,
            "model.buckets": table_kind,
            "generation.frame_num": fn,
            "generation.mode": mode,
            "generation.short_audio": short,
            "generation.motion_frame": motion,
            "generation.sampling_steps": 2,
        },
    )
    p = plan(cfg, PlanInputs(image_size=(w, h), audio_samples_16k=samples, audio_type=audio_type))
    ok, F = _expected((w, h), table_kind, samples, audio_type, fn, mode, short, motion)
    assert p.valid == ok, plan_table(p)
    if not ok:
        assert p.violations and all(v.why and v.fixes for v in p.violations)
        return
    H, W = choose_bucket(h, w, bucket_table(size, table_kind))[1]
    T = (F - 1) // 4 + 1
    assert p.frame_num == F and F % 4 == 1
    assert p.target_hw == (H, W)
    assert p.seq_len == T * (H // 16) * (W // 16)
    assert p.shape_of("e2e.clip0.y") == (1, 20, T, H // 8, W // 8)
    assert p.shape_of("e2e.clip0.mask") == (1, 4, T, H // 8, W // 8)
    assert all(L > F for L in p.padded_audio_frames)
    assert 0 < p.output_frames <= p.video_frames
    if mode == "clip":
        assert len(p.clips) == 1 and p.video_frames == F
    else:
        assert len(p.clips) >= 2
        # facts §9.4: the last clip reaches the audio's end (or the 1000-frame cap); a clip
        # ending past the audio reflects end - L + 3 frames, and the output is L - 3 frames
        L, end = p.padded_audio_frames[0], p.clips[-1].audio_end_idx
        assert end >= min(L, 1000) and p.clips[-2].audio_end_idx < min(L, 1000)
        miss = end - L + 3 if end >= L else 0
        assert p.miss[0] == miss
        if L <= end <= 1000:
            assert p.video_frames == L - 3
        else:  # the cap: 1000 frames kept, then person 1's reflection frames cut
            assert p.video_frames == 1000 - miss


@settings(max_examples=200, deadline=None)
@given(
    size=st.one_of(st.none(), st.tuples(st.integers(-5, 5000), st.integers(-5, 5000))),
    target=st.one_of(st.none(), st.tuples(st.integers(-5, 3000), st.integers(-5, 3000))),
    samples=st.lists(st.integers(-10, 500_000), max_size=3),
    frames=st.one_of(st.none(), st.lists(st.integers(-3, 3000), max_size=3)),
    fn=st.one_of(st.just("auto"), st.integers(-3, 5000), st.just("x")),
    mode=st.sampled_from(["clip", "streaming", "loop"]),
    motion=st.integers(-2, 100),
    max_frames=st.integers(-1, 10**9),
    bbox=st.one_of(st.none(), st.just([[0, 0, 5, 5]]), st.just([[0, 0, 5]]), st.just(3)),
)
def test_plan_raises_only_plan_error(
    size, target, samples, frames, fn, mode, motion, max_frames, bbox
):
    cfg = {
        "model": {"name": "multitalk-14b"},
        "generation": {
            "frame_num": fn,
            "mode": mode,
            "motion_frame": motion,
            "max_frames_num": max_frames,
        },
    }
    inputs = PlanInputs(
        image_size=size,
        target_size=target,
        audio_samples_16k=tuple(samples),
        audio_frames=None if frames is None else tuple(frames),
        bbox=bbox,
    )
    try:
        p = plan(cfg, inputs)
    except PlanError:
        return
    # whatever it is given, a plan is either runnable (sizes, clips, tensors) or diagnosed
    table, d = plan_table(p), json.loads(p.to_json())
    assert d["valid"] == p.valid and d["reference_error"] == p.reference_error
    if p.valid:
        assert table.endswith("VALID") and p.clips and p.tensors and p.seq_len >= 1
    else:
        assert f"INVALID: {len(p.violations)} violation(s)" in table
        assert all(v.why and v.fixes and f"[{v.rule}]" in table for v in p.violations)


def test_audio_padding_helper():
    from mtlib.plan import audio_padding

    assert audio_padding(28640, 45) == (29440, 800)  # 1.79 s -> 1.84 s for 45 frames
    assert audio_padding(60000, 45) == (60000, 0)


def test_pad_with_embedding_frames_only():
    p = plan(_cfg(frame_num=81), PlanInputs(image_size=(1280, 720), audio_frames=(44,)))
    assert (
        p.valid
        and p.padded_audio_frames == (82,)
        and p.output_frames == 44
        and p.video_frames == 81
    )


def test_reference_error_order():
    # loudness (preprocessing) before the para sum, both before generate()'s assertion
    p = plan(
        _cfg(frame_num=81, short_audio="error"),
        PlanInputs(image_size=(1280, 720), audio_samples_16k=(3000, 5000)),
    )
    assert [v.rule for v in p.violations][:3] == [
        "audio_min_duration",
        "audio_min_duration",
        "para_equal_length",
    ]
    assert p.reference_error == "ValueError: Audio must have length greater than the block size."
    # the frame mask view fails before the per-clip person masks check the boxes
    p = plan(
        _cfg(frame_num=43),
        PlanInputs(image_size=(1280, 720), audio_frames=(44, 44), bbox=((0, 0, 5, 5),)),
    )
    assert [v.rule for v in p.violations] == ["frame_num_4n_plus_1", "bbox_count"]
    assert p.reference_error == USER_ERROR
