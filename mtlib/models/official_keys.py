"""Keys and shapes of the official umT5 and CLIP checkpoints, from the configs alone.

Why: `mtlib setup --verify` compares every checkpoint header with the state the model expects.
The umT5 encoder and the CLIP vision tower are transformers classes now, and importing
transformers costs seconds (10+ on a busy 2-core machine), which would turn a header check of
about a second into many. The official key layouts are fixed by the published files, so they
are written out here from the configs (as mtlib.weights does for wav2vec2; building even
mtlib's own modules on the meta device imports torch._dynamo, seconds more);
tests/test_official_keys.py checks them against the modules' own state_dict() (tiny and real
sizes) and the golden set's real-checkpoint manifests.
"""

from __future__ import annotations

Shapes = dict[str, tuple[int, ...]]


def t5_shapes(cfg) -> Shapes:
    """The official `T5Encoder` state (models_t5_umt5-xxl-enc-bf16.pth) for a T5Config."""
    out: Shapes = {"token_embedding.weight": (cfg.vocab_size, cfg.dim)}
    for i in range(cfg.num_layers):
        b = f"blocks.{i}"
        out[f"{b}.norm1.weight"] = (cfg.dim,)
        for x in ("q", "k", "v"):
            out[f"{b}.attn.{x}.weight"] = (cfg.dim_attn, cfg.dim)
        out[f"{b}.attn.o.weight"] = (cfg.dim, cfg.dim_attn)
        out[f"{b}.norm2.weight"] = (cfg.dim,)
        out[f"{b}.ffn.gate.0.weight"] = (cfg.dim_ffn, cfg.dim)
        out[f"{b}.ffn.fc1.weight"] = (cfg.dim_ffn, cfg.dim)
        out[f"{b}.ffn.fc2.weight"] = (cfg.dim, cfg.dim_ffn)
        if not cfg.shared_pos:
            out[f"{b}.pos_embedding.embedding.weight"] = (cfg.num_buckets, cfg.num_heads)
    if cfg.shared_pos:
        out["pos_embedding.embedding.weight"] = (cfg.num_buckets, cfg.num_heads)
    out["norm.weight"] = (cfg.dim,)
    return out


def clip_visual_shapes(cfg) -> Shapes:
    """The official CLIP `visual.*` state (open-clip ViT layout) for a CLIPConfig."""
    d, p, hidden = cfg.vision_dim, cfg.patch_size, cfg.vision_mlp_ratio * cfg.vision_dim
    out: Shapes = {
        "visual.patch_embedding.weight": (d, 3, p, p),
        "visual.cls_embedding": (1, 1, d),
        "visual.pos_embedding": (1, (cfg.image_size // p) ** 2 + 1, d),
        "visual.pre_norm.weight": (d,),
        "visual.pre_norm.bias": (d,),
    }
    for i in range(cfg.vision_layers):
        b = f"visual.transformer.{i}"
        out[f"{b}.norm1.weight"] = out[f"{b}.norm1.bias"] = (d,)
        out[f"{b}.attn.to_qkv.weight"], out[f"{b}.attn.to_qkv.bias"] = (3 * d, d), (3 * d,)
        out[f"{b}.attn.proj.weight"], out[f"{b}.attn.proj.bias"] = (d, d), (d,)
        out[f"{b}.norm2.weight"] = out[f"{b}.norm2.bias"] = (d,)
        out[f"{b}.mlp.0.weight"], out[f"{b}.mlp.0.bias"] = (hidden, d), (hidden,)
        out[f"{b}.mlp.2.weight"], out[f"{b}.mlp.2.bias"] = (d, hidden), (d,)
    out["visual.post_norm.weight"] = out["visual.post_norm.bias"] = (d,)
    out["visual.head"] = (d, cfg.embed_dim)
    return out


def clip_text_shapes(cfg) -> Shapes:
    """The official CLIP `textual.*` state (XLM-RoBERTa large + projection head)."""
    d = cfg.text_dim
    out: Shapes = {
        "textual.token_embedding.weight": (cfg.vocab_size, d),
        "textual.type_embedding.weight": (cfg.type_size, d),
        "textual.pos_embedding.weight": (cfg.max_text_len, d),
        "textual.norm.weight": (d,),
        "textual.norm.bias": (d,),
    }
    for i in range(cfg.text_layers):
        b = f"textual.blocks.{i}"
        for x in ("q", "k", "v", "o"):
            out[f"{b}.attn.{x}.weight"], out[f"{b}.attn.{x}.bias"] = (d, d), (d,)
        out[f"{b}.norm1.weight"] = out[f"{b}.norm1.bias"] = (d,)
        out[f"{b}.ffn.0.weight"], out[f"{b}.ffn.0.bias"] = (4 * d, d), (4 * d,)
        out[f"{b}.ffn.2.weight"], out[f"{b}.ffn.2.bias"] = (d, 4 * d), (d,)
        out[f"{b}.norm2.weight"] = out[f"{b}.norm2.bias"] = (d,)
    mid = (d + cfg.embed_dim) // 2
    out["textual.head.0.weight"] = (mid, d)
    out["textual.head.2.weight"] = (cfg.embed_dim, mid)
    return out


def clip_shapes(cfg) -> Shapes:
    """The whole official XLMRobertaCLIP state (visual.*, textual.*, log_scale)."""
    return {**clip_visual_shapes(cfg), **clip_text_shapes(cfg), "log_scale": ()}
