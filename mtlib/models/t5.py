"""umT5-XXL text encoder: prompt and negative prompt -> DiT text context.

Where it sits: at the start of generate() the prompt and the negative prompt are encoded
together as a batch of two; each output row is trimmed to its true token count (EOS
included) and becomes `context` / `context_null` [L_i, 4096] for the DiT's text
cross-attention (the DiT re-pads them with zeros to 512).

The network (multitalk-facts §6, golden README §2.4) is transformers' `UMT5EncoderModel`,
loaded from the official `T5Encoder` key layout (`models_t5_umt5-xxl-enc-bf16.pth`) through a
key map. It is the reference's network: token embedding, pre-norm blocks with a per-layer relative position bias (32 buckets, bidirectional, max distance 128),
attention WITHOUT 1/sqrt(d) scaling, padded keys filled with the dtype minimum before an fp32
softmax, gated-GELU(tanh) FFN, T5 RMSNorm (fp32 statistics, eps 1e-6), final RMSNorm.

Tokenisation: `HFTokenizer` wraps transformers' AutoTokenizer for google/umt5-xxl (pad to
512, truncate, EOS appended). `StandInTokenizer` reproduces the golden set's offline stand-in
(whitespace words -> 2 + crc32(word) % (vocab - 2), then EOS) so the tiny model runs end to
end without the real tokenizer. Both see the text after the official cleaning (`clean_text`).
"""

from __future__ import annotations

import html
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mtlib import trace
from mtlib.io import InputError
from mtlib.models import t5_fastpath
from mtlib.models.checkpoint import (
    KeyMap,
    assign_state_dict,
    check_config_keys,
    config_label,
    pick_config,
    read_state_dict,
)
from mtlib.spec import torch_dtype

PRECISIONS = ("fp32", "reference")

# The reference's `sample_neg_prompt` (wan_multitalk_14B config), used whenever the user
# gives no negative prompt. 392 characters, 28 items joined by ", "; recovered byte for byte
# (its stand-in token ids match e2e.t5.call0.ids row 1 of every golden e2e case).
DEFAULT_NEGATIVE_PROMPT = (
    "bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, "
    "images, static, overall gray, worst quality, low quality, JPEG compression residue, ugly, "
    "incomplete, extra fingers, poorly drawn hands, poorly drawn faces, deformed, disfigured, "
    "misshapen limbs, fused fingers, still picture, messy background, three legs, many people "
    "in the background, walking backwards"
)


@dataclass(frozen=True)
class T5Config:
    vocab_size: int = 256384  # umT5 sentencepiece vocabulary
    dim: int = 4096  # residual width = context channels given to the DiT
    dim_attn: int = 4096  # q/k/v width (num_heads * 64)
    dim_ffn: int = 10240  # gated FFN hidden width
    num_heads: int = 64
    num_layers: int = 24  # encoder blocks
    num_buckets: int = 32  # relative-position buckets (half per direction)
    max_distance: int = 128  # distances beyond this share the last bucket
    shared_pos: bool = False  # umT5: every block owns its bias table (T5 v1 shares one)
    text_len: int = 512  # tokens per padded sequence
    pad_id: int = 0
    eos_id: int = 1
    eps: float = 1e-6  # T5 RMSNorm

    def __post_init__(self) -> None:
        if self.dim_attn % self.num_heads:
            raise ValueError(
                f"T5Config: dim_attn {self.dim_attn} must be divisible by num_heads {self.num_heads}"
            )
        if self.num_buckets % 4:
            raise ValueError(f"T5Config: num_buckets {self.num_buckets} must be a multiple of 4")

    @classmethod
    def from_official(cls, d: dict, **overrides) -> T5Config:
        """From the official `umt5_xxl` kwargs (encoder_layers -> num_layers; decoder_layers
        and dropout are ignored) or the tiny_configs.json["t5"] entry; `overrides` (e.g.
        text_len) win."""
        d = dict(d)
        if "encoder_layers" in d:
            d["num_layers"] = d.pop("encoder_layers")
        for key in ("decoder_layers", "dropout"):
            d.pop(key, None)
        d.update(overrides)
        check_config_keys(cls, d)
        return cls(**d)


# mtlib's own copies (the golden tiny_configs.json is only read by tests).
CONFIGS: dict[str, T5Config] = {
    "tiny": T5Config(vocab_size=384, dim=32, dim_attn=32, dim_ffn=48, num_heads=4, num_layers=2),
    "multitalk-14b": T5Config(),
}


def get_config(config: T5Config | str | None) -> T5Config:
    return pick_config(config, CONFIGS, "T5")


# ------------------------------------------------------------------------------ network

# official `T5Encoder` key -> transformers `UMT5EncoderModel` key (inside `T5Encoder.hf`).
# The official FFN is fc2(fc1(x) * gelu(gate(x))): gate = wi_0 (the activated half), fc1 = wi_1.
_KEYS = KeyMap([
    ("token_embedding.weight", "hf.shared.weight"),
    ("blocks.{i}.norm1.weight", "hf.encoder.block.{i}.layer.0.layer_norm.weight"),
    ("blocks.{i}.pos_embedding.embedding.weight",  # before the q/k/v/o rule, which {x} would match
     "hf.encoder.block.{i}.layer.0.SelfAttention.relative_attention_bias.weight"),
    ("blocks.{i}.attn.{x}.weight", "hf.encoder.block.{i}.layer.0.SelfAttention.{x}.weight"),
    ("blocks.{i}.norm2.weight", "hf.encoder.block.{i}.layer.1.layer_norm.weight"),
    ("blocks.{i}.ffn.gate.0.weight", "hf.encoder.block.{i}.layer.1.DenseReluDense.wi_0.weight"),
    ("blocks.{i}.ffn.fc1.weight", "hf.encoder.block.{i}.layer.1.DenseReluDense.wi_1.weight"),
    ("blocks.{i}.ffn.fc2.weight", "hf.encoder.block.{i}.layer.1.DenseReluDense.wo.weight"),
    ("norm.weight", "hf.encoder.final_layer_norm.weight"),
])  # fmt: skip
# the token embedding is one module under two names (shared, encoder.embed_tokens)
_TIED = "hf.encoder.embed_tokens.weight"


def umt5_config(cfg: T5Config, fused_gelu: bool = True):
    """The transformers UMT5Config of the same network (encoder only, no dropout).
    fused_gelu: the FFN's GELU(tanh) as one fused kernel ("gelu_pytorch_tanh") instead of
    transformers' Python formula ("gelu_new"); same function (see t5_fastpath)."""
    from transformers import UMT5Config

    config = UMT5Config(
        vocab_size=cfg.vocab_size, d_model=cfg.dim, d_kv=cfg.dim_attn // cfg.num_heads,
        d_ff=cfg.dim_ffn, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
        relative_attention_num_buckets=cfg.num_buckets,
        relative_attention_max_distance=cfg.max_distance, feed_forward_proj="gated-gelu",
        layer_norm_epsilon=cfg.eps, dropout_rate=0.0, pad_token_id=cfg.pad_id,
        eos_token_id=cfg.eos_id, is_encoder_decoder=False, use_cache=False,
    )  # fmt: skip
    if fused_gelu:
        config.dense_act_fn = "gelu_pytorch_tanh"
    return config


class T5Encoder(nn.Module):
    """umT5 encoder: transformers' `UMT5EncoderModel` (`.hf`) seen through the official
    `T5Encoder` key layout: state_dict() / load_state_dict() speak the official keys, so the
    published .pth loads strictly. forward(ids, mask) -> [B, L, dim] at every position,
    padding included (callers trim with the mask).

    UMT5 is the reference's network: no 1/sqrt(d) attention scaling, a relative position
    bias table in every layer, gated GELU(tanh), fp32 softmax and RMSNorm statistics.
    """

    def __init__(self, config: T5Config | str | None = None, fast: bool = True):
        """fast: mtlib's speed settings on transformers' classes (t5_fastpath: head-major
        position bias with buckets computed once, a 4-D padding mask, fused GELU); False
        runs transformers' encoder exactly as it ships (benchmarks compare the two)."""
        super().__init__()
        from transformers import UMT5EncoderModel

        self.config = cfg = get_config(config)
        if cfg.shared_pos:
            raise ValueError(
                "T5Config.shared_pos=True (one position bias for all layers, T5 v1) is not "
                "umT5; mtlib runs the umT5 encoder (shared_pos=False)."
            )
        self.hf = UMT5EncoderModel(umt5_config(cfg, fused_gelu=fast))
        self.fast = fast
        if fast:
            t5_fastpath.install(self.hf)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.hf.encoder.block

    def state_dict(self, *args, **kwargs):
        native = super().state_dict(*args, **kwargs)
        native.pop(_TIED, None)
        return {_KEYS.to_checkpoint(k): v for k, v in native.items()}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        native = {_KEYS.to_module(k): v for k, v in state_dict.items()}
        if "hf.shared.weight" in native:
            native[_TIED] = native["hf.shared.weight"]
        return super().load_state_dict(native, strict=strict, assign=assign)

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids [B, L] int, mask [B, L] (1 = token, 0 = padding) -> [B, L, dim]."""
        if ids.ndim != 2 or ids.shape != mask.shape:
            raise InputError(
                f"T5 input: ids {tuple(ids.shape)} and mask {tuple(mask.shape)} must both be [B, L]. "
                "Fix: tokenize with padding to text_len."
            )
        device = self.hf.shared.weight.device
        ids, mask = ids.to(device), mask.to(device)
        if self.fast and t5_fastpath.uses_attention_interface(self.hf):
            mask = t5_fastpath.attention_mask_4d(mask)  # [B, 1, 1, L]: taken as is, no host sync
        x = self.hf(input_ids=ids, attention_mask=mask).last_hidden_state
        if trace.active():
            trace.point("t5.out_full", x)
        return x


# --------------------------------------------------------------------------- tokenizers


def clean_text(text: str) -> str:
    """The reference's 'whitespace' cleaning: ftfy.fix_text (when ftfy is installed),
    HTML-unescape twice, strip, collapse whitespace runs to one space."""
    try:
        import ftfy
    except ImportError:  # optional: it only repairs mojibake, which ordinary prompts lack
        ftfy = None
    if ftfy is not None:
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


def _pad_batch(
    rows: list[list[int]], text_len: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((len(rows), text_len), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), text_len), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


class StandInTokenizer:
    """The golden set's offline tokenizer for the tiny model: each whitespace-separated word
    becomes 2 + crc32(utf-8 word) % (vocab_size - 2) (ids 0 and 1 stay pad and EOS), then
    EOS; truncated to text_len (EOS kept) and right-padded with pad_id. Not a real
    tokenizer: only for tiny random weights."""

    def __init__(self, vocab_size: int, text_len: int = 512, pad_id: int = 0, eos_id: int = 1):
        self.vocab_size, self.text_len, self.pad_id, self.eos_id = (
            vocab_size,
            text_len,
            pad_id,
            eos_id,
        )

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = []
        for text in texts:
            words = [
                2 + zlib.crc32(w.encode("utf-8")) % (self.vocab_size - 2) for w in text.split()
            ]
            rows.append(words[: self.text_len - 1] + [self.eos_id])
        return _pad_batch(rows, self.text_len, self.pad_id)


class HFTokenizer:
    """google/umt5-xxl through transformers.AutoTokenizer (`<wan_dir>/google/umt5-xxl`):
    padding to text_len, truncation, special tokens (EOS) added."""

    def __init__(self, path, text_len: int = 512):
        from transformers import AutoTokenizer

        p = Path(path)
        if not p.is_dir():
            raise InputError(
                f"T5 tokenizer {str(p)!r}: directory not found. Fix: pass <wan_dir>/google/umt5-xxl "
                "(or the stand-in tokenizer for tiny weights)."
            )
        self.text_len = text_len
        self.tokenizer = AutoTokenizer.from_pretrained(str(p))

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.tokenizer(
            texts,
            padding="max_length",
            truncation=True,
            max_length=self.text_len,
            add_special_tokens=True,
            return_tensors="pt",
        )
        return out.input_ids.long(), out.attention_mask.long()


class T5TextEncoder:
    """Texts -> list of trimmed contexts [L_i, dim] (L_i = token count incl. EOS).

    Trace points: t5.ids, t5.mask, t5.out_full, t5.context.<i>.
    """

    def __init__(self, model: T5Encoder, tokenizer):
        self.model = model
        self.tokenizer = tokenizer

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        return self.tokenizer([clean_text(t) for t in texts])

    @torch.no_grad()
    def __call__(self, texts: list[str] | str) -> list[torch.Tensor]:
        ids, mask = self.tokenize(texts)  # [B, text_len] each
        if trace.active():
            trace.point("t5.ids", ids)
            trace.point("t5.mask", mask)
        out = self.model(ids, mask)  # [B, text_len, dim]
        seq_lens = mask.gt(0).sum(dim=1).tolist()
        context = [out[i, :n] for i, n in enumerate(seq_lens)]
        if trace.active():
            for i, c in enumerate(context):
                trace.point(f"t5.context.{i}", c)
        return context


# ------------------------------------------------------------------------------ loading


def load_t5(
    path,
    config: T5Config | str | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
) -> T5Encoder:
    """Build the encoder on the meta device and load `path` strictly.

    path: the official `models_t5_umt5-xxl-enc-bf16.pth` or a .safetensors with its keys.
    config: a T5Config or CONFIGS name (default umT5-XXL). precision: "fp32", or
    "reference" = bf16 weights as the reference runs them (any device).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"T5 precision {precision!r}: expected one of {PRECISIONS}")
    cfg = get_config(config)
    with torch.device("meta"):
        model = T5Encoder(cfg)
    sd = read_state_dict(path, "T5")
    assign_state_dict(model, sd, "T5", repr(str(path)), config_label(cfg, CONFIGS))
    dtype = torch_dtype(precision, "t5")  # spec.PRECISION: the one precision table
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def build_text_encoder(
    checkpoint,
    tokenizer: str,
    config: T5Config | str | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
) -> T5TextEncoder:
    """load_t5 + a tokenizer: a path to the umt5-xxl tokenizer directory, or "stand-in"
    (the golden stand-in; only meaningful with tiny random weights)."""
    model = load_t5(checkpoint, config, device, precision)
    cfg = model.config
    if tokenizer == "stand-in":
        tok = StandInTokenizer(cfg.vocab_size, cfg.text_len, cfg.pad_id, cfg.eos_id)
    else:
        tok = HFTokenizer(tokenizer, cfg.text_len)
    return T5TextEncoder(model, tok)
