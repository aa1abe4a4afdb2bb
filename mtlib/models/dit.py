"""MultiTalk's diffusion transformer: Wan2.1-I2V-14B (WanModel) plus the audio adapter.

Where it sits: the sampler calls `MultiTalkDiT.forward` three times per step (cond,
drop_text, uncond) with the noisy latent, the timestep, the T5 context, the CLIP features
(`clip_fea`), the VAE conditioning `y`, the wav2vec2 audio windows and the person masks;
it returns the velocity prediction for the latent.

The module keeps the official state-dict key layout exactly (patch_embedding.*,
text_embedding.0/2, ..., blocks.{i}.audio_cross_attn.*, norm_x), so the published
Wan2.1-I2V-14B shards plus MeiGen's multitalk.safetensors load without renaming
(`load_dit`). Semantics follow the official code (MeiGen-AI/MultiTalk, see
../shared/reference/multitalk-facts.md §3):

- no text mask: the context is zero-padded to text_len rows and every row is attended;
- sinusoidal time features cos-then-sin in float64;
- 3-D RoPE (t:h:w split of the head dim) on interleaved pairs, float64 rotation;
- every block computes `x_ref_attn_map` (how much each token attends to each person's
  region of latent frame 0) from its own post-RoPE q/k; with two persons it places the
  visual queries on a 1-D RoPE line (person 1 in [0, 4], person 2 in [20, 24],
  background 12) against audio keys at 2 and 22 (L-RoPE);
- audio windows grouped per latent frame (first: 5 slots; later: 3+1+1+3 = 8), projected
  by AudioProjModel to context_tokens tokens per person and frame.

Precision (`set_precision`): "fp32" runs everything in float32 (golden parity on CPU);
"reference" is the official policy: bf16 parameters and activations with the fp32 islands
of facts §3.9 (time MLPs, modulation arithmetic, norms' statistics, head, RoPE).

Attention goes through `F.scaled_dot_product_attention` in [B, heads, L, head_dim] layout;
no per-token Python loops and no host syncs in forward (TeaCache excepted, which needs a
scalar decision per call, like the official).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from mtlib import trace
from mtlib.finite import check_state_finite
from mtlib.io import InputError
from mtlib.models.checkpoint import CheckpointError, pick_config, state_diff
from mtlib.spec import SPECS, torch_dtype

__all__ = [
    "CONFIGS",
    "CheckpointError",
    "DiTConfig",
    "MultiTalkDiT",
    "TeaCacheState",
    "build_dit",
    "load_dit",
]

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
CONFIGS: dict[str, DiTConfig] = {name: DiTConfig(**spec.dit_kwargs()) for name, spec in SPECS.items()}


# ------------------------------------------------------------------------------------------
# Building blocks


class RMSNorm(nn.Module):
    """WanRMSNorm: statistics in fp32, cast back, then the (possibly bf16) gain."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)).type_as(
            x
        ) * self.weight


class LayerNormF32(nn.Module):
    """WanLayerNorm: layer norm on x.float() with fp32 weights, result in x's dtype."""

    def __init__(self, dim: int, eps: float, affine: bool):
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None
        self.bias = nn.Parameter(torch.zeros(dim)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), (self.dim,), w, b, self.eps).to(x.dtype)


def linear_fp32(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """The official autocast(float32) islands: fp32 input, weights upcast to fp32."""
    return F.linear(x.float(), layer.weight.float(), layer.bias.float())


def sinusoid_cos_sin(freq_dim: int, t: torch.Tensor) -> torch.Tensor:
    """Timestep features [B, freq_dim] in float64: cos first, then sin."""
    half = freq_dim // 2
    pos = t.to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device).div(half))
    angles = torch.outer(pos, freqs)  # [B, half]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


def rope3d_table(
    cfg: DiTConfig, grid: tuple[int, int, int], device
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [L, 1, head_dim/2] float64 for tokens in (t, h, w) row-major order."""
    T, Nh, Nw = grid
    parts = []
    for n_pairs, n_pos, axis in zip(cfg.rope_pairs, grid, range(3), strict=True):
        k = 2 * n_pairs  # real dims of this axis
        inv_freq = 1.0 / torch.pow(
            ROPE_THETA, torch.arange(0, k, 2, dtype=torch.float64, device=device).div(k)
        )
        ang = torch.outer(
            torch.arange(n_pos, dtype=torch.float64, device=device), inv_freq
        )  # [n, pairs]
        shape = [1, 1, 1, n_pairs]
        shape[axis] = n_pos
        parts.append(ang.view(shape).expand(T, Nh, Nw, n_pairs))
    ang = torch.cat(parts, dim=-1).reshape(T * Nh * Nw, 1, -1)  # [L, 1, c]
    return torch.cos(ang), torch.sin(ang)


def rope3d_apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (2i, 2i+1) of x [B, L, H, d] in the table's dtype (float64 like
    the official complex128 multiply); returns fp32."""
    xd = x.to(cos.dtype).unflatten(-1, (-1, 2))  # [B, L, H, d/2, 2]
    a, b = xd[..., 0], xd[..., 1]
    out = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1)
    return out.flatten(-2).float()


def rope1d_apply(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """1-D RoPE of the audio attention: x [..., N, d] rotated by pos [..., N] (broadcast to
    x without its head axis), frequencies repeated per adjacent pair, math in fp32."""
    d = x.shape[-1]
    inv_freq = 1.0 / (10000 ** (torch.arange(0, d, 2, device=x.device)[: d // 2].float() / d))
    ang = pos.float().unsqueeze(-1) * inv_freq  # [..., N, d/2]
    ang = ang.repeat_interleave(2, dim=-1).unsqueeze(-3)  # [..., 1, N, d]
    cos, sin = ang.cos(), ang.sin()
    xf = x.float()
    pairs = xf.unflatten(-1, (-1, 2))
    rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)  # (a, b) -> (-b, a)
    return (xf * cos + rotated * sin).type_as(x)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Full (unmasked) attention, [B, H, Lq, d] x [B, H, Lk, d] -> [B, H, Lq, d].

    Like the official flash_attention, q and k take v's dtype (bf16 in reference mode)."""
    return F.scaled_dot_product_attention(q.to(v.dtype), k.to(v.dtype), v)


# ------------------------------------------------------------------------------------------
# Attention modules


ATTENTION_KERNELS = ("sdpa", "triton", "triton-fp8")
_FLASH_MODES = {"triton": "bf16", "triton-fp8": "fp8"}


class SelfAttention(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        # which kernel runs this self-attention: "sdpa" (default, torch), "triton" (bf16 flash
        # kernel of mtlib.kernels; slower than cuDNN on the H100) or "triton-fp8" (e4m3, faster,
        # changes results); per instance, set by set_attention_kernel() (model.attention)
        self.kernel = "sdpa"
        dim = cfg.dim
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, cfg.eps) if cfg.qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, cfg.eps) if cfg.qk_norm else nn.Identity()

    def forward(self, x, rope, token_masks, frame_tokens, want_ref_map: bool = True, shard=None):
        """x [1, L, C] -> (out [1, L, C], x_ref_attn_map [3, L] or None when not wanted).

        shard (mtlib.parallel.sequence.TokenShard, sequence parallel): x holds this rank's
        tokens; q, k, v are exchanged to all tokens x this rank's heads (Ulysses) around the
        attention, and the map still covers all L tokens."""
        B, L, _ = x.shape
        H, d = self.num_heads, self.head_dim
        q = rope3d_apply(self.norm_q(self.q(x)).view(B, L, H, d), *rope)  # [B, L, H, d] fp32
        k = rope3d_apply(self.norm_k(self.k(x)).view(B, L, H, d), *rope)
        v = self.v(x).view(B, L, H, d)
        if shard is not None:
            if self.kernel != "triton-fp8":  # every other kernel casts q, k to v's dtype: do it
                q, k = q.to(v.dtype), k.to(v.dtype)  # before the exchange (half the bytes)
            q, k, v = shard.to_heads(q), shard.to_heads(k), shard.to_heads(v)  # [B, L_all, H/N, d]
        if self.kernel == "sdpa":
            out = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
        else:  # Triton flash attention, reads and writes [B, L, H, d] (mtlib.kernels.attention)
            from mtlib.kernels.attention import attention as flash

            out = flash(q, k, v, mode=_FLASH_MODES[self.kernel])
        if shard is not None:
            out = shard.to_tokens(out)  # [B, L, H, d] again (this rank's tokens)
        out = self.o(out.reshape(B, L, H * d).to(x.dtype))
        if not want_ref_map:
            return out, None
        with torch.no_grad():
            ref_map = x_ref_attn_map(
                q.transpose(1, 2).to(x.dtype), k.transpose(1, 2).to(x.dtype), token_masks,
                frame_tokens, shard, H,
            )  # fmt: skip
        return out, ref_map


def x_ref_attn_map(
    q: torch.Tensor,
    k: torch.Tensor,
    token_masks: torch.Tensor,
    frame_tokens: int,
    shard=None,
    num_heads: int | None = None,
) -> torch.Tensor:
    """How much each token attends to each class region of latent frame 0.

    q, k [1, H, L, d] post-RoPE; token_masks [3, S] (0/1) over frame 0's S tokens.
    Per head: softmax(q k_ref^T / sqrt(d)) over the S reference keys, summed over each
    mask's keys and divided by the mask size. That is attention with the masks as values,
    so no [H, L, S] map is materialised; the values are zero-padded to the head dim because
    fused GPU kernels (flash, cuDNN) need equal q/k/v head dims (zero columns change nothing).
    Heads are averaged per chunk, chunks averaged (the official 2-chunk split; a last odd
    head is dropped as there). -> [3, L].

    shard (sequence parallel): q, k hold this rank's heads of `num_heads` for all L tokens;
    the heads are summed here, then over the ranks (equal chunks: the mean of the chunk
    means is the mean over the used heads), so every rank gets the whole map.
    """
    B, H, L, d = q.shape
    n_cls = token_masks.shape[0]
    chunk = (H if shard is None else num_heads) // REF_MAP_HEAD_CHUNKS
    used = chunk * REF_MAP_HEAD_CHUNKS
    first = 0 if shard is None else shard.heads(num_heads)[0]
    n = max(0, min(H, used - first))  # heads of this call that count
    masks = token_masks.to(q.dtype)  # [3, S]
    values = F.pad(masks.t(), (0, max(d - n_cls, 0)))  # [S, d]: mask c in column c
    values = values.expand(B, n, frame_tokens, values.shape[-1])  # [B, H, S, d]
    r = F.scaled_dot_product_attention(q[:, :n], k[:, :n, :frame_tokens], values)[
        ..., :n_cls
    ]  # [B, H, L, 3]
    r = r / masks.sum(-1)  # masked mean over the reference tokens
    if shard is not None:
        return (shard.sum(r.float().sum(1)) / used).to(q.dtype)[0].t()  # [3, L]
    r = (
        r.view(B, REF_MAP_HEAD_CHUNKS, chunk, L, n_cls).mean(2).sum(1) / REF_MAP_HEAD_CHUNKS
    )  # [B, L, 3]
    return r[0].t()  # [3, L]


class CrossAttention(nn.Module):
    """Text + image cross-attention (WanI2VCrossAttention): two attentions summed, then o."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        dim = cfg.dim
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.k_img = nn.Linear(dim, dim)
        self.v_img = nn.Linear(dim, dim)
        norm = (lambda: RMSNorm(dim, cfg.eps)) if cfg.qk_norm else nn.Identity
        self.norm_q, self.norm_k, self.norm_k_img = norm(), norm(), norm()

    def forward(self, x, context):
        """x [1, L, C], context [1, 257 + text_len, C] -> [1, L, C]."""
        B, L, _ = x.shape
        H, d = self.num_heads, self.head_dim

        def heads(t):  # [B, N, C] -> [B, H, N, d]
            return t.view(B, -1, H, d).transpose(1, 2)

        ctx_img, ctx_txt = context[:, :IMAGE_TOKENS], context[:, IMAGE_TOKENS:]
        q = heads(self.norm_q(self.q(x)))
        txt = attention(q, heads(self.norm_k(self.k(ctx_txt))), heads(self.v(ctx_txt)))
        img = attention(q, heads(self.norm_k_img(self.k_img(ctx_img))), heads(self.v_img(ctx_img)))
        out = txt.transpose(1, 2).reshape(B, L, H * d) + img.transpose(1, 2).reshape(B, L, H * d)
        return self.o(out)


class AudioCrossAttention(nn.Module):
    """SingleStreamMutiAttention: each latent frame's tokens attend to that frame's audio
    tokens; with two persons, q and k are placed on a 1-D RoPE line (L-RoPE)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        dim = cfg.dim
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.q_linear = nn.Linear(dim, dim)
        self.kv_linear = nn.Linear(cfg.output_dim, 2 * dim)  # rows: K (head-major), then V
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, audio_embedding, grid, ref_map, human_num: int, shard=None):
        """x [1, L, C], audio_embedding [1, T, N_a, C_a] (N_a = context_tokens * persons),
        ref_map [3, L] -> [1, L, C]. shard (sequence parallel): x holds this rank's tokens,
        placed in the latent frames they touch; ref_map covers all L tokens."""
        T, Nh, Nw = grid
        S, H, d = Nh * Nw, self.num_heads, self.head_dim
        B, L, C = x.shape
        first, stop = (0, T) if shard is None else shard.frames
        q = self.q_linear(x)
        if shard is not None:
            q = shard.frame_window(q)  # [1, (stop - first) * S, C]
        T = stop - first
        q = q.view(T, S, H, d).transpose(1, 2)  # [T, H, S, d]
        N_a = audio_embedding.shape[2]
        kv = self.kv_linear(audio_embedding[0, first:stop]).view(T, N_a, 2, H, d)
        k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)  # [T, H, N_a, d]
        if human_num == 2:
            q = rope1d_apply(q, lrope_positions(ref_map)[first * S : stop * S].view(T, S))
            # person 1's tokens come first: keys at the middle of each person's range (2, 22)
            key_pos = torch.full((N_a,), sum(PERSON2_RANGE) / 2, dtype=k.dtype, device=k.device)
            key_pos[: N_a // 2] = sum(PERSON1_RANGE) / 2
            k = rope1d_apply(k, key_pos)
        out = attention(q, k, v).transpose(1, 2).reshape(B, T * S, C)  # [T, S, H, d] -> [1, L, C]
        if shard is not None:
            out = shard.frame_unwindow(out)
        return self.proj(out)


def lrope_positions(ref_map: torch.Tensor) -> torch.Tensor:
    """Visual token positions [L] from x_ref_attn_map [3, L], in ref_map's dtype (bf16 in
    reference mode, which quantises them as the official does): person rows min-max
    normalised to [0, 4] and [20, 24], background 12, picked by the argmax class."""
    lo, hi = ref_map.amin(dim=1), ref_map.amax(dim=1)  # [3]
    p1 = (ref_map[0] - lo[0]) / (hi[0] - lo[0] + 1e-8) * (
        PERSON1_RANGE[1] - PERSON1_RANGE[0]
    ) + PERSON1_RANGE[0]
    p2 = (ref_map[1] - lo[1]) / (hi[1] - lo[1] + 1e-8) * (
        PERSON2_RANGE[1] - PERSON2_RANGE[0]
    ) + PERSON2_RANGE[0]
    cls = ref_map.argmax(dim=0)  # [L]
    back = torch.full_like(p1, BACKGROUND_POS)
    return torch.where(cls == 0, p1, torch.where(cls == 1, p2, back))


@dataclass
class _BlockInputs:
    """Per-call tensors shared by all blocks (computed once per forward)."""

    rope: tuple[torch.Tensor, torch.Tensor]  # cos, sin [L, 1, head_dim/2] float64
    token_masks: torch.Tensor  # [3, S] 0/1 person/background masks on the token grid
    frame_tokens: int  # S = N_h * N_w
    grid: tuple[int, int, int]  # (T, N_h, N_w)
    context: torch.Tensor  # [1, 257 + text_len, C]
    audio_embedding: torch.Tensor  # [1, T, context_tokens * persons, output_dim]
    human_num: int  # persons in the audio (1 or 2)
    shard: Any = None  # mtlib.parallel.sequence.TokenShard under sequence parallel, else None


class Block(nn.Module):
    """WanAttentionBlock with the audio cross-attention between cross-attention and FFN."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        dim = cfg.dim
        self.norm1 = LayerNormF32(dim, cfg.eps, affine=False)
        self.self_attn = SelfAttention(cfg)
        self.norm3 = (
            LayerNormF32(dim, cfg.eps, affine=True) if cfg.cross_attn_norm else nn.Identity()
        )
        self.cross_attn = CrossAttention(cfg)
        self.norm2 = LayerNormF32(dim, cfg.eps, affine=False)
        self.ffn = nn.Sequential(
            nn.Linear(dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, dim)
        )
        self.modulation = nn.Parameter(torch.zeros(1, 6, dim))
        self.audio_cross_attn = AudioCrossAttention(cfg)
        self.norm_x = (
            LayerNormF32(dim, cfg.eps, affine=True) if cfg.norm_input_visual else nn.Identity()
        )
        # set per instance by compile_blocks() (model.compile): a torch.compile'd Block.body
        # shared by every block of that model
        self.compiled_body = None

    def forward(self, x, e0, index: int, ctx: _BlockInputs):
        """x [1, L, C] (activation dtype), e0 [1, 6, C] fp32 -> [1, L, C]."""
        # under sequence parallel a block sees a slice of the tokens: no per-block points
        tracing = trace.active() and ctx.shard is None
        if self.compiled_body is not None and not tracing:
            # index is only used for trace names: a constant keeps one compiled graph for all
            return self.compiled_body(self, x, e0, -1, ctx, False)
        return self.body(x, e0, index, ctx, tracing)

    def body(self, x, e0, index: int, ctx: _BlockInputs, tracing: bool):
        dtype = x.dtype
        # adaLN table (shift, scale, gate) x (attention, FFN); fp32 whatever the params are
        shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = (self.modulation + e0).chunk(6, dim=1)

        # The map only steers the two-person L-RoPE; the official code computes it for one
        # person too (an extra attention over frame 0's keys per block, ~1% of a step) and
        # drops it. Skipped then, unless a trace keeps it.
        map_point = f"dit.block{index}.self_attn.x_ref_attn_map"
        y, ref_map = self.self_attn(
            (self.norm1(x).float() * (1 + scale_a) + shift_a).to(dtype),
            ctx.rope,
            ctx.token_masks,
            ctx.frame_tokens,
            want_ref_map=ctx.human_num > 1 or (tracing and trace.wanted(map_point)),
            shard=ctx.shard,
        )
        if tracing:
            trace.point(f"dit.block{index}.self_attn", y)
            if ref_map is not None:
                trace.point(map_point, ref_map)
        x = (x + y * gate_a).to(dtype)

        y = self.cross_attn(self.norm3(x), ctx.context)
        if tracing:
            trace.point(f"dit.block{index}.cross_attn", y)
        x = x + y

        y = self.audio_cross_attn(
            self.norm_x(x), ctx.audio_embedding, ctx.grid, ref_map, ctx.human_num, ctx.shard
        )
        if tracing:
            trace.point(f"dit.block{index}.audio_cross_attn", y)
        x = x + y

        y = self.ffn((self.norm2(x).float() * (1 + scale_f) + shift_f).to(dtype))
        x = (x + y * gate_f).to(dtype)
        if tracing:
            trace.point(f"dit.block{index}.out", x)
        return x


class Head(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.norm = LayerNormF32(cfg.dim, cfg.eps, affine=False)
        self.head = nn.Linear(cfg.dim, math.prod(cfg.patch_size) * cfg.out_dim)
        self.modulation = nn.Parameter(torch.zeros(1, 2, cfg.dim))

    def forward(self, x, e):
        """x [1, L, C], e [1, C] fp32 -> [1, L, p*q*r*out_dim] fp32 (official: fp32 autocast)."""
        shift, scale = (self.modulation + e.unsqueeze(1)).chunk(2, dim=1)
        return linear_fp32(self.head, self.norm(x) * (1 + scale) + shift)


class MLPProj(nn.Module):
    """img_emb: CLIP features -> context tokens (LayerNorm eps 1e-5, exact GELU)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Sequential(
            nn.LayerNorm(in_dim),
            nn.Linear(in_dim, in_dim),
            nn.GELU(),
            nn.Linear(in_dim, out_dim),
            nn.LayerNorm(out_dim),
        )

    def forward(self, clip_fea):
        return self.proj(clip_fea)


class AudioProjModel(nn.Module):
    """Grouped wav2vec2 windows -> context_tokens audio tokens per latent frame and person."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        per_slot = cfg.audio_layers * cfg.audio_width
        self.context_tokens, self.output_dim = cfg.context_tokens, cfg.output_dim
        self.proj1 = nn.Linear(cfg.audio_window * per_slot, cfg.intermediate_dim)
        self.proj1_vf = nn.Linear(cfg.audio_window_vf * per_slot, cfg.intermediate_dim)
        self.proj2 = nn.Linear(cfg.intermediate_dim, cfg.intermediate_dim)
        self.proj3 = nn.Linear(cfg.intermediate_dim, cfg.context_tokens * cfg.output_dim)
        self.norm = nn.LayerNorm(cfg.output_dim) if cfg.norm_output_audio else nn.Identity()

    def forward(self, first, later):
        """first [P, 1, 5, layers, width], later [P, T-1, 8, layers, width] -> [P, T, tokens, C_a]."""
        P = first.shape[0]
        h_first = torch.relu(
            self.proj1(first.reshape(P, first.shape[1], -1))
        )  # (window, layer, channel) flatten
        h_later = torch.relu(self.proj1_vf(later.reshape(P, later.shape[1], -1)))
        h = torch.relu(self.proj2(torch.cat([h_first, h_later], dim=1)))  # [P, T, I]
        tokens = self.proj3(h).unflatten(-1, (self.context_tokens, self.output_dim))
        return self.norm(tokens)


def group_audio_windows(audio: torch.Tensor, cfg: DiTConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """audio [P, F, window, layers, width] -> first latent's windows [P, 1, window, ...] and
    later latents' [P, T-1, window + vae_scale - 1, ...]: of each group of vae_scale video
    frames the first gives slots 0..mid, the middle ones slot mid, the last slots mid..end."""
    P, Fr = audio.shape[:2]
    mid = cfg.audio_window // 2
    first = audio[:, :1]
    later = audio[:, 1:].unflatten(
        1, ((Fr - 1) // cfg.vae_scale, cfg.vae_scale)
    )  # [P, n, vs, w, ...]
    head = later[:, :, 0, : mid + 1]
    middle = later[:, :, 1:-1, mid]
    tail = later[:, :, -1, mid:]
    return first, torch.cat([head, middle, tail], dim=2)


# ------------------------------------------------------------------------------------------
# TeaCache


TEACACHE_COEFFICIENTS = {
    # use_ret_steps=True variant (the one the CLI uses), numpy poly1d order (highest first)
    "multitalk-480": (2.57151496e05, -3.54229917e04, 1.40286849e03, -1.35890334e01, 1.32517977e-01),
    "multitalk-720": (8.10705460e03, 2.13393892e03, -3.72934672e02, 1.66203073e01, -4.17769401e-02),
}


@dataclass
class TeaCacheState:
    """TeaCache (facts §3.10): skip all blocks when e0 barely changed since the branch's last
    call, reusing that branch's cached block residual.

    Assumes 3 DiT calls per step in the order cond, drop_text, uncond (like the official);
    `calls` counts them mod 3 * sample_steps. The first `ret_steps` calls always compute.
    """

    sample_steps: int
    coefficients: tuple[float, ...] = TEACACHE_COEFFICIENTS["multitalk-480"]
    thresh: float = 0.2
    ret_steps: int = 15  # 5 sampling steps x 3 branches
    calls: int = 0
    accumulated: list = field(default_factory=lambda: [0.0, 0.0, 0.0])
    previous_e0: list = field(default_factory=lambda: [None, None, None])
    previous_residual: list = field(default_factory=lambda: [None, None, None])
    skipped: int = 0  # calls that reused the cache (for reports)
    # one (call index, rel change of e0 or None, accumulator, computed) per decision
    decisions: list = field(default_factory=list)

    @classmethod
    def for_size(cls, size: str, sample_steps: int, thresh: float = 0.2) -> TeaCacheState:
        if size not in TEACACHE_COEFFICIENTS:
            raise ValueError(
                f"TeaCache size must be one of {sorted(TEACACHE_COEFFICIENTS)}, got {size!r}"
            )
        return cls(
            sample_steps=sample_steps, coefficients=TEACACHE_COEFFICIENTS[size], thresh=thresh
        )

    @property
    def cutoff(self) -> int:
        return 3 * self.sample_steps

    def should_compute(self, e0: torch.Tensor) -> bool:
        branch = self.calls % 3
        prev = self.previous_e0[branch]
        rel = None
        if self.calls < self.ret_steps or self.calls >= self.cutoff or prev is None:
            compute = True
            self.accumulated[branch] = 0.0
        else:
            rel = ((e0 - prev).abs().mean() / prev.abs().mean()).item()  # host sync, as official
            acc = self.accumulated[branch] + sum(
                c * rel ** (len(self.coefficients) - 1 - i) for i, c in enumerate(self.coefficients)
            )
            compute = acc >= self.thresh
            self.accumulated[branch] = 0.0 if compute else acc
        self.decisions.append((self.calls, rel, self.accumulated[branch], compute))
        self.previous_e0[branch] = e0.detach().clone()
        return compute

    def advance(self) -> None:
        self.calls += 1
        if self.calls >= 3 * self.sample_steps:
            self.calls = 0


# ------------------------------------------------------------------------------------------
# The model


class MultiTalkDiT(nn.Module):
    """WanModel (I2V-14B) + MultiTalk audio adapter, official state-dict layout."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        cfg = self.config = config
        dim = cfg.dim
        self.patch_embedding = nn.Conv3d(
            cfg.in_dim, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size
        )
        self.text_embedding = nn.Sequential(
            nn.Linear(cfg.text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim)
        )
        self.time_embedding = nn.Sequential(
            nn.Linear(cfg.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim)
        )
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 6))
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.num_layers)])
        self.head = Head(cfg)
        self.img_emb = MLPProj(cfg.clip_dim, dim)
        self.audio_proj = AudioProjModel(cfg)
        # mtlib.parallel.sequence.SequenceParallel: split the tokens over ranks (None: one device)
        self.sequence_parallel = None
        # 3-D RoPE cos/sin per (grid, device, dtype): not parameters, never in the state dict
        self._rope_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        # float64 is the official math. float32 rotation differs by ~1e-7 relative (within
        # the golden tolerance, see tests) and halves the memory traffic on a GPU.
        self.rope_dtype: torch.dtype = torch.float64

    # ---------------------------------------------------------------------- precision
    @property
    def precision(self) -> Precision:
        return "fp32" if self.patch_embedding.weight.dtype == torch.float32 else "reference"

    def set_precision(self, precision: Precision) -> MultiTalkDiT:
        """fp32: all parameters float32. reference: all parameters bf16 (norms, modulation and
        audio_proj included, as the official), fp32 islands computed in forward."""
        if precision not in PRECISION_DTYPES:
            raise ValueError(
                f"precision must be one of {sorted(PRECISION_DTYPES)}, got {precision!r}"
            )
        return self.to(PRECISION_DTYPES[precision])

    def rope_table(self, grid: tuple[int, int, int], device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (grid, str(device), self.rope_dtype)
        if key not in self._rope_cache:
            cos, sin = rope3d_table(self.config, grid, device)  # angles always in float64
            self._rope_cache[key] = (cos.to(self.rope_dtype), sin.to(self.rope_dtype))
        return self._rope_cache[key]

    # ---------------------------------------------------------------------- checks
    def check_inputs(
        self, latent, t, context, clip_fea, y, audio, ref_target_masks, seq_len
    ) -> tuple[int, int, int]:
        """Shape rules of one forward call, checked before any compute; returns (T, N_h, N_w)."""
        cfg = self.config
        pt, ph, pw = cfg.patch_size

        def need(ok: bool, name: str, msg: str) -> None:
            if not ok:
                raise InputError(f"DiT input {name}: {msg}")

        def shape(x) -> list:
            return list(x.shape)

        need(
            latent.dim() == 4 and latent.shape[0] == cfg.out_dim,
            "latent",
            f"expected [{cfg.out_dim}, T, h, w], got {shape(latent)}",
        )
        _, T, h, w = latent.shape
        need(
            T % pt == 0 and h % ph == 0 and w % pw == 0,
            "latent",
            f"T, h, w = {T}, {h}, {w} must be divisible by the patch size {cfg.patch_size}",
        )
        grid = (T // pt, h // ph, w // pw)
        need(
            max(grid) <= ROPE_MAX_POSITIONS,
            "latent",
            f"token grid {grid} exceeds the 3-D RoPE table of {ROPE_MAX_POSITIONS} positions per axis",
        )
        need(t.numel() == 1, "t", f"expected one timestep (shape [1]), got {shape(t)}")
        need(
            context.dim() == 2
            and context.shape[1] == cfg.text_dim
            and context.shape[0] <= cfg.text_len,
            "context",
            f"expected [L_txt <= {cfg.text_len}, {cfg.text_dim}], got {shape(context)}",
        )
        need(
            shape(clip_fea) == [1, IMAGE_TOKENS, cfg.clip_dim],
            "clip_fea",
            f"expected [1, {IMAGE_TOKENS}, {cfg.clip_dim}], got {shape(clip_fea)}",
        )
        need(
            shape(y) == [1, cfg.y_dim, T, h, w],
            "y",
            f"expected [1, {cfg.y_dim}, {T}, {h}, {w}] (mask + image latent on the latent's grid), got {shape(y)}",
        )
        frames = 1 + cfg.vae_scale * (grid[0] - 1)
        need(
            audio.dim() == 5
            and audio.shape[0] in (1, 2)
            and shape(audio)[1:] == [frames, cfg.audio_window, cfg.audio_layers, cfg.audio_width],
            "audio",
            f"expected [persons (1 or 2), {frames} = 1 + {cfg.vae_scale}*(T_lat-1) video frames, {cfg.audio_window}, "
            f"{cfg.audio_layers}, {cfg.audio_width}], got {shape(audio)}",
        )
        need(
            shape(ref_target_masks) == [3, h, w],
            "ref_target_masks",
            f"expected [3, {h}, {w}] (person 1, person 2, background at latent size), got {shape(ref_target_masks)}",
        )
        L = math.prod(grid)
        need(
            int(seq_len) == L,
            "seq_len",
            f"must equal the number of video tokens T*N_h*N_w = {L}, got {seq_len} "
            "(padding is not supported: the audio attention groups tokens per latent frame)",
        )
        return grid

    # ---------------------------------------------------------------------- forward
    def forward(
        self,
        latent: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        clip_fea: torch.Tensor,
        y: torch.Tensor,
        audio: torch.Tensor,
        ref_target_masks: torch.Tensor,
        seq_len: int,
        teacache: TeaCacheState | None = None,
    ) -> torch.Tensor:
        """One DiT call (batch 1).

        latent [16, T, h, w] noisy latent; t [1] timestep (shifted, 0..1000);
        context [L_txt, text_dim] T5 output (zero-padded to text_len here, no mask);
        clip_fea [1, 257, clip_dim]; y [1, 20, T, h, w] (4 mask + 16 image-latent channels);
        audio [P, F, audio_window, audio_layers, audio_width] wav2vec2 windows, P in {1, 2},
        F = 1 + vae_scale * (T - 1); ref_target_masks [3, h, w] (person 1, person 2,
        background); seq_len = T * h/2 * w/2. Returns the prediction [16, T, h, w] float32.
        """
        t = torch.as_tensor(t).reshape(-1)
        grid = self.check_inputs(latent, t, context, clip_fea, y, audio, ref_target_masks, seq_len)
        cfg = self.config
        act = self.patch_embedding.weight.dtype  # activation dtype = parameter dtype
        dev = self.patch_embedding.weight.device
        latent, t, context, clip_fea, y, audio, ref_target_masks = (
            u.to(dev) for u in (latent, t, context, clip_fea, y, audio, ref_target_masks)
        )
        T, Nh, Nw = grid
        S = Nh * Nw
        tracing = trace.active()

        # embeddings: the concat is fp32, then cast like the official (to the context dtype)
        x = torch.cat([latent, y[0].to(latent.dtype)], dim=0).to(act)
        x = self.patch_embedding(x.unsqueeze(0))  # [1, C, T, N_h, N_w]
        if tracing:
            trace.point("dit.patch_embedding", x)
        x = x.flatten(2).transpose(1, 2)  # [1, L, C]

        # time embedding: float64 sinusoid, fp32 MLPs (official autocast(float32))
        s = sinusoid_cos_sin(cfg.freq_dim, t).float()
        e = linear_fp32(
            self.time_embedding[2], F.silu(linear_fp32(self.time_embedding[0], s))
        )  # [1, C]
        e0 = linear_fp32(self.time_projection[1], F.silu(e))  # [1, 6C]
        if tracing:
            trace.point("dit.e", e)
            trace.point("dit.e0", e0)
        e0 = e0.unflatten(1, (6, cfg.dim))

        # text: zero rows up to text_len go through the MLP too (no mask downstream)
        ctx = context.to(act)
        ctx = torch.cat([ctx, ctx.new_zeros(cfg.text_len - ctx.shape[0], ctx.shape[1])]).unsqueeze(
            0
        )
        ctx = self.text_embedding(ctx)  # [1, text_len, C]
        img = self.img_emb(clip_fea.to(act))  # [1, 257, C]
        if tracing:
            trace.point("dit.text_embedding", ctx)
            trace.point("dit.img_emb", img)
        ctx = torch.cat([img, ctx], dim=1).to(act)  # [1, 257 + text_len, C]

        # audio: windows grouped per latent frame, projected, persons side by side
        human_num = audio.shape[0]
        first, later = group_audio_windows(audio.to(act), cfg)
        audio_tokens = self.audio_proj(first, later)  # [P, T, tokens, C_a]
        audio_embedding = torch.cat(audio_tokens.split(1), dim=2).to(act)  # [1, T, tokens * P, C_a]
        if tracing:
            trace.point("dit.audio_proj", audio_tokens)
            trace.point("dit.audio_embedding", audio_embedding)

        # person masks on the token grid
        masks = F.interpolate(
            ref_target_masks.to(x.device, torch.float32).unsqueeze(0), size=(Nh, Nw), mode="nearest"
        )
        token_masks = (masks[0] > 0).view(masks.shape[1], -1).to(act)  # [3, S]
        if tracing:
            trace.point("dit.token_ref_target_masks", token_masks)

        rope = self.rope_table(grid, x.device)
        shard = None
        if self.sequence_parallel is not None:  # this rank's tokens only, until the head
            shard = self.sequence_parallel.shard(x.shape[1], S)
            x, rope = shard.scatter(x), tuple(shard.rows(r) for r in rope)
        inputs = _BlockInputs(rope, token_masks, S, grid, ctx, audio_embedding, human_num, shard)
        if teacache is not None and not teacache.should_compute(e0):
            x = x + teacache.previous_residual[teacache.calls % 3]
            teacache.skipped += 1
        else:
            x_in = x
            for i, block in enumerate(self.blocks):
                x = block(x, e0, i, inputs)
            if teacache is not None:
                teacache.previous_residual[teacache.calls % 3] = x - x_in

        out = self.head(x, e)  # [1, L, p*q*r*c] fp32
        if shard is not None:
            out = shard.gather(out)  # every rank: all L tokens
        if tracing:
            trace.point("dit.head", out)
        if teacache is not None:
            teacache.advance()

        # unpatchify: each token is (p, q, r, c) with c fastest
        pt, ph, pw = cfg.patch_size
        out = out[0].view(T, Nh, Nw, pt, ph, pw, cfg.out_dim)
        out = (
            out.permute(6, 0, 3, 1, 4, 2, 5).reshape(cfg.out_dim, T * pt, Nh * ph, Nw * pw).float()
        )
        if tracing:
            trace.point("dit.out", out)
        return out


# ------------------------------------------------------------------------------------------
# Building and loading


def compile_blocks(model: MultiTalkDiT, rope_fp32: bool = False, **compile_kwargs) -> MultiTalkDiT:
    """Speed mode for GPUs: torch.compile the block body once (shared by all blocks: the
    parameters are graph inputs) so the fp32 islands, casts and RoPE fuse into a few kernels
    instead of ~40 separate element-wise passes over [L, C]. Numerics stay those of the
    reference up to kernel order. RoPE keeps the model's rope_dtype (model.rope_precision in a
    run config); `rope_fp32=True` sets float32 (within the golden tolerance, see tests).
    Tracing falls back to the eager body."""
    if rope_fp32:
        model.rope_dtype = torch.float32
    body = torch.compile(Block.body, dynamic=False, **compile_kwargs)
    for block in model.blocks:
        block.compiled_body = body
    return model


def set_attention_kernel(model: MultiTalkDiT, kernel: str, device=None) -> MultiTalkDiT:
    """Choose the self-attention kernel of every block (see ATTENTION_KERNELS). The Triton
    kernels need CUDA and Triton; asking for them elsewhere fails here, before any compute.
    `device`: where the blocks compute (default: where the parameters are; give it with
    block offload, whose weights live on the host)."""
    if kernel not in ATTENTION_KERNELS:
        raise ValueError(f"attention kernel must be one of {', '.join(ATTENTION_KERNELS)}; got {kernel!r}")
    if kernel != "sdpa":
        from mtlib.kernels.attention import available, head_dim_ok, min_head_dim

        d, fp8 = model.config.head_dim, kernel == "triton-fp8"
        if not head_dim_ok(d, fp8):
            raise ValueError(
                f"attention kernel {kernel!r} needs a head dim that is a power of two in "
                f"{min_head_dim(fp8)}..256; this DiT's is {d}. Use the default 'sdpa'"
            )

        device = device if device is not None else next(model.parameters()).device
        if not available(device):
            raise RuntimeError(
                f"attention kernel {kernel!r} needs Triton and a CUDA GPU (the model is on {device}); "
                "use the default 'sdpa'"
            )
    for block in model.blocks:
        block.self_attn.kernel = kernel
    return model


def build_dit(
    config: DiTConfig | str = "multitalk-14b",
    device: str | torch.device = "meta",
    dtype: torch.dtype = torch.float32,
) -> MultiTalkDiT:
    """An uninitialised model (meta device by default: no memory until weights are assigned)."""
    cfg = pick_config(config, CONFIGS, "DiT")
    with torch.device(device):
        model = MultiTalkDiT(cfg)
    return model.to(dtype) if dtype != torch.float32 else model


WAN_SHARD_GLOB = "diffusion_pytorch_model*.safetensors"
MULTITALK_FILE = "multitalk.safetensors"


def _collect_sources(sources) -> tuple[list[Path], dict | None]:
    """Checkpoint files in load order (Wan shards first, multitalk.safetensors on top) and the
    first config.json found in a source directory."""
    if isinstance(sources, (str, Path)):
        sources = [sources]
    shards: list[Path] = []
    adapters: list[Path] = []
    config_json = None
    for src in sources:
        p = Path(src)
        if p.is_dir():
            found = sorted(p.glob(WAN_SHARD_GLOB))
            if (p / MULTITALK_FILE).is_file():
                adapters.append(p / MULTITALK_FILE)
            if not found and not (p / MULTITALK_FILE).is_file():
                raise CheckpointError(
                    f"DiT checkpoint directory {p} holds no {WAN_SHARD_GLOB} and no {MULTITALK_FILE}; "
                    "pass the Wan2.1-I2V-14B directory and/or the MeiGen-MultiTalk directory"
                )
            shards.extend(found)
            if config_json is None and (p / "config.json").is_file():
                config_json = json.loads((p / "config.json").read_text())
        elif p.is_file() and p.suffix == ".safetensors":
            (adapters if p.name == MULTITALK_FILE else shards).append(p)
        else:
            raise CheckpointError(
                f"DiT checkpoint source {p}: not a directory or an existing .safetensors file"
            )
    return shards + adapters, config_json


def _is_audio_key(key: str) -> bool:
    return key.startswith("audio_proj.") or ".audio_cross_attn." in key or ".norm_x." in key


def check_checkpoint_keys(
    expected: dict[str, tuple], found: dict[str, tuple], cfg: DiTConfig
) -> None:
    """Raise one CheckpointError naming missing / unexpected / mis-shaped keys (or the wrong
    model) before any tensor is read."""
    pe = found.get("patch_embedding.weight")
    if pe is not None and len(pe) == 5 and pe[1] != cfg.in_dim:
        kind = "a text-to-video Wan DiT" if pe[1] == 16 else "not an image-to-video Wan DiT"
        raise CheckpointError(
            f"this is {kind} (in_dim {pe[1]}: patch_embedding.weight {list(pe)}); "
            f"MultiTalk needs the I2V-14B checkpoint (in_dim {cfg.in_dim})"
        )
    diff = state_diff(expected, found)
    audio_expected = [k for k in expected if _is_audio_key(k)]
    if (
        audio_expected
        and set(audio_expected) <= set(diff.missing)
        and len(diff.missing) < len(expected)
    ):
        raise CheckpointError(
            f"the MultiTalk audio adapter is missing ({len(audio_expected)} keys, e.g. {audio_expected[0]}): "
            f"{MULTITALK_FILE} not found/loaded; pass it (or the MeiGen-MultiTalk directory) with the Wan shards"
        )
    if diff:
        raise CheckpointError(f"DiT checkpoint does not match the config: {diff.describe()}")


def load_dit(
    sources: str | Path | Sequence[str | Path],
    config: DiTConfig | str | None = None,
    device: str | torch.device = "cpu",
    precision: Precision = "fp32",
) -> MultiTalkDiT:
    """Load the DiT from Wan shards (+ multitalk.safetensors) without copying any file.

    sources: a directory (config.json + diffusion_pytorch_model*.safetensors, optionally
    multitalk.safetensors), several directories (e.g. the Wan dir and the MeiGen-MultiTalk
    dir), or a list of .safetensors files. Tensors are the union of all files, the
    multitalk file on top, so no index.json swap or symlinks are needed. config: a DiTConfig
    or a CONFIGS name; None reads config.json like WanModel.from_pretrained (text_dim etc.
    keep their defaults, see DiTConfig.from_config_json).
    """
    from safetensors import safe_open

    if precision not in PRECISION_DTYPES:
        raise ValueError(f"precision must be one of {sorted(PRECISION_DTYPES)}, got {precision!r}")
    files, config_json = _collect_sources(sources)
    if config is None:
        if config_json is None:
            raise CheckpointError(
                "no config.json among the DiT sources: pass config= (a DiTConfig or a CONFIGS name)"
            )
        config = DiTConfig.from_config_json(config_json)
    else:
        config = pick_config(config, CONFIGS, "DiT")

    model = build_dit(config, device="meta")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    where: dict[str, Path] = {}
    found: dict[str, tuple] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as h:
            for k in h.keys():
                where[k] = f
                found[k] = tuple(h.get_slice(k).get_shape())
    check_checkpoint_keys(expected, found, config)

    dtype = PRECISION_DTYPES[precision]
    state: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list[str]] = {}
    for k, f in where.items():
        by_file.setdefault(f, []).append(k)
    for f, keys in by_file.items():
        with safe_open(str(f), framework="pt") as h:
            for k in keys:
                state[k] = h.get_tensor(k).to(device=device, dtype=dtype)
        check_state_finite({k: state[k] for k in keys}, "DiT", repr(str(f)))
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)
