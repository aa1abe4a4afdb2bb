"""`MultiTalkDiT`: Wan2.1-I2V-14B (WanModel) plus the audio adapter, in the official
state-dict key layout.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from mtlib import trace
from mtlib.io import InputError
from mtlib.models.dit.audio import AudioProjModel, group_audio_windows
from mtlib.models.dit.blocks import Block, Head, MLPProj, _BlockInputs
from mtlib.models.dit.config import (
    IMAGE_TOKENS,
    PRECISION_DTYPES,
    ROPE_MAX_POSITIONS,
    DiTConfig,
    Precision,
)
from mtlib.models.dit.layers import linear_fp32, rope3d_table, sinusoid_cos_sin
from mtlib.models.dit.teacache import TeaCacheState

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
