"""LoRA: the golden merge of the reference (WanLoraWrapper), the formats people download, the
refusals before any weight loads (exact messages), and the config / CLI / plan / record."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from mtlib.config import ConfigError, load_config
from mtlib.models.dit import CONFIGS, DiTConfig, build_dit, load_dit
from mtlib.weights import lora
from mtlib.weights.lora import LoraError, LoraSpec, check_lora, merge_loras, parse_lora_arg
from tests.golden import SINGLE_STAGE_TOL, assert_close, case_lora, get_case, golden_dir


def golden_lora_cases() -> list[str]:
    """e2e cases of the golden set that merge a LoRA (params.lora), for parametrize."""
    index = golden_dir() / "index.json"
    if not index.exists():
        return ["<golden-missing>"]
    cases = json.loads(index.read_text())["cases"]
    names = [c["case"] for c in cases if c["stage"] == "e2e" and "lora" in c.get("params", {})]
    return names or ["<no-lora-cases>"]


def tiny_dit(seed: int = 0) -> torch.nn.Module:
    """The tiny DiT with seeded random weights (the values only need to be distinct)."""
    model = build_dit("tiny", device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval().requires_grad_(False)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(model, before) -> list[str]:
    return sorted(k for k, v in model.state_dict().items() if not torch.equal(v, before[k]))


def rand(*shape, seed=0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


TINY_SHAPES = {k: tuple(v.shape) for k, v in build_dit("tiny").state_dict().items()}


# --------------------------------------------------------------------------------- golden


@pytest.mark.golden
@pytest.mark.parametrize("case_name", golden_lora_cases(), ids=str)
def test_golden_lora_merged_parameters(golden, case_name):
    """Every parameter the reference's merge changed (lora.merged.<param>), and only those."""
    case = get_case(golden, case_name)
    spec = case_lora(case)
    tc = golden.tiny_configs["dit"]
    config = DiTConfig.from_official(tc["tiny"], tc["hardcoded_tiny"])
    dit = load_dit(golden.weights / "dit", config=config)
    before = snapshot(dit)
    checks = merge_loras(dit, [LoraSpec(str(spec["path"]), float(spec["scale"]))])
    merged = {k[len("lora.merged.") :]: v for k, v in case.tensors.items() if k.startswith("lora.")}
    assert len(merged) == spec["changed_params"]
    assert changed(dit, before) == sorted(merged)
    assert checks[0].params == sorted(merged)
    state = dit.state_dict()
    for name, expected in merged.items():
        assert_close(state[name], expected, f"lora.merged.{name}", SINGLE_STAGE_TOL)
    # the reference format ignores the file's alpha scalars: none of them was applied
    assert checks[0].format == "reference"
    assert all(k.endswith(".alpha") for k in checks[0].ignored)


@pytest.mark.golden
@pytest.mark.parametrize("case_name", golden_lora_cases(), ids=str)
def test_golden_lora_in_the_plan(golden, case_name):
    """The plan lists the file, its scale and the parameters it touches (from the header)."""
    from mtlib.plan import PlanInputs, plan, plan_table

    case = get_case(golden, case_name)
    spec = case_lora(case)
    cfg = load_config(
        "tiny", {"model.loras": [{"path": str(spec["path"]), "scale": spec["scale"]}]}
    )
    p = plan(cfg, PlanInputs(image_size=(80, 110), audio_samples_16k=(28640,)))
    merged = sorted(k[len("lora.merged.") :] for k in case.tensors if k.startswith("lora."))
    assert [(x["path"], x["scale"], x["params"]) for x in p.loras] == [
        (str(spec["path"]), float(spec["scale"]), merged)
    ]
    n_alpha = sum(1 for k in lora.read_header(spec["path"]) if k.endswith(".alpha"))
    assert (
        f"LoRA {spec['path'].name}: scale {float(spec['scale']):g}, reference format, "
        f"{len(merged)} parameters touched, {n_alpha} .alpha ignored (reference format)"
    ) in plan_table(p)


# ------------------------------------------------------------------------------ merging


def test_two_loras_in_turn_equal_their_sum(tmp_path):
    """A then B (each with its scale) == one rank-(rA+rB) LoRA holding both, scale 1."""
    q = "diffusion_model.blocks.0.self_attn.q"
    up_a, down_a, up_b, down_b = (
        rand(64, 4, seed=1),
        rand(4, 64, seed=2),
        rand(64, 3, seed=3),
        rand(3, 64, seed=4),
    )
    diff_b = rand(96, seed=5)
    save_file(
        {f"{q}.lora_up.weight": up_a, f"{q}.lora_down.weight": down_a}, tmp_path / "a.safetensors"
    )
    save_file({f"{q}.lora_up.weight": up_b, f"{q}.lora_down.weight": down_b,
               "diffusion_model.blocks.0.ffn.0.diff_b": diff_b}, tmp_path / "b.safetensors")  # fmt: skip
    save_file({f"{q}.lora_up.weight": torch.cat([0.7 * up_a, -1.3 * up_b], 1),
               f"{q}.lora_down.weight": torch.cat([down_a, down_b], 0),
               "diffusion_model.blocks.0.ffn.0.diff_b": -1.3 * diff_b}, tmp_path / "ab.safetensors")  # fmt: skip
    in_turn, at_once = tiny_dit(), tiny_dit()
    base = snapshot(in_turn)
    merge_loras(in_turn, [LoraSpec(str(tmp_path / "a.safetensors"), 0.7),
                          LoraSpec(str(tmp_path / "b.safetensors"), -1.3)])  # fmt: skip
    merge_loras(at_once, [LoraSpec(str(tmp_path / "ab.safetensors"), 1.0)])
    assert changed(in_turn, base) == changed(at_once, base) == [
        "blocks.0.ffn.0.bias", "blocks.0.self_attn.q.weight",
    ]  # fmt: skip
    sa, sb = in_turn.state_dict(), at_once.state_dict()
    for k in base:
        assert (sa[k] - sb[k]).abs().max() <= 1e-5, k
    expected = base["blocks.0.self_attn.q.weight"].double() + (
        0.7 * up_a.double() @ down_a.double() - 1.3 * up_b.double() @ down_b.double()
    )
    assert (sa["blocks.0.self_attn.q.weight"].double() - expected).abs().max() <= 1e-5


def test_bf16_weights_get_the_lora_cast_to_bf16_and_one_rounding(tmp_path):
    """The reference's first step casts the LoRA to the parameter dtype; mtlib's product is
    then float32 and W + delta is rounded once to bf16."""
    q = "diffusion_model.blocks.1.cross_attn.o"
    up, down = rand(64, 8, seed=6), rand(8, 64, seed=7)
    save_file(
        {f"{q}.lora_up.weight": up, f"{q}.lora_down.weight": down}, tmp_path / "l.safetensors"
    )
    dit = tiny_dit().to(torch.bfloat16)
    w = dit.state_dict()["blocks.1.cross_attn.o.weight"].clone()
    merge_loras(dit, [LoraSpec(str(tmp_path / "l.safetensors"), 1.2)])
    delta = (up.bfloat16().float() @ down.bfloat16().float()) * 1.2
    expected = (w.float() + delta).bfloat16()
    assert torch.equal(dit.state_dict()["blocks.1.cross_attn.o.weight"], expected)
    # the reference's GPU arithmetic (product and scale in bf16, added into bf16) is offered
    ref = tiny_dit().to(torch.bfloat16)
    checks = lora.check_loras([LoraSpec(str(tmp_path / "l.safetensors"), 1.2)], TINY_SHAPES)
    lora.merge_checked(ref, checks[0], arithmetic="reference-gpu")
    gpu = w + ((up.bfloat16() @ down.bfloat16()) * 1.2)
    assert torch.equal(ref.state_dict()["blocks.1.cross_attn.o.weight"], gpu)


# ------------------------------------------------------------------------------ formats


def test_reference_format_ignores_alpha_and_applies_diff_and_diff_b(tmp_path):
    p = "diffusion_model."
    up, down = rand(64, 4, seed=1), rand(4, 64, seed=2)
    norm3, bias = rand(64, seed=3), rand(96, seed=4)
    save_file({
        f"{p}blocks.0.self_attn.q.lora_up.weight": up, f"{p}blocks.0.self_attn.q.lora_down.weight": down,
        f"{p}blocks.0.self_attn.q.alpha": torch.tensor(8.0),
        f"{p}blocks.1.norm3.diff": norm3, f"{p}blocks.0.ffn.0.diff_b": bias,
    }, tmp_path / "r.safetensors")  # fmt: skip
    dit = tiny_dit()
    base = snapshot(dit)
    (check,) = merge_loras(dit, [LoraSpec(str(tmp_path / "r.safetensors"), 0.5)])
    assert check.format == "reference" and check.ignored == [f"{p}blocks.0.self_attn.q.alpha"]
    s = dit.state_dict()
    assert changed(dit, base) == [
        "blocks.0.ffn.0.bias",
        "blocks.0.self_attn.q.weight",
        "blocks.1.norm3.weight",
    ]
    assert torch.allclose(
        s["blocks.0.self_attn.q.weight"],
        base["blocks.0.self_attn.q.weight"] + 0.5 * up @ down,
        atol=1e-6,
    )
    assert torch.allclose(
        s["blocks.1.norm3.weight"], base["blocks.1.norm3.weight"] + 0.5 * norm3, atol=1e-7
    )
    assert torch.allclose(
        s["blocks.0.ffn.0.bias"], base["blocks.0.ffn.0.bias"] + 0.5 * bias, atol=1e-7
    )


@pytest.mark.parametrize(
    ("key", "param"),
    [
        ("transformer.blocks.0.attn1.to_q", "blocks.0.self_attn.q.weight"),
        ("transformer.blocks.1.attn1.to_out.0", "blocks.1.self_attn.o.weight"),
        ("transformer.blocks.0.attn2.to_k", "blocks.0.cross_attn.k.weight"),
        ("transformer.blocks.1.attn2.add_k_proj", "blocks.1.cross_attn.k_img.weight"),
        ("transformer.blocks.0.attn2.add_v_proj", "blocks.0.cross_attn.v_img.weight"),
        ("transformer.blocks.0.ffn.net.0.proj", "blocks.0.ffn.0.weight"),
        ("transformer.blocks.1.ffn.net.2", "blocks.1.ffn.2.weight"),
        ("transformer.condition_embedder.time_embedder.linear_1", "time_embedding.0.weight"),
        ("transformer.condition_embedder.time_proj", "time_projection.1.weight"),
        ("transformer.condition_embedder.text_embedder.linear_2", "text_embedding.2.weight"),
        ("transformer.condition_embedder.image_embedder.ff.net.0.proj", "img_emb.proj.1.weight"),
        ("transformer.proj_out", "head.head.weight"),
        ("transformer.blocks.0.self_attn.v", "blocks.0.self_attn.v.weight"),  # original names
        (
            "diffusion_model.blocks.1.audio_cross_attn.q_linear",
            "blocks.1.audio_cross_attn.q_linear.weight",
        ),
    ],
)
def test_peft_keys_map_to_the_dit_with_alpha_over_rank(tmp_path, key, param):
    out, inp = TINY_SHAPES[param]
    up, down = rand(out, 4, seed=1), rand(4, inp, seed=2)
    save_file({f"{key}.lora_B.weight": up, f"{key}.lora_A.weight": down,
               f"{key}.alpha": torch.tensor(2.0)}, tmp_path / "p.safetensors")  # fmt: skip
    dit = tiny_dit()
    base = snapshot(dit)
    (check,) = merge_loras(dit, [LoraSpec(str(tmp_path / "p.safetensors"), 1.5)])
    assert check.format == "peft" and changed(dit, base) == [param]
    expected = base[param] + 1.5 * (2.0 / 4) * up @ down  # PEFT: scale · alpha / rank
    assert torch.allclose(dit.state_dict()[param], expected, atol=1e-6)


def test_peft_without_alpha_has_factor_one(tmp_path):
    key, param = "diffusion_model.blocks.0.cross_attn.o", "blocks.0.cross_attn.o.weight"
    up, down = rand(64, 2, seed=1), rand(2, 64, seed=2)
    save_file(
        {f"{key}.lora_B.weight": up, f"{key}.lora_A.weight": down}, tmp_path / "p.safetensors"
    )
    dit = tiny_dit()
    base = snapshot(dit)
    merge_loras(dit, [LoraSpec(str(tmp_path / "p.safetensors"), 1.0)])
    assert torch.allclose(dit.state_dict()[param], base[param] + up @ down, atol=1e-6)


@pytest.mark.parametrize(
    ("key", "param"),
    [
        ("lora_unet_blocks_0_self_attn_q", "blocks.0.self_attn.q.weight"),
        ("lora_unet_blocks_1_cross_attn_v_img", "blocks.1.cross_attn.v_img.weight"),
        (
            "lora_unet_blocks_1_audio_cross_attn_kv_linear",
            "blocks.1.audio_cross_attn.kv_linear.weight",
        ),
        ("lora_unet_audio_proj_proj1_vf", "audio_proj.proj1_vf.weight"),
        ("lora_unet_head_head", "head.head.weight"),
    ],
)
def test_kohya_keys_map_to_the_dit_with_alpha_over_rank(tmp_path, key, param):
    out, inp = TINY_SHAPES[param]
    up, down = rand(out, 4, seed=1), rand(4, inp, seed=2)
    save_file({f"{key}.lora_up.weight": up, f"{key}.lora_down.weight": down,
               f"{key}.alpha": torch.tensor(8.0)}, tmp_path / "k.safetensors")  # fmt: skip
    dit = tiny_dit()
    base = snapshot(dit)
    (check,) = merge_loras(dit, [LoraSpec(str(tmp_path / "k.safetensors"), 0.5)])
    assert check.format == "kohya" and changed(dit, base) == [param]
    expected = base[param] + 0.5 * (8.0 / 4) * up @ down  # kohya: scale · alpha / rank
    assert torch.allclose(dit.state_dict()[param], expected, atol=1e-6)


def test_a_t2v_lora_without_image_keys_applies_to_the_i2v_dit(tmp_path):
    """A LoRA made for Wan2.1-T2V-14B has no k_img / v_img / img_emb keys: every key matches."""
    tensors = {}
    for b in range(2):
        for m in ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q",
                  "cross_attn.k", "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2"):  # fmt: skip
            out, inp = TINY_SHAPES[f"blocks.{b}.{m}.weight"]
            key = f"diffusion_model.blocks.{b}.{m}"
            tensors[f"{key}.lora_up.weight"] = rand(out, 2, seed=b)
            tensors[f"{key}.lora_down.weight"] = rand(2, inp, seed=b + 9)
    save_file(tensors, tmp_path / "t2v.safetensors")
    dit = tiny_dit()
    base = snapshot(dit)
    (check,) = merge_loras(dit, [LoraSpec(str(tmp_path / "t2v.safetensors"), 1.0)])
    assert check.unmatched == [] and len(check.params) == 20
    assert "blocks.0.cross_attn.k_img.weight" not in changed(dit, base)


# ------------------------------------------------------------------------------ refusals


def test_refuses_a_file_that_matches_nothing(tmp_path):
    path = tmp_path / "sd15.safetensors"
    save_file({"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": rand(4, 8),
               "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": rand(8, 4),
               "lora_te_text_model_encoder_layers_0_mlp_fc1.alpha": torch.tensor(4.0)}, path)  # fmt: skip
    with pytest.raises(LoraError) as e:
        check_lora(LoraSpec(str(path), 1.0), TINY_SHAPES, model="tiny")
    assert str(e.value) == (
        f"LoRA file '{path}': none of its 3 tensors matches a parameter of the tiny DiT (format "
        "found: kohya-style for another network ('te', not 'lora_unet_'); example keys: 'lora_te_text_model_encoder_layers_0_mlp_fc1.alpha', "
        "'lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight', "
        "'lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight'). mtlib reads the "
        "reference's 'diffusion_model.<module>.lora_down.weight' / '.lora_up.weight' / '.diff' / "
        "'.diff_b', PEFT/diffusers '<transformer.|diffusion_model.><module>.lora_A.weight' / "
        "'.lora_B.weight' and kohya 'lora_unet_<module>.lora_down.weight'. Fix: use a LoRA made "
        "for Wan2.1-14B (I2V or T2V)."
    )


def test_refuses_a_partly_matching_file_unless_allowed(tmp_path):
    path = tmp_path / "partial.safetensors"
    p = "diffusion_model."
    save_file({f"{p}blocks.0.self_attn.q.lora_up.weight": rand(64, 4),
               f"{p}blocks.0.self_attn.q.lora_down.weight": rand(4, 64),
               f"{p}blocks.0.self_attn.qkv.lora_up.weight": rand(192, 4),
               f"{p}blocks.0.self_attn.qkv.lora_down.weight": rand(4, 64),
               f"{p}blocks.7.ffn.0.diff_b": rand(96)}, path)  # fmt: skip
    with pytest.raises(LoraError) as e:
        check_lora(LoraSpec(str(path), 1.0), TINY_SHAPES, model="tiny")
    assert str(e.value) == (
        f"LoRA file '{path}': 2 of its modules match no parameter of the tiny DiT: "
        "'diffusion_model.blocks.0.self_attn.qkv', 'diffusion_model.blocks.7.ffn.0' "
        "(1 parameter updates would match). Fix: use a LoRA made for this model, or set "
        "allow_unmatched: true on this model.loras entry to merge only the matching ones."
    )
    dit = tiny_dit()
    base = snapshot(dit)
    (check,) = merge_loras(dit, [LoraSpec(str(path), 1.0, allow_unmatched=True)])
    assert changed(dit, base) == ["blocks.0.self_attn.q.weight"]
    assert check.unmatched == [
        "diffusion_model.blocks.0.self_attn.qkv",
        "diffusion_model.blocks.7.ffn.0",
    ]


def test_refuses_a_lora_made_for_another_model_size(tmp_path):
    """A Wan2.1-1.3B LoRA (dim 1536) on the 14B DiT (dim 5120): headers only, nothing loaded."""
    path = tmp_path / "wan13b.safetensors"
    q = "diffusion_model.blocks.0.self_attn.q"
    save_file({f"{q}.lora_up.weight": torch.zeros(1536, 32, dtype=torch.bfloat16),
               f"{q}.lora_down.weight": torch.zeros(32, 1536, dtype=torch.bfloat16)}, path)  # fmt: skip
    shapes = lora.dit_param_shapes("multitalk-14b")  # meta build: no memory
    with pytest.raises(LoraError) as e:
        check_lora(LoraSpec(str(path), 1.0), shapes, model="multitalk-14b")
    assert str(e.value) == (
        f"LoRA file '{path}': shape mismatch at parameter 'blocks.0.self_attn.q.weight': the DiT "
        f"has [5120, 5120], the LoRA gives [1536, 1536] ({q}.lora_up.weight, "
        f"{q}.lora_down.weight); it looks made for Wan2.1-1.3B (dim 1536). Fix: use a LoRA made "
        "for Wan2.1-14B (MultiTalk's DiT; T2V-14B LoRAs fit too)."
    )


def test_refuses_missing_truncated_and_non_safetensors_files(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(LoraError) as e:
        lora.read_header(missing)
    assert str(e.value) == (
        f"LoRA file '{missing}': not found. Fix: check the path (a .safetensors file)."
    )
    good = tmp_path / "good.safetensors"
    save_file({"diffusion_model.blocks.0.ffn.0.diff_b": rand(96)}, good)
    cut = tmp_path / "cut.safetensors"
    data = good.read_bytes()
    cut.write_bytes(data[:-100])
    n = int.from_bytes(data[:8], "little")
    with pytest.raises(LoraError) as e:
        lora.read_header(cut)
    assert str(e.value) == (
        f"LoRA file '{cut}': truncated: the header describes 384 bytes of tensor data but the "
        f"file holds {384 - 100}. Fix: download the file again."
    )
    assert len(data) == 8 + n + 384
    pt = tmp_path / "lora.pt"
    torch.save({"a": torch.zeros(3)}, pt)
    with pytest.raises(LoraError, match=r"truncated or not a safetensors file|not a safetensors"):
        lora.read_header(pt)


def test_bad_lora_fails_in_the_plan_before_any_weight_loads(tmp_path, monkeypatch):
    from mtlib.run import generation

    def no_load(*a, **k):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(generation, "load_models", no_load)
    cfg = load_config("tiny", {"model.loras": [{"path": str(tmp_path / "x.safetensors"), "scale": 1.0}],
                               "generation.frame_num": 13})  # fmt: skip
    with pytest.raises(LoraError, match=r"x.safetensors': not found"):
        generation.generate_video(cfg, tmp_path / "out.mp4", progress=False)
    assert not (tmp_path / "out.mp4").exists()


# ------------------------------------------------------------------- config, CLI, loading


def test_config_requires_the_scale():
    with pytest.raises(ConfigError) as e:
        load_config("tiny", {"model.loras": [{"path": "a.safetensors"}]})
    assert str(e.value) == (
        "preset 'tiny': model.loras[0].scale: required, missing. It is the LoRA strength, "
        "e.g. 1.0 (the reference's --lora_scale)."
    )
    cfg = load_config("tiny", {"model.loras": [{"path": "a.safetensors", "scale": 1}]})
    assert cfg.model.loras[0].scale == 1.0 and cfg.model.loras[0].allow_unmatched is False


def test_cli_lora_argument():
    assert parse_lora_arg("dir/a:b.safetensors:0.8") == LoraSpec("dir/a:b.safetensors", 0.8)
    with pytest.raises(LoraError) as e:
        parse_lora_arg("lightx2v.safetensors")
    assert str(e.value) == (
        "--lora 'lightx2v.safetensors': expected PATH:SCALE with SCALE a number, e.g. --lora "
        "lightx2v_rank32.safetensors:1.0 (the reference's --lora_scale; it has no implicit "
        "default here)."
    )
    import argparse

    from mtlib.cli.generate import _cli_overrides, add_arguments_generate

    parser = argparse.ArgumentParser()
    add_arguments_generate(parser)
    args = parser.parse_args(
        ["--out", "x.mp4", "--lora", "a.safetensors:1.0", "--lora", "b.safetensors:-0.5"]
    )
    assert _cli_overrides(args)["model.loras"] == [
        {"path": "a.safetensors", "scale": 1.0, "allow_unmatched": False},
        {"path": "b.safetensors", "scale": -0.5, "allow_unmatched": False},
    ]


@pytest.mark.slow
def test_load_models_merges_the_config_loras_and_records_them(tmp_path):
    from mtlib.run.load import load_models

    q = "diffusion_model.blocks.1.self_attn.k"
    up, down = rand(64, 4, seed=1), rand(4, 64, seed=2)
    path = tmp_path / "l.safetensors"
    save_file({f"{q}.lora_up.weight": up, f"{q}.lora_down.weight": down}, path)
    plain = load_models(load_config("tiny", {"model.device": "cpu"}))
    cfg = load_config(
        "tiny", {"model.device": "cpu", "model.loras": [{"path": str(path), "scale": 2.0}]}
    )
    merged = load_models(cfg)
    w0 = plain.dit.state_dict()["blocks.1.self_attn.k.weight"]
    w1 = merged.dit.state_dict()["blocks.1.self_attn.k.weight"]
    assert torch.allclose(w1, w0 + 2.0 * up @ down, atol=1e-6)
    (rec,) = lora.record(merged.loras)
    import hashlib

    assert rec["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (rec["path"], rec["scale"], rec["format"], rec["params_touched"]) == (
        str(path),
        2.0,
        "reference",
        1,
    )


def test_dit_param_shapes_are_the_registry_models():
    assert lora.dit_param_shapes("tiny") == TINY_SHAPES
    assert lora.dit_param_shapes(CONFIGS["multitalk-14b"])["blocks.39.ffn.0.weight"] == (
        13824,
        5120,
    )


@pytest.mark.slow
def test_fp8_quantises_the_merged_weights(tmp_path, monkeypatch):
    """load_models merges before the fp8 conversion (which would otherwise quantise W alone):
    the fp8 step is observed through its own entry point (CPU: fp8 itself needs a GPU)."""
    import mtlib.accel.fp8
    import mtlib.accel.options
    from mtlib.run import generation

    q = "diffusion_model.blocks.0.ffn.2"
    up, down = rand(64, 4, seed=3), rand(4, 96, seed=4)
    path = tmp_path / "l.safetensors"
    save_file({f"{q}.lora_up.weight": up, f"{q}.lora_down.weight": down}, path)
    seen = {}

    def fake_fp8(block):  # mtlib.accel.dit_load converts each block as it arrives (block 0 first)
        seen.setdefault("w", block.state_dict()["ffn.2.weight"].float().clone())
        return block

    monkeypatch.setattr(mtlib.accel.fp8, "fp8_block", fake_fp8)
    monkeypatch.setattr(
        mtlib.accel.options, "effective_precision", lambda device, precision: precision
    )
    base = generation.load_models(
        load_config("tiny", {"model.device": "cpu"}), precision="reference"
    )
    cfg = load_config(
        "tiny", {"model.device": "cpu", "model.loras": [{"path": str(path), "scale": 1.0}]}
    )
    generation.load_models(cfg, precision="fp8")
    w0 = base.dit.state_dict()["blocks.0.ffn.2.weight"]  # bf16, as the fp8 path loads it
    assert torch.equal(
        seen["w"], (w0.float() + up.bfloat16().float() @ down.bfloat16().float()).bfloat16().float()
    )
