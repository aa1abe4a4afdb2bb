"""Attention of the DiT blocks: self-attention (SDPA or the Triton kernels), the reference-map
of each person's region, text+image cross-attention, and the audio cross-attention with its
L-RoPE positions.

Every attention call goes through this module's `attention` (mtlib.inspect.shapecheck wraps it to
record per-head shapes).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from mtlib.models.dit.config import (
    BACKGROUND_POS,
    IMAGE_TOKENS,
    PERSON1_RANGE,
    PERSON2_RANGE,
    REF_MAP_HEAD_CHUNKS,
    DiTConfig,
)
from mtlib.models.dit.layers import RMSNorm, rope1d_apply, rope3d_apply


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
