"""Small layers and position encodings of the DiT: RMSNorm, fp32 LayerNorm, sinusoidal time
features, 3-D and 1-D RoPE.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from mtlib.models.dit.config import ROPE_THETA, DiTConfig

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
