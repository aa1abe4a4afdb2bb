"""Causal 3D VAE of Wan2.1 (`Wan2.1_VAE.pth`): pixels <-> 16-channel latents.

Where it sits in the flow: every clip encodes its conditioning frames (1 reference frame, or
the motion frames of the previous clip, followed by zeros up to F frames) into the latent
`y` that the DiT is conditioned on, and decodes the denoised latent back to F video frames
(multitalk-facts §9.3 steps 6 and 12).

The network is causal in time and runs chunk by chunk, exactly like the reference
(`wan/modules/vae.py`, `WanVAE_`):

* encode: frame 0 alone, then groups of 4 frames; each chunk gives one latent frame
  (stride 4 in time, 8 in space). A clip therefore has F = 4n+1 frames -> T = n+1 latents.
* decode: one latent frame at a time; latent 0 gives 1 frame, every later latent 4 frames.

Between chunks every temporal convolution remembers the last frames of its own input
(`CausalCache`), so chunked processing sees the same history a causal convolution over the
whole clip would see, with two documented exceptions kept for parity: the temporal
downsampler skips its time convolution on the first chunk, and the temporal upsampler leaves
the first latent frame un-upsampled and keeps it out of its history.

State-dict keys are those of the official checkpoint (`encoder.*`, `decoder.*`, `conv1.*`,
`conv2.*`), so `load_vae` loads `Wan2.1_VAE.pth` (or a .safetensors with the same keys) as
published. Latents leave `encode` normalised with the 16 hard-coded channel statistics of the
reference wrapper, and `decode` expects them normalised.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mtlib import trace
from mtlib.io import ConfigError, InputError
from mtlib.models.checkpoint import CheckpointError, check_config_keys, shapes_of, state_diff
from mtlib.models.checkpoint import read_state_dict as read_checkpoint

# Per-channel statistics of the Wan2.1 latent space (hard-coded in the reference `WanVAE`):
# encode returns (mu - mean) / std, decode undoes it.
LATENT_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
LATENT_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip

# Chunk length of the causal encoder after its first, single-frame chunk (= temporal stride).
FRAMES_PER_LATENT = 4


@dataclass(frozen=True)
class VAEConfig:
    # Channel width of the first / last stage (96 in Wan2.1; widths are dim * dim_mult).
    dim: int = 96
    # Latent channels; the encoder head emits 2 * z_dim (mu and logvar).
    z_dim: int = 16
    # Width multipliers per resolution level; len - 1 spatial halvings (stride 8).
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    # Residual blocks per encoder level (the decoder uses one more per level).
    num_res_blocks: int = 2
    # Resolutions with extra attention blocks; empty in Wan2.1 (only the middle blocks attend).
    attn_scales: tuple[float, ...] = ()
    # Which encoder downsamplers also halve time (reversed for the decoder's upsamplers).
    temperal_downsample: tuple[bool, ...] = (False, True, True)
    # Dropout inside residual blocks; 0 for inference (kept for the key layout: residual.5).
    dropout: float = 0.0

    def __post_init__(self):
        problems = []
        if self.dim < 1:
            problems.append(f"dim must be >= 1 (got {self.dim})")
        if self.z_dim != len(LATENT_MEAN):
            problems.append(
                f"z_dim must be {len(LATENT_MEAN)}: the Wan2.1 latent statistics have "
                f"{len(LATENT_MEAN)} channels (got {self.z_dim})"
            )
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            problems.append(
                f"temperal_downsample needs one flag per downsampler, {len(self.dim_mult) - 1} "
                f"(got {len(self.temperal_downsample)})"
            )
        if 2 ** sum(self.temperal_downsample) != FRAMES_PER_LATENT:
            problems.append(
                "temperal_downsample must halve time exactly twice: the causal chunking "
                f"(1, 4, 4, ... frames) assumes a temporal stride of {FRAMES_PER_LATENT}"
            )
        if self.attn_scales:
            problems.append(
                "attn_scales must be empty: the reference cannot run attention blocks "
                "inside the cached down/up paths"
            )
        if problems:
            raise ConfigError("VAEConfig: " + "; ".join(problems))

    @property
    def spatial_stride(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)

    @classmethod
    def from_official(cls, d: dict) -> VAEConfig:
        """From the reference's `WanVAE_(**cfg)` keyword dict (lists become tuples)."""
        check_config_keys(cls, d)
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kw)


# mtlib's own copies (library code never reads the golden directory).
CONFIGS: dict[str, VAEConfig] = {
    "tiny": VAEConfig(dim=8),
    "multitalk-14b": VAEConfig(dim=96),
}


# ------------------------------------------------------------------------------------------
# Chunk-to-chunk memory


class CausalCache:
    """What the causal layers remember from the chunks already processed of one video.

    One entry per layer (keyed by the module itself):
    * a CausalConv3d with temporal kernel 3: the last 2 frames of its input (fewer on the
      very first chunk), prepended to the next chunk instead of zero padding;
    * a temporal downsampler: the last spatially downsampled frame;
    * a temporal upsampler: only the fact that it has seen the first latent frame.
    A fresh cache is made for every encode / decode call, so videos never leak into each other.
    """

    def __init__(self):
        self._entries: dict[nn.Module, torch.Tensor | bool] = {}

    def get(self, layer: nn.Module):
        return self._entries.get(layer)

    def put(self, layer: nn.Module, value) -> None:
        self._entries[layer] = value


# ------------------------------------------------------------------------------------------
# Building blocks


class CausalConv3d(nn.Conv3d):
    """Conv3d padded causally in time: `2 * padding_t` frames in front, none behind.

    With a cache, the frames remembered from the previous chunk replace (part of) that front
    padding, so a clip processed in chunks equals a causal convolution over the whole clip.
    """

    def __init__(self, in_dim: int, out_dim: int, kernel_size, stride=1, padding=0):
        pad_t, pad_h, pad_w = (padding,) * 3 if isinstance(padding, int) else padding
        # Spatial zero padding is left to the convolution itself (no padded copy).
        super().__init__(in_dim, out_dim, kernel_size, stride=stride, padding=(0, pad_h, pad_w))
        self.front_pad = 2 * pad_t  # frames of history this convolution looks back

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        # x: [B, C_in, t, H, W]
        front = self.front_pad
        if front and cache is not None:
            past = cache.get(self)  # [B, C_in, <=2, H, W] or None on the first chunk
            if past is not None:
                x = torch.cat([past, x], dim=2)
                front -= past.shape[2]
            # clone: a view would keep the whole concatenated chunk alive
            cache.put(self, x[:, :, -self.front_pad :].clone())
        if front:
            x = F.pad(x, (0, 0, 0, 0, front, 0))
        return super().forward(x)


class RMSNorm(nn.Module):
    """L2 normalisation over channels times sqrt(C) * gamma (the reference `RMS_norm`)."""

    def __init__(self, dim: int, spatial_dims: int):
        super().__init__()
        self.scale = dim**0.5
        # [C, 1, 1, 1] for 5-D video tensors, [C, 1, 1] for per-frame images (attention)
        self.gamma = nn.Parameter(torch.ones(dim, *(1,) * spatial_dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma


def _per_frame(fn, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2-D image op to every frame: [B, C, t, H, W] -> [B, C', t, H', W']."""
    b, c, t, h, w = x.shape
    y = fn(x.transpose(1, 2).reshape(b * t, c, h, w))  # [B*t, C', H', W']
    return y.reshape(b, t, *y.shape[1:]).transpose(1, 2)


class ResidualBlock(nn.Module):
    """[RMSNorm, SiLU, conv3, RMSNorm, SiLU, Dropout, conv3] + (1x1x1 conv | identity)."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0):
        super().__init__()
        # Sequential only for the official key layout residual.{0,2,3,6}.
        self.residual = nn.Sequential(
            RMSNorm(in_dim, 3),
            nn.SiLU(),
            CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim, 3),
            nn.SiLU(),
            nn.Dropout(dropout),
            CausalConv3d(out_dim, out_dim, 3, padding=1),
        )
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        # x: [B, C_in, t, H, W] -> [B, C_out, t, H, W]
        norm1, act1, conv1, norm2, act2, dropout, conv2 = self.residual
        skip = self.shortcut(x)
        x = conv1(act1(norm1(x)), cache)
        x = conv2(dropout(act2(norm2(x))), cache)
        return x + skip


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H*W positions of each frame (no temporal mixing)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim, 2)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        # x: [N, C, H, W] with N = B * t
        n, c, h, w = x.shape
        qkv = self.to_qkv(self.norm(x))  # [N, 3C, H, W]
        qkv = qkv.reshape(n, 1, 3 * c, h * w).transpose(2, 3)  # [N, 1, HW, 3C]
        q, k, v = qkv.chunk(3, dim=-1)  # each [N, 1, HW, C]
        out = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(C)
        out = out.squeeze(1).transpose(1, 2).reshape(n, c, h, w)
        return self.proj(out)

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        return x + _per_frame(self._attend, x)


class _NearestUpsample2x(nn.Module):
    """x2 nearest-exact upsampling, computed in fp32 as the reference does (bf16 support)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x.float(), scale_factor=2.0, mode="nearest-exact").type_as(x)


class Resample(nn.Module):
    """Spatial x2 down/up-sampling per frame, optionally with a causal temporal x2.

    modes: downsample2d, downsample3d (encoder), upsample2d, upsample3d (decoder). The
    spatial op is `resample.1` (Conv2d); the temporal op is `time_conv`.
    """

    def __init__(self, dim: int, mode: str):
        super().__init__()
        self.mode = mode
        if mode in ("upsample2d", "upsample3d"):
            # the upsampler halves the channels: [C] -> [C/2]
            self.resample = nn.Sequential(
                _NearestUpsample2x(), nn.Conv2d(dim, dim // 2, 3, padding=1)
            )
        elif mode in ("downsample2d", "downsample3d"):
            # pad right/bottom only, then stride 2: H -> H/2 for even H
            self.resample = nn.Sequential(
                nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2)
            )
        else:
            raise ValueError(f"Resample: unknown mode {mode!r}")
        if mode == "upsample3d":
            # 2C outputs = two output frames per input frame
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            # no padding: fed [last frame of previous chunk ; chunk], stride 2
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        if self.mode == "upsample3d":
            x = self._upsample_time(x, cache)
        x = _per_frame(self.resample, x)
        if self.mode == "downsample3d":
            x = self._downsample_time(x, cache)
        return x

    def _upsample_time(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        # x: [B, C, t, h, w] -> [B, C, 2t, h, w]
        if cache.get(self) is None:
            # The first latent frame stays a single frame and is never part of the
            # time_conv history: the next call starts from zero padding (reference "Rep").
            cache.put(self, True)
            return x
        b, c, t, h, w = x.shape
        x = self.time_conv(x, cache)  # [B, 2C, t, h, w]
        # channel half j of input frame i becomes output frame 2i + j
        return x.reshape(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)

    def _downsample_time(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        # x: [B, C, t, h, w] -> [B, C, t/2, h, w] (first chunk: t = 1 stays 1)
        previous = cache.get(self)  # [B, C, 1, h, w] or None on the first chunk
        cache.put(self, x[:, :, -1:].clone())
        if previous is None:
            return x
        return self.time_conv(torch.cat([previous, x], dim=2))


def _head(dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(RMSNorm(dim, 3), nn.SiLU(), CausalConv3d(dim, out_dim, 3, padding=1))


def _run_head(head: nn.Sequential, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
    norm, act, conv = head
    return conv(act(norm(x)), cache)


class Encoder3d(nn.Module):
    """Video chunk [B, 3, t, H, W] -> [B, 2*z_dim, t', H/8, W/8] (mu | logvar)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        dims = [cfg.dim * m for m in (1, *cfg.dim_mult)]  # 96, 96, 192, 384, 384
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        blocks: list[nn.Module] = []
        for level, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResidualBlock(in_dim, out_dim, cfg.dropout))
                in_dim = out_dim
            if level < len(cfg.dim_mult) - 1:
                mode = "downsample3d" if cfg.temperal_downsample[level] else "downsample2d"
                blocks.append(Resample(out_dim, mode))
        self.downsamples = nn.Sequential(*blocks)
        width = dims[-1]
        self.middle = nn.Sequential(
            ResidualBlock(width, width, cfg.dropout),
            AttentionBlock(width),
            ResidualBlock(width, width, cfg.dropout),
        )
        self.head = _head(width, 2 * cfg.z_dim)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        x = self.conv1(x, cache)
        for block in (*self.downsamples, *self.middle):
            x = block(x, cache)
        return _run_head(self.head, x, cache)


class Decoder3d(nn.Module):
    """Latent frame(s) [B, z_dim, t, h, w] -> video [B, 3, t', 8h, 8w]."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        mults = cfg.dim_mult[::-1]
        dims = [cfg.dim * m for m in (mults[0], *mults)]  # 384, 384, 384, 192, 96
        temperal_upsample = cfg.temperal_downsample[::-1]
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = nn.Sequential(
            ResidualBlock(dims[0], dims[0], cfg.dropout),
            AttentionBlock(dims[0]),
            ResidualBlock(dims[0], dims[0], cfg.dropout),
        )
        blocks: list[nn.Module] = []
        in_dim = dims[0]
        for level, out_dim in enumerate(dims[1:]):
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResidualBlock(in_dim, out_dim, cfg.dropout))
                in_dim = out_dim
            if level < len(cfg.dim_mult) - 1:
                mode = "upsample3d" if temperal_upsample[level] else "upsample2d"
                blocks.append(Resample(out_dim, mode))
                in_dim = out_dim // 2  # the upsampler halves the channels
        self.upsamples = nn.Sequential(*blocks)
        self.head = _head(dims[-1], 3)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        x = self.conv1(x, cache)
        for block in (*self.middle, *self.upsamples):
            x = block(x, cache)
        return _run_head(self.head, x, cache)


# ------------------------------------------------------------------------------------------
# The VAE


class CausalVAE(nn.Module):
    """Wan2.1's causal video VAE (`WanVAE_` key layout): encode / decode with chunk caches.

    Runs in the dtype of its weights (fp32 by default) or under torch.autocast; encode and
    decode always return float32.
    """

    def __init__(self, config: VAEConfig = CONFIGS["multitalk-14b"]):
        super().__init__()
        self.config = config
        z = config.z_dim
        self.encoder = Encoder3d(config)
        self.conv1 = CausalConv3d(2 * z, 2 * z, 1)  # on encoder output: mu | logvar
        self.conv2 = CausalConv3d(z, z, 1)  # on the latent, before the decoder
        self.decoder = Decoder3d(config)

    def _latent_stats(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        # [1, z, 1, 1, 1] each; 1/std is formed first, as in the reference (bitwise parity)
        mean = torch.tensor(LATENT_MEAN, dtype=torch.float32).view(1, -1, 1, 1, 1)
        inv_std = 1.0 / torch.tensor(LATENT_STD, dtype=torch.float32).view(1, -1, 1, 1, 1)
        return mean.to(device), inv_std.to(device)

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """video [B, 3, F, H, W] in [-1, 1], F = 4n+1 -> normalised latent mu
        [B, z_dim, n+1, H/8, W/8] float32 ((mu - mean) / std; logvar is discarded)."""
        b, _, num_frames, h, w = self.check_video(video)
        stride = self.config.spatial_stride
        num_latents = 1 + (num_frames - 1) // FRAMES_PER_LATENT
        if trace.active():
            trace.point("vae.encode.in", video)
        z = self.config.z_dim
        mu = torch.empty(b, z, num_latents, h // stride, w // stride, device=video.device)
        video = video.to(self.conv1.weight.dtype)  # e.g. fp32 pixels into bf16 weights
        cache = CausalCache()
        for k in range(num_latents):
            # chunk k: frame 0 alone, then frames [1 + 4(k-1), 1 + 4k)
            start = 0 if k == 0 else 1 + FRAMES_PER_LATENT * (k - 1)
            stop = 1 + FRAMES_PER_LATENT * k
            features = self.encoder(video[:, :, start:stop], cache)  # [B, 2z, 1, h, w]
            if trace.active():
                trace.point(f"vae.encode.encoder_chunk{k}", features)
            mu[:, :, k : k + 1] = self.conv1(features)[:, :z]
        mean, inv_std = self._latent_stats(mu.device)
        latent = (mu - mean) * inv_std  # [B, z, T, h, w]
        if trace.active():
            trace.point("vae.y", latent)
        return latent

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Normalised latent [B, z_dim, T, h, w] or [z_dim, T, h, w] -> video
        [B, 3, 4(T-1)+1, 8h, 8w] float32 clamped to [-1, 1]."""
        if trace.active():
            trace.point("vae.decode.in", latent)  # as given (the reference takes [z, T, h, w])
        if latent.dim() == 4:
            latent = latent.unsqueeze(0)
        b, _, num_latents, h, w = self.check_latent(latent)
        stride = self.config.spatial_stride
        mean, inv_std = self._latent_stats(latent.device)
        latent = latent.float() / inv_std + mean  # [B, z, T, h, w], un-normalised
        x = self.conv2(latent.to(self.conv2.weight.dtype))  # [B, z, T, h, w]
        num_frames = 1 + FRAMES_PER_LATENT * (num_latents - 1)
        video = torch.empty(b, 3, num_frames, h * stride, w * stride, device=latent.device)
        cache = CausalCache()
        start = 0
        for k in range(num_latents):
            frames = self.decoder(x[:, :, k : k + 1], cache)  # [B, 3, 1 (k=0) or 4, H, W]
            if trace.active():
                trace.point(f"vae.decode.decoder_chunk{k}", frames)
            video[:, :, start : start + frames.shape[2]] = frames
            start += frames.shape[2]
        video.clamp_(-1.0, 1.0)
        if trace.active():
            trace.point("vae.decode.out", video)
        return video

    def check_video(self, video: torch.Tensor) -> tuple[int, int, int, int, int]:
        """Shape rules of `encode`, checked before any compute."""
        if video.dim() != 5 or video.shape[1] != 3:
            raise InputError(
                f"VAE encode: video must be [B, 3, F, H, W] (RGB in [-1, 1]), got shape "
                f"{list(video.shape)}. Fix: add the batch axis / put channels first."
            )
        b, _, num_frames, h, w = video.shape
        if num_frames < 1 or (num_frames - 1) % FRAMES_PER_LATENT:
            lower = 1 + FRAMES_PER_LATENT * ((num_frames - 1) // FRAMES_PER_LATENT)
            raise InputError(
                f"VAE encode: video has {num_frames} frames, but the causal VAE encodes 4n+1 "
                f"frames (1, 5, 9, ..., 81); the official code silently drops the last "
                f"{num_frames - lower} frame(s). Fix: pass {lower} or {lower + FRAMES_PER_LATENT} "
                "frames (trim, or pad with zeros as the pipeline does)."
            )
        stride = self.config.spatial_stride
        if h % stride or w % stride:
            raise InputError(
                f"VAE encode: frame size {h}x{w} (HxW) is not a multiple of {stride}; latents are "
                f"{stride}x smaller. Fix: resize/crop to a multiple of {stride} (e.g. a bucket size)."
            )
        return b, 3, num_frames, h, w

    def check_latent(self, latent: torch.Tensor) -> tuple[int, int, int, int, int]:
        z = self.config.z_dim
        if latent.dim() != 5 or latent.shape[1] != z or latent.shape[2] < 1:
            raise InputError(
                f"VAE decode: latent must be [B, {z}, T, h, w] or [{z}, T, h, w] with T >= 1, "
                f"got shape {list(latent.shape)}."
            )
        return tuple(latent.shape)


# ------------------------------------------------------------------------------------------
# Loading the official checkpoint

_CONV1_KEY = "encoder.conv1.weight"  # [dim, 3, 3, 3, 3]
_CONV2_KEY = "conv2.weight"  # [z_dim, z_dim, 1, 1, 1]


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a `.pth` (weights only, memory-mapped when possible) or `.safetensors` file."""
    return read_checkpoint(
        path, "VAE", fix="pass Wan2.1_VAE.pth as published, or a .safetensors with the same keys."
    )


def _refuse_other_models(state: dict[str, torch.Tensor], where: str) -> None:
    """Recognise checkpoints that are not a Wan2.1 VAE before matching keys one by one."""
    if _CONV1_KEY not in state or _CONV2_KEY not in state:
        first = sorted(state)[:5]
        raise InputError(
            f"{where}: not a Wan2.1 VAE checkpoint: it has no {_CONV1_KEY!r} / {_CONV2_KEY!r} "
            f"(first keys: {first}). Fix: pass Wan2.1_VAE.pth from Wan-AI/Wan2.1-I2V-14B-480P."
        )
    z_dim = state[_CONV2_KEY].shape[0]
    in_channels = state[_CONV1_KEY].shape[1]
    if z_dim != len(LATENT_MEAN) or in_channels != 3:
        guess = " It looks like the Wan2.2 VAE (Wan2.2_VAE.pth, z_dim 48)." if z_dim == 48 else ""
        raise InputError(
            f"{where}: not a Wan2.1 VAE: latent channels {z_dim} and input channels "
            f"{in_channels} (Wan2.1: {len(LATENT_MEAN)} and 3).{guess} MultiTalk needs the Wan2.1 "
            "VAE. Fix: pass Wan2.1_VAE.pth from Wan-AI/Wan2.1-I2V-14B-480P."
        )


def infer_config(state: dict[str, torch.Tensor]) -> VAEConfig:
    """The config of a Wan2.1 VAE state dict: dim from encoder.conv1.weight [dim, 3, 3, 3, 3];
    the rest is fixed by the architecture (checked afterwards key by key)."""
    _refuse_other_models(state, "VAE checkpoint")
    return VAEConfig(dim=int(state[_CONV1_KEY].shape[0]), z_dim=int(state[_CONV2_KEY].shape[0]))


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """One error naming every missing, unexpected and mis-shaped key."""
    diff = state_diff(shapes_of(model.state_dict()), shapes_of(state))
    if diff:
        raise CheckpointError(
            f"{where}: does not match the Wan2.1 VAE (dim {model.config.dim}): {diff.describe(limit=20)}. "
            "Fix: pass an unmodified Wan2.1_VAE.pth, or the config it was trained with."
        )


def load_vae(
    path: str | os.PathLike,
    config: VAEConfig | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> CausalVAE:
    """Load `Wan2.1_VAE.pth` (or a .safetensors with its keys) into an eval-mode CausalVAE.

    The model is built on the meta device and takes the checkpoint tensors over (no second
    copy of the weights). `config=None` infers it from the checkpoint shapes.
    """
    where = f"VAE checkpoint {str(Path(path))!r}"
    state = read_state_dict(path)
    _refuse_other_models(state, where)
    if config is None:
        config = infer_config(state)
    with torch.device("meta"):
        model = CausalVAE(config)
    check_state_dict(model, state, where)
    state = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    model.load_state_dict(state, assign=True)
    return model.eval().requires_grad_(False)
