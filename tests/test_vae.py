"""Causal 3D VAE (mtlib/models/vae.py): golden parity, key manifest, loading routes, refusals."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from mtlib import trace
from mtlib.config import ConfigError
from mtlib.io import InputError
from mtlib.models.vae import CONFIGS, CausalVAE, VAEConfig, load_vae
from tests.golden import SINGLE_STAGE_TOL, assert_close, get_case, golden_cases


@pytest.fixture(scope="module")
def golden_vae(golden) -> CausalVAE:
    cfg = VAEConfig.from_official(golden.tiny_configs["vae"]["tiny"])
    return load_vae(golden.weights / "vae.safetensors", cfg)


def _run_case(model: CausalVAE, case) -> trace.MemoryRecorder:
    rec = trace.MemoryRecorder()
    with trace.recording(rec):
        if "vae.encode.in" in case.tensors:
            model.encode(case["vae.encode.in"])
        elif "vae.decode.in" in case.tensors:
            model.decode(case["vae.decode.in"])
        else:
            pytest.fail(f"{case.name}: neither vae.encode.in nor vae.decode.in among its tensors")
    return rec


@pytest.mark.golden
@pytest.mark.parametrize("case", golden_cases("vae"), ids=str)
def test_golden_vae(golden, golden_vae, case):
    c = get_case(golden, case)
    rec = _run_case(golden_vae, c)
    assert c.tensor_index, f"{case}: no tensors listed"
    for name in c.tensor_index:
        assert name in rec, f"{case}: trace point {name} was not recorded"
        assert_close(rec[name], c[name], name, SINGLE_STAGE_TOL)


@pytest.mark.golden
def test_golden_vae_configs(golden):
    assert VAEConfig.from_official(golden.tiny_configs["vae"]["tiny"]) == CONFIGS["tiny"]
    assert VAEConfig.from_official(golden.tiny_configs["vae"]["real"]) == CONFIGS["multitalk-14b"]


@pytest.mark.golden
def test_golden_vae_manifest(golden):
    manifest = golden.manifest("vae")
    assert VAEConfig.from_official(manifest["config"]) == CONFIGS["multitalk-14b"]
    with torch.device("meta"):
        model = CausalVAE(CONFIGS["multitalk-14b"])
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(ours) - set(manifest["keys"])) == []
    assert sorted(set(manifest["keys"]) - set(ours)) == []
    assert ours == manifest["keys"]
    assert sum(p.numel() for p in model.parameters()) == manifest["num_params"]


@pytest.mark.golden
def test_golden_vae_pth_route(golden, golden_vae, tmp_path):
    """Wan2.1_VAE.pth as published (torch.save of the state dict), config inferred."""
    pth = tmp_path / "Wan2.1_VAE.pth"
    torch.save(load_file(str(golden.weights / "vae.safetensors")), pth)
    model = load_vae(pth)
    assert model.config == CONFIGS["tiny"]
    case = golden.cases("vae")[0]
    ours, ref = _run_case(model, case), _run_case(golden_vae, case)
    assert ours.order == ref.order
    for name in ref.order:
        assert torch.equal(ours[name], ref[name]), name


@pytest.mark.golden
def test_golden_vae_causal_and_layouts(golden, golden_vae):
    """Encoding is causal (a prefix of the clip gives a prefix of the latents) and decode
    takes [z, T, h, w] and [1, z, T, h, w] alike."""
    video = next(
        c
        for c in golden.cases("vae")
        if "vae.encode.in" in c.tensors and c["vae.encode.in"].shape[2] >= 9
    )
    video = video["vae.encode.in"][:, :, :9]
    latent = golden_vae.encode(video)  # [1, 16, 3, h, w]
    prefix = golden_vae.encode(video[:, :, :5])  # [1, 16, 2, h, w]
    assert prefix.shape == (1, 16, 2, *latent.shape[3:])
    assert_close(prefix, latent[:, :, :2], "prefix latents", SINGLE_STAGE_TOL)
    assert torch.equal(golden_vae.decode(latent[0]), golden_vae.decode(latent))


def test_vae_autocast_bf16():
    torch.manual_seed(0)
    model = CausalVAE(CONFIGS["tiny"]).eval()
    video = torch.rand(1, 3, 5, 16, 24) * 2 - 1
    ref = model.encode(video)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lat = model.encode(video)
        out = model.decode(lat)
    assert lat.dtype == torch.float32 and lat.shape == (1, 16, 2, 2, 3)
    assert out.dtype == torch.float32 and out.shape == (1, 3, 5, 16, 24)
    assert (lat - ref).abs().max() <= 0.05 * ref.abs().max()
    bf16 = CausalVAE(CONFIGS["tiny"]).eval()
    bf16.load_state_dict(model.state_dict())
    bf16.to(torch.bfloat16)
    lat = bf16.encode(video)  # fp32 pixels into bf16 weights
    assert lat.dtype == torch.float32 and (lat - ref).abs().max() <= 0.05 * ref.abs().max()
    assert bf16.decode(lat).dtype == torch.float32


# ------------------------------------------------------------------------------------------
# Refusals


@pytest.fixture(scope="module")
def tiny_vae() -> CausalVAE:
    return CausalVAE(CONFIGS["tiny"]).eval()


def test_vae_refuses_frames_not_4n_plus_1(tiny_vae):
    msg = (
        "VAE encode: video has 10 frames, but the causal VAE encodes 4n+1 frames (1, 5, 9, ..., 81); "
        "the official code silently drops the last 1 frame(s). Fix: pass 9 or 13 frames "
        "(trim, or pad with zeros as the pipeline does)."
    )
    with pytest.raises(InputError, match=re.escape(msg) + "$"):
        tiny_vae.encode(torch.zeros(1, 3, 10, 32, 48))
    with pytest.raises(
        InputError, match=r"has 8 frames.*drops the last 3 frame\(s\)\. Fix: pass 5 or 9 frames"
    ):
        tiny_vae.encode(torch.zeros(1, 3, 8, 32, 48))


def test_vae_refuses_bad_shapes(tiny_vae):
    with pytest.raises(
        InputError, match=re.escape("frame size 30x48 (HxW) is not a multiple of 8")
    ):
        tiny_vae.encode(torch.zeros(1, 3, 5, 30, 48))
    with pytest.raises(
        InputError,
        match=re.escape("video must be [B, 3, F, H, W] (RGB in [-1, 1]), got shape [3, 5, 32, 48]"),
    ):
        tiny_vae.encode(torch.zeros(3, 5, 32, 48))
    with pytest.raises(
        InputError,
        match=re.escape(
            "latent must be [B, 16, T, h, w] or [16, T, h, w] with T >= 1, got shape [1, 8, 3, 4, 6]"
        ),
    ):
        tiny_vae.decode(torch.zeros(1, 8, 3, 4, 6))


def test_vae_config_refusals():
    with pytest.raises(ConfigError, match=re.escape("z_dim must be 16")):
        VAEConfig(z_dim=48)
    with pytest.raises(ConfigError, match=re.escape("unknown keys ['dec_dim']")):
        VAEConfig.from_official({"dim": 8, "dec_dim": 256})


def _tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.clone() for k, v in CausalVAE(CONFIGS["tiny"]).state_dict().items()}


def test_vae_key_errors_named(tmp_path):
    state = _tiny_state()
    del state["decoder.head.0.gamma"]
    state["decoder.head.1.weight"] = torch.zeros(3)
    state["conv1.bias"] = torch.zeros(31)
    path = tmp_path / "vae.safetensors"
    save_file(state, str(path))
    msg = (
        f"VAE checkpoint {str(path)!r}: does not match the Wan2.1 VAE (dim 8): "
        "1 missing: decoder.head.0.gamma; 1 unexpected: decoder.head.1.weight; "
        "1 mis-shaped: conv1.bias [31] (model [32]). "
        "Fix: pass an unmodified Wan2.1_VAE.pth, or the config it was trained with."
    )
    with pytest.raises(InputError, match="^" + re.escape(msg) + "$"):
        load_vae(path)


def test_vae_config_mismatch_named(tmp_path):
    path = tmp_path / "Wan2.1_VAE.pth"
    torch.save(_tiny_state(), path)
    with pytest.raises(
        InputError,
        match=re.escape("does not match the Wan2.1 VAE (dim 96): 188 mis-shaped:"),
    ):
        load_vae(path, CONFIGS["multitalk-14b"])


def test_vae_refuses_wan22_vae(tmp_path):
    path = tmp_path / "Wan2.2_VAE.pth"
    torch.save(
        {
            "encoder.conv1.weight": torch.zeros(160, 12, 3, 3, 3),
            "conv2.weight": torch.zeros(48, 48, 1, 1, 1),
        },
        path,
    )
    msg = (
        f"VAE checkpoint {str(path)!r}: not a Wan2.1 VAE: latent channels 48 and input channels 12 "
        "(Wan2.1: 16 and 3). It looks like the Wan2.2 VAE (Wan2.2_VAE.pth, z_dim 48). MultiTalk needs "
        "the Wan2.1 VAE. Fix: pass Wan2.1_VAE.pth from Wan-AI/Wan2.1-I2V-14B-480P."
    )
    with pytest.raises(InputError, match="^" + re.escape(msg) + "$"):
        load_vae(path)


def test_vae_refuses_other_checkpoint(tmp_path):
    path = tmp_path / "clip.safetensors"
    save_file(
        {"visual.conv1.weight": torch.zeros(4, 3, 2, 2), "log_scale": torch.zeros(())}, str(path)
    )
    msg = (
        f"VAE checkpoint {str(path)!r}: not a Wan2.1 VAE checkpoint: it has no 'encoder.conv1.weight' / "
        "'conv2.weight' (first keys: ['log_scale', 'visual.conv1.weight']). "
        "Fix: pass Wan2.1_VAE.pth from Wan-AI/Wan2.1-I2V-14B-480P."
    )
    with pytest.raises(InputError, match="^" + re.escape(msg) + "$"):
        load_vae(path)


def test_vae_missing_file(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        load_vae(tmp_path / "nope.pth")
