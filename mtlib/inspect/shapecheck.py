"""Live check of the shape plan: run the engine, record every trace point's shape, compare.

`live_check(cfg)` plans a run (mtlib.plan), runs it for real through the same pieces as
generation.generate_video (prepare_run, load_models, preprocess_inputs, encode_prompts,
pipeline.generate; no mp4 is written) under a `ShapeRecorder` that keeps only the shape
and dtype of each offered tensor, and returns a `LiveCheck`: one row per observed point
with the planned and the observed shape and a pass flag, the planned names the engine
never offered, and the observed names the plan does not name.

Besides the engine's own points it records, for this check only:
  dit.in.*                     the arguments of every DiT call (a wrapper around the DiT)
  dit.block<i>.<attn>.q/k/v    the per-head tensors entering each attention call (the
                               DiT's module-level `attention` function is wrapped while
                               the check runs; x_ref_attn_map's SDPA is not part of it)
  output.video                 the video trimmed to the real audio, as generate_video does

Naming: a point offered again under the same name gets `#<n>` (n = 1, 2, ...), as in the
on-disk trace format; the DiT's points inside `e2e.clip<k>.step<i>.` are compared with the
plan's single-call names `dit.*`, per pass: the pass that drops the audio (uncond with
guidance, drop_audio with text_guide_scale 1) carries one silent person, so its audio
shapes have P = 1.

Where it sits: notebook 02 and tests/test_plan_live.py call it; it needs the tiny model
(or real checkpoints) and costs a real run, so keep sampling_steps at 1 for checks.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass, field
from typing import Any

from mtlib import trace
from mtlib.plan import ShapePlan

# Observed points the plan leaves out on purpose: (glob, why). Anything else observed and not
# planned fails the check.
UNPLANNED_BY_DESIGN: tuple[tuple[str, str], ...] = (
    ("e2e.clip*.context", "T5 context rows = the prompt's token count (PlanInputs.text_tokens)"),
    ("e2e.clip*.context_null", "T5 context rows = the negative prompt's token count"),
    ("t5.context.*", "T5 context rows = the prompt's token count"),
)

# DiT points whose person axis follows the pass (the audio-dropping pass carries 1 person)
_PERSON_AXIS = {
    "dit.in.audio": 0,  # [P, F, 5, layers, width]
    "dit.audio_proj": 0,  # [P, T, tokens, width]
    "dit.audio_embedding": 2,  # [1, T, tokens * P, width]
    "dit.block*.audio_cross_attn.kv": 2,  # [T, heads, tokens * P, head_dim]
}

_STEP_SCOPE = re.compile(r"^e2e\.clip\d+\.step\d+\.(dit\..*)$")
_CLIP_SCOPE = re.compile(r"^e2e\.clip\d+\.((clip|vae)\..*)$")


class ShapeRecorder:
    """A recorder that keeps (shape, dtype) per offer: a whole run fits in a few kB."""

    def __init__(self):
        self.offers: dict[str, list[tuple[tuple[int, ...], str]]] = {}
        self.order: list[str] = []

    def record(self, name: str, value: Any) -> None:
        if not hasattr(value, "shape") or not hasattr(value, "dtype"):
            return  # non-tensors (none on the engine's points today)
        if name not in self.offers:
            self.offers[name] = []
            self.order.append(name)
        dtype = str(value.dtype).replace("torch.", "")
        self.offers[name].append((tuple(int(s) for s in value.shape), dtype))


# ------------------------------------------------------------------------------ extra points


class _DiTInputs:
    """Wraps the loop's DiT callable: records dit.in.* (and seq_len) of every call."""

    def __init__(self, dit):
        self.dit = dit

    def parameters(self):
        return self.dit.parameters()

    def __call__(self, x, t, context, clip_fea, y, audio, ref_target_masks, seq_len):
        import torch

        if trace.active():
            trace.point("dit.in.x", x)
            trace.point("dit.in.t", t)
            trace.point("dit.in.clip_fea", clip_fea)
            trace.point("dit.in.y", y)
            trace.point("dit.in.audio", audio)
            trace.point("dit.in.ref_target_masks", ref_target_masks)
            trace.point("dit.seq_len", torch.tensor(int(seq_len)))
        return self.dit(x, t, context, clip_fea, y, audio, ref_target_masks, seq_len)


@contextlib.contextmanager
def _attention_points(dit):
    """Record the per-head tensors of every attention call of the DiT's blocks under the
    plan's names: self_attn.q/k/v, cross_attn.q/k (text call) and .k_img (image call; its q
    is the text call's, v and v_img have k's shapes), audio_cross_attn.q/kv (k; v alike)."""
    # the module every attention call goes through
    from mtlib.models.dit import attention as dit_attention

    current: list[str] = []  # the attention module now running
    calls: dict[str, int] = {}
    handles = []
    for i, block in enumerate(dit.blocks):
        for attr in ("self_attn", "cross_attn", "audio_cross_attn"):
            name = f"dit.block{i}.{attr}"

            def pre(_m, _a, _name=name):
                current.append(_name)
                calls[_name] = 0

            def post(_m, _a, _o):
                current.pop()

            module = getattr(block, attr)
            handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    original = dit_attention.attention

    def probe(q, k, v):
        if current and trace.active():
            name = current[-1]
            n = calls[name]
            calls[name] = n + 1
            if name.endswith("audio_cross_attn"):
                trace.point(f"{name}.q", q)
                trace.point(f"{name}.kv", k)
            elif n == 0:  # self-attention, or cross-attention's text call
                trace.point(f"{name}.q", q)
                trace.point(f"{name}.k", k)
                if name.endswith("self_attn"):
                    trace.point(f"{name}.v", v)
            else:  # cross-attention's image call: the same q, CLIP keys (v_img alike)
                trace.point(f"{name}.k_img", k)
        return original(q, k, v)

    dit_attention.attention = probe
    try:
        yield
    finally:
        dit_attention.attention = original
        for h in handles:
            h.remove()


# ------------------------------------------------------------------------------ the run


def observe(cfg: Any = "tiny", models=None, cache_dir: str | os.PathLike | None = None):
    """Run the config for real and record every point's shape.
    Returns (PreparedRun, ShapeRecorder, GenerationResult)."""
    from mtlib.models.t5 import DEFAULT_NEGATIVE_PROMPT
    from mtlib.run import generation
    from mtlib.run.loop import Models, encode_prompts, generate
    from mtlib.run.noise import SeededNoise

    run = generation.prepare_run(cfg, progress=False)
    cfg = run.config
    if models is None:
        models = generation.load_models(cfg, run.device, run.precision)
    rec = ShapeRecorder()
    with trace.recording(rec), _attention_points(models.dit):
        inputs = generation.preprocess_inputs(run, models.audio_encoder, cache_dir)
        negative = cfg.inputs.negative_prompt or DEFAULT_NEGATIVE_PROMPT
        context, context_null = encode_prompts(
            generation.PromptEncoder(models.text_encoder), cfg.inputs.prompt, negative
        )
        dit = _DiTInputs(generation.DiTCall(models.dit))
        result = generate(
            Models(dit=dit, vae=models.vae, clip=models.clip),
            inputs.cond_image, inputs.audio_embs, context, context_null,
            inputs.ref_target_masks, run.settings, SeededNoise(cfg.generation.seed), plan=run.plan,
        )  # fmt: skip
        trace.point("output.video", result.video[:, : run.output_frames])
    return run, rec, result


# ------------------------------------------------------------------------------ comparison


@dataclass(frozen=True)
class Row:
    name: str  # observed point (unique: `#n` for repeated offers, `@pass<j>` for DiT passes)
    plan_name: str | None  # the plan entry it was compared with
    planned: tuple[int, ...] | None
    observed: tuple[int, ...]
    planned_dtype: str | None
    observed_dtype: str
    ok: bool
    note: str = ""


@dataclass
class LiveCheck:
    plan: ShapePlan
    rows: list[Row] = field(default_factory=list)
    unplanned: list[str] = field(default_factory=list)  # observed, no plan entry, not by design
    by_design: list[tuple[str, str]] = field(default_factory=list)  # observed, left out on purpose
    never_observed: list[str] = field(default_factory=list)  # planned, not offered by the engine
    output_frames: int | None = None  # frames of the trimmed video the engine produced

    @property
    def mismatches(self) -> list[Row]:
        return [r for r in self.rows if not r.ok]

    @property
    def passed(self) -> bool:
        return not self.mismatches and not self.unplanned

    def table(self, collapse: bool = True) -> str:
        """Planned vs observed, one line per plan entry (collapse: repeated offers of one
        entry with equal shapes share a line, with a count)."""
        groups: dict[tuple, list[Row]] = {}
        for r in self.rows:
            key = (r.plan_name, r.planned, r.observed, r.ok) if collapse else (r.name,)
            groups.setdefault(key, []).append(r)
        lines = []
        for rs in groups.values():
            r = rs[0]
            label = r.plan_name if collapse else r.name
            planned = "-" if r.planned is None else str(list(r.planned))
            lines.append(
                (label, planned, str(list(r.observed)), "pass" if r.ok else "FAIL", str(len(rs)))
            )
        for n in self.unplanned:
            lines.append((n, "not planned", "", "FAIL", "1"))
        head = ("tensor", "planned", "observed", "check", "offers")
        w = [max(len(x[i]) for x in lines + [head]) for i in range(5)]
        out = ["  ".join(h.ljust(w[i]) for i, h in enumerate(head)), "-" * (sum(w) + 8)]
        out += ["  ".join(x[i].ljust(w[i]) for i in range(5)) for x in lines]
        out.append(
            f"{len(self.rows)} offers compared, {len(self.mismatches)} mismatches, "
            f"{len(self.unplanned)} unplanned points, {len(self.by_design)} left out by design, "
            f"{len(self.never_observed)} planned entries never offered"
        )
        return "\n".join(out)


def _null_pass_shape(plan_name: str, shape: tuple[int, ...], persons: int) -> tuple[int, ...]:
    for pattern, axis in _PERSON_AXIS.items():
        if plan_name == pattern:
            s = list(shape)
            s[axis] = s[axis] // persons
            return tuple(s)
    return shape


def compare(plan: ShapePlan, rec: ShapeRecorder) -> LiveCheck:
    """Every offer of `rec` against the plan (see the module docstring for the naming)."""
    check = LiveCheck(plan)
    used: set[str] = set()
    null_pass = 2 if plan.passes_per_step == 3 else 1  # uncond / drop_audio carry 1 person
    for name in rec.order:
        offers = rec.offers[name]
        step = _STEP_SCOPE.match(name)
        inner = _CLIP_SCOPE.match(name)
        for j, (shape, dtype) in enumerate(offers):
            if step:  # one offer per DiT pass of this step
                base = step.group(1)
                label = f"{name}@pass{j}"
                entry = plan.tensor(base)
                planned = None if entry is None else entry.shape
                if entry is not None and j % plan.passes_per_step == null_pass:
                    planned = _null_pass_shape(entry.name, planned, plan.persons)
            else:
                label = name if j == 0 else f"{name}#{j}"
                entry = plan.tensor(label)
                if entry is None and inner:
                    entry = plan.tensor(inner.group(1) if j == 0 else f"{inner.group(1)}#{j}")
                planned = None if entry is None else entry.shape
            if entry is None:
                why = next((w for g, w in UNPLANNED_BY_DESIGN if _glob(label, g)), None)
                if why is None:
                    check.unplanned.append(label)
                else:
                    check.by_design.append((label, why))
                continue
            used.add(entry.name)
            ok = planned == shape and entry.dtype == dtype
            note = "" if entry.dtype == dtype else f"dtype planned {entry.dtype}"
            check.rows.append(Row(label, entry.name, planned, shape, entry.dtype, dtype, ok, note))
    check.never_observed = [t.name for t in plan.tensors if t.name not in used]
    if "output.video" in rec.offers:
        check.output_frames = rec.offers["output.video"][0][0][1]
    return check


def _glob(name: str, pattern: str) -> bool:
    import fnmatch

    return fnmatch.fnmatchcase(name, pattern)


def live_check(cfg: Any = "tiny", models=None, **generation: Any) -> LiveCheck:
    """Plan and run `cfg` (generation overrides as keyword arguments, e.g. sampling_steps=1)
    and compare every recorded shape with the plan."""
    from mtlib.config import RunConfig, load_config

    overrides = {f"generation.{k}": v for k, v in generation.items()}
    if isinstance(cfg, RunConfig):
        cfg = cfg.replace(**overrides) if overrides else cfg
    else:
        cfg = load_config(cfg, overrides)
    run, rec, _ = observe(cfg, models=models)
    return compare(run.plan, rec)
