"""End to end against the reference with the REAL networks on the golden tiny weights.

Every golden e2e case is re-run through mtlib: the golden checkpoints loaded by mtlib's
loaders with the golden tiny configs (the case's LoRA merged into the DiT when it has one),
the conditioning image from the case's image case for the case's size bucket (image.b480.cond /
image.b720.cond, re-derived from its source PNG with that bucket's tiny table), the audio
embeddings of its audio cases, the T5 contexts from the case's own prompt through the golden T5
(stand-in tokenizer), person masks rebuilt from the source size, every guidance / APG /
schedule / streaming setting from its generate_kwargs, the random draws injected; then every
golden e2e tensor must match within E2E_TOL.
"""

from __future__ import annotations

import copy

import pytest
import torch

from mtlib import trace
from mtlib.buckets import table_from_json
from mtlib.media.image import prepare_image, ref_target_masks
from mtlib.models.clip import CLIPConfig, load_clip
from mtlib.models.dit import DiTConfig, load_dit
from mtlib.models.t5 import (
    StandInTokenizer,
    T5Config,
    T5TextEncoder,
    load_t5,
)
from mtlib.models.vae import VAEConfig, load_vae
from mtlib.run.load import DiTCall, PromptEncoder
from mtlib.run.loop import Models, encode_prompts, generate
from mtlib.run.loop_plan import GenerationSettings
from mtlib.run.noise import InjectedNoise, SeededNoise
from tests.golden import (
    E2E_TOL,
    assert_close,
    case_lora,
    case_settings,
    cond_image_key,
    dit_passes,
    generate_kwargs,
    get_case,
    golden_cases,
    image_case_of,
    negative_prompt,
    size_of,
)
from tests.pipeline_replay import golden_audio_embs


@pytest.fixture(scope="module")
def golden_models(golden):
    """The golden tiny networks, loaded by mtlib's loaders with the golden tiny configs."""
    tc = golden.tiny_configs
    w = golden.weights
    dit = load_dit(
        w / "dit", config=DiTConfig.from_official(tc["dit"]["tiny"], tc["dit"]["hardcoded_tiny"])
    )
    vae = load_vae(w / "vae.safetensors", config=VAEConfig.from_official(tc["vae"]["tiny"]))
    clip = load_clip(w / "clip.safetensors", config=CLIPConfig.from_official(tc["clip"]["tiny"]))
    t5c = tc["t5"]
    t5_config = T5Config.from_official(
        t5c["tiny"], text_len=t5c["text_len"], pad_id=t5c["pad_id"], eos_id=t5c["eos_id"]
    )
    t5 = load_t5(w / "t5_encoder.safetensors", config=t5_config)
    tokenizer = StandInTokenizer(
        t5_config.vocab_size, t5_config.text_len, t5_config.pad_id, t5_config.eos_id
    )
    return dict(dit=dit, vae=vae, clip=clip, text=T5TextEncoder(t5, tokenizer))


def _settings(case) -> GenerationSettings:
    return case_settings(case)


def replay_trace(golden_models, case, ref, draws, seed):
    """mtlib's loop on the golden tiny networks fed ONLY from an official trace: `ref`'s
    conditioning tensors and its random draws (mtlib.reference.noise.trace_draws). Record
    around the call."""
    from mtlib.run.load import DiTCall
    from mtlib.run.loop import Models, generate
    from mtlib.run.noise import InjectedNoise

    models = Models(
        dit=DiTCall(golden_models["dit"]), vae=golden_models["vae"], clip=golden_models["clip"]
    )
    return generate(
        models,
        ref.tensor("e2e.clip0.cond_image"),
        [ref.tensor("e2e.input.audio_embedding.person1")],
        ref.tensor("e2e.clip0.context"),
        ref.tensor("e2e.clip0.context_null"),
        ref.tensor("e2e.clip0.ref_target_masks"),
        _settings(case),
        InjectedNoise(draws, seed),
    )


def _negative_prompt(case) -> str:
    return negative_prompt(case)


def dit_for_case(golden_models, case):
    """The golden DiT, with the case's LoRA merged into a copy when the case has one."""
    lora = case_lora(case)
    if lora is None:
        return golden_models["dit"]
    from mtlib.weights.lora import LoraSpec, merge_loras

    dit = copy.deepcopy(golden_models["dit"])
    merge_loras(dit, [LoraSpec(lora["path"], float(lora["scale"]))])
    return dit


def case_conditioning(golden, case):
    """cond image (the image case's tensor for the case's bucket, re-derived from its source
    PNG with the case's tiny bucket table), person masks and audio embeddings of an e2e case."""
    params = case.params
    kw = params["generate_kwargs"]
    size = size_of(case)
    image_case = image_case_of(golden, case)
    cond = image_case[cond_image_key(image_case, size)]
    table = table_from_json(golden.tiny_configs["buckets_tiny"][size])
    prepared = prepare_image(image_case.file(image_case.params["source"]["file"]), size, table)
    assert torch.equal(prepared.cond, cond), "bucket crop of the source PNG != the golden cond"
    H, W = prepared.target_hw
    clip0 = params["clips"][0]
    assert (H, W) == (clip0["target_h"], clip0["target_w"])
    audio_embs = golden_audio_embs(golden, case)
    src = image_case.params[size]
    masks = ref_target_masks(
        src["src_h"], src["src_w"], H, W, len(audio_embs), params["input_refs"]["bbox"],
        kw["face_scale"],
    )  # fmt: skip
    return cond, masks, audio_embs


@pytest.mark.golden
@pytest.mark.parametrize("case_name", golden_cases("e2e"), ids=str)
def test_golden_e2e_full(golden, golden_models, case_name):
    case = get_case(golden, case_name)
    params = case.params
    kw = generate_kwargs(case)
    dit_passes(case)  # a pass layout the reference cannot make fails here, with the reason
    cond, masks, audio_embs = case_conditioning(golden, case)

    # T5: the stand-in tokenizer on the case's prompt + negative prompt gives the golden ids
    encoder = PromptEncoder(golden_models["text"])
    prompt = params["input_data"]["prompt"]
    ids, mask = golden_models["text"].tokenize([prompt, _negative_prompt(case)])
    assert torch.equal(ids, case["e2e.t5.call0.ids"])
    assert torch.equal(mask, case["e2e.t5.call0.mask"])

    names = [k for k in case.tensors if not k.startswith("lora.")]
    recorder = trace.MemoryRecorder(names)
    models = Models(
        dit=DiTCall(dit_for_case(golden_models, case)), vae=golden_models["vae"],
        clip=golden_models["clip"],
    )  # fmt: skip
    noise = InjectedNoise({k: v for k, v in case.tensors.items() if ".rand." in k}, seed=kw["seed"])
    with trace.recording(recorder):
        context, context_null = encode_prompts(encoder, prompt, _negative_prompt(case))
        result = generate(
            models, cond, audio_embs, context, context_null, masks, _settings(case), noise
        )

    missing = [k for k in names if k not in recorder]
    assert not missing, f"not recorded: {missing}"
    for name in names:
        if name.endswith((".ids", ".mask")) and name.startswith("e2e.t5."):
            assert torch.equal(recorder[name], case[name]), name
        else:
            assert_close(recorder[name], case[name], name, E2E_TOL)
    assert list(result.video.shape) == params["video_shape"]
    assert_close(result.video, case["e2e.video"], "e2e.video", E2E_TOL)


@pytest.mark.golden
@pytest.mark.parametrize("case_name", golden_cases("e2e"), ids=str)
def test_golden_e2e_seeded_noise(golden, case_name):
    """SeededNoise(seed of the case), the noise generate_video uses, gives the golden draws."""
    case = get_case(golden, case_name)
    noise = SeededNoise(case.params["generate_kwargs"]["seed"])
    draws = case.params["random_draws_in_order"]
    assert draws, "the case records no random draws"
    for draw in draws:
        got = noise.draw(draw["name"], tuple(draw["shape"]))
        assert torch.equal(got, case[draw["name"]]), draw["name"]
