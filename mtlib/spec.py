"""Model specs: the one registry of model geometry, derived sizes and per-component precision.

Where it sits: below the config, the plan and the engine. `mtlib.config` takes its model
names from `SPECS`; the shape plan (`mtlib.plan`) computes tensor shapes, parameter counts
and FLOPs from a `ModelSpec`; the engine builds its networks from it (`mtlib.models.dit.CONFIGS`,
`mtlib.models.wav2vec` geometries); `mtlib.weights` derives the expected checkpoint layouts and
`mtlib.accel.bench` its FLOP counts from the same numbers. A name selects a whole consistent
configuration (the flux style): "tiny" (golden tiny weights, a CPU runs it in seconds) and
"multitalk-14b" (Wan2.1-I2V-14B + the MultiTalk audio adapter).

`PRECISION` is the dtype of each component under each `model.precision` policy; the plan
prints it and the DiT loader casts by it, so plan and engine say the same (CLIP runs in fp16
under the reference policy: the official code casts it to fp16 and runs it under fp16
autocast, multitalk-facts §1.3, golden README §4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mtlib.frames import TIME_STRIDE


@dataclass(frozen=True)
class ModelSpec:
    """The numbers of one model family that shapes, memory, FLOPs and the networks depend on."""

    name: str
    dim: int  # DiT width D
    num_heads: int  # DiT attention heads (head dim = dim / num_heads)
    num_layers: int  # DiT blocks
    ffn_dim: int  # DiT FFN hidden width
    text_dim: int  # T5 width (context rows entering text_embedding)
    text_len: int  # T5 padded length
    clip_tokens: int  # CLIP tokens seen by the DiT (cls + 16x16 patches)
    clip_dim: int  # CLIP width (clip_fea channels)
    clip_image_size: int  # CLIP input resolution
    audio_layers: int  # wav2vec2 layers stacked into the embedding
    audio_width: int  # wav2vec2 hidden width
    w2v_conv_dim: int  # wav2vec2 conv feature channels
    context_tokens: int  # audio tokens per latent frame per person
    intermediate_dim: int  # AudioProjModel hidden width
    output_dim: int  # audio token width
    param_counts: tuple[tuple[str, int], ...]  # non-DiT components: (name, parameters)
    freq_dim: int = 256  # sinusoidal time-embedding width
    audio_window: int = 5  # audio frames per video frame (offsets -2..+2)
    vae_stride: tuple[int, int, int] = (TIME_STRIDE, 8, 8)  # VAE compression (t, h, w)
    patch: tuple[int, int, int] = (1, 2, 2)  # DiT patch (t, h, w)
    z_dim: int = 16  # latent channels
    in_dim: int = 36  # 16 noise + 4 mask + 16 image latent

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def size_unit(self) -> int:
        """H and W must be multiples of this: VAE stride x DiT patch (16)."""
        return self.vae_stride[1] * self.patch[1]

    @property
    def dit_params(self) -> int:
        """Parameter count of the DiT including the audio adapter (multitalk-facts §3.2)."""
        D, F = self.dim, self.ffn_dim
        pv = self.patch[0] * self.patch[1] * self.patch[2]
        base_block = 10 * D * D + 2 * D * F + F + 24 * D
        audio_block = 2 * D * D + 2 * self.output_dim * D + 6 * D
        ab, aw, it = self.audio_layers, self.audio_width, self.intermediate_dim
        ct, od = self.context_tokens, self.output_dim
        audio_proj = (
            (self.audio_window * ab * aw * it + it) + (8 * ab * aw * it + it) + (it * it + it)
        )
        audio_proj += it * ct * od + ct * od + 2 * od
        c = self.clip_dim
        top = (self.in_dim * pv * D + D) + (self.text_dim * D + D + D * D + D)
        top += (self.freq_dim * D + D + D * D + D) + (6 * D * D + 6 * D)
        top += 2 * c + (c * c + c) + (c * D + D) + 2 * D
        top += 2 * D + D * pv * self.z_dim + pv * self.z_dim
        return self.num_layers * (base_block + audio_block) + top + audio_proj

    def dit_kwargs(self) -> dict[str, Any]:
        """The `mtlib.models.dit.DiTConfig` fields this spec sets."""
        return dict(
            dim=self.dim, ffn_dim=self.ffn_dim, freq_dim=self.freq_dim, num_heads=self.num_heads,
            num_layers=self.num_layers, in_dim=self.in_dim, out_dim=self.z_dim,
            text_len=self.text_len, patch_size=self.patch, audio_window=self.audio_window,
            intermediate_dim=self.intermediate_dim, output_dim=self.output_dim,
            context_tokens=self.context_tokens, vae_scale=self.vae_stride[0],
            text_dim=self.text_dim, clip_dim=self.clip_dim, audio_layers=self.audio_layers,
            audio_width=self.audio_width,
        )  # fmt: skip


SPECS: dict[str, ModelSpec] = {
    # Golden tiny DiT (golden README §3): runs on a CPU in seconds.
    "tiny": ModelSpec(
        name="tiny", dim=64, num_heads=4, num_layers=2, ffn_dim=96, text_dim=32, text_len=512,
        clip_tokens=257, clip_dim=80, clip_image_size=32, audio_layers=3, audio_width=48,
        w2v_conv_dim=16, context_tokens=6, intermediate_dim=24, output_dim=40,
        param_counts=(("t5", 30_112), ("clip", 271_313), ("vae", 924_491), ("wav2vec2", 72_088)),
    ),
    # Wan2.1-I2V-14B + MultiTalk audio adapter (multitalk-facts §2, §3.2; golden manifest).
    "multitalk-14b": ModelSpec(
        name="multitalk-14b", dim=5120, num_heads=40, num_layers=40, ffn_dim=13824,
        text_dim=4096, text_len=512, clip_tokens=257, clip_dim=1280, clip_image_size=224,
        audio_layers=12, audio_width=768, w2v_conv_dim=512, context_tokens=32,
        intermediate_dim=512, output_dim=768,
        param_counts=(
            ("t5", 5_680_910_336), ("clip", 1_193_014_785), ("vae", 126_892_531),
            ("wav2vec2", 94_371_712),
        ),
    ),
}  # fmt: skip

DEFAULT_MODEL = "multitalk-14b"  # what a user runs; "tiny" is for the demo and the tests

# HF Wav2Vec2Config fields that shape the published wav2vec2 checkpoints, per spec
# (hidden_size / num_hidden_layers / conv_dim are the spec's audio_width / audio_layers /
# w2v_conv_dim; tests/test_spec.py checks they agree).
WAV2VEC2_CONFIG: dict[str, dict[str, Any]] = {
    "multitalk-14b": dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        conv_dim=[512] * 7, conv_kernel=[10, 3, 3, 3, 3, 2, 2], conv_stride=[5, 2, 2, 2, 2, 2, 2],
        conv_bias=False, feat_extract_norm="group", num_conv_pos_embeddings=128,
        num_conv_pos_embedding_groups=16, do_stable_layer_norm=False, codevector_dim=256,
        proj_codevector_dim=256, num_codevectors_per_group=320, num_codevector_groups=2,
    ),
    "tiny": dict(
        hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
        conv_dim=[16] * 7, conv_kernel=[10, 3, 3, 3, 3, 2, 2], conv_stride=[5, 2, 2, 2, 2, 2, 2],
        conv_bias=False, feat_extract_norm="group", num_conv_pos_embeddings=128,
        num_conv_pos_embedding_groups=16, do_stable_layer_norm=False, codevector_dim=8,
        proj_codevector_dim=8, num_codevectors_per_group=4, num_codevector_groups=2,
    ),
}  # fmt: skip


def get_spec(model: str | ModelSpec | None = None) -> ModelSpec:
    """A spec by name (None: the real model); ValueError naming the allowed names."""
    if isinstance(model, ModelSpec):
        return model
    name = DEFAULT_MODEL if model is None else model
    if name not in SPECS:
        raise ValueError(f"model {name!r}: unknown; allowed {', '.join(SPECS)}.")
    return SPECS[name]


# ------------------------------------------------------------------------------ precision

COMPONENTS = ("dit", "t5", "clip", "vae", "wav2vec2")

# Weight / compute dtype of each component under each model.precision policy (on a GPU; on
# the CPU every policy runs fp32, see generation.effective_precision). fp8 = reference with the
# DiT blocks' linears and self-attention in float8 at run time (mtlib.accel.fp8); its weights load
# as bf16.
PRECISION: dict[str, dict[str, str]] = {
    "fp32": dict.fromkeys(COMPONENTS, "float32"),
    "reference": {"dit": "bfloat16", "t5": "bfloat16", "clip": "float16", "vae": "float32", "wav2vec2": "float32"},
    "fp8": {"dit": "bfloat16", "t5": "bfloat16", "clip": "float16", "vae": "float32", "wav2vec2": "float32"},
}  # fmt: skip

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float8_e4m3fn": 1}


def component_dtype(precision: str, component: str) -> str:
    """The dtype name of `component` under `precision` (e.g. ("reference", "clip") -> "float16")."""
    if precision not in PRECISION:
        raise ValueError(f"precision {precision!r}: allowed {', '.join(PRECISION)}.")
    if component not in COMPONENTS:
        raise ValueError(f"component {component!r}: allowed {', '.join(COMPONENTS)}.")
    return PRECISION[precision][component]


def torch_dtype(precision: str, component: str):
    """component_dtype as a torch.dtype (torch imported here only)."""
    import torch

    return getattr(torch, component_dtype(precision, component))
