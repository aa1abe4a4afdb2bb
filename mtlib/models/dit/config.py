"""The DiT's geometry (`DiTConfig`, built from the spec registry: `CONFIGS`) and the constants
of the official code (image tokens, RoPE table length, L-RoPE positions).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

from mtlib.spec import SPECS, torch_dtype

# The cross-attention splits its context at this row: CLIP ViT-H/14 gives 16x16 patches +
# cls = 257 tokens, hard-coded in the official WanI2VCrossAttention.
IMAGE_TOKENS = 257
# 3-D RoPE table length of the official code (positions 0..1023 on every axis).
ROPE_MAX_POSITIONS = 1024
ROPE_THETA = 10000.0
# L-RoPE (class_range 24, class_interval 4): person ranges, background position, and the
# positions of each person's audio keys (the middle of its range).
PERSON1_RANGE = (0.0, 4.0)
PERSON2_RANGE = (20.0, 24.0)
BACKGROUND_POS = 12.0
# get_attn_map_with_target processes the heads in this many chunks and averages them.
REF_MAP_HEAD_CHUNKS = 2

Precision = Literal["fp32", "reference"]
# the DiT's dtype per policy: the one precision table (mtlib.spec.PRECISION)
PRECISION_DTYPES = {p: torch_dtype(p, "dit") for p in ("fp32", "reference")}


# ------------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class DiTConfig:
    """Every WanModel constructor field, plus the numbers the official code hard-codes."""

    dim: int = 5120  # model width (40 heads x 128)
    ffn_dim: int = 13824  # hidden width of the per-block FFN
    freq_dim: int = 256  # sinusoidal timestep features fed to time_embedding
    num_heads: int = 40  # attention heads of self-, cross- and audio attention
    num_layers: int = 40  # transformer blocks
    in_dim: int = 36  # patch_embedding input: 16 noise + 4 mask + 16 image-latent channels
    out_dim: int = 16  # predicted latent channels
    text_len: int = 512  # T5 context rows after zero padding (all attended, no mask)
    patch_size: tuple[int, int, int] = (1, 2, 2)  # (t, h, w) patch of the Conv3d embedding
    qk_norm: bool = True  # RMSNorm on q/k of self- and cross-attention
    cross_attn_norm: bool = True  # affine LayerNorm (norm3) before the cross-attention
    eps: float = 1e-6  # eps of the Wan RMS/LayerNorms
    audio_window: int = 5  # audio frames per video frame (offsets -2..+2)
    intermediate_dim: int = 512  # AudioProjModel hidden width
    output_dim: int = 768  # width of the audio context tokens
    context_tokens: int = 32  # audio tokens per latent frame and person
    vae_scale: int = 4  # temporal VAE compression: video frames per later latent frame
    norm_input_visual: bool = True  # affine LayerNorm (norm_x) before the audio attention
    norm_output_audio: bool = True  # LayerNorm(output_dim) on the AudioProjModel output
    # Hard-coded in the official code (constructor defaults it never passes through):
    text_dim: int = 4096  # umT5-XXL width; from_pretrained ignores config.json's value
    clip_dim: int = 1280  # img_emb input width (CLIP ViT-H/14 width)
    audio_layers: int = 12  # wav2vec2 hidden states stacked per audio frame
    audio_width: int = 768  # wav2vec2 hidden width

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        positive = [
            "dim",
            "ffn_dim",
            "freq_dim",
            "num_heads",
            "num_layers",
            "in_dim",
            "out_dim",
            "text_len",
            "audio_window",
            "intermediate_dim",
            "output_dim",
            "context_tokens",
            "vae_scale",
            "text_dim",
            "clip_dim",
            "audio_layers",
            "audio_width",
        ]
        for name in positive:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"DiTConfig.{name} must be a positive integer, got {v!r}")
        if len(self.patch_size) != 3 or min(self.patch_size) <= 0:
            raise ValueError(
                f"DiTConfig.patch_size must be 3 positive integers, got {self.patch_size}"
            )
        if self.dim % self.num_heads:
            raise ValueError(
                f"DiTConfig.dim ({self.dim}) must be divisible by num_heads ({self.num_heads})"
            )
        if self.head_dim % 2 or self.head_dim < 6:
            raise ValueError(
                f"DiTConfig head_dim = dim / num_heads = {self.head_dim} must be even and >= 6 "
                "(3-D RoPE splits it into t/h/w pairs)"
            )
        if self.freq_dim % 2:
            raise ValueError(
                f"DiTConfig.freq_dim must be even (cos and sin halves), got {self.freq_dim}"
            )
        if self.in_dim <= self.out_dim:
            raise ValueError(
                f"DiTConfig.in_dim ({self.in_dim}) must exceed out_dim ({self.out_dim}): "
                "the input is the latent plus the conditioning channels y"
            )
        if self.vae_scale < 2:
            raise ValueError(f"DiTConfig.vae_scale must be >= 2, got {self.vae_scale}")
        if not self.eps > 0:
            raise ValueError(f"DiTConfig.eps must be > 0, got {self.eps}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def y_dim(self) -> int:
        """Channels of the conditioning input y (4 mask + 16 image latent)."""
        return self.in_dim - self.out_dim

    @property
    def rope_pairs(self) -> tuple[int, int, int]:
        """Complex pairs of the head dim rotated by frame, row and column (22/21/21 real)."""
        c = self.head_dim // 2
        return (c - 2 * (c // 3), c // 3, c // 3)

    @property
    def audio_window_vf(self) -> int:
        """Audio slots per later latent frame: 3 + (vae_scale - 2) + 3 = 8 for (5, 4)."""
        return self.audio_window + self.vae_scale - 1

    @classmethod
    def from_official(cls, cfg: dict, hardcoded: dict | None = None) -> DiTConfig:
        """Build from WanModel constructor kwargs (tiny_configs.json "tiny"/"real") and the
        hard-coded constants ("hardcoded_*": img_emb_in_dim, audio_proj_blocks/channels)."""
        cfg = dict(cfg)
        model_type = cfg.pop("model_type", "i2v")
        if model_type != "i2v":
            raise ValueError(f"MultiTalk needs model_type 'i2v', got {model_type!r}")
        window = tuple(cfg.pop("window_size", (-1, -1)))
        if window != (-1, -1):
            raise ValueError(
                f"only full attention (window_size (-1, -1)) is supported, got {window}"
            )
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in cfg.items() if k in names}
        if hardcoded:
            renames = {
                "img_emb_in_dim": "clip_dim",
                "audio_proj_blocks": "audio_layers",
                "audio_proj_channels": "audio_width",
            }
            for k, v in hardcoded.items():
                if k in renames:
                    kwargs[renames[k]] = v
        return cls(**kwargs)

    @classmethod
    def from_config_json(cls, cfg: dict) -> DiTConfig:
        """What WanModel.from_pretrained builds from a checkpoint's config.json.

        The official class lists patch_size, cross_attn_norm, qk_norm, text_dim and
        window_size in `ignore_for_config`, so diffusers drops them from config.json and the
        constructor defaults apply: text_dim is 4096 whatever config.json says. mtlib does the
        same; a model with another text width needs an explicit DiTConfig.
        """
        ignored = {"patch_size", "cross_attn_norm", "qk_norm", "text_dim", "window_size"}
        return cls.from_official({k: v for k, v in cfg.items() if k not in ignored})


# From the spec registry (mtlib.spec; library code never reads the golden directory). The
# multitalk-14b entry equals DiTConfig()'s defaults (tests/test_spec.py).
CONFIGS: dict[str, DiTConfig] = {
    name: DiTConfig(**spec.dit_kwargs()) for name, spec in SPECS.items()
}
