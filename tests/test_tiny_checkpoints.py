"""Tiny random checkpoints: exact published file names and formats, verified, atomic, idempotent."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors import safe_open

from mtlib import weights as W
from mtlib.weights import tiny
from mtlib.weights.tiny import write_tiny_checkpoints
from tests.weights_expected import golden_expected


@pytest.fixture(scope="module")
def expected(golden):
    return golden_expected(golden.weights)


def _keys(path):
    with safe_open(str(path), "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def test_tiny_files_have_the_real_names_and_formats(tmp_path, expected):
    lay = write_tiny_checkpoints(tmp_path, seed=0, expected=expected)
    wan = tmp_path / "Wan2.1-I2V-14B-480P"
    mt = tmp_path / "MeiGen-MultiTalk"
    a2v = tmp_path / "chinese-wav2vec2-base"
    assert (lay.wan_dir, lay.multitalk_dir, lay.wav2vec_dir) == (wan, mt, a2v)
    assert sorted(p.name for p in wan.iterdir()) == sorted([
        "config.json", "diffusion_pytorch_model-00001-of-00002.safetensors",
        "diffusion_pytorch_model-00002-of-00002.safetensors",
        "diffusion_pytorch_model.safetensors.index.json", "Wan2.1_VAE.pth",
        "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth",
        "models_t5_umt5-xxl-enc-bf16.pth", "google",
    ])  # fmt: skip
    assert sorted(p.name for p in mt.iterdir()) == ["diffusion_pytorch_model.safetensors.index.json",
                                                    "multitalk.safetensors"]  # fmt: skip
    assert sorted(p.name for p in a2v.iterdir()) == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]

    # DiT: base keys in the Wan shards, audio keys in multitalk.safetensors, indexes agree.
    s1 = _keys(wan / "diffusion_pytorch_model-00001-of-00002.safetensors")
    s2 = _keys(wan / "diffusion_pytorch_model-00002-of-00002.safetensors")
    audio = _keys(mt / "multitalk.safetensors")
    assert {**s1, **s2, **audio} == {k: s for k, (s, _) in expected["dit"].items()}
    assert all(
        k.startswith("audio_proj.") or ".audio_cross_attn." in k or ".norm_x." in k for k in audio
    )
    assert not any(
        k.startswith("audio_proj.") or ".audio_cross_attn." in k or ".norm_x." in k
        for k in {**s1, **s2}
    )
    assert "blocks.1.norm_x.weight" in audio and "audio_proj.proj1.weight" in audio
    wan_index = json.loads((wan / "diffusion_pytorch_model.safetensors.index.json").read_text())[
        "weight_map"
    ]
    mt_index = json.loads((mt / "diffusion_pytorch_model.safetensors.index.json").read_text())[
        "weight_map"
    ]
    assert wan_index == {**{k: "diffusion_pytorch_model-00001-of-00002.safetensors" for k in s1},
                         **{k: "diffusion_pytorch_model-00002-of-00002.safetensors" for k in s2}}  # fmt: skip
    assert mt_index == {**wan_index, **{k: "multitalk.safetensors" for k in audio}}
    cfg = json.loads((wan / "config.json").read_text())
    assert (cfg["_class_name"], cfg["model_type"], cfg["dim"], cfg["in_dim"], cfg["num_layers"], cfg["num_heads"]) == (
        "WanModel", "i2v", 64, 36, 2, 4)  # fmt: skip

    # .pth files: plain torch.save state dicts (weights_only loadable), T5 in bf16.
    t5 = torch.load(wan / "models_t5_umt5-xxl-enc-bf16.pth", weights_only=True)
    assert {k: tuple(v.shape) for k, v in t5.items()} == {
        k: s for k, (s, _) in expected["t5"].items()
    }
    assert {v.dtype for v in t5.values()} == {torch.bfloat16}
    vae = torch.load(wan / "Wan2.1_VAE.pth", weights_only=True)
    assert {k: tuple(v.shape) for k, v in vae.items()} == {
        k: s for k, (s, _) in expected["vae"].items()
    }
    assert {v.dtype for v in vae.values()} == {torch.float32}
    clip = torch.load(
        wan / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth", weights_only=True
    )
    assert {k: tuple(v.shape) for k, v in clip.items()} == {
        k: s for k, (s, _) in expected["clip"].items()
    }

    # wav2vec2: HF pre-training layout, legacy weight norm names, heads included.
    w2v = _keys(a2v / "model.safetensors")
    assert w2v == {k: s for k, (s, _) in expected["wav2vec2"].items()}
    assert "wav2vec2.encoder.pos_conv_embed.conv.weight_g" in w2v
    assert "wav2vec2.encoder.pos_conv_embed.conv.weight_v" in w2v
    assert {"quantizer.codevectors", "project_hid.weight", "project_q.weight"} <= set(w2v)
    wcfg = json.loads((a2v / "config.json").read_text())
    assert (wcfg["hidden_size"], wcfg["num_hidden_layers"], wcfg["num_attention_heads"], wcfg["intermediate_size"]) == (
        48, 3, 4, 64)  # fmt: skip
    assert (
        wcfg["conv_dim"] == [16] * 7
        and wcfg["conv_bias"] is False
        and wcfg["feat_extract_norm"] == "group"
    )
    pre = json.loads((a2v / "preprocessor_config.json").read_text())
    assert (pre["sampling_rate"], pre["do_normalize"]) == (16000, True)

    # the stand-in tokenizer marker, and what the text encoder is told
    assert (wan / "google/umt5-xxl/mtlib-stand-in-tokenizer.json").exists()
    assert lay.t5_tokenizer == "stand-in"


def test_tiny_checkpoints_verify_cleanly(tmp_path, expected):
    lay = write_tiny_checkpoints(tmp_path, seed=0, expected=expected)
    report = W.verify_layout(lay, "tiny", expected=expected)  # strict: raises on any problem
    assert report.ok and report.problems == []
    statuses = {r.file.split("/")[-1]: r.status for r in report.rows}
    assert statuses["Wan2.1_VAE.pth"] == "ok"
    assert statuses["multitalk.safetensors"] == "ok"
    assert statuses["xlm-roberta-large"] == "absent"  # optional, reported but not a problem
    assert "ready:" in report.table()


def test_tiny_wav2vec2_loads_with_transformers(tmp_path, expected):
    from transformers import Wav2Vec2Model

    lay = write_tiny_checkpoints(tmp_path, seed=0, expected=expected)
    model = Wav2Vec2Model.from_pretrained(str(lay.wav2vec_dir))
    g = _keys(lay.wav2vec_dir / "model.safetensors")
    v = model.encoder.pos_conv_embed.conv.parametrizations.weight.original1
    assert tuple(v.shape) == g["wav2vec2.encoder.pos_conv_embed.conv.weight_v"]
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (48, 3)


def test_tiny_write_is_deterministic_and_idempotent(tmp_path, expected):
    a = write_tiny_checkpoints(tmp_path / "a", seed=3, expected=expected)
    files = sorted(p for p in (tmp_path / "a").rglob("*") if p.is_file())
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}
    again = write_tiny_checkpoints(tmp_path / "a", seed=3, expected=expected)
    assert again == a
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files} == before  # untouched

    write_tiny_checkpoints(tmp_path / "b", seed=3, expected=expected)
    shard = "Wan2.1-I2V-14B-480P/diffusion_pytorch_model-00001-of-00002.safetensors"
    assert (tmp_path / "a" / shard).read_bytes() == (tmp_path / "b" / shard).read_bytes()
    mt = "MeiGen-MultiTalk/multitalk.safetensors"
    write_tiny_checkpoints(tmp_path / "a", seed=4, expected=expected)  # new seed: rewritten
    assert (tmp_path / "a" / mt).read_bytes() != (tmp_path / "b" / mt).read_bytes()
    assert json.loads((tmp_path / "a" / tiny.STAMP).read_text())["seed"] == 4
    assert not list((tmp_path / "a").glob(".tiny-tmp-*"))


def test_tiny_rewrites_an_incomplete_set(tmp_path, expected):
    lay = write_tiny_checkpoints(tmp_path, seed=0, expected=expected)
    lay.vae_file.unlink()
    write_tiny_checkpoints(tmp_path, seed=0, expected=expected)
    assert lay.vae_file.exists()
    W.verify_layout(lay, "tiny", expected=expected)


def test_interrupted_tiny_write_leaves_nothing(tmp_path, expected, monkeypatch):
    def boom(tmp, expected, seed):
        (tmp / "Wan2.1-I2V-14B-480P").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(tiny, "_write_tree", boom)
    with pytest.raises(KeyboardInterrupt):
        write_tiny_checkpoints(tmp_path, seed=0, expected=expected)
    assert list(tmp_path.iterdir()) == []


def test_tiny_refuses_folders_it_did_not_write(tmp_path, expected):
    (tmp_path / "Wan2.1-I2V-14B-480P").mkdir()
    (tmp_path / "Wan2.1-I2V-14B-480P" / "Wan2.1_VAE.pth").write_bytes(b"real?")
    with pytest.raises(W.WeightsError, match=r"not written by mtlib .*refusing to overwrite"):
        write_tiny_checkpoints(tmp_path, seed=0, expected=expected)
    assert (tmp_path / "Wan2.1-I2V-14B-480P" / "Wan2.1_VAE.pth").read_bytes() == b"real?"


def test_init_rules_follow_the_documented_recipe():
    g = torch.Generator().manual_seed(0)
    w = tiny.init_tensor("blocks.0.ffn.0.weight", (512, 400), g)
    assert abs(w.std().item() - 400**-0.5) < 0.05 * 400**-0.5
    b = tiny.init_tensor("blocks.0.ffn.0.bias", (20000,), g)
    assert abs(b.std().item() - 0.05) < 0.005 and abs(b.mean().item()) < 0.002
    n = tiny.init_tensor("blocks.0.norm3.weight", (20000,), g)
    assert abs(n.mean().item() - 1.0) < 0.005 and abs(n.std().item() - 0.1) < 0.01
    m = tiny.init_tensor("blocks.0.modulation", (1, 6, 400), g)
    assert abs(m.std().item() - 400**-0.5) < 0.1 * 400**-0.5
    e = tiny.init_tensor("token_embedding.weight", (300, 100), g)
    assert abs(e.std().item() - 1.0) < 0.05
    r = tiny.init_tensor("blocks.0.pos_embedding.embedding.weight", (300, 100), g)
    assert abs(r.std().item() - 0.5) < 0.03
    gamma = tiny.init_tensor("encoder.head.0.gamma", (20000, 1, 1, 1), g)
    assert abs(gamma.mean().item() - 1.0) < 0.005


def test_tiny_rewrites_a_truncated_file(tmp_path, expected):
    lay = write_tiny_checkpoints(tmp_path, seed=0, expected=expected)
    size = lay.t5_file.stat().st_size
    with open(lay.t5_file, "r+b") as f:
        f.truncate(size - 10)
    with pytest.raises(W.WeightsError) as e:
        W.verify_layout(lay, "tiny", expected=expected)
    assert f"Fix: run `mtlib setup --tiny {tmp_path}` (it replaces damaged files)." in str(e.value)
    write_tiny_checkpoints(tmp_path, seed=0, expected=expected)
    assert lay.t5_file.stat().st_size == size
    W.verify_layout(lay, "tiny", expected=expected)


def test_tiny_rewrite_interrupted_while_swapping_folders_recovers(tmp_path, expected, monkeypatch):
    write_tiny_checkpoints(tmp_path, seed=0, expected=expected)
    real_replace = os.replace
    calls = []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 3:  # stamp "writing", old Wan folder moved aside, new one not yet in
            raise OSError("power cut")
        return real_replace(src, dst)

    monkeypatch.setattr(tiny.os, "replace", flaky)
    with pytest.raises(OSError, match="power cut"):
        write_tiny_checkpoints(tmp_path, seed=1, expected=expected)
    monkeypatch.setattr(tiny.os, "replace", real_replace)
    lay = write_tiny_checkpoints(tmp_path, seed=1, expected=expected)  # not refused as foreign
    W.verify_layout(lay, "tiny", expected=expected)
    assert json.loads((tmp_path / tiny.STAMP).read_text())["seed"] == 1
