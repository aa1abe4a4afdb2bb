"""model.weights.random: the real-size encoders and VAE with random weights, no download.

For speed runs and for executing the notebooks on a GPU with the real configuration where no
checkpoints are downloaded. The DiT comes from mtlib.accel.dit_load (random source); this module
builds the other four networks on the meta device and materialises them directly on the
run's device with random values (`random_init_`), in the precisions the checkpoint
loaders would give them. Tokenizer: mtlib's stand-in (ids from a hash of the text).
The output is noise: every output of such a run says RANDOM WEIGHTS (RANDOM_WEIGHTS_NOTE).
"""

from __future__ import annotations

import math

import torch

RANDOM_WEIGHTS_NOTE = (
    "RANDOM WEIGHTS (model.weights.random): no checkpoint was loaded; the video is noise"
)


def random_init_(module, seed: int = 0) -> None:
    """Fill every parameter with sane random values in place (N(0, 1/fan_in) for matrices,
    ~1 for norm gains, small biases): keeps bf16 activations finite at real size."""
    import torch

    g = torch.Generator(device=next(module.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                fan_in = math.prod(p.shape[1:])
                p.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=g)
            elif name.endswith(("weight", "gamma")):
                p.normal_(1.0, 0.05, generator=g)
            else:
                p.normal_(0.0, 0.02, generator=g)


def _materialise(module, device, dtype=torch.float32, seed: int = 0):
    module = module.to(dtype) if dtype != torch.float32 else module
    module.to_empty(device=device)
    random_init_(module, seed)
    return module.eval().requires_grad_(False)


def random_audio_encoder(device):
    """chinese-wav2vec2-base's geometry (12 layers x 768) with random weights."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    from mtlib.models.wav2vec import AudioEncoder

    torch.manual_seed(0)
    model = Wav2Vec2Model(Wav2Vec2Config()).to(device=device, dtype=torch.float32)
    fe = Wav2Vec2FeatureExtractor(do_normalize=False, return_attention_mask=False)
    return AudioEncoder(model, fe, "random:chinese-wav2vec2-base", "random")


def random_networks(name: str, device, precision: str):
    """(vae, clip, text_encoder, audio_encoder) of model `name` with random weights."""
    from mtlib.models import clip as clip_mod
    from mtlib.models import t5 as t5_mod
    from mtlib.models import vae as vae_mod

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    with torch.device("meta"):
        t5 = t5_mod.T5Encoder(name)
        clip = clip_mod.XLMRobertaCLIP(name, with_text_tower=False)
        vae = vae_mod.CausalVAE(vae_mod.CONFIGS[name])
    t5 = _materialise(t5, dev, torch.bfloat16 if cuda and precision != "fp32" else torch.float32, 1)
    clip = _materialise(clip, dev, torch.float32, 2)
    # to_empty left the integer position ids uninitialised (random_init_ fills floats only)
    clip.visual.rebuild_buffers(force=True)
    if cuda and precision != "fp32":
        clip = clip.to(torch.float16).set_precision("reference")
    vae = _materialise(vae, dev, torch.float32, 3)
    text = t5_mod.T5TextEncoder(t5, t5_mod.StandInTokenizer(t5.config.vocab_size))
    return vae, clip, text, random_audio_encoder(dev)
