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
    pipeline.generate()   the clip / streaming loop, noise from SeededNoise(seed)
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
    """fp32 on the CPU (bf16 matmuls there are slow and the golden parity is fp32). fp8 is a
    GPU speed option: asked for elsewhere, it is refused rather than silently dropped."""
    if str(device).startswith("cuda"):
        return precision
    if precision == "fp8":
        raise ConfigError(
            f"model.precision: 'fp8' needs a CUDA GPU (fp8 tensor cores), but the run's device "
            f"is {device}. Use model.precision=reference, or model.device=cuda on a Hopper-class GPU."
        )
    return "fp32"


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

    cfg = _config(cfg)
    plan = shapes.plan(cfg)  # reads file headers only
    if not plan.valid:
        raise PlanError(plan)
    resolved = cfg.replace(**{"generation.frame_num": int(plan.frame_num)})
    # bbox pixel ranges need the source size: checked here (the plan only counts the boxes)
    if cfg.inputs.bbox is not None:
        _check_bbox(cfg.inputs.bbox, plan.persons, plan.src_hw[0], plan.src_hw[1])
    device = resolve_device(cfg.model.device)
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
    layout: Any = None  # mtlib.weights.WeightsLayout the files came from
    device: str = "cpu"
    precision: str = "fp32"
    seconds: float = 0.0


def load_models(
    cfg: RunConfig | str,
    device: str | None = None,
    precision: str | None = None,
    compile: bool = False,
) -> LoadedModels:
    """The five networks of the config, loaded from a checkpoint layout (mtlib.weights).

    model "tiny": random checkpoints in the real file names/formats, written once under
    model.weights.tiny_dir (default <project>/.cache/tiny-weights), loaded by the SAME loaders
    as the real ones with the tiny configs. model "multitalk-14b": the published directories
    (model.weights.*_dir, else the hub cache). compile: torch.compile the DiT blocks (CUDA).
    """
    import torch

    from mtlib import weights
    from mtlib.models import clip as clip_mod
    from mtlib.models import dit as dit_mod
    from mtlib.models import t5 as t5_mod
    from mtlib.models import vae as vae_mod

    cfg = _config(cfg)
    t0 = time.perf_counter()
    device = resolve_device(device or cfg.model.device)
    precision = effective_precision(device, precision or cfg.model.precision)
    name = cfg.model.name
    layout = weights.layout_for_config(cfg)
    if name == "tiny":
        dit_config = dit_mod.CONFIGS["tiny"]
    else:  # what WanModel.from_pretrained builds from the Wan directory's config.json
        dit_config = dit_mod.DiTConfig.from_config_json(json.loads(layout.dit_config.read_text()))
    # fp8 = the reference dtype policy for every network, then fp8 DiT blocks on top
    load_precision = "reference" if precision == "fp8" else precision
    dit = dit_mod.load_dit(
        layout.dit_files(), config=dit_config, device=device, precision=load_precision
    )
    if precision == "fp8":
        from mtlib.fp8 import enable_fp8_dit

        enable_fp8_dit(dit, device)
    if compile and str(device).startswith("cuda"):
        dit = dit_mod.compile_blocks(dit)
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
        time.perf_counter() - t0,
    )  # fmt: skip


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
    path: Path  # the written mp4
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


def summary(out: GenerationOutput) -> str:
    """Lines for the CLI and notebook 03: file, frames, duration, clips, wall times."""
    tm = out.timings
    stages = ", ".join(f"{k} {v:.2f} s" for k, v in tm.items() if k != "total")
    return "\n".join([
        str(out.path),
        f"{out.frames} frames {out.width}x{out.height} @ {out.fps} fps = {out.duration_s:.2f} s "
        f"(audio {out.audio_seconds:.2f} s), {len(out.plan.clips)} clip(s), seed {out.seed}",
        f"wall {tm.get('total', 0.0):.2f} s ({stages})",
    ] + ([f"TeaCache: {out.teacache_skipped} of {out.dit_calls} DiT calls answered from "
          "the cache"] if out.teacache_skipped is not None else []))  # fmt: skip


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
) -> GenerationOutput:
    """The whole run: plan (refusing bad inputs before loading anything), load, preprocess,
    generate, trim, write `out` (mp4 with sound, atomically). `models`: reuse loaded ones."""
    from mtlib.models.t5 import DEFAULT_NEGATIVE_PROMPT
    from mtlib.pipeline import Models, SeededNoise, encode_prompts, generate
    from mtlib.video import write_mp4

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    run = prepare_run(cfg, progress=progress)
    cfg = run.config
    t = _timed(timings, "plan", t_start)
    if models is None:
        models = load_models(cfg, run.device, run.precision, compile=compile)
    t = _timed(timings, "load", t)

    writer = open_trace(trace_dir, cfg)
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
            result = generate(
                Models(dit=dit_call, vae=models.vae, clip=models.clip),
                inputs.cond_image,
                inputs.audio_embs,
                context,
                context_null,
                inputs.ref_target_masks,
                s,
                SeededNoise(cfg.generation.seed),
                plan=run.plan,  # the loop runs the planned clips and checks itself against them
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
    }  # fmt: skip
    if writer is not None:
        # the trace's meta.json gets the video's metadata too (rewritten at close)
        writer.meta.update(seed=meta["seed"], frames=meta["frames"], plan=meta["plan"])
        writer.meta["timings"] = dict(timings)
        writer.close()
        t = _timed(timings, "trace", t)
    path = write_mp4(video, out, fps=fps, audio=(inputs.soundtrack, SAMPLE_RATE), metadata=meta)
    t = _timed(timings, "write", t)
    timings["total"] = round(time.perf_counter() - t_start, 4)
    n, (H, W) = int(video.shape[1]), run.target_hw
    return GenerationOutput(
        video=video,
        path=Path(path),
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
    )


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
    an input or the config is refused; 1 when the checkpoints are missing or damaged."""
    from mtlib.weights import WeightsError

    try:
        cfg = load_config(args.config, _cli_overrides(args))
        result = generate_video(
            cfg, args.out, trace_dir=args.trace, progress=not args.no_progress, compile=args.compile
        )
    except PlanError as e:
        print(f"mtlib generate: {e}", file=sys.stderr)
        return 2
    except (InputError, ConfigError) as e:
        print(f"mtlib generate: {e}", file=sys.stderr)
        return 2
    except WeightsError as e:  # missing / damaged checkpoints: the message names the fix
        print(f"mtlib generate: {e}", file=sys.stderr)
        return 1
    print(summary(result))
    if result.trace_dir is not None:
        print(f"trace: {result.trace_dir}")
    return 0
