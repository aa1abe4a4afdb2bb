"""From a RunConfig to an mp4 with sound: plan, load, preprocess, generate, write.

Where it sits: the top of the flow, above every other module. `generate_video(cfg, out)` is
what `mtlib generate` (mtlib/cli/generate.py) and notebook 03 call:

    prepare_run(cfg)      probe the input files and build the shape plan (mtlib.plan); an
                          invalid plan raises PlanError with the diagnosis BEFORE any weights
                          load; frame_num 'auto' / the short-audio policy are resolved here
    load_models(cfg)      checkpoints of config.model.weights (tiny: random checkpoints written
                          in the real file formats by mtlib.weights.tiny) through the real loaders
    preprocess_inputs()   speech -> loudness -> (2 speakers: para/add) -> silence padding as
                          planned -> wav2vec2 embedding (cached); image -> bucket crop ->
                          person masks on the latent grid
    encode_prompts()      T5 on [prompt, negative prompt]
    loop.generate()       the clip / streaming loop; noise from generation.noise (cpu: SeededNoise(seed),
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

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtlib import plan as planning  # the plan package (formerly mtlib.plan)
from mtlib import trace
from mtlib.config import ConfigError, RunConfig, to_dict
from mtlib.frames import SAMPLE_RATE  # every waveform in mtlib is at 16 kHz
from mtlib.run.load import DiTCall, LoadedModels, PromptEncoder, load_models
from mtlib.run.prepare import PreparedRun, _config, prepare_run
from mtlib.run.preprocess import preprocess_inputs

if TYPE_CHECKING:
    import torch


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


# --------------------------------------------------------------------------------------------
# 5. The whole run
# --------------------------------------------------------------------------------------------


@dataclass
class GenerationOutput:
    video: torch.Tensor  # [3, N, H, W] in [-1, 1], trimmed to the real audio
    path: Path | str  # the written mp4 (the URL when written through fsspec)
    plan: planning.ShapePlan
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
    parallel: str | None = (
        None  # the layout over several devices, e.g. "sequence parallel: 2 ranks"
    )
    rank: int = 0  # which rank returned this (only rank 0 writes the video and the trace)
    dit_options: dict | None = (
        None  # mtlib.accel.options.DiTOptions.to_dict(): what ran in which precision
    )
    stage_timings: dict[str, float] = field(
        default_factory=dict
    )  # inside "generate" (mtlib.run.stagetimer)


def summary(out: GenerationOutput) -> str:
    """Lines for the CLI and notebook 03: file, frames, duration, clips, wall times."""
    tm = out.timings
    stages = ", ".join(f"{k} {v:.2f} s" for k, v in tm.items() if k != "total")
    opts = out.dit_options or {}
    loud = []
    if opts.get("random"):
        from mtlib.weights.random import RANDOM_WEIGHTS_NOTE

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
    from mtlib.media.video import write_mp4
    from mtlib.models.t5 import DEFAULT_NEGATIVE_PROMPT
    from mtlib.reference.noise import noise_source
    from mtlib.run.loop import Models, encode_prompts, generate

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
        from mtlib.run.ranks import spawn_generate

        return spawn_generate(run.config, out, trace_dir, progress, compile, noise)
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
            rank,
            load_models,
            cfg,
            run.device,
            run.precision,
            compile=compile,
            progress=progress and main,
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
    if getattr(
        models, "loras", None
    ):  # the merged LoRA files, by content: path, scale, sha256, params touched
        from mtlib.weights.lora import record as lora_record

        meta["loras"] = lora_record(models.loras)
    if rank is not None:
        meta["parallel"] = {"layout": rank.layout, "ranks": rank.world, "backend": rank.backend}
    if dit_options and dit_options.get("random"):
        from mtlib.weights.random import RANDOM_WEIGHTS_NOTE

        meta["WARNING"] = RANDOM_WEIGHTS_NOTE
    if writer is not None:
        # the trace's meta.json gets the video's metadata too (rewritten at close)
        writer.meta.update(
            seed=meta["seed"], frames=meta["frames"], plan=meta["plan"], dit=dit_options
        )
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
    from mtlib.plan import guards

    H, W = run.target_hw
    need = guards.video_bytes_estimate(run.output_frames, H, W)
    guards.check_output_file(out, need_bytes=need + guards.RUN_HEADROOM_BYTES)
    if trace_dir is not None and run.config.trace.level != "off":
        guards.check_output_dir(trace_dir, "--trace", guards.RUN_HEADROOM_BYTES)
    for line in guards.run_notices(run.config) + run_warnings(run.plan):
        print(line, file=sys.stderr)


def run_warnings(plan: planning.ShapePlan) -> list[str]:
    """The plan's WARNING notes (cuts, frames beyond training): before the run and in its summary."""
    return [n for n in plan.notes if n.startswith("WARNING")]


def _write_or_rescue(write_mp4, video, out, fps: int, soundtrack, meta: dict) -> Path:
    """Write the mp4 (a local path atomically, a URL through mtlib.io.open_output). What fails
    only now (disk full, folder gone, upload refused) keeps the frames for `mtlib finish`."""
    from mtlib.io import OutputError, is_output_url, open_output
    from mtlib.plan import guards

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
    from mtlib.accel.bench import attention_backend

    return attention_backend(name)


def _version() -> str:
    from mtlib import __version__

    return __version__
