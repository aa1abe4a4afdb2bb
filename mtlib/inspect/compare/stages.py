"""Replay: is the difference made here, or carried from upstream? Re-run one stage (`STAGES`) on
the inputs recorded in trace A and compare with A's outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtlib.inspect.compare.report import Comparison, _describe, compare
from mtlib.io import InputError
from mtlib.trace import Trace, load_trace


@dataclass(frozen=True)
class Stage:
    """A piece of the pipeline that can be re-run from recorded inputs.

    `inputs` / `outputs` are the names of a stage traced alone (golden single-stage cases:
    `dit.in.x` ... `dit.out`); `e2e_inputs` / `e2e_outputs` the names the same tensors carry
    inside a pipeline trace, relative to a scope given as `replay(prefix=...)`
    (`e2e.clip0.step1.` + `latent_in`); a name missing there is looked up in the enclosing
    scopes (`context` of a step is `e2e.clip0.context`)."""

    name: str
    inputs: tuple[str, ...]  # point names of the input tensors, in call order
    outputs: tuple[str, ...]  # point names of what the stage produces
    # input tensors (positional, in `inputs` order) -> one tensor, a sequence in `outputs`
    # order, or {output name: tensor}. Networks register theirs; None until they do.
    run: Callable[..., Any] | None = None
    e2e_inputs: tuple[str, ...] = ()  # same inputs, pipeline-trace names (relative to a scope)
    e2e_outputs: tuple[str, ...] = ()  # same outputs, pipeline-trace names
    # the pipeline-trace inputs differ in kind (vae.encode: cond_image + mask, not the
    # zero-padded video): a callable for them; None = `run`
    e2e_run: Callable[..., Any] | None = None


# Stage boundaries of the golden data (golden README §2); `register_model_stages` fills in
# the callables from loaded networks.
STAGES: dict[str, Stage] = {}


def register_stage(
    name: str,
    inputs: Iterable[str],
    outputs: Iterable[str],
    run: Callable[..., Any] | None = None,
    e2e_inputs: Iterable[str] = (),
    e2e_outputs: Iterable[str] = (),
    e2e_run: Callable[..., Any] | None = None,
) -> Stage:
    """Add or replace a stage in STAGES (networks call this with their forward)."""
    stage = Stage(
        name, tuple(inputs), tuple(outputs), run, tuple(e2e_inputs), tuple(e2e_outputs), e2e_run
    )
    STAGES[name] = stage
    return stage


_DIT_IN = [
    "dit.in.x",
    "dit.in.t",
    "dit.in.context",
    "dit.in.clip_fea",
    "dit.in.y",
    "dit.in.audio",
    "dit.in.ref_target_masks",
]


def _dit_e2e_inputs(context: str) -> list[str]:
    return ["latent_in", "t", context, "clip_fea", "y", "audio", "ref_target_masks"]


def _register_boundaries() -> None:
    """The stages with their names only (callables: `register_model_stages`)."""
    register_stage("audio.encoder", ["audio.input_values"], ["audio.embedding"])
    register_stage(
        "clip", ["clip.input"], ["clip.out"], e2e_inputs=["clip_in"], e2e_outputs=["clip_fea"]
    )
    register_stage(
        "t5",
        ["t5.ids", "t5.mask"],
        ["t5.out_full"],
        e2e_inputs=["ids", "mask"],
        e2e_outputs=["out"],
    )  # e2e scope: e2e.t5.call0.
    register_stage(
        "vae.encode",
        ["vae.encode.in"],
        ["vae.y"],
        e2e_inputs=["cond_image", "mask"],
        e2e_outputs=["vae_latent"],
    )
    register_stage(
        "vae.decode",
        ["vae.decode.in"],
        ["vae.decode.out"],
        e2e_inputs=["x0"],
        e2e_outputs=["decoded"],
    )
    # the DiT passes of one denoising step (e2e scope: e2e.clip<c>.step<i>.); alone, each
    # golden dit case records its call's own inputs as dit.in.*
    register_stage(
        "dit", _DIT_IN, ["dit.out"], e2e_inputs=_dit_e2e_inputs("context"), e2e_outputs=["cond"]
    )
    register_stage(
        "dit.drop_text",
        _DIT_IN,
        ["dit.out"],
        e2e_inputs=_dit_e2e_inputs("context_null"),
        e2e_outputs=["drop_text"],
    )
    register_stage(
        "dit.uncond",
        _DIT_IN,
        ["dit.out"],
        e2e_inputs=_dit_e2e_inputs("context_null"),
        e2e_outputs=["uncond"],
    )
    register_stage(
        "dit.drop_audio",
        _DIT_IN,
        ["dit.out"],
        e2e_inputs=_dit_e2e_inputs("context"),
        e2e_outputs=["drop_audio"],
    )


_register_boundaries()

# the reference's DiT passes of one step -> their stage (cond, drop_text, uncond with text
# guidance; cond, drop_audio when the text scale is 1)
DIT_PASSES = {"cond": "dit", "drop_text": "dit.drop_text", "uncond": "dit.uncond",
              "drop_audio": "dit.drop_audio"}  # fmt: skip


def dit_stage(kind: str) -> str:
    """The STAGES name of a DiT pass kind (a golden case's dit_passes_per_step entry)."""
    if kind not in DIT_PASSES:
        raise InputError(
            f"replay: no DiT pass kind {kind!r}. The reference's passes are "
            f"{', '.join(DIT_PASSES)} (stages {', '.join(DIT_PASSES.values())})."
        )
    return DIT_PASSES[kind]


def register_model_stages(models: Any) -> dict[str, Stage]:
    """Bind the STAGES to loaded networks so `replay` can re-run them.

    `models`: anything with the attributes (or dict keys) of generation.LoadedModels that
    are needed: dit (MultiTalkDiT), vae (CausalVAE), clip (visual CLIP), text_encoder
    (T5TextEncoder), audio_encoder (wav2vec AudioEncoder); absent ones are skipped. The
    callables cast their inputs the way the pipeline does (fp32 latent, the DiT's dtype for
    its conditioning), so a replay on the same device / precision reproduces the run.
    Returns the stages bound (also registered in STAGES, replacing earlier bindings)."""
    import torch

    def get(name: str) -> Any:
        return models.get(name) if isinstance(models, dict) else getattr(models, name, None)

    bound: dict[str, Stage] = {}

    def bind(name: str, run: Callable[..., Any], e2e_run: Callable[..., Any] | None = None) -> None:
        st = STAGES[name]
        bound[name] = register_stage(
            name, st.inputs, st.outputs, run, st.e2e_inputs, st.e2e_outputs, e2e_run
        )

    clip, vae, dit, text, audio = (
        get(n) for n in ("clip", "vae", "dit", "text_encoder", "audio_encoder")
    )
    if clip is not None:
        bind("clip", lambda cond: clip.encode_image(cond))  # [1, 3, F, H, W] -> [1, 257, C]
    if vae is not None:

        def encode_clip(cond_image, mask):
            # the pipeline encodes the cond frames followed by zeros up to the clip's frames
            from mtlib.frames import pixel_frames

            frames = pixel_frames(mask.shape[2])  # mask [1, 4, T, h, w]
            zeros = cond_image.new_zeros(
                *cond_image.shape[:2], frames - cond_image.shape[2], *cond_image.shape[3:]
            )
            return vae.encode(torch.cat([cond_image, zeros], dim=2))

        bind("vae.encode", lambda video: vae.encode(video), encode_clip)
        bind("vae.decode", lambda latent: vae.decode(latent).float())
    if dit is not None:

        def dit_pass(silent_audio: bool):
            def run(latent, t, context, clip_fea, y, audio, ref_target_masks):
                p = next(dit.parameters())
                if silent_audio:  # the reference's null audio: ONE silent person
                    audio = torch.zeros_like(audio)[-1:]
                # [16, T, h, w] -> tokens after the 1x2x2 patching
                seq_len = latent.shape[1] * latent.shape[2] * latent.shape[3] // 4
                out = dit(
                    latent.to(p.device, torch.float32),
                    t.to(p.device),
                    context.to(p.device, p.dtype),
                    clip_fea.to(p.device, p.dtype),
                    y.to(p.device, p.dtype),
                    audio.to(p.device, p.dtype),
                    ref_target_masks.to(p.device, torch.float32),
                    seq_len,
                )
                return out.float()

            return run

        bind("dit", dit_pass(False))
        bind("dit.drop_text", dit_pass(False))
        bind("dit.uncond", dit_pass(True))
        bind("dit.drop_audio", dit_pass(True))
    if text is not None:

        def t5(ids, mask):
            device = next(text.model.parameters()).device
            return text.model(ids.to(device), mask.to(device))  # [B, text_len, dim]

        bind("t5", t5)
    if audio is not None:

        def embed(input_values):
            from mtlib.frames import embedding_frames

            seq_len = embedding_frames(input_values.shape[-1])  # int(N / 16000 * 25)
            hidden = audio.forward(input_values.reshape(1, -1), seq_len)
            return (
                torch.stack(hidden[1:], dim=1)[0].transpose(0, 1).float().cpu()
            )  # [T, layers, hidden]

        bind("audio.encoder", embed)
    return bound


def _resolve_in_scope(a: Trace, prefix: str, name: str) -> str | None:
    """`prefix + name`, else the same name in the enclosing scopes (e2e.clip0.step1.context
    -> e2e.clip0.context), else None."""
    parts = prefix.rstrip(".").split(".") if prefix else []
    for k in range(len(parts), -1, -1):
        candidate = ".".join(parts[:k] + [name])
        if candidate in a:
            return candidate
    return None


def stage_points(a: Trace, stage: Stage, prefix: str = "") -> tuple[list[str], list[str], bool]:
    """(input names, output names, pipeline naming?) of `stage` in trace A under `prefix`.

    The single-stage names (`prefix + inputs`) when A has them, else the pipeline names
    (`e2e_inputs` looked up from the scope `prefix` outwards). Raises InputError naming what
    is missing and, when `prefix` is empty, the scopes of A where the stage ran."""
    plain_in = [prefix + n for n in stage.inputs]
    plain_out = [prefix + n for n in stage.outputs]
    if all(n in a for n in plain_in + plain_out) or not stage.e2e_outputs:
        missing = [n for n in plain_in + plain_out if n not in a]
        if missing:
            raise InputError(f"replay: trace A has no point {missing[0]!r} (stage {stage.name!r}).")
        return plain_in, plain_out, False
    ins = [_resolve_in_scope(a, prefix, n) for n in stage.e2e_inputs]
    outs = [prefix + n for n in stage.e2e_outputs]
    missing = [prefix + n for n, r in zip(stage.e2e_inputs, ins, strict=True) if r is None]
    missing += [n for n in outs if n not in a]
    if missing:
        suffix = "." + stage.e2e_outputs[0]
        scopes = [
            n[: -len(stage.e2e_outputs[0])] for n in a.names if n.endswith(suffix) and "#" not in n
        ]
        hint = (
            f" Stage {stage.name!r} ran in these scopes of A: {', '.join(scopes[:8])}"
            f"{' ...' if len(scopes) > 8 else ''}; pass one as prefix=."
            if scopes
            else ""
        )
        raise InputError(
            f"replay: trace A has no point {missing[0]!r} (stage {stage.name!r}, "
            f"prefix {prefix!r}): neither {plain_out[0]!r} (the stage alone) nor the "
            f"pipeline's names.{hint}"
        )
    return [n for n in ins if n is not None], outs, True


@dataclass
class ReplayResult:
    """Outputs of a stage re-run on A's recorded inputs, compared with A's recorded outputs."""

    stage: Stage
    comparison: Comparison  # replayed outputs (A side) vs A's recorded outputs (B side)
    inputs_differ: list[str] | None  # inputs that differ between A and trace_b (None: no B)
    outputs_differ: list[str] | None = None  # outputs that differ between A and trace_b
    inputs: list[str] = field(default_factory=list)  # the point names the stage read in A

    @property
    def local(self) -> bool:
        """True when this stage, given the very same inputs, computes something else here:
        the difference is made by the stage itself."""
        return not self.comparison.passed

    @property
    def verdict(self) -> str:
        name = self.stage.name
        if self.local:
            fd = self.comparison.first_divergence
            r = self.comparison[fd] if fd else None
            how = f" ({_describe(r)})" if r is not None else ""
            return (
                f"stage {name!r}: LOCAL DIFFERENCE IN THIS STAGE: on A's recorded inputs it does "
                f"not reproduce A's outputs (first: {fd}{how}). Look inside this stage."
            )
        upstream = ""
        if self.inputs_differ:
            upstream = (
                f" Its INPUTS DIFFER between the runs ({', '.join(self.inputs_differ)}): the "
                "difference is CARRIED FROM UPSTREAM."
            )
        elif self.inputs_differ == [] and self.outputs_differ:
            upstream = (
                " Its inputs agree between the runs but its outputs do not: the other run "
                "computes this stage differently (replay it on B's side)."
            )
        elif self.inputs_differ == []:
            upstream = " Its inputs agree between the runs too."
        return (
            f"stage {name!r} reproduces A's outputs from A's inputs (no local difference): any "
            f"difference at its outputs is carried in from upstream.{upstream}"
        )


def replay(
    trace_a: Trace | str | Path,
    stage: str | Stage,
    run_stage: Callable[..., Any] | None = None,
    tolerances: dict[str, float] | None = None,
    prefix: str = "",
    trace_b: Trace | str | Path | None = None,
) -> ReplayResult:
    """Re-run `stage` here on the inputs recorded in trace A; compare with A's outputs.

    `stage`: a STAGES name (bound to networks by `register_model_stages`) or a Stage;
    `run_stage` overrides its callable; `prefix` is the scope of the stage inside a pipeline
    trace ("e2e.clip0." for clip / vae.*, "e2e.clip0.step1." for a DiT pass,
    "e2e.t5.call0." for t5), where the stage's pipeline names apply (Stage.e2e_inputs).
    With `trace_b`, the result also says which inputs (and outputs) already differ between
    A and B: inputs that differ mean the difference is carried from upstream."""
    a = trace_a if isinstance(trace_a, Trace) else load_trace(trace_a)
    if isinstance(stage, str):
        if stage.startswith("dit.") and stage[4:] in DIT_PASSES:
            stage = DIT_PASSES[stage[4:]]  # "dit.cond" names the cond pass too
        if stage not in STAGES:
            raise InputError(
                f"replay: unknown stage {stage!r}. Known: {', '.join(STAGES)}; "
                "or pass a Stage(name, inputs, outputs, run)."
            )
        stage = STAGES[stage]
    if prefix and not prefix.endswith("."):
        prefix += "."
    if run_stage is None and stage.run is None and stage.e2e_run is None:
        raise InputError(
            f"replay: stage {stage.name!r} has no callable yet. Fix: pass run_stage=, "
            "or bind the networks with register_model_stages(models)."
        )
    in_names, out_names, pipeline_names = stage_points(a, stage, prefix)
    fn = run_stage or (stage.e2e_run if pipeline_names and stage.e2e_run else None) or stage.run
    for n in in_names + out_names:
        if not a.has_tensor(n):
            raise InputError(
                f"replay: trace A stored only statistics of {n!r}. Fix: record it in "
                f"full (TraceWriter(full=[{n!r}]) or trace level 'full')."
            )
    import torch

    with torch.no_grad():
        produced = fn(*[a.tensor(n) for n in in_names])
    rel_out = [n[len(prefix) :] for n in out_names]
    if isinstance(produced, dict):
        outs = {}
        for k, v in produced.items():
            if k in out_names:
                outs[k] = v
            elif k in rel_out:
                outs[out_names[rel_out.index(k)]] = v
            else:
                outs[k] = v
    elif isinstance(produced, tuple | list):
        outs = dict(zip(out_names, produced, strict=True))
    else:
        outs = {out_names[0]: produced}
    missing = [n for n in out_names if n not in outs]
    if missing:
        raise InputError(f"replay: stage {stage.name!r} did not return {missing}.")
    local = Trace.from_tensors({n: outs[n] for n in out_names}, meta={"replay_of": stage.name})
    recorded = Trace.from_tensors({n: a.tensor(n) for n in out_names})
    cmp = compare(local, recorded, tolerances)
    differ = out_differ = None
    if trace_b is not None:
        b = trace_b if isinstance(trace_b, Trace) else load_trace(trace_b)

        def failing(names: list[str]) -> list[str]:
            present = [n for n in names if n in b]
            sub = compare(a, b, tolerances, points=present) if present else None
            return ([r.name for r in sub.rows if r.failed] if sub else []) + [
                n for n in names if n not in b
            ]

        differ, out_differ = failing(in_names), failing(out_names)
    return ReplayResult(stage, cmp, differ, out_differ, in_names)
