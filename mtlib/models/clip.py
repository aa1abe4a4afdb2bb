"""CLIP image encoder: the visual tower of open-clip XLM-RoBERTa ViT-H/14.

Where it sits: once per clip the pipeline hands the conditioning frames (already bucketed,
cropped and scaled to [-1, 1]) to `encode_image`; its output `clip_fea` [1, 257, 1280] feeds
the DiT's image cross-attention (`img_emb`). Only the LAST conditioning frame is seen: the
reference image in the first clip, the last motion frame in later streaming clips.

What runs (multitalk-facts §5, golden README §2.3): bicubic resize to image_size² (no
antialias, aspect ratio not kept), x*0.5+0.5, CLIP mean/std normalisation, patch conv (no
bias), cls token, position embedding, `pre_norm`, then every transformer block EXCEPT the
last (`use_31_block=True`). No post_norm, no head: the output is the residual stream.

The vision tower is transformers' `CLIPVisionModel` (same numerics: pre-norm ViT, exact GELU,
scaled dot-product attention, LayerNorm eps 1e-5), loaded from the official key layout through
a key map (to_qkv is split into q/k/v_proj; cls/pos embeddings are reshaped). Its forward runs
through clip_fastpath (same numbers, one q/k/v projection per layer, fewer launches);
`fast=False` runs transformers' own forward. The published
checkpoint `models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth` holds the whole
XLMRobertaCLIP (visual.*, textual.* and log_scale): `XLMRobertaCLIP.state_dict()` speaks those
keys so the file loads strictly; the text tower (`TextTower`) is a parameter container only,
with no forward, because MultiTalk never encodes text with CLIP.
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
from mtlib.models import clip_fastpath
from mtlib.models.checkpoint import (
    KeyMap,
    assign_state_dict,
    check_config_keys,
    config_label,
    pick_config,
    read_state_dict,
)
from mtlib.spec import torch_dtype

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

# official `visual.*` key (prefix dropped) -> transformers CLIP vision key (prefix dropped).
# Not listed: cls_embedding / pos_embedding (reshaped), transformer.{i}.attn.to_qkv (split into
# q/k/v_proj), head (a plain parameter of ours: the image projection MultiTalk never runs).
_VISUAL_KEYS = KeyMap([
    ("patch_embedding.weight", "embeddings.patch_embedding.weight"),
    ("cls_embedding", "embeddings.class_embedding"),
    ("pos_embedding", "embeddings.position_embedding.weight"),
    ("pre_norm.{x}", "pre_layrnorm.{x}"),
    ("post_norm.{x}", "post_layernorm.{x}"),
    ("transformer.{i}.norm1.{x}", "encoder.layers.{i}.layer_norm1.{x}"),
    ("transformer.{i}.norm2.{x}", "encoder.layers.{i}.layer_norm2.{x}"),
    ("transformer.{i}.attn.proj.{x}", "encoder.layers.{i}.self_attn.out_proj.{x}"),
    ("transformer.{i}.mlp.0.{x}", "encoder.layers.{i}.mlp.fc1.{x}"),
    ("transformer.{i}.mlp.2.{x}", "encoder.layers.{i}.mlp.fc2.{x}"),
])  # fmt: skip


def clip_vision_config(cfg: CLIPConfig, num_layers: int):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=cfg.vision_dim, intermediate_size=cfg.vision_mlp_ratio * cfg.vision_dim,
        num_hidden_layers=num_layers, num_attention_heads=cfg.vision_heads,
        image_size=cfg.image_size, patch_size=cfg.patch_size, num_channels=3,
        hidden_act="gelu", layer_norm_eps=cfg.norm_eps, projection_dim=cfg.embed_dim,
        attention_dropout=0.0,
    )  # fmt: skip


def _keep_input_dtype(module, args, out):
    return out.to(args[0].dtype)


class VisionTransformer(nn.Module):
    """The official visual tower on transformers' `CLIPVisionModel` (`.hf`, sdpa attention).

    `use_31_block`: the reference runs every block but the last, without post_norm. `.hf` is
    built with vision_layers - 1 layers (its last_hidden_state is exactly that: transformers
    applies post_layernorm to the pooled token only); the last block's weights sit in
    `.skipped` (a transformers CLIPEncoderLayer that never runs) so the file loads strictly.
    """

    def __init__(self, cfg: CLIPConfig, fast: bool = True):
        """fast: clip_fastpath's forward on transformers' model (one q/k/v projection per
        layer, no autocast casts); False runs transformers' forward exactly as it ships."""
        super().__init__()
        from transformers import CLIPVisionModel
        from transformers.models.clip.modeling_clip import CLIPEncoderLayer

        self.config = cfg
        self.fast = fast
        hf_cfg = clip_vision_config(cfg, cfg.vision_layers - 1)
        self.hf = CLIPVisionModel._from_config(hf_cfg, attn_implementation="sdpa")
        self.skipped = CLIPEncoderLayer(hf_cfg)
        self.head = nn.Parameter(torch.zeros(cfg.vision_dim, cfg.embed_dim))
        inner = getattr(self.hf, "vision_model", self.hf)  # transformers 5 dropped the level
        self._hf_prefix = "hf." + ("vision_model." if inner is not self.hf else "")
        # The reference's LayerNorm returns the input dtype (fp16 under autocast); torch's
        # autocast LayerNorm returns fp32, which would turn the whole residual stream fp32.
        inner.pre_layrnorm.register_forward_hook(_keep_input_dtype)  # a function: pickles

    def _apply(self, *args, **kwargs):  # .to() / .half() replace the q/k/v parameters
        clip_fastpath.release(self.hf)
        return super()._apply(*args, **kwargs)

    def official_state(self, native: dict) -> dict:
        """Native (transformers) keys, prefix-free -> the official visual keys."""
        last = self.config.vision_layers - 1
        out, qkv = {}, {}
        for k, v in native.items():
            if k.startswith(self._hf_prefix):
                k = k[len(self._hf_prefix) :]
            elif k.startswith("skipped."):
                k = f"encoder.layers.{last}." + k[len("skipped.") :]
            elif k == "head":
                out[k] = v
                continue
            if ".self_attn." in k and k.rsplit(".", 2)[-2] in ("q_proj", "k_proj", "v_proj"):
                layer, proj, kind = k.split(".")[2], k.rsplit(".", 2)[-2], k.rsplit(".", 1)[-1]
                qkv.setdefault((int(layer), kind), {})[proj] = v
                continue
            official = _VISUAL_KEYS.to_checkpoint(k)
            if official == "cls_embedding":
                v = v.reshape(1, 1, -1)
            elif official == "pos_embedding":
                v = v.unsqueeze(0)
            out[official] = v
        for (i, kind), parts in sorted(
            qkv.items()
        ):  # rows [q | k | v], as the reference packs them
            out[f"transformer.{i}.attn.to_qkv.{kind}"] = torch.cat(
                [parts["q_proj"], parts["k_proj"], parts["v_proj"]]
            )
        return out

    def native_state(self, official: dict) -> dict:
        """The official visual keys -> native keys (the inverse of official_state)."""
        last = self.config.vision_layers - 1
        out = {}
        for k, v in official.items():
            if k == "head":
                out[k] = v
                continue
            parts = k.split(".")
            if k.endswith((".to_qkv.weight", ".to_qkv.bias")):
                for proj, chunk in zip(("q_proj", "k_proj", "v_proj"), v.chunk(3), strict=True):
                    out[f"encoder.layers.{parts[1]}.self_attn.{proj}.{parts[-1]}"] = chunk
                continue
            if k == "cls_embedding":
                v = v.reshape(-1)
            elif k == "pos_embedding":
                v = v.reshape(v.shape[-2], v.shape[-1])
            out[_VISUAL_KEYS.to_module(k)] = v
        native = {}
        for k, v in out.items():
            if k.startswith(f"encoder.layers.{last}."):
                native["skipped." + k[len(f"encoder.layers.{last}.") :]] = v
            elif k == "head":
                native[k] = v
            else:
                native[self._hf_prefix + k] = v
        return native

    def rebuild_buffers(self, force: bool = False) -> None:
        """transformers' position_ids buffer is not in any checkpoint: a model built on the meta
        device gets it back here, on the device the loaded weights are on. force: also when it
        holds memory already (`to_empty` leaves it uninitialised: random-weight models)."""
        emb = getattr(self.hf, "vision_model", self.hf).embeddings
        if force or emb.position_ids.is_meta:
            device = emb.position_embedding.weight.device
            ids = torch.arange(emb.num_positions, device=device).expand((1, -1))
            emb.register_buffer("position_ids", ids, persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, 3, S, S] normalised -> residual stream after the second-to-last block
        [B, num_tokens, vision_dim]."""
        if self.fast:
            return clip_fastpath.forward(self.hf, pixels)
        return self.hf(pixel_values=pixels).last_hidden_state


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

    def __init__(
        self,
        config: CLIPConfig | str | None = None,
        with_text_tower: bool = True,
        fast: bool = True,
    ):
        super().__init__()
        self.config = cfg = get_config(config)
        self.visual = VisionTransformer(cfg, fast=fast)
        if with_text_tower:
            self.textual = TextTower(cfg)
            self.log_scale = nn.Parameter(torch.zeros([]))
        self.precision = "fp32"

    def state_dict(self, *args, **kwargs):
        """The official XLMRobertaCLIP keys (visual.*, textual.*, log_scale)."""
        native = super().state_dict(*args, **kwargs)
        visual = {k[len("visual.") :]: v for k, v in native.items() if k.startswith("visual.")}
        rest = {k: v for k, v in native.items() if not k.startswith("visual.")}
        return {**{f"visual.{k}": v for k, v in self.visual.official_state(visual).items()}, **rest}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        visual = {k[len("visual.") :]: v for k, v in state_dict.items() if k.startswith("visual.")}
        rest = {k: v for k, v in state_dict.items() if not k.startswith("visual.")}
        native = {f"visual.{k}": v for k, v in self.visual.native_state(visual).items()}
        clip_fastpath.release(self.visual.hf)  # assign=True replaces the q/k/v parameters
        result = super().load_state_dict({**native, **rest}, strict=strict, assign=assign)
        self.visual.rebuild_buffers()
        return result

    def set_precision(self, precision: str) -> XLMRobertaCLIP:
        """Cast the parameters for `precision` (see class docstring); returns self."""
        if precision not in PRECISIONS:
            raise ValueError(f"CLIP precision {precision!r}: expected one of {PRECISIONS}")
        self.precision = precision
        dtype = torch_dtype(precision, "clip") if self._half() else torch.float32
        clip_fastpath.release(self.visual.hf)
        for p in self.parameters():
            p.data = p.data.to(dtype)
        return self

    def _half(self) -> bool:
        return self.precision == "reference" and self.visual.head.device.type == "cuda"

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
        device = self.visual.head.device
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
    # spec.PRECISION's CLIP dtype where the reference's fp16 autocast runs (CUDA); float32 on
    # the CPU, which has no fp16 autocast
    dtype = torch_dtype(precision, "clip") if dev.type == "cuda" else torch.float32
    model = (
        model.to(device=dev, dtype=dtype).eval().requires_grad_(False)
    )  # one cast, no fp32 detour
    return model.set_precision(precision)
