"""Trace the OFFICIAL MultiTalk pipeline where it runs, at mtlib's trace-point names.

    with mtlib.reference.tracing("colab_trace", level="stats"):
        video = pipe.generate(input_data, ...)          # any wan.MultiTalkPipeline

While the block is active, every `MultiTalkPipeline.generate` call of the imported official
`wan` package (an unmodified checkout, commit c1ad840 or compatible) records the points of
mtlib's own run trace (golden README §2.7: `e2e.t5.call0.*`, `e2e.clip<c>.rand.noise`,
`e2e.clip<c>.step<i>.cond`, ..., `e2e.video`) into an mtlib trace directory
(mtlib.trace.TraceWriter), so `mtlib compare` lines it up with an mtlib run or a golden case.

How (hooks and wrappers only; nothing of the official tree is edited or copied): for the
duration of the block, these attributes of the imported classes / modules are replaced by
wrappers that call the original unchanged and record what goes in and out, then restored:

    MultiTalkPipeline.generate / .add_noise     the run, the motion re-noising
    torch.randn / torch.randn_like              only calls made from wan/multitalk.py
    T5EncoderModel.__call__ (+ hooks on .model) e2e.t5.call<k>.ids / .mask / .out
    CLIPModel.visual, WanVAE.encode / .decode   clip_in, clip_fea, vae_latent, x0, decoded
    wan.multitalk.match_and_blend_colors        color_ref, color_corrected
    forward (pre-)hooks on pipe.model           step<i>.t, latent_in, cond / drop_text / ...

Values that are no call's argument (the schedule, the frame mask, the guided `noise_pred`,
the updated latent) are read from the running generate() frame's local variables at the
next hooked event. Recording only reads: a traced run's video equals an untraced one bit
for bit (tests/test_reference_trace.py).

Level "stats": statistics + content hash at every point; always stored in full (so the run
can be replayed anywhere): the random draws (unless draws=False), the contexts, the first
clip's conditioning image, the person masks and the audio embeddings
(`e2e.input.audio_embedding.person<k>`), compactly and exactly (mtlib.trace.codec).
`keep` adds glob patterns stored in full; level "full" stores everything.

Also recorded (mtlib.reference.preprocess_points): the audio preprocessing of
generate_multitalk.py (`audio.raw16k`, `audio.loudnorm`, `audio.input_values`,
`audio.embedding`) and, for keep patterns naming them, the DiT blocks' internals
(`e2e.clip<c>.step<i>.dit.block<k>.{self_attn, cross_attn, audio_cross_attn, out}`).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mtlib.trace import TraceWriter

# points stored in full at every level: what a replay needs (mtlib.reference.noise reads
# the draws, notebook 05 / compare replay the conditioning)
ALWAYS_FULL = (
    "e2e.clip*.rand.*",
    "e2e.clip*.context",
    "e2e.clip*.context_null",
    "e2e.clip0.cond_image",
    "e2e.clip*.ref_target_masks",
    "e2e.input.*",
    "e2e.t5.call*.ids",
    "e2e.t5.call*.mask",
)


class _Patches:
    """setattr with undo, restored in reverse order."""

    def __init__(self) -> None:
        self._undo: list[tuple[Any, str, Any, bool]] = []

    def set(self, owner: Any, name: str, value: Any) -> None:
        had = name in vars(owner) if isinstance(owner, type) else hasattr(owner, name)
        self._undo.append((owner, name, getattr(owner, name, None), had))
        setattr(owner, name, value)

    def restore(self) -> None:
        while self._undo:
            owner, name, old, had = self._undo.pop()
            if had:
                setattr(owner, name, old)
            else:
                delattr(owner, name)


def _stack(values: Any) -> Any:
    """A list of per-sample tensors as one batch tensor (the official code's torch.stack)."""
    import torch

    return torch.stack(list(values)) if isinstance(values, list | tuple) else values


class _Run:
    """Bookkeeping of one generate() call: which clip / step / pass the next event is."""

    def __init__(self, tracer: OfficialTracer, pipe: Any, bound: dict[str, Any]):
        self.tracer = tracer
        self.pipe = pipe
        self.bound = bound
        tg = float(bound.get("text_guide_scale", 5.0))
        self.passes = (
            ("cond", "drop_audio") if math.isclose(tg, 1.0) else ("cond", "drop_text", "uncond")
        )
        self.clip = -1
        self.calls = 0  # DiT calls in the current clip
        self.pending_step: int | None = None  # step whose noise_pred is not recorded yet
        self.context_null_done = False
        self.t5_calls = 0
        self.hooks: list[Any] = []
        self.frame_code = tracer.generate_code

    # ----- helpers ---------------------------------------------------------------------
    def rec(self, name: str, value: Any) -> None:
        self.tracer.writer.record(name, value)

    def clip_name(self, point: str) -> str:
        return f"e2e.clip{self.clip}.{point}"

    def frame_locals(self) -> dict[str, Any]:
        """The local variables of the running official generate() (read only)."""
        f = sys._getframe(1)
        while f is not None and f.f_code is not self.frame_code:
            f = f.f_back
        return dict(f.f_locals) if f is not None else {}

    def flush_step(self, loc: dict[str, Any] | None = None) -> None:
        """After the last pass of a step the official code guides and updates the latent in
        its own body: record noise_pred (and latent_updated after clip 0) at the next event."""
        if self.pending_step is None:
            return
        i = self.pending_step
        self.pending_step = None
        loc = self.frame_locals() if loc is None else loc
        if self.clip > 0 and "latent" in loc:
            self.rec(self.clip_name(f"step{i}.latent_updated"), loc["latent"])
        if "noise_pred" in loc:
            self.rec(self.clip_name(f"step{i}.noise_pred"), loc["noise_pred"])

    # ----- events ----------------------------------------------------------------------
    def on_randn(self, out: Any) -> None:
        """torch.randn in generate(): one per clip, the clip's initial latent."""
        self.flush_step()
        self.clip += 1
        self.calls = 0
        self.context_null_done = False
        if self.clip == 0:
            loc = self.frame_locals()
            for k, emb in enumerate(loc.get("full_audio_embs") or []):
                self.rec(f"e2e.input.audio_embedding.person{k + 1}", emb)
        self.rec(self.clip_name("rand.noise"), out)

    def on_randn_like(self, out: Any) -> None:
        """torch.randn_like in generate(): motion-frame re-noising draws (clips >= 1)."""
        if self.calls == 0:
            self.rec(self.clip_name("rand.motion_init"), out)
            return
        step = self.calls // len(self.passes) - 1
        self.flush_step()
        self.rec(self.clip_name(f"rand.motion_step{step}"), out)

    def add_noise_prefix(self) -> str:
        if self.calls == 0:
            return self.clip_name("add_noise_init")
        return self.clip_name(f"add_noise_step{self.calls // len(self.passes) - 1}")

    def dit_pre(self, module: Any, args: tuple, kwargs: dict) -> None:
        k = self.calls
        step, kind = divmod(k, len(self.passes))
        kind = self.passes[kind]
        if k == 0:
            loc = self.frame_locals()
            ts = loc.get("timesteps")
            if isinstance(ts, list | tuple) and ts:
                import torch

                self.rec(self.clip_name("timesteps"), torch.cat([t.reshape(-1) for t in ts]))
            y = kwargs.get("y")
            self.rec(self.clip_name("mask"), loc["msk"] if "msk" in loc else y[:, :4])
            self.rec(self.clip_name("y"), y)
            self.rec(self.clip_name("audio"), kwargs.get("audio"))
            self.rec(self.clip_name("ref_target_masks"), kwargs.get("ref_target_masks"))
            self.rec(self.clip_name("context"), kwargs["context"][0])
            if "cond_image" in loc:
                self.rec(self.clip_name("cond_image"), loc["cond_image"])
            if self.clip > 0 and "latent_motion_frames" in loc:
                self.rec(self.clip_name("latent_motion_frames"), loc["latent_motion_frames"])
        elif kind == "cond":
            self.flush_step()
        if kind == "cond":
            x = args[0] if args else kwargs.get("x")
            self.rec(self.clip_name(f"step{step}.t"), kwargs.get("t"))
            self.rec(self.clip_name(f"step{step}.latent_in"), x[0])
        if kind == "drop_text" and not self.context_null_done:
            self.context_null_done = True
            self.rec(self.clip_name("context_null"), kwargs["context"][0])

    def dit_post(self, module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        step, kind = divmod(self.calls, len(self.passes))
        self.calls += 1
        self.rec(self.clip_name(f"step{step}.{self.passes[kind]}"), output[0])
        if kind == len(self.passes) - 1:
            self.pending_step = step


class OfficialTracer:
    """The patches of one `tracing()` block; `runs` lists the generate() calls traced."""

    def __init__(self, writer: TraceWriter, wan: Any):
        self.writer = writer
        self.wan = wan
        import wan.multitalk as wm

        self.wm = wm
        self.pipeline_cls = wm.MultiTalkPipeline
        self.generate_code = self.pipeline_cls.generate.__code__
        self.multitalk_file = wm.__file__
        self.run: _Run | None = None
        self.runs: list[dict[str, Any]] = []
        self._patches = _Patches()
        # files whose library calls are the official audio preprocessing (preprocess_points)
        self.script_names = {"generate_multitalk.py"}
        self.block_patterns: tuple[str, ...] = ()  # keep patterns naming DiT internals

    # ----- installation ----------------------------------------------------------------
    def install(self) -> None:
        import torch
        import wan.modules.clip as clip_mod
        import wan.modules.t5 as t5_mod
        import wan.modules.vae as vae_mod

        p = self._patches
        cls = self.pipeline_cls
        p.set(cls, "generate", self._wrap_generate(cls.generate))
        p.set(cls, "add_noise", self._wrap_add_noise(cls.add_noise))
        p.set(torch, "randn", self._wrap_draw(torch.randn, "on_randn"))
        p.set(torch, "randn_like", self._wrap_draw(torch.randn_like, "on_randn_like"))
        p.set(t5_mod.T5EncoderModel, "__call__", self._wrap_t5(t5_mod.T5EncoderModel.__call__))
        p.set(clip_mod.CLIPModel, "visual", self._wrap_clip(clip_mod.CLIPModel.visual))
        p.set(vae_mod.WanVAE, "encode", self._wrap_vae_encode(vae_mod.WanVAE.encode))
        p.set(vae_mod.WanVAE, "decode", self._wrap_vae_decode(vae_mod.WanVAE.decode))
        p.set(self.wm, "match_and_blend_colors", self._wrap_colors(self.wm.match_and_blend_colors))
        from mtlib.reference.preprocess_points import install_audio

        install_audio(self, p)  # audio.* points of generate_multitalk.py's preprocessing

    def uninstall(self) -> None:
        self._patches.restore()

    # ----- wrappers --------------------------------------------------------------------
    def _wrap_generate(self, orig):
        sig = inspect.signature(orig)
        tracer = self

        def generate(pipe, *args, **kwargs):
            if tracer.run is not None:  # nested call: trace the outer one only
                return orig(pipe, *args, **kwargs)
            bound = sig.bind(pipe, *args, **kwargs)
            bound.apply_defaults()
            values = dict(bound.arguments)
            values.pop("self", None)
            run = _Run(tracer, pipe, values)
            from mtlib.reference.environment import generate_settings

            info = {"settings": generate_settings(pipe, values), "started": time.time()}
            tracer.runs.append(info)
            tracer.writer.meta.setdefault("official_runs", []).append(info["settings"])
            tracer.writer._write_meta()
            model = pipe.model
            run.hooks = [
                model.register_forward_pre_hook(run.dit_pre, with_kwargs=True),
                model.register_forward_hook(run.dit_post, with_kwargs=True),
            ]
            from mtlib.reference.preprocess_points import hook_blocks

            run.hooks += hook_blocks(run, model, tracer.block_patterns)
            tracer.run = run
            try:
                video = orig(pipe, *args, **kwargs)
                if video is not None:
                    run.rec("e2e.video", video)
                return video
            finally:
                tracer.run = None
                for h in run.hooks:
                    h.remove()
                info["seconds"] = round(time.time() - info.pop("started"), 3)

        generate.__wrapped__ = orig
        return generate

    def _from_official(self) -> bool:
        """Is the caller of the wrapped torch function the official generate()?"""
        f = sys._getframe(2)
        return (
            f.f_globals.get("__name__") == self.wm.__name__
            or f.f_code.co_filename == self.multitalk_file
        )

    def _wrap_draw(self, orig, event: str):
        tracer = self

        def draw(*args, **kwargs):
            out = orig(*args, **kwargs)
            run = tracer.run
            if run is not None and tracer._from_official():
                getattr(run, event)(out)
            return out

        draw.__wrapped__ = orig
        return draw

    def _wrap_add_noise(self, orig):
        tracer = self

        def add_noise(pipe, original_samples, noise, timesteps):
            out = orig(pipe, original_samples, noise, timesteps)
            run = tracer.run
            if run is not None:
                prefix = run.add_noise_prefix()
                run.rec(f"{prefix}.t", timesteps)
                run.rec(f"{prefix}.out", out)
            return out

        add_noise.__wrapped__ = orig
        return add_noise

    def _wrap_t5(self, orig):
        tracer = self

        def call(encoder, *args, **kwargs):
            run = tracer.run
            if run is None:
                return orig(encoder, *args, **kwargs)
            prefix = f"e2e.t5.call{run.t5_calls}"
            run.t5_calls += 1

            def pre(_m, inputs):
                if len(inputs) >= 2:
                    run.rec(f"{prefix}.ids", inputs[0])
                    run.rec(f"{prefix}.mask", inputs[1])

            def post(_m, _inputs, output):
                run.rec(f"{prefix}.out", output)

            handles = [
                encoder.model.register_forward_pre_hook(pre),
                encoder.model.register_forward_hook(post),
            ]
            try:
                return orig(encoder, *args, **kwargs)
            finally:
                for h in handles:
                    h.remove()

        call.__wrapped__ = orig
        return call

    def _wrap_clip(self, orig):
        tracer = self

        def visual(clip, videos):
            run = tracer.run
            if run is not None:
                run.rec(run.clip_name("clip_in"), videos)
            out = orig(clip, videos)
            if run is not None:
                run.rec(run.clip_name("clip_fea"), out)
            return out

        visual.__wrapped__ = orig
        return visual

    def _wrap_vae_encode(self, orig):
        tracer = self

        def encode(vae, videos):
            out = orig(vae, videos)
            run = tracer.run
            if run is not None:
                run.rec(run.clip_name("vae_latent"), _stack(out))
            return out

        encode.__wrapped__ = orig
        return encode

    def _wrap_vae_decode(self, orig):
        tracer = self

        def decode(vae, zs):
            run = tracer.run
            if run is not None:
                run.flush_step()
                run.rec(run.clip_name("x0"), _stack(zs))
            out = orig(vae, zs)
            if run is not None:
                run.rec(run.clip_name("decoded"), _stack(out))
            return out

        decode.__wrapped__ = orig
        return decode

    def _wrap_colors(self, orig):
        tracer = self

        def match_and_blend_colors(source, reference, strength):
            out = orig(source, reference, strength)
            run = tracer.run
            if run is not None:
                run.rec(run.clip_name("color_ref"), reference)
                run.rec(run.clip_name("color_corrected"), out)
            return out

        match_and_blend_colors.__wrapped__ = orig
        return match_and_blend_colors


DRAWS = "e2e.clip*.rand.*"


def full_patterns(
    level: str, keep: tuple[str, ...] | list[str] = (), draws: bool = True
) -> tuple[str, ...]:
    """The globs stored in full: everything at level "full", else ALWAYS_FULL + keep
    (without the random draws when `draws` is False)."""
    if level == "full":
        if not draws:
            raise ValueError(
                "tracing draws=False: only at level 'stats' (level 'full' stores every tensor)."
            )
        return ("*",)
    if level != "stats":
        raise ValueError(f"tracing level {level!r}: must be 'stats' or 'full'.")
    return tuple(p for p in ALWAYS_FULL if draws or p != DRAWS) + tuple(keep)


DRAWS_LEFT_OUT = (
    "left out (tracing draws=False / --no-draws): replay with generation.noise=cuda and the "
    "run's seed on the GPU type the trace was made on; generation.noise=trace cannot use this trace"
)


@contextlib.contextmanager
def tracing(
    out_dir: str | Path,
    level: str = "stats",
    keep: tuple[str, ...] | list[str] = (),
    include: tuple[str, ...] | list[str] = ("*",),
    meta: dict | None = None,
    overwrite: bool = False,
    draws: bool = True,
    compact: bool = True,
    script: str | None = None,
) -> Iterator[OfficialTracer]:
    """Trace every official MultiTalkPipeline.generate() run inside the block into `out_dir`.

    level: "stats" (statistics + hash everywhere, ALWAYS_FULL stored) or "full" (every
    tensor); keep: extra globs stored in full; include: globs of points recorded at all
    (mtlib.trace.TraceWriter semantics). meta: extra entries for meta.json (the CLI puts the
    official command line there). The official `wan` package must be importable (see
    mtlib.reference.environment.import_official); its version and the environment (GPU,
    attention backend, dtypes, package versions) go into meta.json under "reference".

    draws: store the random draws (default; any device can replay them with
    generation.noise=trace). False leaves them out (statistics only): Gaussian float32 draws
    do not compress (~27 bits a value; 8.4 MB per 81-frame 480p clip, more per streaming
    clip), and a replay on the same GPU type draws them itself (generation.noise=cuda).
    compact: store duplicates once and exact smaller encodings (mtlib.trace.codec).
    script: file name of the official script when it is not generate_multitalk.py (its
    library calls are the audio preprocessing: mtlib.reference.preprocess_points). Keep
    patterns containing "dit." add the DiT blocks' internals (same module)."""
    from mtlib.reference.environment import import_official, reference_environment

    wan = import_official()
    full = full_patterns(level, keep, draws)
    info = {"reference": reference_environment(), "source": "official", **(meta or {})}
    info["draws"] = "stored" if draws else DRAWS_LEFT_OUT
    writer = TraceWriter(
        out_dir, level, full, meta=info, include=include, overwrite=overwrite, compact=compact
    )
    tracer = OfficialTracer(writer, wan)
    from mtlib.reference.preprocess_points import block_patterns

    tracer.block_patterns = block_patterns(keep)
    if script:
        tracer.script_names.add(Path(script).name)
    tracer.install()
    failed: BaseException | None = None
    try:
        yield tracer
    except BaseException as e:
        failed = e
        raise
    finally:
        tracer.uninstall()
        writer.close()
        if failed is not None:  # what was recorded stays readable, marked as failed
            writer.meta["status"] = f"failed: {type(failed).__name__}"
            writer._write_meta()
