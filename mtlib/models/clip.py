"""CLIP image encoder: the visual tower of open-clip XLM-RoBERTa ViT-H/14.

Where it sits: once per clip the pipeline hands the conditioning frames (already bucketed,
cropped and scaled to [-1, 1]) to `encode_image`; its output `clip_fea` [1, 257, 1280] feeds
the DiT's image cross-attention (`img_emb`). Only the LAST conditioning frame is seen: the
reference image in the first clip, the last motion frame in later streaming clips.

What runs (multitalk-facts §5, golden README §2.3): bicubic resize to image_size² (no
antialias, aspect ratio not kept), x*0.5+0.5, CLIP mean/std normalisation, patch conv (no
bias), cls token, position embedding, `pre_norm`, then every transformer block EXCEPT the
last (`use_31_block=True`). No post_norm, no head: the output is the residual stream.

The published checkpoint `models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth` holds the
whole XLMRobertaCLIP (visual.*, textual.* and log_scale). `XLMRobertaCLIP` here reproduces
that key layout exactly so the file loads strictly; the text tower (`TextTower`) is a
parameter container only, with no forward, because MultiTalk never encodes text with CLIP.
`load_clip(..., visual_only=True)` skips the text tower and log_scale altogether.

The checked checkpoint reader and key check live in checkpoint.py (`read_state_dict`,
`assign_state_dict`): one error naming every missing, unexpected and mis-shaped key.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mtlib import trace
from mtlib.io import InputError
from mtlib.models.checkpoint import (
    assign_state_dict,
    check_config_keys,
    config_label,
    pick_config,
    read_state_dict,
)

# ImageNet-style statistics the open-clip ViT-H/14 was trained with.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

PRECISIONS = ("fp32", "reference")



@dataclass(frozen=True)
class CLIPConfig:
    # vision tower: the only part MultiTalk runs
    image_size: int = 224  # square input side after the bicubic resize
    patch_size: int = 14  # conv stride = kernel; image_size / patch_size = 16 patches a side
    vision_dim: int = 1280  # residual width = clip_fea channels seen by the DiT
    vision_heads: int = 16  # head dim 80
    vision_layers: int = 32  # blocks in the checkpoint; the last one is never run
    vision_mlp_ratio: int = 4  # MLP hidden = 4 * vision_dim, exact (erf) GELU
    embed_dim: int = 1024  # joint embedding width: only shapes visual.head and textual.head
    # text tower (XLM-R large): in the checkpoint, never run by MultiTalk
    vocab_size: int = 250002  # XLM-R sentencepiece vocabulary
    max_text_len: int = 514  # rows of the learned position table (512 + 2 offset rows)
    type_size: int = 1  # token-type rows
    pad_id: int = 1  # XLM-R <pad>
    text_dim: int = 1024
    text_heads: int = 16
    text_layers: int = 24
    text_post_norm: bool = True  # XLM-R is post-norm; kept for from_official round trips
    norm_eps: float = 1e-5  # every LayerNorm of both towers

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"CLIPConfig: image_size {self.image_size} must be a multiple of patch_size "
                f"{self.patch_size} (the patch grid must tile the image)"
            )
        if self.vision_dim % self.vision_heads:
            raise ValueError(
                f"CLIPConfig: vision_dim {self.vision_dim} must be divisible by vision_heads "
                f"{self.vision_heads}"
            )
        if self.text_dim % self.text_heads:
            raise ValueError(
                f"CLIPConfig: text_dim {self.text_dim} must be divisible by text_heads {self.text_heads}"
            )
        if self.vision_layers < 2:
            raise ValueError(
                f"CLIPConfig: vision_layers {self.vision_layers} must be >= 2 (the last block is skipped)"
            )

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_tokens(self) -> int:  # patches + cls = 257 for ViT-H/14 at 224
        return self.num_patches + 1

    @classmethod
    def from_official(cls, d: dict) -> CLIPConfig:
        """From the kwargs of the official `clip_xlm_roberta_vit_h_14` / XLMRobertaCLIP.

        Dropout rates are ignored (inference). Options that change the architecture away from
        the one MultiTalk uses are refused rather than silently dropped.
        """
        d = dict(d)
        fixed = {
            "vision_pool": "token",
            "activation": "gelu",
            "vision_pre_norm": True,
            "vision_post_norm": False,
        }
        for key, want in fixed.items():
            if key in d and d.pop(key) != want:
                raise ValueError(f"CLIPConfig.from_official: only {key}={want!r} is supported")
        for key in ("text_dropout", "attn_dropout", "proj_dropout", "embedding_dropout"):
            d.pop(key, None)
        check_config_keys(cls, d)
        return cls(**d)


# mtlib's own copies (the golden tiny_configs.json is only read by tests).
CONFIGS: dict[str, CLIPConfig] = {
    "tiny": CLIPConfig(
        image_size=32,
        patch_size=2,
        vision_dim=80,
        vision_heads=5,
        vision_layers=3,
        vision_mlp_ratio=4,
        embed_dim=24,
        vocab_size=100,
        max_text_len=514,
        type_size=1,
        pad_id=1,
        text_dim=16,
        text_heads=2,
        text_layers=1,
    ),
    "multitalk-14b": CLIPConfig(),
}


def get_config(config: CLIPConfig | str | None) -> CLIPConfig:
    return pick_config(config, CONFIGS, "CLIP")


# --------------------------------------------------------------------------- vision tower


class LayerNormFP32(nn.LayerNorm):
    """LayerNorm whose statistics and affine run in fp32 whatever the weight dtype (the
    official fp16 path normalises in fp32 and casts back to the stream dtype)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        with torch.autocast(x.device.type, enabled=False):
            y = F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps)
        return y.to(x.dtype)


class VisionAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.to_qkv = nn.Linear(dim, 3 * dim)  # rows [q | k | v], each head-major
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, c = x.shape  # [B, L, C]
        n = self.num_heads
        q, k, v = self.to_qkv(x).view(b, s, 3, n, c // n).permute(2, 0, 3, 1, 4)  # 3 x [B, n, L, d]
        x = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(d), no mask
        return self.proj(x.transpose(1, 2).reshape(b, s, c))


class VisionBlock(nn.Module):
    """Pre-norm transformer block; `mlp` keeps the official Sequential indices 0 and 2."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int, eps: float):
        super().__init__()
        self.norm1 = LayerNormFP32(dim, eps=eps)
        self.attn = VisionAttention(dim, num_heads)
        self.norm2 = LayerNormFP32(dim, eps=eps)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        dim = cfg.vision_dim
        self.patch_embedding = nn.Conv2d(3, dim, cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.cls_embedding = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.zeros(1, cfg.num_tokens, dim))
        self.pre_norm = LayerNormFP32(dim, eps=cfg.norm_eps)
        self.transformer = nn.Sequential(
            *[
                VisionBlock(dim, cfg.vision_heads, cfg.vision_mlp_ratio, cfg.norm_eps)
                for _ in range(cfg.vision_layers)
            ]
        )
        # In the checkpoint, unused by MultiTalk (features are taken before them).
        self.post_norm = LayerNormFP32(dim, eps=cfg.norm_eps)
        self.head = nn.Parameter(torch.zeros(dim, cfg.embed_dim))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, 3, S, S] normalised -> residual stream after the second-to-last block
        [B, num_tokens, vision_dim]."""
        x = pixels.to(self.patch_embedding.weight.dtype)
        x = self.patch_embedding(x).flatten(2).transpose(1, 2)  # [B, num_patches, C]
        x = torch.cat([self.cls_embedding.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        x = self.pre_norm(x + self.pos_embedding.to(x.dtype))  # [B, num_tokens, C]
        for block in self.transformer[:-1]:  # use_31_block: the last block is skipped
            x = block(x)
        return x


# ------------------------------------------------------------------ text tower (no forward)


class TextAttention(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)


class TextBlock(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.attn = TextAttention(dim)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.ffn = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.norm2 = nn.LayerNorm(dim, eps=eps)


class TextTower(nn.Module):
    """XLM-RoBERTa large + projection head, as parameter containers only.

    It exists so the published checkpoint loads strictly and so manifests can be checked;
    MultiTalk never encodes text with CLIP, hence there is deliberately no forward.
    """

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        dim = cfg.text_dim
        self.token_embedding = nn.Embedding(cfg.vocab_size, dim)
        self.type_embedding = nn.Embedding(cfg.type_size, dim)
        self.pos_embedding = nn.Embedding(cfg.max_text_len, dim)
        self.norm = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.blocks = nn.ModuleList([TextBlock(dim, cfg.norm_eps) for _ in range(cfg.text_layers)])
        mid = (dim + cfg.embed_dim) // 2
        self.head = nn.Sequential(
            nn.Linear(dim, mid, bias=False), nn.GELU(), nn.Linear(mid, cfg.embed_dim, bias=False)
        )

    def forward(self, *args, **kwargs):
        raise NotImplementedError(
            "mtlib's CLIP text tower holds weights only; MultiTalk uses the visual tower"
        )


# ----------------------------------------------------------------------------- the model


class XLMRobertaCLIP(nn.Module):
    """State-dict twin of the official XLMRobertaCLIP; `encode_image` is its only computation.

    with_text_tower=False builds `visual` alone (no textual.*, no log_scale).
    precision: "fp32", or "reference" = the official GPU numerics (fp16 weights, fp16
    autocast, LayerNorm in fp32); on CPU "reference" runs fp32, as the official code does.
    """

    def __init__(self, config: CLIPConfig | str | None = None, with_text_tower: bool = True):
        super().__init__()
        self.config = cfg = get_config(config)
        self.visual = VisionTransformer(cfg)
        if with_text_tower:
            self.textual = TextTower(cfg)
            self.log_scale = nn.Parameter(torch.zeros([]))
        self.precision = "fp32"

    def set_precision(self, precision: str) -> XLMRobertaCLIP:
        """Cast the parameters for `precision` (see class docstring); returns self."""
        if precision not in PRECISIONS:
            raise ValueError(f"CLIP precision {precision!r}: expected one of {PRECISIONS}")
        self.precision = precision
        dtype = torch.float16 if self._half() else torch.float32
        for p in self.parameters():
            p.data = p.data.to(dtype)
        return self

    def _half(self) -> bool:
        return (
            self.precision == "reference"
            and self.visual.patch_embedding.weight.device.type == "cuda"
        )

    def preprocess(self, cond: torch.Tensor) -> torch.Tensor:
        """cond [B, 3, F, H, W] in [-1, 1] -> normalised pixels [B, 3, S, S] (fp32) of the
        last frame."""
        if cond.ndim != 5 or cond.shape[1] != 3:
            raise InputError(
                f"CLIP input cond: shape {tuple(cond.shape)} is not [B, 3, F, H, W]. "
                "Fix: pass the conditioning frames as [1, 3, n_frames, H, W] in [-1, 1]."
            )
        if not cond.is_floating_point():
            raise InputError(
                f"CLIP input cond: dtype {cond.dtype} is not floating point. Fix: scale u8 to [-1, 1]."
            )
        s = self.config.image_size
        device = self.visual.patch_embedding.weight.device
        x = cond[:, :, -1].to(device, torch.float32)  # [B, 3, H, W]
        x = F.interpolate(x, size=(s, s), mode="bicubic", align_corners=False)
        x = x * 0.5 + 0.5  # back to [0, 1] before the CLIP statistics
        # statistics stay fp32 (not buffers, which a half-precision .to() would round)
        mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1)
        return (x - mean) / std  # [B, 3, S, S]

    @torch.no_grad()
    def encode_image(self, cond: torch.Tensor) -> torch.Tensor:
        """cond [B, 3, F, H, W] in [-1, 1] -> clip_fea [B, num_tokens, vision_dim].

        Uses cond[:, :, -1:] only. Dtype: fp32, or fp16 under "reference" on CUDA (the
        pipeline casts it for the DiT).
        """
        if trace.active():
            trace.point("clip.input", cond)
        pixels = self.preprocess(cond)
        if trace.active():
            trace.point("clip.pixels", pixels)
        half = self._half()
        with torch.autocast("cuda", dtype=torch.float16, enabled=half):
            out = self.visual(pixels)  # [B, 257, C]
        if trace.active():
            trace.point("clip.out", out)
        return out

    forward = encode_image


# ------------------------------------------------------------------------ checkpoint I/O


def load_clip(
    path,
    config: CLIPConfig | str | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    visual_only: bool = False,
) -> XLMRobertaCLIP:
    """Build XLMRobertaCLIP on the meta device and load `path` into it strictly.

    path: the official `models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth` or a
    .safetensors with the same keys. config: a CLIPConfig or a CONFIGS name (default the
    real ViT-H/14). visual_only=True builds and loads visual.* only: textual.* and
    log_scale (about half the file) are neither checked nor kept in memory.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"CLIP precision {precision!r}: expected one of {PRECISIONS}")
    cfg = get_config(config)
    with torch.device("meta"):
        model = XLMRobertaCLIP(cfg, with_text_tower=not visual_only)
    keep = (lambda k: k.startswith("visual.")) if visual_only else None
    sd = read_state_dict(path, "CLIP", keep)
    assign_state_dict(model, sd, "CLIP", repr(str(path)), config_label(cfg, CONFIGS))
    dev = torch.device(device)
    dtype = torch.float16 if precision == "reference" and dev.type == "cuda" else torch.float32
    model = (
        model.to(device=dev, dtype=dtype).eval().requires_grad_(False)
    )  # one cast, no fp32 detour
    return model.set_precision(precision)
