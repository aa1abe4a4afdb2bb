"""MultiTalk DiT: golden equality per trace point, real key manifest, loader errors,
input checks, reference precision and TeaCache."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from mtlib import trace
from mtlib.io import InputError
from mtlib.models.dit import (
    CONFIGS,
    CheckpointError,
    DiTConfig,
    MultiTalkDiT,
    TeaCacheState,
    build_dit,
    load_dit,
)
from tests.golden import SINGLE_STAGE_TOL, assert_close, get_case, golden_cases

INPUT_PREFIX = "dit.in."


def _golden_config(golden) -> DiTConfig:
    tc = golden.tiny_configs["dit"]
    return DiTConfig.from_official(tc["tiny"], tc["hardcoded_tiny"])


def _golden_model(golden, precision="fp32") -> MultiTalkDiT:
    return load_dit(golden.weights / "dit", config=_golden_config(golden), precision=precision)


def _run(model, case, recorder=None):
    args = [
        case[INPUT_PREFIX + n]
        for n in ("x", "t", "context", "clip_fea", "y", "audio", "ref_target_masks")
    ]
    with torch.no_grad():
        if recorder is None:
            return model(*args, seq_len=case.params["seq_len"])
        with trace.recording(recorder):
            return model(*args, seq_len=case.params["seq_len"])


# ------------------------------------------------------------------------------ golden


@pytest.mark.golden
@pytest.mark.parametrize("name", golden_cases("dit"), ids=str)
def test_golden_dit_forward(golden, name):
    case = get_case(golden, name)
    model = _golden_model(golden)
    rec = trace.MemoryRecorder(["dit.*"])
    out = _run(model, case, rec)
    assert out.dtype == torch.float32
    expected = [k for k in case.tensor_index if not k.startswith(INPUT_PREFIX)]
    assert "dit.out" in expected and any(".block" in k for k in expected)
    not_recorded = [k for k in expected if k not in rec]
    assert not not_recorded, f"trace points not recorded: {not_recorded}"
    for k in expected:
        assert_close(rec[k], case[k], k, SINGLE_STAGE_TOL)
    assert_close(out, case["dit.out"], "return value", SINGLE_STAGE_TOL)


@pytest.mark.golden
def test_golden_dit_manifest(golden):
    manifest = golden.manifest("dit")
    tc = golden.tiny_configs["dit"]
    cfg = DiTConfig.from_official(tc["real"], tc["hardcoded_real"])
    assert cfg == CONFIGS["multitalk-14b"]
    model = build_dit(cfg, device="meta")
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == {k: list(v) for k, v in manifest["keys"].items()}
    assert sum(p.numel() for p in model.parameters()) == manifest["num_params"]


@pytest.mark.golden
def test_golden_dit_tiny_config_matches_registry(golden):
    assert _golden_config(golden) == CONFIGS["tiny"]


@pytest.mark.golden
def test_golden_dit_reference_precision_close(golden):
    """The official bf16 policy runs on CPU and stays close to fp32 (not a parity check)."""
    case = get_case(golden, golden_cases("dit")[-1])
    ref = _golden_model(golden, precision="reference")
    assert all(p.dtype == torch.bfloat16 for p in ref.parameters())
    assert ref.precision == "reference"
    out_ref = _run(ref, case)
    assert out_ref.dtype == torch.float32
    fp32 = case["dit.out"].flatten().double()
    cos = torch.nn.functional.cosine_similarity(out_ref.flatten().double(), fp32, dim=0).item()
    assert cos > 0.99, cos


@pytest.mark.golden
def test_golden_dit_fp32_rope_within_tolerance(golden):
    """The float32 3-D RoPE rotation (a GPU speed option) still meets the golden tolerance."""
    case = get_case(golden, golden_cases("dit")[0])
    model = _golden_model(golden)
    model.rope_dtype = torch.float32
    assert_close(_run(model, case), case["dit.out"], "dit.out", SINGLE_STAGE_TOL)


# ------------------------------------------------------------------------------ loader


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = build_dit("tiny", device="cpu")
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def _is_audio(k: str) -> bool:
    return k.startswith("audio_proj.") or ".audio_cross_attn." in k or ".norm_x." in k


def _write_split(state, wan_dir, mt_dir):
    wan_dir.mkdir(exist_ok=True)
    mt_dir.mkdir(exist_ok=True)
    save_file(
        {k: v for k, v in state.items() if not _is_audio(k)},
        str(wan_dir / "diffusion_pytorch_model.safetensors"),
    )
    save_file(
        {k: v for k, v in state.items() if _is_audio(k)}, str(mt_dir / "multitalk.safetensors")
    )


def test_load_dit_two_dirs_union(tmp_path, tiny_state):
    _write_split(tiny_state, tmp_path / "wan", tmp_path / "mt")
    before = sorted(p.name for p in (tmp_path / "wan").iterdir())
    model = load_dit([tmp_path / "wan", tmp_path / "mt"], config="tiny")
    assert sorted(p.name for p in (tmp_path / "wan").iterdir()) == before  # nothing written
    sd = model.state_dict()
    assert sd.keys() == tiny_state.keys()
    assert all(torch.equal(sd[k], tiny_state[k]) for k in sd)
    assert not any(p.requires_grad for p in model.parameters())


def test_load_dit_file_list_reference_precision(tmp_path, tiny_state):
    _write_split(tiny_state, tmp_path / "wan", tmp_path / "mt")
    files = [
        tmp_path / "mt" / "multitalk.safetensors",
        tmp_path / "wan" / "diffusion_pytorch_model.safetensors",
    ]
    model = load_dit(files, config=CONFIGS["tiny"], precision="reference")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert torch.equal(model.head.modulation, tiny_state["head.modulation"].bfloat16())


def test_load_dit_multitalk_file_overrides_shards(tmp_path, tiny_state):
    wan = tmp_path / "wan"
    wan.mkdir()
    save_file(tiny_state, str(wan / "diffusion_pytorch_model.safetensors"))
    newer = tiny_state["audio_proj.proj2.bias"] + 1
    save_file({"audio_proj.proj2.bias": newer}, str(wan / "multitalk.safetensors"))
    model = load_dit(wan, config="tiny")
    assert torch.equal(model.audio_proj.proj2.bias, newer)


def _expect_error(tmp_path, state, message, config="tiny"):
    d = tmp_path / "ckpt"
    d.mkdir(exist_ok=True)
    save_file(state, str(d / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_dit(d, config=config)
    assert str(err.value) == message


def test_load_dit_missing_key(tmp_path, tiny_state):
    state = {k: v for k, v in tiny_state.items() if k != "blocks.1.norm3.bias"}
    _expect_error(
        tmp_path, state, "DiT checkpoint does not match the config: 1 missing: blocks.1.norm3.bias"
    )


def test_load_dit_many_missing_and_unexpected(tmp_path, tiny_state):
    state = {k: v for k, v in tiny_state.items() if not k.startswith("blocks.1.self_attn.")}
    state["blocks.2.norm3.bias"] = torch.zeros(64)
    _expect_error(
        tmp_path,
        state,
        "DiT checkpoint does not match the config: 10 missing: blocks.1.self_attn.q.weight, "
        "blocks.1.self_attn.q.bias, blocks.1.self_attn.k.weight, blocks.1.self_attn.k.bias, "
        "blocks.1.self_attn.v.weight, blocks.1.self_attn.v.bias, blocks.1.self_attn.o.weight, blocks.1.self_attn.o.bias, ... (2 more); 1 unexpected: blocks.2.norm3.bias",
    )


def test_load_dit_unexpected_key(tmp_path, tiny_state):
    state = dict(tiny_state, **{"pos_embedding": torch.zeros(3)})
    _expect_error(
        tmp_path, state, "DiT checkpoint does not match the config: 1 unexpected: pos_embedding"
    )


def test_load_dit_wrong_shape(tmp_path, tiny_state):
    state = dict(tiny_state, **{"head.head.bias": torch.zeros(63)})
    _expect_error(
        tmp_path,
        state,
        "DiT checkpoint does not match the config: 1 mis-shaped: head.head.bias [63] (model [64])",
    )


def test_load_dit_text_to_video_checkpoint(tmp_path, tiny_state):
    state = dict(tiny_state, **{"patch_embedding.weight": torch.zeros(64, 16, 1, 2, 2)})
    _expect_error(
        tmp_path,
        state,
        "this is a text-to-video Wan DiT (in_dim 16: patch_embedding.weight [64, 16, 1, 2, 2]); "
        "MultiTalk needs the I2V-14B checkpoint (in_dim 36)",
    )


def test_load_dit_without_multitalk_adapter(tmp_path, tiny_state):
    state = {k: v for k, v in tiny_state.items() if not _is_audio(k)}
    n_audio = len(tiny_state) - len(state)
    _expect_error(
        tmp_path,
        state,
        f"the MultiTalk audio adapter is missing ({n_audio} keys, e.g. blocks.0.audio_cross_attn.q_linear.weight): "
        "multitalk.safetensors not found/loaded; pass it (or the MeiGen-MultiTalk directory) with the Wan shards",
    )


def test_load_dit_config_json_ignores_text_dim(tmp_path, tiny_state):
    """Like WanModel.from_pretrained, config.json's text_dim is dropped (default 4096), and the
    hard-coded widths (clip 1280, wav2vec2 12 x 768) are the real ones: tiny needs a config."""
    import json

    d = tmp_path / "ckpt"
    d.mkdir()
    cfg = {
        "_class_name": "WanModel",
        "dim": 64,
        "eps": 1e-6,
        "ffn_dim": 96,
        "freq_dim": 256,
        "in_dim": 36,
        "model_type": "i2v",
        "num_heads": 4,
        "num_layers": 2,
        "out_dim": 16,
        "text_len": 512,
        "text_dim": 32,
        "intermediate_dim": 24,
        "output_dim": 40,
        "context_tokens": 6,
    }
    (d / "config.json").write_text(json.dumps(cfg))
    save_file(tiny_state, str(d / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_dit(d)
    assert str(err.value).startswith(
        "DiT checkpoint does not match the config: 8 mis-shaped: text_embedding.0.weight [64, 32] (model [64, 4096])"
    )


def test_load_dit_empty_dir(tmp_path):
    with pytest.raises(CheckpointError, match="holds no diffusion_pytorch_model"):
        load_dit(tmp_path, config="tiny")


# ------------------------------------------------------------------------------ config / inputs


def test_config_validation_messages():
    with pytest.raises(
        ValueError, match=r"^DiTConfig.dim \(64\) must be divisible by num_heads \(5\)$"
    ):
        DiTConfig(dim=64, num_heads=5)
    with pytest.raises(ValueError, match="head_dim = dim / num_heads = 4 must be even and >= 6"):
        DiTConfig(dim=64, num_heads=16)
    with pytest.raises(ValueError, match="MultiTalk needs model_type 'i2v', got 't2v'"):
        DiTConfig.from_official({"model_type": "t2v"})
    assert CONFIGS["multitalk-14b"].rope_pairs == (22, 21, 21)
    assert CONFIGS["multitalk-14b"].audio_window_vf == 8


def _tiny_inputs(T=3, h=4, w=6, persons=2, gen=None):
    gen = gen or torch.Generator().manual_seed(1)
    cfg = CONFIGS["tiny"]
    frames = 1 + cfg.vae_scale * (T - 1)
    masks = torch.zeros(3, h, w)
    masks[0, :, : w // 2] = 1
    masks[1, :, w // 2 :] = 1
    masks[2, 0] = 1
    return dict(
        latent=torch.randn(16, T, h, w, generator=gen),
        t=torch.tensor([900.0]),
        context=torch.randn(7, cfg.text_dim, generator=gen),
        clip_fea=torch.randn(1, 257, cfg.clip_dim, generator=gen),
        y=torch.randn(1, 20, T, h, w, generator=gen),
        audio=torch.randn(
            persons, frames, cfg.audio_window, cfg.audio_layers, cfg.audio_width, generator=gen
        ),
        ref_target_masks=masks,
        seq_len=T * (h // 2) * (w // 2),
    )


@pytest.fixture(scope="module")
def tiny_model(tiny_state) -> MultiTalkDiT:
    model = build_dit("tiny", device="cpu")
    model.load_state_dict(tiny_state)
    return model.eval().requires_grad_(False)


def test_forward_input_errors(tiny_model):
    good = _tiny_inputs()
    cases = {
        "seq_len": (
            dict(seq_len=19),
            "DiT input seq_len: must equal the number of video tokens T*N_h*N_w = 18, got 19 "
            "(padding is not supported: the audio attention groups tokens per latent frame)",
        ),
        "audio": (
            dict(audio=good["audio"][:, :8]),
            "DiT input audio: expected [persons (1 or 2), 9 = 1 + 4*(T_lat-1) video frames, 5, 3, 48], got [2, 8, 5, 3, 48]",
        ),
        "latent": (
            dict(latent=good["latent"][..., :5]),
            "DiT input latent: T, h, w = 3, 4, 5 must be divisible by the patch size (1, 2, 2)",
        ),
        "clip_fea": (
            dict(clip_fea=good["clip_fea"][:, :256]),
            "DiT input clip_fea: expected [1, 257, 80], got [1, 256, 80]",
        ),
    }
    for name, (change, message) in cases.items():
        with pytest.raises(InputError) as err:
            tiny_model(**dict(good, **change))
        assert str(err.value) == message, name


def test_forward_shapes_and_trace_names(tiny_model):
    inputs = _tiny_inputs()
    rec = trace.MemoryRecorder()
    with trace.recording(rec):
        out = tiny_model(**inputs)
    assert out.shape == (16, 3, 4, 6) and out.dtype == torch.float32
    assert rec["dit.audio_embedding"].shape == (1, 3, 12, 40)
    assert rec["dit.block1.self_attn.x_ref_attn_map"].shape == (3, 18)
    # without a recorder the result is the same (trace points never change values)
    assert torch.equal(tiny_model(**inputs), out)


@pytest.mark.parametrize("persons", [1, 2])
def test_ref_map_computed_only_where_used(tiny_model, monkeypatch, persons):
    """One person: x_ref_attn_map is skipped (its result is never used) unless traced, and the
    output equals the traced run's bit for bit; two persons: computed in every block."""
    from mtlib.models.dit import attention as dit_module  # where SelfAttention looks it up

    calls = []
    real = dit_module.x_ref_attn_map
    monkeypatch.setattr(dit_module, "x_ref_attn_map", lambda *a: calls.append(1) or real(*a))
    inputs = _tiny_inputs(persons=persons)
    out = tiny_model(**inputs)
    blocks = len(tiny_model.blocks)
    assert len(calls) == (0 if persons == 1 else blocks)
    rec = trace.MemoryRecorder()
    with trace.recording(rec):
        traced = tiny_model(**inputs)
    assert len(calls) == (blocks if persons == 1 else 2 * blocks)
    assert rec["dit.block0.self_attn.x_ref_attn_map"].shape == (3, 18)
    assert torch.equal(out, traced)
    # a trace that does not keep the map does not make one person pay for it
    calls.clear()
    rec = trace.MemoryRecorder(["dit.block*.self_attn", "dit.block*.out"])
    with trace.recording(rec):
        assert torch.equal(tiny_model(**inputs), out)
    assert len(calls) == (0 if persons == 1 else blocks)
    assert "dit.block0.self_attn" in rec


def test_lrope_positions_follow_the_map():
    from mtlib.models.dit import lrope_positions

    ref_map = torch.tensor([[0.9, 0.1, 0.5, 0.2], [0.0, 0.8, 0.4, 0.1], [0.1, 0.1, 0.1, 0.7]])
    pos = lrope_positions(ref_map)
    # argmax classes 0, 1, 0, 2: person 1 scaled to [0, 4], person 2 to [20, 24], background 12
    expected = torch.tensor([4.0, 24.0, 2.0, 12.0])
    assert torch.allclose(pos, expected, atol=1e-5)


# ------------------------------------------------------------------------------ TeaCache


def test_teacache_skips_when_e0_is_unchanged(tiny_model):
    inputs = _tiny_inputs(persons=1)
    cache = TeaCacheState.for_size("multitalk-480", sample_steps=7)
    outs = [tiny_model(**inputs, teacache=cache) for _ in range(cache.ret_steps)]
    assert cache.skipped == 0 and cache.calls == 15
    # call 15 (cond branch): rel = 0, poly(0) = 0.1325 < 0.2 -> reuse the cached residual
    skipped = tiny_model(**inputs, teacache=cache)
    assert cache.skipped == 1
    assert torch.allclose(skipped, outs[-3], atol=1e-5)
    # drop_text and uncond skip too; then each branch reaches 0.265 >= 0.2 and computes
    for _ in range(2):
        tiny_model(**inputs, teacache=cache)
    assert cache.skipped == 3
    for _ in range(3):
        tiny_model(**inputs, teacache=cache)
    assert cache.skipped == 3 and cache.accumulated == [0.0, 0.0, 0.0]
    assert cache.calls == 0  # wrapped after 3 * sample_steps calls
    with pytest.raises(ValueError, match="TeaCache size must be one of"):
        TeaCacheState.for_size("multitalk-1080", sample_steps=7)


@pytest.mark.parametrize("precision", ["fp32", "reference"])
def test_forward_on_meta_device(precision):
    """Every tensor made inside forward follows the model's device (meta refuses CPU
    operands like CUDA does), and CPU inputs are moved to the model's device."""
    model = build_dit("tiny", device="meta").set_precision(precision)
    inputs = {k: v.to("meta") if torch.is_tensor(v) else v for k, v in _tiny_inputs().items()}
    out = model(**inputs)
    assert out.device.type == "meta" and out.dtype == torch.float32 and out.shape == (16, 3, 4, 6)
    out = model(**_tiny_inputs(persons=1))
    assert out.device.type == "meta"


def test_unknown_config_name_lists_the_known_ones():
    with pytest.raises(ValueError) as err:
        build_dit("multitalk-1.3b")
    assert str(err.value) == "unknown DiT config 'multitalk-1.3b'; known: ['multitalk-14b', 'tiny']"
