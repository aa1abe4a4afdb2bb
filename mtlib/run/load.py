"""Loading the networks a run config asks for (`load_models` -> `LoadedModels`), adapted to the
loop's duck types (`DiTCall`, `PromptEncoder`); the LoRA hook and the int8 files.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtlib.config import ConfigError, RunConfig
from mtlib.run.prepare import _config, resolve_device

if TYPE_CHECKING:
    pass


class DiTCall:
    """MultiTalkDiT as the loop calls it (`x=` for the latent), optionally with TeaCache.

    parameters() is forwarded so the loop finds the DiT's device and dtype.
    """

    def __init__(self, dit, teacache=None):
        self.dit = dit
        self.teacache = teacache
        self.calls = 0  # DiT forward calls (TeaCache-skipped ones included)

    def parameters(self):
        return self.dit.parameters()

    def __call__(self, x, t, context, clip_fea, y, audio, ref_target_masks, seq_len):
        self.calls += 1
        return self.dit(
            x, t, context, clip_fea, y, audio, ref_target_masks, seq_len, teacache=self.teacache
        )


@dataclass
class EncodedPrompts:
    contexts: list  # per text: [L_i, dim] trimmed T5 output (EOS included)
    ids: Any  # [B, text_len] token ids
    mask: Any  # [B, text_len] 1 for tokens, 0 for padding
    out: Any  # [B, text_len, dim] full T5 output (padding rows included)


class PromptEncoder:
    """A T5TextEncoder as pipeline.encode_prompts wants it: `.encode(texts)` with ids, mask
    and the full output kept for the trace (e2e.t5.call0.*)."""

    def __init__(self, text_encoder):
        self.text_encoder = text_encoder

    def encode(self, texts: list[str]) -> EncodedPrompts:
        import torch

        te = self.text_encoder
        ids, mask = te.tokenize(texts)  # [B, text_len] each
        device = next(te.model.parameters()).device
        with torch.no_grad():
            out = te.model(ids.to(device), mask.to(device))  # [B, text_len, dim]
        lens = mask.gt(0).sum(dim=1).tolist()
        return EncodedPrompts([out[i, :n] for i, n in enumerate(lens)], ids, mask, out)


def load_audio_encoder(cfg: RunConfig | str, device: str = "cpu", layout=None):
    """wav2vec2 alone (for preprocessing without the generation networks)."""
    from mtlib import weights
    from mtlib.models import wav2vec

    cfg = _config(cfg)
    if cfg.model.weights.random and cfg.model.name != "tiny":
        from mtlib.weights.random import random_audio_encoder

        return random_audio_encoder(device)
    layout = layout if layout is not None else weights.layout_for_config(cfg)
    tiny = cfg.model.name == "tiny"
    geometry = wav2vec.TINY_GEOMETRY if tiny else wav2vec.REAL_GEOMETRY
    return wav2vec.load_wav2vec(layout.wav2vec_dir, geometry, device=device)


@dataclass
class LoadedModels:
    dit: Any  # MultiTalkDiT
    vae: Any  # CausalVAE
    clip: Any  # XLMRobertaCLIP (visual tower only)
    text_encoder: Any  # T5TextEncoder
    audio_encoder: Any  # wav2vec.AudioEncoder
    layout: Any = None  # mtlib.weights.WeightsLayout the files came from (None: random weights)
    device: str = "cpu"
    precision: str = "fp32"
    seconds: float = 0.0
    loras: list = field(default_factory=list)  # mtlib.weights.lora.LoraCheck of each merged file
    options: Any = None  # mtlib.accel.options.DiTOptions the DiT was built with


def load_models(
    cfg: RunConfig | str,
    device: str | None = None,
    precision: str | None = None,
    compile: bool = False,
    progress: bool = False,
) -> LoadedModels:
    """The five networks of the config, loaded from a checkpoint layout (mtlib.weights).

    model "tiny": random checkpoints in the real file names/formats, written once under
    model.weights.tiny_dir (default <project>/.cache/tiny-weights), loaded by the SAME loaders
    as the real ones with the tiny configs. model "multitalk-14b": the published directories
    (model.weights.*_dir, else the hub cache), or (model.weights.random) the real-size
    networks with random weights. The DiT is built as mtlib.accel.options resolves model.* (offload,
    attention, compile, RoPE, int8 checkpoint): every tensor goes from its file to the GPU
    (mtlib.accel.dit_load). compile=True is model.compile=true (the CLI's --compile).
    """
    import torch

    from mtlib import weights
    from mtlib.accel.dit_load import load_run_dit
    from mtlib.accel.options import resolve_dit_options
    from mtlib.models import clip as clip_mod
    from mtlib.models import dit as dit_mod
    from mtlib.models import t5 as t5_mod
    from mtlib.models import vae as vae_mod

    cfg = _config(cfg)
    if compile and not cfg.model.compile:
        cfg = cfg.replace(**{"model.compile": True})
    if precision is not None and precision != cfg.model.precision:
        cfg = cfg.replace(**{"model.precision": precision})
    t0 = time.perf_counter()
    device = resolve_device(device or cfg.model.device)
    opts = resolve_dit_options(cfg, cuda=str(device).startswith("cuda"))
    precision = opts.precision
    name = cfg.model.name
    # fp8 = the reference dtype policy for every network, then fp8 DiT blocks on top
    load_precision = "reference" if precision == "fp8" else precision
    if opts.random:
        from mtlib.weights.random import random_networks

        lora_hook = _lora_hook(cfg, dit_mod.CONFIGS[name])
        dit = load_run_dit(dit_mod.CONFIGS[name], device, opts, seed=cfg.model.weights.tiny_seed,
                           block_hook=lora_hook, progress=progress)  # fmt: skip
        vae, clip, text_encoder, audio_encoder = random_networks(name, device, load_precision)
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        return LoadedModels(dit, vae, clip, text_encoder, audio_encoder, None, device, precision,
                            time.perf_counter() - t0, lora_hook.checks if lora_hook else [], opts)  # fmt: skip
    layout = weights.layout_for_config(cfg)
    # headers, sizes and shapes of every file before any tensor is read (truncated / wrong files)
    weights.verify_layout(layout, "tiny" if name == "tiny" else "multitalk-14b", strict=True)
    if name == "tiny":
        dit_config = dit_mod.CONFIGS["tiny"]
    else:  # what WanModel.from_pretrained builds from the Wan directory's config.json
        dit_config = dit_mod.DiTConfig.from_config_json(json.loads(layout.dit_config.read_text()))
    # LoRA files are checked against the DiT's shapes from their headers BEFORE any weight
    # is read (the hook is built here), and merged block by block as the DiT loads: fp8
    # quantisation, offload pinning and torch.compile all see the merged weights
    lora_hook = _lora_hook(cfg, dit_config)
    dit = load_run_dit(dit_config, device, opts, files=layout.dit_files(), quant=quant_files(cfg, layout),
                       block_hook=lora_hook, progress=progress)  # fmt: skip
    vae = vae_mod.load_vae(layout.vae_file, config=vae_mod.CONFIGS[name], device=device)
    clip = clip_mod.load_clip(
        layout.clip_file, config=name, device=device, precision=load_precision, visual_only=True
    )
    text_encoder = t5_mod.build_text_encoder(
        layout.t5_file, layout.t5_tokenizer, config=name, device=device, precision=load_precision
    )
    audio_encoder = load_audio_encoder(cfg, device, layout)
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    return LoadedModels(
        dit, vae, clip, text_encoder, audio_encoder, layout, device, precision,
        time.perf_counter() - t0, lora_hook.checks if lora_hook else [], opts,
    )  # fmt: skip


def quant_files(cfg: RunConfig, layout) -> tuple[Path, Path] | None:
    """The int8 DiT checkpoint and its map (model.weights.quant), or None."""
    from mtlib.weights.recipes import FUSIONX_QUANT_FILE, FUSIONX_QUANT_MAP

    w = cfg.model.weights
    if w.quant == "none":
        return None
    root = Path(w.quant_dir).expanduser() if w.quant_dir else Path(layout.multitalk_dir)
    d = root / "quant_models" if (root / "quant_models").is_dir() else root
    if cfg.model.recipe == "fusionx":
        return d / FUSIONX_QUANT_FILE, d / FUSIONX_QUANT_MAP
    return d / "dit_model_int8.safetensors", d / "dit_model_map_int8.json"


def _lora_hook(cfg: RunConfig, dit_config):
    """Per-block LoRA merging for mtlib.accel.dit_load (model.loras through mtlib.weights.lora): every file
    is checked against the DiT's shapes first, then each block's deltas are merged on the
    device as the block arrives, before fp8 conversion and offload parking."""
    if not cfg.model.loras:
        return None
    import dataclasses

    try:
        from mtlib.weights.lora import check_loras, dit_param_shapes, merge_checked
    except ImportError:  # the LoRA loader lives on the golden branch (#14)
        raise ConfigError(
            "model.loras: this mtlib has no LoRA loader (mtlib.weights.lora)."
        ) from None
    checks = check_loras(cfg.model.loras, dit_param_shapes(dit_config))

    def hook(i: int | None, module) -> None:  # i None: the model, its blocks not loaded yet
        for c in checks:
            if i is None:
                mine = [d for d in c.deltas if not d.param.startswith("blocks.")]
            else:
                pre = f"blocks.{i}."
                mine = [dataclasses.replace(d, param=d.param[len(pre):]) for d in c.deltas
                        if d.param.startswith(pre)]  # fmt: skip
            if mine:
                merge_checked(module, dataclasses.replace(c, deltas=mine))

    hook.checks = checks
    return hook
