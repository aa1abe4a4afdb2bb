"""Notebook 02's view: the shape plan and its diagnosis, with "apply fix" buttons (`plan_view`)."""

from __future__ import annotations

import html
import os
from dataclasses import dataclass
from typing import Any

from mtlib.extras import require
from mtlib.frames import SAMPLE_RATE
from mtlib.inspect.widgets.preprocessing import _audio_list, _local
from mtlib.inspect.widgets.view import RenderedView, View, _pyplot, is_interactive
from mtlib.io import InputError

# The rules of mtlib.plan, in the order the reference trips over them (shapes docstring).
PLAN_RULES = (
    "persons_1_or_2",
    "audio_min_duration",
    "para_equal_length",
    "audio_longer_than_frame_num",
    "frame_num_4n_plus_1",
    "frame_num_min",
    "bbox_count",
    "motion_frame_below_frame_num",
    "motion_frame_4n_plus_1",
    "size_multiple_of_16",
    "rope_positions",
)


@dataclass(frozen=True)
class Fix:
    """One machine-readable fix: the plan view's state changes that remove a violation."""

    rule: str  # the violation it fixes
    label: str  # button text
    changes: dict  # plan-view state key -> value


def plan_fixes(p, state: dict | None = None) -> list[Fix]:
    """Fixes as (state key, value) changes, derived from each Violation's `values` with the
    same arithmetic as mtlib.plan (its `fixes` are prose). State keys are plan_view's."""
    from mtlib.frames import snap_frame_num, snap_frame_num_up

    state = state or {}
    out: list[Fix] = []
    for v in p.violations:
        vals = v.values
        if v.rule in ("frame_num_4n_plus_1", "frame_num_min"):
            F, L = int(vals["frame_num"]), int(vals["audio_frames"])
            down = snap_frame_num(min(F, L - 1)) if L >= 2 else 1
            if down >= 5:
                out.append(
                    Fix(v.rule, f"frame_num = {down}", {"frame_num": down, "frame_num_auto": False})
                )
            up = snap_frame_num_up(F)
            if L <= up:
                out.append(
                    Fix(
                        v.rule,
                        "frame_num auto + pad audio",
                        {"frame_num_auto": True, "short_audio": "pad"},
                    )
                )
            elif up != down:
                out.append(
                    Fix(v.rule, f"frame_num = {up}", {"frame_num": up, "frame_num_auto": False})
                )
        elif v.rule == "audio_longer_than_frame_num":
            F, L = int(vals["frame_num"]), min(int(x) for x in vals["audio_frames"])
            snapped = snap_frame_num(L - 1) if L >= 2 else 0
            streaming = state.get("mode") == "streaming"
            if snapped >= 5 and (not streaming or snapped > int(state.get("motion_frame", 25))):
                out.append(
                    Fix(
                        v.rule,
                        f"frame_num = {snapped}",
                        {"frame_num": snapped, "frame_num_auto": False},
                    )
                )
            out.append(Fix(v.rule, "pad the audio (short_audio=pad)", {"short_audio": "pad"}))
            out.append(
                Fix(v.rule, "frame_num auto + pad", {"frame_num_auto": True, "short_audio": "pad"})
            )
        elif v.rule == "motion_frame_below_frame_num":
            m = snap_frame_num(min(25, int(vals["frame_num"]) - 1))
            out.append(Fix(v.rule, f"motion_frame = {m}", {"motion_frame": m}))
        elif v.rule == "motion_frame_4n_plus_1":
            good = snap_frame_num(int(vals["motion_frame"]))
            out.append(Fix(v.rule, f"motion_frame = {good}", {"motion_frame": good}))
            out.append(Fix(v.rule, f"motion_frame = {good + 4}", {"motion_frame": good + 4}))
        elif v.rule == "para_equal_length":
            secs = round(int(vals["samples_16k"][0]) / SAMPLE_RATE, 2)
            out.append(Fix(v.rule, f"speaker 2 = {secs} s", {"audio_seconds_b": secs}))
            out.append(Fix(v.rule, "audio_type = add", {"audio_type": "add"}))
        elif v.rule == "audio_min_duration":
            key = "audio_seconds" if int(vals["person"]) == 1 else "audio_seconds_b"
            out.append(Fix(v.rule, f"speaker {vals['person']} = 0.4 s", {key: 0.4}))
        elif v.rule == "rope_positions":
            out.append(
                Fix(
                    v.rule,
                    "mode = streaming, frame_num 81",
                    {"mode": "streaming", "frame_num": 81, "frame_num_auto": False},
                )
            )
    return out


def _plan_state(
    config: Any,
    image_size,
    audio_seconds,
    frame_num,
    motion_frame,
    mode,
    size,
    buckets,
    short_audio,
    audio_type,
    audio=None,
) -> dict:
    from mtlib.plan.planner import _config

    cfg = _config(config)
    g = cfg.generation
    if image_size is None:
        image_size = cfg.inputs.image
    if isinstance(image_size, str | os.PathLike):
        from mtlib.io import is_remote, resolve_local
        from mtlib.media.probe import probe_image

        src = str(image_size) if is_remote(image_size) else str(resolve_local(image_size))
        info = probe_image(src)
        image_size = (info.width, info.height)
    if audio_seconds is None:
        from mtlib.media.probe import probe_audio

        files = _audio_list(audio) or list(cfg.inputs.audio)
        audio_seconds = [probe_audio(_local(a)).samples_16k / SAMPLE_RATE for a in files]
    if isinstance(audio_seconds, int | float):
        audio_seconds = [audio_seconds]
    audio_seconds = [float(s) for s in audio_seconds]
    if not 1 <= len(audio_seconds) <= 2:
        raise InputError(
            f"audio_seconds {audio_seconds!r}: one or two durations (one per speaker)."
        )
    fn = g.frame_num if frame_num is None else frame_num
    return {
        "config": config,
        "image_w": int(image_size[0]),
        "image_h": int(image_size[1]),
        "audio_seconds": audio_seconds[0],
        "audio_seconds_b": audio_seconds[1] if len(audio_seconds) > 1 else 0.0,
        "frame_num_auto": fn == "auto",
        "frame_num": 81 if fn == "auto" else int(fn),
        "motion_frame": int(g.motion_frame if motion_frame is None else motion_frame),
        "mode": mode or g.mode,
        "size": size or cfg.model.size,
        "buckets": buckets or cfg.model.buckets,
        "short_audio": short_audio or g.short_audio,
        "audio_type": audio_type or cfg.inputs.audio_type,
    }


def plan_of(state: dict):
    """The ShapePlan of a plan-view state (metadata only: well under a millisecond)."""
    from mtlib.config import load_config
    from mtlib.plan import PlanError, PlanInputs, plan
    from mtlib.plan.planner import _config

    base = _config(state["config"])
    overrides = {
        "generation.frame_num": "auto" if state["frame_num_auto"] else int(state["frame_num"]),
        "generation.motion_frame": int(state["motion_frame"]),
        "generation.mode": state["mode"],
        "generation.short_audio": state["short_audio"],
        "model.size": state["size"],
        "model.buckets": state["buckets"],
    }
    try:
        cfg = load_config(base, overrides)
    except ValueError as e:
        raise PlanError(str(e)) from None
    secs = [state["audio_seconds"]] + (
        [state["audio_seconds_b"]] if state["audio_seconds_b"] > 0 else []
    )
    inputs = PlanInputs.from_metadata(
        (state["image_w"], state["image_h"]), secs, audio_type=state["audio_type"]
    )
    return plan(cfg, inputs)


_PLAN_CSS = (
    "<style>.mtl-plan{font-family:sans-serif;font-size:12px}.mtl-plan pre{font-size:11px;margin:2px 0}"
    ".mtl-ok{color:#080}.mtl-bad{background:#fdd;border-left:4px solid #c00;padding:4px 8px;margin:4px 0}"
    ".mtl-rule{display:inline-block;padding:1px 6px;margin:1px;border-radius:3px;font-family:monospace;"
    "font-size:11px;background:#eee;color:#555}.mtl-rule.hit{background:#c00;color:#fff;font-weight:bold}"
    ".mtl-policy{background:#eef;padding:2px 6px;margin:2px 0}"
    "table.mtl-t{border-collapse:collapse;font-size:11px}table.mtl-t td,table.mtl-t th{border:1px solid #ddd;"
    "padding:1px 6px;font-family:monospace;text-align:left}</style>"
)


def render_plan(state: dict) -> RenderedView:
    """02: the shape plan table and its diagnosis, the violated rules highlighted."""
    from mtlib.plan import explain, plan_table, plot_frame_grouping

    p = plan_of(state)
    fixes = plan_fixes(p, state)
    hit = [v.rule for v in p.violations]
    text = plan_table(p, max_rows=40)
    e = html.escape
    parts = [_PLAN_CSS, "<div class='mtl-plan'>"]
    chips = "".join(
        f"<span class='mtl-rule{' hit' if r in hit else ''}'>{e(r)}</span>" for r in PLAN_RULES
    )
    if p.valid:
        parts.append(
            f"<div class='mtl-ok'><b>VALID</b>: frame_num {e(str(p.frame_num_requested))} -> {p.frame_num}, "
            f"latent grid {' x '.join(map(str, p.token_grid))}, seq_len {p.seq_len}, "
            f"{len(p.clips)} clip(s), {p.output_frames} output frames</div>"
        )
    else:
        parts.append(
            f"<div><b style='color:#c00'>INVALID</b>: {len(p.violations)} violation(s)</div>"
        )
    parts.append(f"<div>rules: {chips}</div>")
    for v in p.violations:
        ref = (
            e(v.reference_message)
            if v.reference_message
            else "nothing here: it fails later or silently"
        )
        fx = "".join(f"<li>{e(f)}</li>" for f in v.fixes)
        parts.append(
            f"<div class='mtl-bad'><b>[{e(v.rule)}]</b><br>the reference raises: <code>{ref}</code>"
            f"<br>why: {e(v.why)}<ul>{fx}</ul></div>"
        )
    for a in p.policy_actions:
        parts.append(f"<div class='mtl-policy'>policy <b>{e(a.policy)}</b>: {e(a.what)}</div>")
    if p.tensors:
        rows = "".join(
            f"<tr><td>{e(t.name)}</td><td>[{', '.join(map(str, t.shape))}]</td><td>{e(t.dtype)}</td></tr>"
            for t in p.tensors[:40]
        )
        more = (
            f"<tr><td colspan=3>... {len(p.tensors) - 40} more</td></tr>"
            if len(p.tensors) > 40
            else ""
        )
        parts.append(
            f"<details><summary>{len(p.tensors)} planned tensors</summary><table class='mtl-t'>"
            f"<tr><th>tensor</th><th>shape</th><th>dtype</th></tr>{rows}{more}</table></details>"
        )
    parts.append(f"<details><summary>plain-text plan</summary><pre>{e(text)}</pre></details></div>")
    figures = []
    if p.valid and p.frame_num is not None and p.frame_num <= 41:
        _pyplot()
        figures.append(plot_frame_grouping(p.frame_num, audio_frames=p.padded_audio_frames[0]))
    data = {
        "valid": p.valid,
        "frame_num": p.frame_num,
        "violations": hit,
        "highlighted": hit,
        "explanations": [explain(v) for v in p.violations],
        "fixes": fixes,
        "policy_actions": [a.policy for a in p.policy_actions],
        "token_grid": p.token_grid,
        "seq_len": p.seq_len,
        "plan": p.to_dict(),
    }
    return RenderedView("02 shape plan", text=text, html="".join(parts), figures=figures, data=data)


def _fix_buttons(view: View) -> None:
    w = require("ipywidgets", "notebooks", "mtlib.inspect.widgets")

    buttons = []
    for fix in view.rendered.data.get("fixes", []):
        b = w.Button(
            description=f"apply fix: {fix.label}",
            tooltip=f"{fix.rule}: {fix.changes}",
            button_style="warning",
            layout=w.Layout(width="auto"),
        )
        b.on_click(lambda _b, fix=fix: view.set(**fix.changes))
        buttons.append(b)
    view.fix_buttons = buttons
    view.extra_box.children = (
        (w.HBox(buttons, layout=w.Layout(flex_flow="row wrap")),) if buttons else ()
    )


def plan_view(
    config: Any = "multitalk-480",
    image_size: tuple[int, int] | str | None = None,
    audio_seconds: float | list[float] | None = None,
    frame_num: int | str | None = None,
    motion_frame: int | None = None,
    mode: str | None = None,
    size: str | None = None,
    buckets: str | None = None,
    short_audio: str | None = None,
    audio_type: str | None = None,
    audio: str | list[str] | None = None,
    interactive: bool | None = None,
) -> View:
    """02: the shape plan with live controls. image_size: (width, height) or an image path
    (its header is read); audio_seconds: one or two durations, or `audio`: one or two speech
    files (headers read); neither: the config's inputs.
    Interactive: sliders for frame_num / audio durations / motion_frame, mode, size, buckets,
    policies; one "apply fix" button per machine-readable fix of each violation."""
    state = _plan_state(
        config,
        image_size,
        audio_seconds,
        frame_num,
        motion_frame,
        mode,
        size,
        buckets,
        short_audio,
        audio_type,
        audio,
    )

    def controls() -> dict:
        w = require("ipywidgets", "notebooks", "mtlib.inspect.widgets")

        lay = {"style": {"description_width": "110px"}, "layout": w.Layout(width="400px")}
        small = {"style": {"description_width": "110px"}, "layout": w.Layout(width="260px")}
        return {
            "frame_num_auto": lambda: w.Checkbox(
                description="frame_num auto",
                indent=False,
                layout=w.Layout(width="200px", margin="0 0 0 60px"),
            ),
            "frame_num": lambda: w.IntSlider(min=1, max=201, description="frame_num", **lay),
            "audio_seconds": lambda: w.FloatSlider(
                min=0.1, max=20, step=0.01, description="speaker 1 (s)", **lay
            ),
            "audio_seconds_b": lambda: w.FloatSlider(
                min=0, max=20, step=0.01, description="speaker 2 (s)", **lay
            ),
            "motion_frame": lambda: w.IntSlider(min=1, max=81, description="motion_frame", **lay),
            "mode": lambda: w.Dropdown(options=["clip", "streaming"], description="mode", **small),
            "short_audio": lambda: w.Dropdown(
                options=["pad", "snap", "error"], description="short_audio", **small
            ),
            "audio_type": lambda: w.Dropdown(
                options=["para", "add"], description="audio_type", **small
            ),
            "size": lambda: w.Dropdown(
                options=["multitalk-480", "multitalk-720"], description="size", **small
            ),
            "buckets": lambda: w.Dropdown(
                options=["official", "tiny"], description="buckets", **small
            ),
            "image_w": lambda: w.BoundedIntText(
                min=16, max=16384, description="image width", **small
            ),
            "image_h": lambda: w.BoundedIntText(
                min=16, max=16384, description="image height", **small
            ),
        }

    rows = [
        ("frame_num", "frame_num_auto"),
        ("audio_seconds", "audio_seconds_b"),
        ("motion_frame", "mode"),
        ("short_audio", "audio_type", "size"),
        ("buckets", "image_w", "image_h"),
    ]

    return View(
        "02 shape plan",
        render_plan,
        state,
        controls() if is_interactive(interactive) else None,
        interactive,
        after_render=_fix_buttons,
        rows=rows,
    )
