"""One DiT block (modulation, self-attention, cross-attention, audio cross-attention, FFN),
the output head and the CLIP projection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from mtlib import trace
from mtlib.models.dit.attention import AudioCrossAttention, CrossAttention, SelfAttention
from mtlib.models.dit.config import DiTConfig
from mtlib.models.dit.layers import LayerNormF32, linear_fp32


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
