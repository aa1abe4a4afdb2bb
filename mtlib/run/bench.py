"""`mtlib bench --what clip`: one whole clip of the real-size model with random weights
(encoders, VAE encode, compiled DiT passes, VAE decode, colour correction) through the loop.
"""

from __future__ import annotations

import time

from mtlib.accel.bench import DitShape, _timed_any, attention_backend
from mtlib.weights.random import random_init_


def bench_clip(
    shape: DitShape,
    steps: int = 40,
    config: str = "multitalk-14b",
    device: str = "cuda",
    fp8: bool = False,
) -> dict:
    """One whole clip through mtlib.run.loop.generate at real size with random weights: umT5
    (bf16) on prompt + negative prompt, CLIP (fp16), VAE encode, `steps` denoising steps of 3
    compiled DiT passes, VAE decode, colour correction. Wall time per stage and in total.
    fp8: the DiT's block linears and self-attention in fp8 (precision "fp8")."""
    import torch

    from mtlib.accel.compile import compile_blocks
    from mtlib.models import clip as clip_mod
    from mtlib.models import t5 as t5_mod
    from mtlib.models import vae as vae_mod
    from mtlib.models.dit import CONFIGS, build_dit
    from mtlib.run.loop import Models, generate
    from mtlib.run.loop_plan import GenerationSettings

    dev = torch.device(device)
    cuda = dev.type == "cuda"

    def materialise(module, dtype):
        module = module.to(dtype) if dtype != torch.float32 else module
        module.to_empty(device=dev)
        random_init_(module)
        return module.eval().requires_grad_(False)

    t0 = time.perf_counter()
    with torch.device("meta"):
        t5 = t5_mod.T5Encoder(config)
        clip = clip_mod.XLMRobertaCLIP(config, with_text_tower=False)
        vae = vae_mod.CausalVAE(vae_mod.CONFIGS[config])
    t5 = materialise(t5, torch.bfloat16 if cuda else torch.float32)
    clip = materialise(clip, torch.float32)
    if cuda:
        clip.set_precision("reference")
    vae = materialise(vae, torch.float32)
    dit = materialise(
        build_dit(CONFIGS[config], device="meta"), torch.bfloat16 if cuda else torch.float32
    )
    if fp8:
        from mtlib.accel.fp8 import enable_fp8_dit

        enable_fp8_dit(dit, dev)
    if cuda:
        compile_blocks(dit, rope_fp32=True)
    build_s = time.perf_counter() - t0
    text = t5_mod.T5TextEncoder(t5, t5_mod.StandInTokenizer(t5.config.vocab_size))
    g = torch.Generator("cpu").manual_seed(0)
    cond = torch.rand(1, 3, 1, shape.height, shape.width, generator=g) * 2 - 1
    dcfg = dit.config
    audio = [torch.randn(shape.frames + 10, dcfg.audio_layers, dcfg.audio_width, generator=g)]
    masks = torch.ones(3, shape.height // 8, shape.width // 8)
    settings = GenerationSettings(frame_num=shape.frames, sampling_steps=steps, progress=False)
    with torch.inference_mode(), attention_backend("cudnn" if cuda else "default"):
        t_text, (context, context_null) = _timed_any(
            cuda, lambda: text(["a person talks", t5_mod.DEFAULT_NEGATIVE_PROMPT])
        )
        t_gen, result = _timed_any(
            cuda,
            lambda: generate(
                Models(dit, vae, clip),
                cond,
                audio,
                context.to(torch.bfloat16 if cuda else torch.float32),
                context_null.to(torch.bfloat16 if cuda else torch.float32),
                masks,
                settings,
            ),
        )
    return {
        "steps": steps,
        "frames": shape.frames,
        "size": [shape.height, shape.width],
        "build_s": round(build_s, 1),
        "text_encoder_s": round(t_text, 2),
        "generate_s": round(t_gen, 1),
        "total_s": round(t_text + t_gen, 1),
        "total_min": round((t_text + t_gen) / 60, 2),
        "video": list(result.video.shape),
        "fp8": fp8,
    }
