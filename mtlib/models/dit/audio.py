"""The audio adapter: wav2vec2 windows grouped per latent frame (`group_audio_windows`) and
projected to context tokens per person and frame (`AudioProjModel`).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from mtlib.models.dit.config import DiTConfig


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
