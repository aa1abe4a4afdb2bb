"""The fast path's config: speed options read by the loader, the distillation presets and
their plans, the direct safetensors loader (exactly the old loader's weights)."""

import pytest
import torch

from mtlib.accel.options import resolve_dit_options
from mtlib.config import ConfigError, load_config
from mtlib.plan import plan, plan_table
from mtlib.run.prepare import prepare_run
from mtlib.weights.recipes import check_recipe


def test_recipe_presets_carry_the_readme_numbers():
    for name, steps in (("multitalk-480-lightx2v", 4), ("multitalk-480-fusionx", 8)):
        g = load_config(name).generation
        assert (g.sampling_steps, g.text_guide_scale, g.audio_guide_scale, g.shift) == (
            steps,
            1.0,
            2.0,
            2.0,
        )


def test_recipe_without_its_lora_is_refused_before_anything():
    cfg = load_config("multitalk-480-lightx2v")
    with pytest.raises(ConfigError) as err:
        prepare_run(cfg)
    assert str(err.value) == (
        "model.recipe 'lightx2v' (4 steps, text scale 1) needs the lightx2v LoRA, and model.loras is "
        "empty. Fix: mtlib generate --lora PATH:1.0 (or -p 'model.loras=[{path: PATH, scale: 1.0}]'); "
        "`mtlib setup --lora lightx2v --root weights` downloads it (Kijai/WanVideo_comfy: "
        "Wan21_T2V_14B_lightx2v_cfg_step_distill_lora_rank32.safetensors)."
    )
    with pytest.raises(
        ConfigError, match=r"^model.recipe 'lightx2v' with model.weights.quant=int8: MeiGen "
    ):
        check_recipe(load_config("multitalk-480-lightx2v", ["model.weights.quant=int8"]))
    # fusionx + int8: the FusionX-merged int8 checkpoint stands in for the LoRA
    check_recipe(load_config("multitalk-480-fusionx", ["model.weights.quant=int8"]))
    with pytest.raises(
        ConfigError, match=r"^model.loras: the int8 checkpoints take no separate LoRA"
    ):
        check_recipe(
            load_config(
                "multitalk-480-fusionx",
                ["model.weights.quant=int8", "model.loras=[{path: f.safetensors, scale: 1.0}]"],
            )
        )


def test_recipe_plan_shows_two_passes_and_the_options(tmp_path):
    from safetensors.torch import save_file

    # a lightx2v-shaped LoRA for one layer (the plan checks LoRA headers against the 14B DiT)
    lora = tmp_path / "lightx2v.safetensors"
    k = "diffusion_model.blocks.0.self_attn.q"
    save_file(
        {
            f"{k}.lora_down.weight": torch.zeros(32, 5120),
            f"{k}.lora_up.weight": torch.zeros(5120, 32),
        },
        str(lora),
    )
    cfg = load_config(
        "multitalk-480-lightx2v",
        [
            f"model.loras=[{{path: {lora}, scale: 1.0}}]",
            "model.precision=fp8",
            "model.compile=true",
        ],
    )
    p = plan(cfg)
    assert p.valid and p.passes_per_step == 2 and p.sampling_steps == 4
    text = plan_table(p)
    assert "| 4 steps x 2 DiT passes" in text
    assert (
        "DiT: precision fp8 | weights all on the GPU | self-attention triton-fp8 | compile on | "
        "RoPE float32 | recipe lightx2v"
    ) in text
    assert f"loras {lora} x1.0 (merged into the DiT at load)" in text


def test_speed_options_resolve_in_one_place():
    o = resolve_dit_options(load_config("multitalk-480"), cuda=True)
    assert (o.precision, o.attention, o.compile, o.rope_dtype, o.offload) == (
        "reference",
        "sdpa",
        False,
        "float64",
        "none",
    )
    o = resolve_dit_options(
        load_config(
            "multitalk-480",
            [
                "model.offload={mode: blocks, resident_params: 11000000000}",
                "model.weights.quant=int8",
            ],
        ),
        cuda=True,
    )
    assert (o.offload, o.resident_params, o.quant) == ("blocks", 11_000_000_000, "int8")
    assert o.weight_precisions()["dit.blocks linears"] == (
        "int8 (per-output-channel scale, dequantised to bfloat16 per layer) [checkpoint]"
    )
    # compile no longer switches RoPE silently: explicit float64 stays float64
    o = resolve_dit_options(
        load_config("multitalk-480", ["model.compile=true", "model.rope_precision=float64"]), True
    )
    assert (o.compile, o.rope_dtype) == (True, "float64")
    with pytest.raises(ConfigError) as err:
        resolve_dit_options(load_config("tiny", ["model.offload.mode=blocks"]), cuda=False)
    assert str(err.value) == (
        "model.offload.mode: 'blocks' streams weights to a CUDA GPU; this run is on cpu. "
        "Fix: model.offload.mode=none."
    )
    with pytest.raises(
        ConfigError, match=r"^model.offload.resident_params is set but model.offload.mode is 'none'"
    ):
        resolve_dit_options(
            load_config("multitalk-480", ["model.offload.resident_params=0"]), cuda=True
        )
    with pytest.raises(ConfigError, match=r"^model.attention: 'triton' needs Triton on a CUDA GPU"):
        resolve_dit_options(load_config("tiny", ["model.attention=triton"]), cuda=False)


def test_direct_loader_gives_the_checkpoint_weights_exactly():
    """mtlib.accel.dit_load (pread per tensor, cast on the device) == load_dit (safe_open) on the
    tiny checkpoints; the instance attributes carry the options."""
    from mtlib import weights
    from mtlib.accel.dit_load import load_run_dit, streamed_blocks
    from mtlib.models.dit import CONFIGS, load_dit

    cfg = load_config("tiny")
    files = weights.layout_for_config(cfg).dit_files()
    ref = load_dit(files, config="tiny")
    opts = resolve_dit_options(cfg, cuda=False)
    mine = load_run_dit(CONFIGS["tiny"], "cpu", opts, files=files)
    a, b = ref.state_dict(), mine.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert mine.rope_dtype == torch.float64 and {blk.self_attn.kernel for blk in mine.blocks} == {
        "sdpa"
    }
    assert all(blk.compiled_body is None for blk in mine.blocks)
    n_other = sum(p.numel() for k, p in mine.named_parameters() if not k.startswith("blocks."))
    per_block = sum(p.numel() for p in mine.blocks[0].parameters())
    assert streamed_blocks(mine, None) == [0, 1]
    assert streamed_blocks(mine, n_other + per_block) == [1]
    assert streamed_blocks(mine, n_other + 2 * per_block) == []


def test_random_weights_fill_the_architecture_and_are_named_loudly(tmp_path):
    """The random source materialises every tensor (none left on meta, finite outputs); a
    run's summary and options say RANDOM WEIGHTS."""
    import dataclasses
    from pathlib import Path
    from types import SimpleNamespace

    from mtlib.accel.bench import DitShape, denoise_step, dit_inputs
    from mtlib.accel.dit_load import load_run_dit
    from mtlib.models.dit import CONFIGS
    from mtlib.run.generation import GenerationOutput, summary

    opts = dataclasses.replace(resolve_dit_options(load_config("tiny"), cuda=False), random=True)
    model = load_run_dit(CONFIGS["tiny"], "cpu", opts, seed=3)
    assert not any(t.is_meta for t in model.state_dict().values())
    inp = dit_inputs(CONFIGS["tiny"], DitShape(5, 32, 32), "cpu", torch.float32)
    with torch.inference_mode():
        assert torch.isfinite(denoise_step(model, inp)).all()
    out = GenerationOutput(
        video=None,
        path=Path("v.mp4"),
        plan=SimpleNamespace(clips=[0], notes=[]),
        seed=42,
        frames=81,
        height=448,
        width=896,
        fps=25,
        duration_s=3.24,
        audio_seconds=5.0,
        dit_options=opts.to_dict(),
    )
    text = summary(out)
    banner = "*** RANDOM WEIGHTS (model.weights.random): no checkpoint was loaded; the video is noise ***"
    assert text.splitlines()[0] == banner and text.splitlines()[-1] == banner
    assert "dit.blocks linears float32 [RANDOM (no checkpoint)]" in text
    with pytest.raises(
        ConfigError, match=r"^model.weights.random: the tiny model already has random weights"
    ):
        resolve_dit_options(load_config("tiny", ["model.weights.random=true"]), cuda=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_offload_with_a_resident_budget_matches_the_resident_model_on_cuda():
    """model.offload blocks + resident_params: block 0 stays on the GPU, block 1 is parked in
    exact-size pinned memory and streamed; the output is the resident model's, bit for bit."""
    import dataclasses

    from mtlib import weights
    from mtlib.accel.bench import DitShape, denoise_step, dit_inputs
    from mtlib.accel.dit_load import load_run_dit
    from mtlib.models.dit import CONFIGS

    cfg = load_config("tiny", ["model.device=cuda", "model.precision=reference"])
    files = weights.layout_for_config(cfg).dit_files()
    resident = resolve_dit_options(cfg, cuda=True)
    model = load_run_dit(CONFIGS["tiny"], "cuda", resident, files=files)
    n_other = sum(p.numel() for k, p in model.named_parameters() if not k.startswith("blocks."))
    budget = n_other + sum(p.numel() for p in model.blocks[0].parameters())
    streamed = load_run_dit(CONFIGS["tiny"], "cuda", dataclasses.replace(
        resident, offload="blocks", resident_params=budget), files=files)  # fmt: skip
    assert all(p.is_cuda for p in streamed.blocks[0].parameters())
    assert all(p.device.type == "cpu" for p in streamed.blocks[1].parameters())
    inp = dit_inputs(CONFIGS["tiny"], DitShape(13, 48, 64), "cuda", torch.bfloat16)
    with torch.inference_mode():
        a, b = denoise_step(model, inp), denoise_step(streamed, inp)
    assert torch.equal(a, b)


def test_lora_merged_block_by_block_equals_the_whole_model_merge(tmp_path):
    """mtlib.accel.dit_load merges model.loras per block as the DiT loads (before fp8 / offload
    parking): the weights equal mtlib.weights.lora's merge into the whole loaded model."""
    from safetensors.torch import save_file

    from mtlib import weights
    from mtlib.accel.dit_load import load_run_dit
    from mtlib.models.dit import CONFIGS, load_dit
    from mtlib.run.load import _lora_hook
    from mtlib.weights.lora import merge_loras

    g = torch.Generator().manual_seed(0)
    files = weights.layout_for_config(load_config("tiny")).dit_files()
    whole = load_dit(files, config="tiny")
    sd = {}
    for name, layer in whole.named_modules():
        if isinstance(layer, torch.nn.Linear):
            sd[f"diffusion_model.{name}.lora_down.weight"] = (
                torch.randn(4, layer.in_features, generator=g) * 0.1
            )
            sd[f"diffusion_model.{name}.lora_up.weight"] = (
                torch.randn(layer.out_features, 4, generator=g) * 0.1
            )
    save_file(sd, str(tmp_path / "lora.safetensors"))
    cfg = load_config(
        "tiny", [f"model.loras=[{{path: {tmp_path / 'lora.safetensors'}, scale: 0.7}}]"]
    )
    merge_loras(whole, cfg.model.loras)
    hook = _lora_hook(cfg, CONFIGS["tiny"])
    mine = load_run_dit(
        CONFIGS["tiny"], "cpu", resolve_dit_options(cfg, cuda=False), files=files, block_hook=hook
    )
    a, b = whole.state_dict(), mine.state_dict()
    assert (
        sum(not torch.equal(a[k], load_dit(files, config="tiny").state_dict()[k]) for k in a)
        == len(sd) // 2
    )
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_random_clip_has_real_position_ids():
    # to_empty leaves integer buffers uninitialised: the random CLIP must get arange position
    # ids back (garbage ids made a CUDA gather assert on the H200)
    import torch

    from mtlib.weights.random import random_networks

    _, clip, _, _ = random_networks("tiny", "cpu", "fp32")
    emb = (
        clip.visual.hf.vision_model.embeddings
        if hasattr(clip.visual.hf, "vision_model")
        else clip.visual.hf.embeddings
    )
    assert torch.equal(emb.position_ids[0], torch.arange(emb.num_positions))
