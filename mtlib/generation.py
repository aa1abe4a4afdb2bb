"""From a RunConfig to an mp4 with sound: plan, load, preprocess, generate, write.

Where it sits: the top of the flow, above every other module. `generate_video(cfg, out)` is
what `mtlib generate` and notebook 03 call:

    prepare_run(cfg)      probe the input files and build the shape plan (mtlib.shapes); an
                          invalid plan raises PlanError with the diagnosis BEFORE any weights
                          load; frame_num 'auto' / the short-audio policy are resolved here
    load_models(cfg)      checkpoints of config.model.weights (tiny: random checkpoints written
                          in the real file formats by mtlib.models.tiny) through the real loaders
    preprocess_inputs()   speech -> loudness -> (2 speakers: para/add) -> silence padding as
                          planned -> wav2vec2 embedding (cached); image -> bucket crop ->
                          person masks on the latent grid
    encode_prompts()      T5 on [prompt, negative prompt]
    pipeline.generate()   the clip / streaming loop; noise from generation.noise (cpu: SeededNoise(seed),
                          cuda: the reference's CUDA draws, trace: a trace's draws; mtlib.reference.noise)
    write                 video trimmed back to the real audio, muxed with the ORIGINAL
                          (unpadded, loudness-normalised, summed) speech at 25 fps, the resolved
                          config and seed in the mp4 metadata, written atomically
    trace (trace_dir)     every step above records its points into an mtlib.trace.TraceWriter
                          (`open_trace`: config.trace level / include / full), the directory
                          `load_trace`, `mtlib compare` and `compare.replay` read

The networks are adapted to the loop's duck types here (`DiTCall`, `PromptEncoder`), so the
golden end-to-end test drives the same objects a user run does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtlib import shapes, trace
from mtlib.config import ConfigError, RunConfig, load_config, to_dict
from mtlib.frames import SAMPLE_RATE, VIDEO_FPS  # every waveform in mtlib is at 16 kHz
from mtlib.io import InputError, atomic_path, project_root

if TYPE_CHECKING:
    import numpy as np
    import torch

    from mtlib.pipeline import GenerationSettings


class PlanError(shapes.PlanError):
    """The shape plan refuses the run: carries the plan and its diagnosis (the reference's
    exact error, why, and the fixes), raised before any weights are loaded."""

    def __init__(self, plan: shapes.ShapePlan):
        self.plan = plan
        self.violations = list(plan.violations)
        lines = [
            f"the run is refused before loading any weights ({len(self.violations)} problem(s)):"
        ]
        lines += [shapes.explain(v) for v in self.violations]
        super().__init__("\n\n".join(lines))

    @property
    def diagnosis(self) -> str:
        return str(self)


# --------------------------------------------------------------------------------------------
# 1. Plan first
# --------------------------------------------------------------------------------------------


@dataclass
class PreparedRun:
    """A run the plan accepted: the resolved config and what the later steps need."""

    config: RunConfig  # generation.frame_num resolved to the planned value
    plan: shapes.ShapePlan
    settings: GenerationSettings  # the loop's settings (frame_num resolved)
    device: str  # "cpu" | "cuda" | "cuda:N"
    precision: str  # effective: "fp32" on CPU, the config's choice on CUDA
    persons: int
    src_hw: tuple[int, int]  # source image (height, width)
    target_hw: tuple[int, int]  # conditioning image (H, W)
    pad_to_samples: tuple[int | None, ...]  # per person: silence-pad the 16 kHz track to this
    output_frames: int  # frames of the written video (real audio length)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"model.device {device!r}: no CUDA device is available here. Fix: model.device=cpu "
            "(with the tiny model) or run on a GPU machine."
        )
    return device


def effective_precision(device: str, precision: str) -> str:
    """fp32 on the CPU, the config's choice on CUDA; fp8 off a GPU is refused (mtlib.runopts)."""
    from mtlib.runopts import effective_precision as rule

    return rule(device, precision)


def _config(cfg: RunConfig | str | os.PathLike | dict | None) -> RunConfig:
    return cfg if isinstance(cfg, RunConfig) else load_config(cfg)


def prepare_run(
    cfg: RunConfig | str | os.PathLike | dict | None = "tiny", progress: bool = True
) -> PreparedRun:
    """Probe the inputs and plan every shape; refuse an invalid run before anything heavy.

    Raises PlanError (diagnosis: violations, the reference's message, fixes) when the plan is
    invalid, shapes.PlanError / InputError for unreadable inputs, ConfigError for bad values.
    """
    from mtlib.image import _check_bbox
    from mtlib.pipeline import GenerationSettings
    from mtlib.recipes import check_recipe
    from mtlib.runopts import resolve_dit_options

    cfg = _config(cfg)
    check_recipe(cfg)  # a distillation recipe without its LoRA: refused before anything
    plan = shapes.plan(cfg)  # reads file headers only
    if not plan.valid:
        raise PlanError(plan)
    resolved = cfg.replace(**{"generation.frame_num": int(plan.frame_num)})
    _guard_inputs(cfg, plan)
    # bbox pixel ranges need the source size: checked here (the plan only counts the boxes)
    if cfg.inputs.bbox is not None:
        _check_bbox(cfg.inputs.bbox, plan.persons, plan.src_hw[0], plan.src_hw[1])
    device = resolve_device(cfg.model.device)
    _guard_gpu_memory(plan, device)
    resolve_dit_options(cfg, cuda=str(device).startswith("cuda"))  # refuses impossible options now
    settings = GenerationSettings.from_config(
        resolved.generation, cfg.model.size, progress=progress
    )
    return PreparedRun(
        config=resolved,
        plan=plan,
        settings=settings,
        device=device,
        precision=effective_precision(device, cfg.model.precision),
        persons=plan.persons,
        src_hw=tuple(plan.src_hw),
        target_hw=tuple(plan.target_hw),
        pad_to_samples=tuple(plan.pad_to_samples),
        output_frames=int(plan.output_frames),
    )


def _guard_inputs(cfg: RunConfig, plan: shapes.ShapePlan) -> None:
    """What the header-only plan cannot see: a bbox for one speaker, truncated audio."""
    from mtlib import guards

    guards.check_bbox_persons(cfg, plan.persons)
    guards.check_audio_complete(list(cfg.inputs.audio))


def _guard_gpu_memory(plan: shapes.ShapePlan, device: str) -> None:
    """Refuse a clip whose activations alone cannot fit the GPU (mtlib.guards.memory_refusal)."""
    if not str(device).startswith("cuda"):
        return
    import torch

    from mtlib import guards

    reason = guards.memory_refusal(plan, torch.cuda.get_device_properties(device).total_memory)
    if reason:
        raise ConfigError(reason)


# --------------------------------------------------------------------------------------------
# 2. Networks
# --------------------------------------------------------------------------------------------


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
        from mtlib.random_weights import random_audio_encoder

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
    loras: list = field(default_factory=list)  # mtlib.lora.LoraCheck of each merged file
    options: Any = None  # mtlib.runopts.DiTOptions the DiT was built with


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
    networks with random weights. The DiT is built as mtlib.runopts resolves model.* (offload,
    attention, compile, RoPE, int8 checkpoint): every tensor goes from its file to the GPU
    (mtlib.dit_load). compile=True is model.compile=true (the CLI's --compile).
    """
    import torch

    from mtlib import weights
    from mtlib.dit_load import load_run_dit
    from mtlib.models import clip as clip_mod
    from mtlib.models import dit as dit_mod
    from mtlib.models import t5 as t5_mod
    from mtlib.models import vae as vae_mod
    from mtlib.runopts import resolve_dit_options

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
        from mtlib.random_weights import random_networks

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
    from mtlib.recipes import FUSIONX_QUANT_FILE, FUSIONX_QUANT_MAP

    w = cfg.model.weights
    if w.quant == "none":
        return None
    root = Path(w.quant_dir).expanduser() if w.quant_dir else Path(layout.multitalk_dir)
    d = root / "quant_models" if (root / "quant_models").is_dir() else root
    if cfg.model.recipe == "fusionx":
        return d / FUSIONX_QUANT_FILE, d / FUSIONX_QUANT_MAP
    return d / "dit_model_int8.safetensors", d / "dit_model_map_int8.json"


def _lora_hook(cfg: RunConfig, dit_config):
    """Per-block LoRA merging for mtlib.dit_load (model.loras through mtlib.lora): every file
    is checked against the DiT's shapes first, then each block's deltas are merged on the
    device as the block arrives, before fp8 conversion and offload parking."""
    if not cfg.model.loras:
        return None
    import dataclasses

    try:
        from mtlib.lora import check_loras, dit_param_shapes, merge_checked
    except ImportError:  # the LoRA loader lives on the golden branch (#14)
        raise ConfigError("model.loras: this mtlib has no LoRA loader (mtlib.lora).") from None
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


# --------------------------------------------------------------------------------------------
# 3. Inputs
# --------------------------------------------------------------------------------------------


@dataclass
class PreprocessedInputs:
    """Everything generate() takes from the user's files, plus what the notebook plots."""

    cond_image: torch.Tensor  # [1, 3, 1, H, W] in [-1, 1]
    prepared_image: Any  # mtlib.image.PreparedImage (crop, bucket, geometry)
    ref_target_masks: torch.Tensor  # [3, H/8, W/8] person 1, person 2, background
    audio_embs: list  # per person [L_a, layers, width] (after the planned padding)
    raw_waveforms: list  # per input file: 16 kHz waveform before loudness normalisation
    speech: list  # per input file: loudness-normalised waveform
    tracks: list  # per person: the waveform given to wav2vec2 (padded as planned)
    soundtrack: np.ndarray  # [N] float32 unpadded (sum of) speech: the video's audio track
    real_samples: int  # samples of the soundtrack (the video is trimmed to this)
    run: PreparedRun | None = None  # the plan these inputs were prepared for

    def describe(self) -> str:
        """A few lines for notebooks: image geometry, loudness, padding, embedding shapes."""
        from mtlib.audio import AudioInputError, integrated_loudness

        g = self.prepared_image.geometry
        H, W = self.prepared_image.target_hw
        lines = [
            f"image {g.src_w}x{g.src_h} (w x h) -> bucket {self.prepared_image.bucket}: resized "
            f"{g.resized_w}x{g.resized_h}, centre crop {W}x{H} at (top {g.top}, left {g.left})",
            f"cond_image {list(self.cond_image.shape)}, ref_target_masks "
            f"{list(self.ref_target_masks.shape)} (person pixels on the latent grid: "
            f"{[int(m.sum()) for m in self.ref_target_masks[:2]]})",
        ]
        for i, (raw, normed) in enumerate(zip(self.raw_waveforms, self.speech, strict=True)):
            try:
                before, after = (f"{integrated_loudness(x):.2f}" for x in (raw, normed))
            except AudioInputError:
                before = after = "n/a"
            lines.append(
                f"speaker {i + 1}: {len(raw) / SAMPLE_RATE:.3f} s, loudness {before} -> {after} LUFS"
            )
        for i, (track, emb) in enumerate(zip(self.tracks, self.audio_embs, strict=True)):
            pad = len(track) - (len(self.speech[i]) if len(self.speech) > i else len(track))
            lines.append(
                f"person {i + 1}: wav2vec2 input {len(track)} samples"
                + (f" (+{pad} silence, planned)" if pad > 0 else "")
                + f" -> audio_embedding {list(emb.shape)}"
            )
        lines.append(f"soundtrack {self.real_samples / SAMPLE_RATE:.3f} s (muxed into the video)")
        return "\n".join(lines)


def embedding_cache_dir() -> Path:
    """Where wav2vec2 embeddings are cached: $MTLIB_CACHE/audio-embeddings, else
    <project>/.cache/audio-embeddings (git-ignored)."""
    root = os.environ.get("MTLIB_CACHE")
    base = Path(root).expanduser() if root else project_root() / ".cache"
    return base / "audio-embeddings"


def _pad_to(x: np.ndarray, n: int | None) -> np.ndarray:
    import numpy as np

    if n is None or n <= x.shape[0]:
        return x
    return np.concatenate([x, np.zeros(n - x.shape[0], dtype=x.dtype)])


def preprocess_inputs(
    run: PreparedRun, audio_encoder, cache_dir: str | os.PathLike | None = "default"
) -> PreprocessedInputs:
    """Speech and image of the run's config -> the loop's conditioning tensors.

    Speech: load (16 kHz mono) -> loudness -> two speakers combined ('para' / 'add') ->
    silence appended to the plan's pad_to_samples -> wav2vec2 (cached under cache_dir;
    None: no cache). Image: bucket + resize + centre crop; person masks from bbox or
    face_scale on the same geometry.
    """
    import numpy as np

    from mtlib import audio as audio_mod
    from mtlib import image as image_mod

    cfg = run.config
    cache = embedding_cache_dir() if cache_dir == "default" else cache_dir
    files = list(cfg.inputs.audio)
    raw = [audio_mod.load_audio(f, what=f"speaker {i + 1} audio") for i, f in enumerate(files)]
    speech = []
    for i, (f, x) in enumerate(zip(files, raw, strict=True)):
        what = f"speaker {i + 1} audio {str(f)!r}"
        audio_mod.check_loudness_length(x, SAMPLE_RATE, what)
        if not np.any(x):
            raise audio_mod.AudioInputError(
                f"{what}: is digital silence (every sample is 0); a speaker track must contain "
                "speech. Fix: check the file / channel."
            )
        speech.append(audio_mod.loudness_norm(x, SAMPLE_RATE, what=what))
    if len(speech) == 1:
        person_tracks = [speech[0]]
        soundtrack = speech[0]
    else:
        combined = audio_mod.combine_speakers(speech[0], speech[1], cfg.inputs.audio_type)
        person_tracks = [combined.person1, combined.person2]
        soundtrack = combined.sum
    tracks = [_pad_to(x, n) for x, n in zip(person_tracks, run.pad_to_samples, strict=True)]
    embs = [audio_mod.embed_audio(x, audio_encoder, cache) for x in tracks]

    prepared = image_mod.prepare_image(cfg.inputs.image, cfg.model.size, cfg.model.buckets)
    H, W = prepared.target_hw
    g = prepared.geometry
    masks = image_mod.ref_target_masks(
        g.src_h, g.src_w, H, W, run.persons, cfg.inputs.bbox, cfg.generation.face_scale
    )
    return PreprocessedInputs(
        cond_image=prepared.cond,
        prepared_image=prepared,
        ref_target_masks=masks,
        audio_embs=embs,
        raw_waveforms=raw,
        speech=speech,
        tracks=tracks,
        soundtrack=np.asarray(soundtrack, dtype=np.float32),
        real_samples=int(len(soundtrack)),
        run=run,
    )


def preprocess(cfg: RunConfig | str | os.PathLike | dict | None = "tiny") -> PreprocessedInputs:
    """Plan, then preprocess the config's inputs with wav2vec2 only (notebook 01)."""
    run = prepare_run(cfg, progress=False)
    return preprocess_inputs(run, load_audio_encoder(run.config, run.device))


def save_preprocessed(pre: PreprocessedInputs, run_dir: str | os.PathLike) -> dict[str, Path]:
    """Write the conditioning of a run for inspection / reuse, atomically:
    audio_embedding.safetensors (person1, person2 ...), cond_image.png (the crop) and
    cond_image.safetensors (cond_image + ref_target_masks)."""
    from PIL import Image
    from safetensors.torch import save_file

    d = Path(run_dir)
    paths = {
        "audio_embedding": d / "audio_embedding.safetensors",
        "cond_png": d / "cond_image.png",
        "cond": d / "cond_image.safetensors",
    }
    embs = {f"person{i + 1}": e.contiguous() for i, e in enumerate(pre.audio_embs)}
    with atomic_path(paths["audio_embedding"]) as tmp:
        save_file(embs, str(tmp), metadata={"fps": str(VIDEO_FPS), "sample_rate": str(SAMPLE_RATE)})
        _readable(tmp)
    with atomic_path(paths["cond_png"]) as tmp:
        Image.fromarray(pre.prepared_image.crop_u8).save(tmp, format="PNG")
    tensors = {"cond_image": pre.cond_image.contiguous(), "ref_target_masks": pre.ref_target_masks}
    with atomic_path(paths["cond"]) as tmp:
        save_file(tensors, str(tmp), metadata={"bucket": pre.prepared_image.bucket})
        _readable(tmp)
    return paths


# --------------------------------------------------------------------------------------------
# 4. Trace
# --------------------------------------------------------------------------------------------


def open_trace(
    trace_dir: str | os.PathLike | None, cfg: RunConfig, **kw: Any
) -> trace.TraceWriter | None:
    """The run's recorder for config.trace (None without a trace_dir or at level "off").

    It writes an mtlib trace directory (mtlib.trace format: index.jsonl, meta.json with the
    resolved config, tensors-*.safetensors) that `load_trace`, `mtlib compare` and `replay`
    read. stats: statistics + hash of the points matching trace.include (by default the
    pipeline's e2e.*, audio.*, image.*, t5.*, clip.* points, not the DiT / VAE internals,
    ~55 us each on a CPU); full: their tensors too (only those matching trace.full when it is
    given). Points named by trace.full are recorded even outside trace.include (at level
    stats as statistics), e.g. "e2e.*.dit.block*" to look inside the DiT. An earlier trace in
    trace_dir is replaced."""
    if trace_dir is None or cfg.trace.level == "off":
        return None
    kw.setdefault("overwrite", True)
    return trace.TraceWriter.from_config(trace_dir, cfg.trace, cfg, **kw)


def _readable(path: Path) -> None:
    """safetensors re-creates the file owner-only: give it the usual umask permissions."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


# --------------------------------------------------------------------------------------------
# 5. The whole run
# --------------------------------------------------------------------------------------------


@dataclass
class GenerationOutput:
    video: torch.Tensor  # [3, N, H, W] in [-1, 1], trimmed to the real audio
    path: Path | str  # the written mp4 (the URL when written through fsspec)
    plan: shapes.ShapePlan
    seed: int
    frames: int  # N
    height: int
    width: int
    fps: int
    duration_s: float  # N / fps
    audio_seconds: float  # the real (unpadded) soundtrack
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage + total
    trace_dir: Path | None = None
    config: RunConfig | None = None  # resolved
    dit_calls: int = 0  # DiT forward calls over all clips (guidance passes x steps x clips)
    teacache_skipped: int | None = None  # of those, calls TeaCache answered from its cache
    # TeaCache's decisions: (call in the clip, rel change of e0 or None, accumulator, computed)
    teacache_decisions: list | None = None
    parallel: str | None = None  # the layout over several devices, e.g. "sequence parallel: 2 ranks"
    rank: int = 0  # which rank returned this (only rank 0 writes the video and the trace)
    dit_options: dict | None = None  # mtlib.runopts.DiTOptions.to_dict(): what ran in which precision
    stage_timings: dict[str, float] = field(default_factory=dict)  # inside "generate" (mtlib.stagetimer)


def summary(out: GenerationOutput) -> str:
    """Lines for the CLI and notebook 03: file, frames, duration, clips, wall times."""
    tm = out.timings
    stages = ", ".join(f"{k} {v:.2f} s" for k, v in tm.items() if k != "total")
    opts = out.dit_options or {}
    loud = []
    if opts.get("random"):
        from mtlib.random_weights import RANDOM_WEIGHTS_NOTE

        loud = [f"*** {RANDOM_WEIGHTS_NOTE} ***"]
    return "\n".join(loud + [
        str(out.path),
        f"{out.frames} frames {out.width}x{out.height} @ {out.fps} fps = {out.duration_s:.2f} s "
        f"(audio {out.audio_seconds:.2f} s), {len(out.plan.clips)} clip(s), seed {out.seed}",
        f"wall {tm.get('total', 0.0):.2f} s ({stages})",
    ] + ([out.parallel] if out.parallel else [])
        + ([f"TeaCache: {out.teacache_skipped} of {out.dit_calls} DiT calls answered from "
            "the cache"] if out.teacache_skipped is not None else [])
        + run_warnings(out.plan)
        + (["model tiny: random weights, the video is noise by design"]
           if out.config is not None and out.config.model.name == "tiny" else [])
        + ([opts_line(opts)] if opts else []) + loud)  # fmt: skip


def opts_line(opts: dict) -> str:
    """The DiT's options of a run record as one line (precision per weight group)."""
    w = opts.get("weight_precisions", {})
    return "DiT weights: " + "; ".join(f"{k} {v}" for k, v in w.items())


def display_video(path: str | os.PathLike, max_embed_bytes: int = 4_000_000):
    """An IPython display object for the mp4: embedded when small, else a link."""
    from IPython.display import HTML, Video

    p = Path(path)
    if p.stat().st_size <= max_embed_bytes:
        return Video(str(p), embed=True, mimetype="video/mp4")
    return HTML(f'<a href="{p.as_posix()}">{p.name}</a> ({p.stat().st_size / 1e6:.1f} MB)')


def _timed(timings: dict, key: str, t0: float) -> float:
    now = time.perf_counter()
    timings[key] = round(now - t0, 4)
    return now


def generate_video(
    cfg: RunConfig | str | os.PathLike | dict | None,
    out: str | os.PathLike,
    trace_dir: str | os.PathLike | None = None,
    progress: bool = True,
    models: LoadedModels | None = None,
    compile: bool = False,
    noise: Any = None,
) -> GenerationOutput:
    """The whole run: plan (refusing bad inputs before loading anything), load, preprocess,
    generate, trim, write `out` (mp4 with sound, atomically). `models`: reuse loaded ones.
    `noise`: a pipeline.NoiseSource giving every random tensor by its trace name (e.g.
    InjectedNoise of a recorded run); default SeededNoise(generation.seed).

    Several devices (mtlib.parallel): with parallel.gpus = N > 1 this process plans, then
    spawns N ranks that run this function and returns rank 0's result; under torchrun every
    process runs it as one rank. Every rank plans, checks and loads (one failure stops all),
    the DiT splits its tokens over the ranks, and only rank 0 writes the video and the trace."""
    from mtlib import parallel
    from mtlib.models.t5 import DEFAULT_NEGATIVE_PROMPT
    from mtlib.pipeline import Models, encode_prompts, generate
    from mtlib.reference.noise import noise_source
    from mtlib.video import write_mp4

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    cfg = _config(cfg)
    rank = parallel.join(cfg)  # None for one device; torchrun / spawned ranks join here
    main = rank is None or rank.is_main
    run = parallel.agree(rank, prepare_run, cfg, progress=progress and main)
    if rank is None and cfg.parallel.gpus > 1:  # the plan is valid: start the ranks
        if models is not None:
            raise ConfigError(
                "generate_video(models=...) with parallel.gpus > 1: loaded models cannot be "
                "handed to spawned ranks. Fix: drop models= (each rank loads its own), or run "
                "under torchrun and load them in every process."
            )
        return parallel.launch.spawn_generate(run.config, out, trace_dir, progress, compile, noise)
    cfg = run.config
    if main:
        _guard_outputs(run, out, trace_dir)
    if rank is not None:
        run.device = rank.device(run.device)
    # the noise source before any weights: a missing CUDA device or trace fails here
    if noise is None:
        noise = noise_source(cfg.generation, run.device, clips=len(run.plan.clips))
    t = _timed(timings, "plan", t_start)
    if models is None:
        models = parallel.agree(
            rank, load_models, cfg, run.device, run.precision, compile=compile, progress=progress and main
        )
    if rank is not None:
        parallel.enable_sequence_parallel(models.dit)
    t = _timed(timings, "load", t)
    options = getattr(models, "options", None)  # models built elsewhere may not say
    dit_options = options.to_dict() if options is not None else None

    writer = open_trace(trace_dir, cfg) if main else None
    try:
        with trace.recording(writer) if writer is not None else contextlib.nullcontext():
            inputs = preprocess_inputs(run, models.audio_encoder)
            t = _timed(timings, "preprocess", t)
            negative = cfg.inputs.negative_prompt or DEFAULT_NEGATIVE_PROMPT
            context, context_null = encode_prompts(
                PromptEncoder(models.text_encoder), cfg.inputs.prompt, negative
            )
            t = _timed(timings, "text", t)
            teacache = None
            s = run.settings
            if cfg.generation.teacache:  # the plan refuses it at text scale 1 (with the reason)
                from mtlib.models.dit import TeaCacheState

                teacache = TeaCacheState.for_size(
                    cfg.model.size, s.sampling_steps, cfg.generation.teacache_thresh
                )
            dit_call = DiTCall(models.dit, teacache)
            # cuDNN first for SDPA on a GPU (1.6x flash at this attention shape on the H100)
            sdpa_order = sdpa_priority("cudnn" if str(run.device).startswith("cuda") else "default")
            with sdpa_order:
                result = generate(
                    Models(dit=dit_call, vae=models.vae, clip=models.clip),
                    inputs.cond_image,
                    inputs.audio_embs,
                    context,
                    context_null,
                    inputs.ref_target_masks,
                    s,
                    noise,
                    plan=run.plan,  # the loop runs the planned clips, checking itself against them
                )
            t = _timed(timings, "generate", t)
            # padded audio made extra frames: keep the ones that show the real speech
            video = result.video[:, : run.output_frames]
            if writer is not None:
                trace.point("output.video", video)
    except BaseException as e:
        if writer is not None:  # what was recorded stays readable, marked as failed
            writer.close()
            writer.meta["status"] = f"failed: {type(e).__name__}"
            writer._write_meta()
        raise

    fps = cfg.generation.fps
    meta = {
        "mtlib": _version(),
        "seed": cfg.generation.seed,
        "config": to_dict(cfg),
        "frames": int(video.shape[1]),
        "plan": {"frame_num": run.plan.frame_num, "video_frames": run.plan.video_frames,
                 "output_frames": run.output_frames, "clips": len(run.plan.clips),
                 "policies": [a.policy for a in run.plan.policy_actions]},
        "dit": dit_options,
    }  # fmt: skip
    if getattr(models, "loras", None):  # the merged LoRA files, by content: path, scale, sha256, params touched
        from mtlib.lora import record as lora_record

        meta["loras"] = lora_record(models.loras)
    if rank is not None:
        meta["parallel"] = {"layout": rank.layout, "ranks": rank.world, "backend": rank.backend}
    if dit_options and dit_options.get("random"):
        from mtlib.random_weights import RANDOM_WEIGHTS_NOTE

        meta["WARNING"] = RANDOM_WEIGHTS_NOTE
    if writer is not None:
        # the trace's meta.json gets the video's metadata too (rewritten at close)
        writer.meta.update(seed=meta["seed"], frames=meta["frames"], plan=meta["plan"], dit=dit_options)
        for key in ("loras", "parallel", "WARNING"):
            if key in meta:
                writer.meta[key] = meta[key]
        writer.meta["timings"] = dict(timings)
        writer.close()
        t = _timed(timings, "trace", t)
    path = Path(out)
    if main:
        path = _write_or_rescue(write_mp4, video, out, fps, inputs.soundtrack, meta)
    t = _timed(timings, "write", t)
    timings["total"] = round(time.perf_counter() - t_start, 4)
    n, (H, W) = int(video.shape[1]), run.target_hw
    return GenerationOutput(
        video=video,
        path=path,  # a Path, or the URL it was uploaded to
        plan=run.plan,
        seed=cfg.generation.seed,
        frames=n,
        height=H,
        width=W,
        fps=fps,
        duration_s=n / fps,
        audio_seconds=inputs.real_samples / SAMPLE_RATE,
        timings=timings,
        trace_dir=Path(trace_dir) if writer is not None else None,
        config=cfg,
        dit_calls=dit_call.calls,
        teacache_skipped=teacache.skipped if teacache is not None else None,
        teacache_decisions=list(teacache.decisions) if teacache is not None else None,
        parallel=rank.layout if rank is not None else None,
        rank=rank.rank if rank is not None else 0,
        dit_options=dit_options,
        stage_timings=dict(result.stages),
    )


def _guard_outputs(run: PreparedRun, out, trace_dir) -> None:
    """Before loading anything: the mp4 and trace destinations are writable and have room;
    the notices of the run (random tiny model, ignored settings, cuts) go to stderr."""
    from mtlib import guards

    H, W = run.target_hw
    need = guards.video_bytes_estimate(run.output_frames, H, W)
    guards.check_output_file(out, need_bytes=need + guards.RUN_HEADROOM_BYTES)
    if trace_dir is not None and run.config.trace.level != "off":
        guards.check_output_dir(trace_dir, "--trace", guards.RUN_HEADROOM_BYTES)
    for line in guards.run_notices(run.config) + run_warnings(run.plan):
        print(line, file=sys.stderr)


def run_warnings(plan: shapes.ShapePlan) -> list[str]:
    """The plan's WARNING notes (cuts, frames beyond training): before the run and in its summary."""
    return [n for n in plan.notes if n.startswith("WARNING")]


def _write_or_rescue(write_mp4, video, out, fps: int, soundtrack, meta: dict) -> Path:
    """Write the mp4 (a local path atomically, a URL through mtlib.io.open_output). What fails
    only now (disk full, folder gone, upload refused) keeps the frames for `mtlib finish`."""
    from mtlib import guards
    from mtlib.io import OutputError, is_output_url, open_output

    try:
        if not is_output_url(out):
            return write_mp4(video, out, fps=fps, audio=(soundtrack, SAMPLE_RATE), metadata=meta)
        with open_output(out) as tmp:
            write_mp4(video, tmp, fps=fps, audio=(soundtrack, SAMPLE_RATE), metadata=meta)
        return out
    except Exception as e:  # OSError, PyAV's errors, a refused upload: the frames are kept
        kept = guards.save_rescue(video, soundtrack, fps, meta, str(out))
        raise OutputError(
            f"--out {str(out)!r}: the video was computed but could not be written "
            f"({type(e).__name__}: {e}). The frames are kept in {str(kept)!r}; finish with: "
            f"mtlib finish {kept} --out {out}"
        ) from None


def sdpa_priority(name: str):
    """SDPA backend preference for the run ("cudnn": cuDNN first, then flash, efficient, math)."""
    from mtlib.bench import attention_backend

    return attention_backend(name)


def _version() -> str:
    from mtlib import __version__

    return __version__


# --------------------------------------------------------------------------------------------
# 6. `mtlib generate`
# --------------------------------------------------------------------------------------------


def add_arguments_generate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", help="reference image (path or URL); default: the config's")
    parser.add_argument(
        "--audio", action="append", help="speech of one speaker; twice for two speakers"
    )
    parser.add_argument("--prompt", help="text prompt; default: the config's")
    parser.add_argument(
        "--config", default="tiny", help="preset (tiny, multitalk-480, ...) or YAML file"
    )
    parser.add_argument(
        "-p", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="config override, e.g. -p generation.sampling_steps=8 (repeatable)",
    )  # fmt: skip
    parser.add_argument("--frame-num", help="frames per clip (4n+1) or 'auto'")
    parser.add_argument("--seed", type=int, help="noise seed")
    parser.add_argument("--out", required=True, help="output .mp4")
    parser.add_argument("--trace", metavar="DIR", help="record the trace into DIR")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the DiT blocks (CUDA)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--lora", action="append", default=[], metavar="PATH:SCALE",
        help="LoRA file merged into the DiT with this scale, e.g. lightx2v.safetensors:1.0 "
        "(repeatable, merged in order; replaces the config's model.loras)",
    )  # fmt: skip
    parser.add_argument(
        "--lora-allow-unmatched", action="store_true",
        help="merge the matching part of a LoRA whose modules match the DiT only partly",
    )  # fmt: skip
    parser.add_argument(
        "--from-official", metavar="ARGS",
        help="the generate_multitalk.py arguments as one quoted string: the config is translated "
             "from them (mtlib config from-official; replaces --config)",
    )  # fmt: skip


def _cli_overrides(args: argparse.Namespace) -> list[str] | dict:
    over: dict[str, Any] = {}
    from mtlib.config import apply_overrides

    base = apply_overrides({}, list(args.overrides))  # validates key=value syntax
    over.update(_flatten(base))
    if args.image:
        over["inputs.image"] = args.image
    if args.audio:
        over["inputs.audio"] = list(args.audio)
    if args.prompt is not None:
        over["inputs.prompt"] = args.prompt
    if args.frame_num is not None:
        fn = args.frame_num
        over["generation.frame_num"] = fn if fn == "auto" else _int(fn, "--frame-num")
    if args.seed is not None:
        over["generation.seed"] = args.seed
    if getattr(args, "lora", None):
        from mtlib.lora import parse_lora_arg

        specs = [parse_lora_arg(text) for text in args.lora]
        over["model.loras"] = [
            {"path": sp.path, "scale": sp.scale, "allow_unmatched": args.lora_allow_unmatched}
            for sp in specs
        ]
    return over


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _int(s: str, what: str) -> int:
    try:
        return int(s)
    except ValueError:
        raise ConfigError(f"{what} {s!r}: expected an integer (4n+1, e.g. 81) or 'auto'.") from None


def run_generate(args: argparse.Namespace) -> int:
    """`mtlib generate`: 0 and the summary on success; 2 (nothing written) when the plan,
    an input, an output or the config is refused (also: the mp4 could not be written after
    the compute; the frames are then kept for `mtlib finish`); 1 when the checkpoints are
    missing or damaged, or NaN / inf appear during the run."""
    from mtlib.guards import NonFiniteError
    from mtlib.weights import WeightsError

    # under torchrun every rank gets every agreed error: rank 0 alone prints it
    err = sys.stderr if os.environ.get("RANK", "0") == "0" else open(os.devnull, "w")  # noqa: SIM115
    try:
        base = args.config
        if getattr(args, "from_official", None):
            from mtlib.reference.command import from_official

            base = from_official(args.from_official).config
        cfg = load_config(base, _cli_overrides(args))
        result = generate_video(
            cfg, args.out, trace_dir=args.trace, progress=not args.no_progress, compile=args.compile
        )
    except PlanError as e:
        print(f"mtlib generate: {e}", file=err)
        return 2
    except (InputError, ConfigError) as e:
        print(f"mtlib generate: {e}", file=err)
        return 2
    except WeightsError as e:  # missing / damaged checkpoints: the message names the fix
        print(f"mtlib generate: {e}", file=err)
        return 1
    except NonFiniteError as e:  # NaN / inf in a checkpoint, a latent or the frames
        print(f"mtlib generate: {e}", file=err)
        return 1
    if result.rank != 0:  # torchrun: rank 0 reports for the run
        return 0
    print(summary(result))
    if result.trace_dir is not None:
        print(f"trace: {result.trace_dir}")
    return 0
