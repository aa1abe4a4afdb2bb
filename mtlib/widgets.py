"""The notebooks as a workbench: one interactive view per notebook, static when run headless.

The same notebooks serve two audiences: `mtlib run` / papermill / nbval execute them
headless with injected parameters, and a person explores them in JupyterLab. Each view
here is one function a notebook calls in one cell, as the cell's last expression:

    01  preprocessing_view(image, audio, ...)   crop, person masks, waveforms, embedding
    02  plan_view(config, image_size, ...)       shape plan + diagnosis, "apply fix" buttons
    03  video_view(run_dir_or_mp4, ...)          frame scrubber, latent scrubber, player
    04  compare_view(run_a, run_b, point=None)   comparison table, error plot, heatmap

Pattern: a view is a pure `render_<view>(state: dict) -> RenderedView` (plain-text tables,
optional styled HTML, matplotlib figures, and `data`: the numbers behind them) plus a
`View` that owns the state. Interactive, the View builds ipywidgets controls whose `value`
is bound to one state key each (observe), re-renders on every change and shows the result
in an Output widget. Headless, no widget is ever constructed: displaying the View shows
exactly `render(state)` of the parameters, as text and static figures, so executed
notebooks stay readable and deterministic and carry no widget state.

Headless rule (`is_interactive(interactive)`), first match wins:
  1. `interactive=True/False` given explicitly;
  2. env MTLIB_HEADLESS or PAPERMILL_EXECUTION set (non-empty, not "0") -> headless;
     env MTLIB_INTERACTIVE set -> interactive;
  3. no IPython kernel (plain python, terminal IPython: nothing can draw a widget) -> headless;
  4. the current execute request came without stdin (`allow_stdin=False`): that is how
     batch clients run cells (nbclient under papermill and `nbconvert --execute`, nbval),
     whereas JupyterLab / Notebook / VS Code offer stdin -> headless;
  5. otherwise interactive.
Executed notebooks never get `metadata.widgets` from these views in headless mode (no
widget exists). A notebook saved from JupyterLab after interactive use does: strip it
before committing (`jupyter nbconvert --clear-output --ClearMetadataPreprocessor.enabled=True`
or delete `metadata.widgets`); see docs/interactive.md.

Render functions raise the library's own errors (InputError, PlanError) on bad inputs;
interactive Views catch them and show the message in place of the plots, so a typo in a
text field never kills the session. Heavy imports (ipywidgets, matplotlib, torch-using
modules) happen inside functions.
"""

from __future__ import annotations

import contextlib
import html
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtlib.extras import require
from mtlib.frames import SAMPLE_RATE
from mtlib.io import InputError

# ------------------------------------------------------------------------------ headless rule

_TRUE_OFF = ("", "0", "false", "no")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in _TRUE_OFF


def is_interactive(interactive: bool | None = None) -> bool:
    """Whether a view should build widgets (see the module docstring for the rule)."""
    if interactive is not None:
        return bool(interactive)
    if _env_flag("MTLIB_HEADLESS") or _env_flag("PAPERMILL_EXECUTION"):
        return False
    if _env_flag("MTLIB_INTERACTIVE"):
        return True
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    kernel = getattr(shell, "kernel", None) if shell is not None else None
    if kernel is None:
        return False
    return bool(getattr(kernel, "_allow_stdin", False))


def _pyplot():
    """pyplot, on Agg when nothing can show a window or an inline figure."""
    import sys

    matplotlib = require("matplotlib", "notebooks", "mtlib.widgets plots")

    if "ipykernel" not in sys.modules and not os.environ.get("DISPLAY") and not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ------------------------------------------------------------------------------ the pattern


@dataclass
class RenderedView:
    """What one render produced: the same object is shown headless and inside the widget."""

    title: str
    text: str = ""  # plain-text tables / diagnosis (what a headless run prints)
    html: str | None = None  # the same content styled (None: the text is printed)
    figures: list = field(default_factory=list)  # matplotlib Figures, in display order
    data: dict = field(default_factory=dict)  # the numbers behind the tables and plots
    media: list = field(default_factory=list)  # IPython display objects (video player)

    def show(self) -> None:
        """Display text/HTML, figures and media in the current output (cell or Output widget)."""
        from IPython.display import display

        if self.html is not None:
            # both forms: frontends draw the HTML, logs and terminals print the text
            display({"text/html": self.html, "text/plain": self.text}, raw=True)
        elif self.text:
            print(self.text)
        for fig in self.figures:
            display(fig)
        for m in self.media:
            display(m)
        close_figures(self)


def close_figures(view: RenderedView) -> None:
    """Close the figures with pyplot so the inline backend does not draw them a second time."""
    if view.figures:
        plt = _pyplot()
        for fig in view.figures:
            plt.close(fig)


def _error_view(title: str, err: Exception) -> RenderedView:
    msg = f"{type(err).__name__}: {err}"
    return RenderedView(
        title, text=msg,
        html=f"<div style='color:#b00;font-family:monospace;white-space:pre-wrap'>{html.escape(msg)}</div>",
        data={"error": msg},
    )


class View:
    """State + render function; widgets only when interactive.

    `controls` maps state keys to factories `() -> ipywidgets.ValueWidget`; each control's
    `value` is bound to its key. `after_render(view)` may fill `view.extra_box` after each
    render (the plan view's fix buttons); `rows` groups control keys into lines. Display the
    View (last expression of a cell) to show it; `rendered` is the latest RenderedView.
    """

    def __init__(
        self,
        title: str,
        render: Callable[[dict], RenderedView],
        state: dict,
        controls: dict[str, Callable[[], Any]] | None = None,
        interactive: bool | None = None,
        after_render: Callable[[View], None] | None = None,
        rows: list[tuple[str, ...]] | None = None,
    ):
        self.title = title
        self._rows = rows  # control keys per row (None: one control per row)
        self.render_fn = render
        self.state = dict(state)
        self.interactive = is_interactive(interactive)
        self.controls: dict[str, Any] = {}
        self._factories = controls or {}
        self._after_render = after_render
        self._holding = 0
        self.widget = None  # the ipywidgets box (interactive only)
        self.output = None
        self.extra_box = None  # filled by after_render (e.g. fix buttons)
        self.renders = 0
        self.rendered: RenderedView | None = None
        if self.interactive:
            self._build()  # controls first: they may clamp a value into their range
            self.rendered = self._safe_render()
            self._draw()
        else:
            self.rendered = self.render_fn(self.state)  # headless: bad inputs fail loudly

    # --- interactive machinery
    def _safe_render(self) -> RenderedView:
        self.renders += 1
        try:
            return self.render_fn(dict(self.state))
        except (ValueError, KeyError, OSError) as e:  # InputError / PlanError are ValueErrors
            return _error_view(self.title, e)

    def _build(self) -> None:
        w = require("ipywidgets", "notebooks", "mtlib.widgets")

        for key, make in self._factories.items():
            ctl = make()
            ctl.value = self.state[key] if key in self.state else ctl.value
            self.state[key] = ctl.value
            ctl.observe(self._changed(key), names="value")
            self.controls[key] = ctl
        self.output = w.Output()
        self.extra_box = w.VBox([])
        header = w.HTML(f"<b>{html.escape(self.title)}</b>")
        if self._rows:
            placed = {k for row in self._rows for k in row}
            lines = [w.HBox([self.controls[k] for k in row if k in self.controls]) for row in self._rows]
            lines += [c for k, c in self.controls.items() if k not in placed]
        else:
            lines = list(self.controls.values())
        self.widget = w.VBox([header, *lines, self.extra_box, self.output])

    def _changed(self, key: str):
        def on_change(change: dict) -> None:
            self.state[key] = change["new"]
            if not self._holding:
                self.refresh()

        return on_change

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Change several values with one render at the end."""
        self._holding += 1
        try:
            yield
        finally:
            self._holding -= 1
        if not self._holding:
            self.refresh()

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """Change controls without any render (used while a render is being drawn)."""
        self._holding += 1
        try:
            yield
        finally:
            self._holding -= 1

    def set(self, **values: Any) -> None:
        """Set state values (through the controls when interactive, so they show them)."""
        with self.hold():
            for key, value in values.items():
                if key in self.controls:
                    self.controls[key].value = value
                    value = self.controls[key].value  # as the control holds it (clamped)
                self.state[key] = value

    def refresh(self) -> RenderedView:
        if not self.interactive:
            self.rendered = self.render_fn(dict(self.state))
            return self.rendered
        self.rendered = self._safe_render()
        self._draw()
        return self.rendered

    def _draw(self) -> None:
        if self._after_render is not None:
            self._after_render(self)
        self.output.clear_output(wait=True)
        with self.output:
            self.rendered.show()

    # --- display
    def show(self) -> None:
        from IPython.display import display

        if self.interactive:
            display(self.widget)
        else:
            self.rendered.show()

    def _ipython_display_(self) -> None:
        self.show()

    def __repr__(self) -> str:
        how = "interactive" if self.interactive else "static"
        return f"<{self.title} ({how}); state={self.state}>"


# ------------------------------------------------------------------------------ 02 plan view

# The rules of mtlib.shapes, in the order the reference trips over them (shapes docstring).
PLAN_RULES = (
    "persons_1_or_2", "audio_min_duration", "para_equal_length", "audio_longer_than_frame_num",
    "frame_num_4n_plus_1", "frame_num_min", "bbox_count", "motion_frame_below_frame_num",
    "motion_frame_4n_plus_1", "size_multiple_of_16", "rope_positions",
)


@dataclass(frozen=True)
class Fix:
    """One machine-readable fix: the plan view's state changes that remove a violation."""

    rule: str  # the violation it fixes
    label: str  # button text
    changes: dict  # plan-view state key -> value


def plan_fixes(p, state: dict | None = None) -> list[Fix]:
    """Fixes as (state key, value) changes, derived from each Violation's `values` with the
    same arithmetic as mtlib.shapes (its `fixes` are prose). State keys are plan_view's."""
    from mtlib.frames import snap_frame_num, snap_frame_num_up

    state = state or {}
    out: list[Fix] = []
    for v in p.violations:
        vals = v.values
        if v.rule in ("frame_num_4n_plus_1", "frame_num_min"):
            F, L = int(vals["frame_num"]), int(vals["audio_frames"])
            down = snap_frame_num(min(F, L - 1)) if L >= 2 else 1
            if down >= 5:
                out.append(Fix(v.rule, f"frame_num = {down}", {"frame_num": down, "frame_num_auto": False}))
            up = snap_frame_num_up(F)
            if L <= up:
                out.append(Fix(v.rule, "frame_num auto + pad audio", {"frame_num_auto": True, "short_audio": "pad"}))
            elif up != down:
                out.append(Fix(v.rule, f"frame_num = {up}", {"frame_num": up, "frame_num_auto": False}))
        elif v.rule == "audio_longer_than_frame_num":
            F, L = int(vals["frame_num"]), min(int(x) for x in vals["audio_frames"])
            snapped = snap_frame_num(L - 1) if L >= 2 else 0
            streaming = state.get("mode") == "streaming"
            if snapped >= 5 and (not streaming or snapped > int(state.get("motion_frame", 25))):
                out.append(Fix(v.rule, f"frame_num = {snapped}", {"frame_num": snapped, "frame_num_auto": False}))
            out.append(Fix(v.rule, "pad the audio (short_audio=pad)", {"short_audio": "pad"}))
            out.append(Fix(v.rule, "frame_num auto + pad", {"frame_num_auto": True, "short_audio": "pad"}))
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
            out.append(Fix(v.rule, "mode = streaming, frame_num 81", {"mode": "streaming", "frame_num": 81, "frame_num_auto": False}))
    return out


def _plan_state(config: Any, image_size, audio_seconds, frame_num, motion_frame, mode, size,
                buckets, short_audio, audio_type, audio=None) -> dict:
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
        raise InputError(f"audio_seconds {audio_seconds!r}: one or two durations (one per speaker).")
    fn = g.frame_num if frame_num is None else frame_num
    return {
        "config": config,
        "image_w": int(image_size[0]), "image_h": int(image_size[1]),
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
    secs = [state["audio_seconds"]] + ([state["audio_seconds_b"]] if state["audio_seconds_b"] > 0 else [])
    inputs = PlanInputs.from_metadata((state["image_w"], state["image_h"]), secs, audio_type=state["audio_type"])
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
    chips = "".join(f"<span class='mtl-rule{' hit' if r in hit else ''}'>{e(r)}</span>" for r in PLAN_RULES)
    if p.valid:
        parts.append(f"<div class='mtl-ok'><b>VALID</b>: frame_num {e(str(p.frame_num_requested))} -> {p.frame_num}, "
                     f"latent grid {' x '.join(map(str, p.token_grid))}, seq_len {p.seq_len}, "
                     f"{len(p.clips)} clip(s), {p.output_frames} output frames</div>")
    else:
        parts.append(f"<div><b style='color:#c00'>INVALID</b>: {len(p.violations)} violation(s)</div>")
    parts.append(f"<div>rules: {chips}</div>")
    for v in p.violations:
        ref = e(v.reference_message) if v.reference_message else "nothing here: it fails later or silently"
        fx = "".join(f"<li>{e(f)}</li>" for f in v.fixes)
        parts.append(f"<div class='mtl-bad'><b>[{e(v.rule)}]</b><br>the reference raises: <code>{ref}</code>"
                     f"<br>why: {e(v.why)}<ul>{fx}</ul></div>")
    for a in p.policy_actions:
        parts.append(f"<div class='mtl-policy'>policy <b>{e(a.policy)}</b>: {e(a.what)}</div>")
    if p.tensors:
        rows = "".join(f"<tr><td>{e(t.name)}</td><td>[{', '.join(map(str, t.shape))}]</td><td>{e(t.dtype)}</td></tr>"
                       for t in p.tensors[:40])
        more = f"<tr><td colspan=3>... {len(p.tensors) - 40} more</td></tr>" if len(p.tensors) > 40 else ""
        parts.append(f"<details><summary>{len(p.tensors)} planned tensors</summary><table class='mtl-t'>"
                     f"<tr><th>tensor</th><th>shape</th><th>dtype</th></tr>{rows}{more}</table></details>")
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
    w = require("ipywidgets", "notebooks", "mtlib.widgets")

    buttons = []
    for fix in view.rendered.data.get("fixes", []):
        b = w.Button(description=f"apply fix: {fix.label}", tooltip=f"{fix.rule}: {fix.changes}",
                     button_style="warning", layout=w.Layout(width="auto"))
        b.on_click(lambda _b, fix=fix: view.set(**fix.changes))
        buttons.append(b)
    view.fix_buttons = buttons
    view.extra_box.children = (w.HBox(buttons, layout=w.Layout(flex_flow="row wrap")),) if buttons else ()


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
    state = _plan_state(config, image_size, audio_seconds, frame_num, motion_frame, mode, size,
                        buckets, short_audio, audio_type, audio)

    def controls() -> dict:
        w = require("ipywidgets", "notebooks", "mtlib.widgets")

        lay = {"style": {"description_width": "110px"}, "layout": w.Layout(width="400px")}
        small = {"style": {"description_width": "110px"}, "layout": w.Layout(width="260px")}
        return {
            "frame_num_auto": lambda: w.Checkbox(description="frame_num auto", indent=False,
                                                 layout=w.Layout(width="200px", margin="0 0 0 60px")),
            "frame_num": lambda: w.IntSlider(min=1, max=201, description="frame_num", **lay),
            "audio_seconds": lambda: w.FloatSlider(min=0.1, max=20, step=0.01, description="speaker 1 (s)", **lay),
            "audio_seconds_b": lambda: w.FloatSlider(min=0, max=20, step=0.01, description="speaker 2 (s)", **lay),
            "motion_frame": lambda: w.IntSlider(min=1, max=81, description="motion_frame", **lay),
            "mode": lambda: w.Dropdown(options=["clip", "streaming"], description="mode", **small),
            "short_audio": lambda: w.Dropdown(options=["pad", "snap", "error"], description="short_audio", **small),
            "audio_type": lambda: w.Dropdown(options=["para", "add"], description="audio_type", **small),
            "size": lambda: w.Dropdown(options=["multitalk-480", "multitalk-720"], description="size", **small),
            "buckets": lambda: w.Dropdown(options=["official", "tiny"], description="buckets", **small),
            "image_w": lambda: w.BoundedIntText(min=16, max=16384, description="image width", **small),
            "image_h": lambda: w.BoundedIntText(min=16, max=16384, description="image height", **small),
        }

    rows = [("frame_num", "frame_num_auto"), ("audio_seconds", "audio_seconds_b"),
            ("motion_frame", "mode"), ("short_audio", "audio_type", "size"), ("buckets", "image_w", "image_h")]

    return View("02 shape plan", render_plan, state, controls() if is_interactive(interactive) else None,
                interactive, after_render=_fix_buttons, rows=rows)


# ------------------------------------------------------------------------------ 01 preprocessing


def _audio_list(audio: Any) -> list[str]:
    if audio is None or audio == "":
        return []
    if isinstance(audio, str | os.PathLike):
        return [str(audio)]
    return [str(a) for a in audio if a]


def _local(path: str) -> str:
    from mtlib.io import is_remote, resolve_local

    return path if is_remote(path) else str(resolve_local(path))


def render_preprocessing(state: dict) -> RenderedView:
    """01: crop + person masks on the bucket, per-person waveforms (loudness-normalised),
    and the wav2vec2 embedding heatmap when an encoder was given."""
    import numpy as np

    from mtlib.media import audio as A
    from mtlib.media import image as I

    image = state["image"]
    tracks_in = [a for a in (state["audio"], state.get("audio_b", "")) if a]
    if not tracks_in:
        raise InputError("audio: give one speech file (or two for two speakers).")
    persons = len(tracks_in)
    src = _local(image)
    prepared = I.prepare_image(src, state["size"], state["buckets"])
    g = prepared.geometry
    H, W = prepared.target_hw
    masks = I.ref_target_masks(g.src_h, g.src_w, H, W, persons)  # [3, H/8, W/8]
    _pyplot()
    crop_fig = I.plot_crop(src, prepared, masks)

    normed, lufs_raw, lufs = [], [], []
    for i, a in enumerate(tracks_in):
        x = A.load_audio(_local(a), what=f"speaker {i + 1} audio")
        y = A.prepare_speech(_local(a), what=f"speaker {i + 1} audio")
        normed.append(y)
        lufs_raw.append(A.integrated_loudness(x, what=f"speaker {i + 1} audio"))
        lufs.append(A.integrated_loudness(y))
    if persons == 2:
        sp = A.combine_speakers(normed[0], normed[1], state["audio_type"])
        person_tracks = [sp.person1, sp.person2]
    else:
        person_tracks = [normed[0]]
    plt = _pyplot()
    fig, axes = plt.subplots(len(person_tracks), 1, figsize=(10, 1.8 * len(person_tracks) + 0.6), squeeze=False)
    for i, (ax, t) in enumerate(zip(axes[:, 0], person_tracks, strict=True)):
        t = np.asarray(t, dtype=np.float32)
        ax.plot(np.arange(len(t)) / A.SAMPLE_RATE, t, lw=0.5, color=("tab:red", "tab:blue")[i])
        ax.set_ylabel(f"person {i + 1}")
        ax.set_title(f"person {i + 1}: {len(t)} samples ({len(t) / A.SAMPLE_RATE:.2f} s), "
                     f"{A.audio_frames(len(t))} embedding frames; speaker {i + 1} loudness "
                     f"{lufs_raw[i]:.1f} -> {lufs[i]:.1f} LUFS", fontsize=9)
    axes[-1, 0].set_xlabel(f"s ({state['audio_type']})" if persons == 2 else "s")
    fig.tight_layout()
    figures = [crop_fig, fig]
    emb_shapes = []
    encoder = state.get("audio_encoder")
    if encoder is not None:
        for i, t in enumerate(person_tracks):
            emb = A.embed_audio(np.asarray(t, dtype=np.float32), encoder)
            emb_shapes.append(tuple(emb.shape))
            figures.append(A.plot_embedding(emb, title=f"person {i + 1} audio_embedding"))
    lines = [
        f"image {src}: {g.src_w}x{g.src_h} (w x h) -> bucket {prepared.bucket} ({state['size']}, "
        f"{state['buckets']} table) -> {W}x{H}, resized {g.resized_w}x{g.resized_h}, crop at (top {g.top}, left {g.left})",
        f"ref_target_masks {list(masks.shape)}: person pixels {[int(m.sum()) for m in masks[:2]]}, "
        f"background {int(masks[2].sum())}",
    ]
    for i, t in enumerate(person_tracks):
        lines.append(f"person {i + 1} track: {len(t)} samples at 16 kHz = {len(t) / A.SAMPLE_RATE:.3f} s, "
                     f"{A.audio_frames(len(t))} embedding frames")
    if encoder is None:
        lines.append("audio_embedding: no audio_encoder given (pass audio_encoder=load_wav2vec(...) to draw it)")
    else:
        lines += [f"person {i + 1} audio_embedding {list(s)}" for i, s in enumerate(emb_shapes)]
    data = {
        "bucket": prepared.bucket, "target_hw": (H, W), "src_hw": (g.src_h, g.src_w),
        "mask_shape": tuple(masks.shape), "mask_pixels": [int(m.sum()) for m in masks],
        "persons": persons, "track_samples": [len(t) for t in person_tracks],
        "embedding_frames": [A.audio_frames(len(t)) for t in person_tracks],
        "lufs_raw": lufs_raw, "lufs": lufs, "embedding_shapes": emb_shapes,
    }
    return RenderedView("01 preprocessing", text="\n".join(lines), figures=figures, data=data)


def _upload_into(text_widget, upload) -> None:
    """Write a FileUpload's file to a temporary path and put that path in the text field."""

    def on_upload(change: dict) -> None:
        files = change["new"]
        if not files:
            return
        f = files[0]
        d = Path(tempfile.mkdtemp(prefix="mtlib-upload-"))
        path = d / Path(f["name"]).name
        path.write_bytes(bytes(f["content"]))
        text_widget.value = str(path)

    upload.observe(on_upload, names="value")


def preprocessing_view(
    image: str = "data/portrait.png",
    audio: str | list[str] = "data/speech_1p79s.wav",
    size: str = "multitalk-480",
    buckets: str = "tiny",
    audio_type: str = "para",
    audio_encoder: Any = None,
    interactive: bool | None = None,
) -> View:
    """01: pick the image and one or two speech files (path / URL, or upload), the size
    bucket table and the two-speaker mode; crop, masks, waveforms (and the embedding when
    `audio_encoder` is an mtlib.models.wav2vec.AudioEncoder) redraw on change."""
    files = _audio_list(audio)
    if len(files) > 2:
        raise InputError(f"audio: {len(files)} files; MultiTalk takes one or two speakers.")
    state = {
        "image": str(image), "audio": files[0] if files else "", "audio_b": files[1] if len(files) > 1 else "",
        "size": size, "buckets": buckets, "audio_type": audio_type, "audio_encoder": audio_encoder,
    }

    def controls() -> dict:
        w = require("ipywidgets", "notebooks", "mtlib.widgets")

        lay = {"style": {"description_width": "110px"}, "layout": w.Layout(width="520px")}
        return {
            "image": lambda: w.Text(description="image", continuous_update=False, **lay),
            "audio": lambda: w.Text(description="speaker 1 audio", continuous_update=False, **lay),
            "audio_b": lambda: w.Text(description="speaker 2 audio", placeholder="(empty: one speaker)",
                                      continuous_update=False, **lay),
            "size": lambda: w.Dropdown(options=["multitalk-480", "multitalk-720"], description="size"),
            "buckets": lambda: w.ToggleButtons(options=["official", "tiny"], description="buckets"),
            "audio_type": lambda: w.ToggleButtons(options=["para", "add"], description="two speakers"),
        }

    def uploads(view: View) -> None:
        w = require("ipywidgets", "notebooks", "mtlib.widgets")

        if view.extra_box.children:
            return
        ups = []
        for key, accept in (("image", "image/*"), ("audio", "audio/*,video/*"), ("audio_b", "audio/*,video/*")):
            up = w.FileUpload(accept=accept, multiple=False, description=f"upload {key.replace('_b', ' 2')}",
                              layout=w.Layout(width="auto"))
            _upload_into(view.controls[key], up)
            ups.append(up)
        view.uploads = ups
        view.extra_box.children = (w.HBox(ups),)

    return View("01 preprocessing", render_preprocessing, state,
                controls() if is_interactive(interactive) else None, interactive, after_render=uploads)


# ------------------------------------------------------------------------------ 03 video


def _find_mp4(source: str | os.PathLike) -> Path:
    p = Path(_local(str(source)))
    if p.is_dir():
        found = sorted(p.glob("*.mp4")) or sorted(p.glob("**/*.mp4"))
        preferred = [f for f in found if f.name == "video.mp4"]
        if not found:
            raise InputError(f"video: no .mp4 in {str(p)!r}. Fix: pass the run directory of a finished "
                             "03_inference run, or the mp4 path.")
        return (preferred or found)[0]
    if not p.exists():
        raise InputError(f"video {str(source)!r}: not found. Fix: pass a run directory or an mp4 path.")
    return p


class _ShardTrace:
    """Minimal reader of an mtlib trace directory's full tensors (tensors-*.safetensors keyed
    by point name), used when mtlib.trace has no load_trace yet."""

    def __init__(self, directory: Path):
        from safetensors import safe_open

        self.path = directory
        self._where: dict[str, Path] = {}
        for shard in sorted(directory.glob("tensors-*.safetensors")):
            with safe_open(str(shard), framework="pt") as f:
                for k in f.keys():
                    self._where[k] = shard
        self.names = list(self._where)

    def has_tensor(self, name: str) -> bool:
        return name in self._where

    def tensor(self, name: str):
        from safetensors import safe_open

        with safe_open(str(self._where[name]), framework="pt") as f:
            return f.get_tensor(name)


def _open_trace(path: Path):
    from mtlib import trace as T

    if hasattr(T, "load_trace"):
        return T.load_trace(path)
    if not (path / "tensors-00000.safetensors").exists() and (path / "trace").is_dir():
        path = path / "trace"
    return _ShardTrace(path)


def latent_steps(tr, point: str = "latent_in") -> list[str]:
    """Names of the per-step latent points stored in full, in (clip, step) order."""
    import re

    pat = re.compile(rf"(?:^|\.)clip(\d+)\.step(\d+)\.{re.escape(point)}$")
    found = []
    for n in tr.names:
        m = pat.search(n)
        if m and tr.has_tensor(n):
            found.append(((int(m.group(1)), int(m.group(2))), n))
    return [n for _, n in sorted(found)]


def latent_image(latent) -> Any:
    """[.., C, T, h, w] latent -> [T, h, w] numpy: the mean over channels per latent frame."""
    import numpy as np

    x = latent.detach().float().cpu().numpy() if hasattr(latent, "detach") else np.asarray(latent, np.float32)
    while x.ndim > 4:
        x = x[0]
    if x.ndim != 4:
        raise InputError(f"latent of shape {list(x.shape)}: expected [C, T, h, w] (or with a batch dim).")
    return x.mean(axis=0)


def render_video(state: dict) -> RenderedView:
    """03: one video frame (`frame`), the channel mean of one latent (`step`, `latent_frame`)
    when a trace with full latents is present, and the player with sound."""
    import numpy as np

    from mtlib.media.video import read_mp4

    mp4 = state["_mp4"]
    frames = state.get("_frames")
    if frames is None:
        frames, _audio, info = read_mp4(mp4)
        state["_frames"], state["_info"] = frames, info
    info = state["_info"]
    n = int(frames.shape[0])
    if n == 0:
        raise InputError(f"video {str(mp4)!r}: has no frames.")
    i = min(max(int(state["frame"]), 0), n - 1)
    plt = _pyplot()
    steps = state.get("_steps") or []
    ncols = 2 if steps else 1
    fig, axes = plt.subplots(1, ncols, figsize=(4.2 * ncols, 4.2), squeeze=False)
    axes[0, 0].imshow(frames[i])
    axes[0, 0].set_title(f"frame {i} / {n - 1}  (t = {i / (info.get('fps') or 25):.2f} s)", fontsize=9)
    axes[0, 0].axis("off")
    data = {"frame": i, "n_frames": n, "frame_mean": float(frames[i].mean()), "fps": info.get("fps"),
            "mp4": str(mp4), "steps": list(steps)}
    lines = [f"{mp4}: {n} frames {info.get('width')}x{info.get('height')} at {info.get('fps')} fps, "
             f"audio {info.get('audio_codec') or 'none'}; showing frame {i}"]
    if steps:
        s = min(max(int(state.get("step", 0)), 0), len(steps) - 1)
        lat = latent_image(state["_trace"].tensor(steps[s]))  # [T, h, w]
        t = min(max(int(state.get("latent_frame", 0)), 0), lat.shape[0] - 1)
        img = lat[t]
        lim = float(np.abs(lat).max()) or 1.0
        im = axes[0, 1].imshow(img, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        axes[0, 1].set_title(f"{steps[s]}\nchannel mean, latent frame {t} / {lat.shape[0] - 1}", fontsize=8)
        axes[0, 1].axis("off")
        fig.colorbar(im, ax=axes[0, 1], fraction=0.046)
        data.update(step=s, step_point=steps[s], latent_frame=t, latent_frames=int(lat.shape[0]),
                    latent_mean=float(img.mean()))
        lines.append(f"latent {steps[s]}: latent frame {t} of {lat.shape[0]}, channel mean {img.mean():.4f}")
    elif state.get("_trace_note"):
        lines.append(state["_trace_note"])
    fig.tight_layout()
    media = []
    if state.get("player", True):
        from IPython.display import Video

        src = Path(mp4).resolve()
        with contextlib.suppress(ValueError):  # a path below the cwd stays valid beside the notebook
            src = src.relative_to(Path.cwd().resolve())
        media.append(Video(str(src), embed=bool(state.get("embed", False)), html_attributes="controls"))
    return RenderedView("03 video", text="\n".join(lines), figures=[fig], data=data, media=media)


def video_view(source: str | os.PathLike, trace_dir: str | os.PathLike | None = None, frame: int = 0,
               step: int = 0, point: str = "latent_in", embed: bool = False,
               interactive: bool | None = None) -> View:
    """03: scrub the frames of a generated video (a run directory or an mp4) and, when a
    trace with full per-step latents exists (`trace_dir`, or `<run_dir>/trace`), the
    channel mean of `e2e.clip<c>.step<i>.<point>`; plus the player with sound.
    embed=True inlines the mp4 in the notebook (large); default links the file."""
    mp4 = _find_mp4(source)
    state: dict[str, Any] = {"_mp4": mp4, "frame": int(frame), "step": int(step), "latent_frame": 0,
                             "embed": embed}
    tdir = Path(_local(str(trace_dir))) if trace_dir else None
    if tdir is None and Path(_local(str(source))).is_dir() and (Path(_local(str(source))) / "trace").is_dir():
        tdir = Path(_local(str(source))) / "trace"
    if tdir is not None:
        tr = _open_trace(tdir)
        state["_trace"], state["_steps"] = tr, latent_steps(tr, point)
        if not state["_steps"]:
            state["_trace_note"] = (f"trace {tdir}: no full '{point}' latents (record them with "
                                    f"trace.full: ['e2e.*.{point}'] or level full)")
    # decode once so the sliders know their ranges
    from mtlib.media.video import read_mp4

    state["_frames"], _a, state["_info"] = read_mp4(mp4)

    def controls() -> dict:
        w = require("ipywidgets", "notebooks", "mtlib.widgets")

        n = int(state["_frames"].shape[0])
        lay = {"style": {"description_width": "90px"}, "layout": w.Layout(width="520px")}
        out = {"frame": lambda: w.IntSlider(min=0, max=max(0, n - 1), description="video frame", **lay)}
        if state.get("_steps"):
            T = latent_image(state["_trace"].tensor(state["_steps"][0])).shape[0]
            out["step"] = lambda: w.IntSlider(min=0, max=len(state["_steps"]) - 1, description="step", **lay)
            out["latent_frame"] = lambda: w.IntSlider(min=0, max=T - 1, description="latent frame", **lay)
        return out

    def player(view: View) -> None:
        # the Output widget is re-drawn on each change: keep one player outside it
        w = require("ipywidgets", "notebooks", "mtlib.widgets")

        if view.extra_box.children:
            return
        view.player = w.Video.from_file(str(mp4), autoplay=False, loop=False, controls=True,
                                        layout=w.Layout(width="360px"))
        view.extra_box.children = (view.player,)

    interactive_now = is_interactive(interactive)
    if interactive_now:
        state["player"] = False
    return View("03 video", render_video, state, controls() if interactive_now else None, interactive,
                after_render=player)


# ------------------------------------------------------------------------------ 04 compare


def _run_dirs(root: str | os.PathLike = "runs") -> list[str]:
    base = Path(_local(str(root)))
    if not base.is_dir():
        return []
    return sorted(str(p) for p in base.iterdir() if p.is_dir() and ((p / "trace").is_dir() or (p / "index.jsonl").exists()))


def _comparison(state: dict):
    key = (state["run_a"], state["run_b"])
    cache = state.setdefault("_cache", {})
    if key not in cache:
        comparer = state.get("comparer")
        if comparer is None:
            from mtlib.compare import compare as comparer  # branch tracecmp
        cache.clear()
        cache[key] = comparer(_local(state["run_a"]), _local(state["run_b"]))
    return cache[key]


def render_compare(state: dict) -> RenderedView:
    """04: comparison table, error along the pipeline, and the difference heatmap of `point`
    (default: the first divergence, else the last point compared as tensors)."""
    if not state["run_a"] or not state["run_b"]:
        raise InputError("compare: pick two runs (trace directories or run directories).")
    cmp = _comparison(state)
    names = [r.name for r in cmp.rows]
    point = state.get("point") or ""
    if not point:
        fd = cmp.first_divergence
        tensor_rows = [r.name for r in cmp.compared if getattr(r, "mode", "tensor") == "tensor"]
        point = fd if fd in tensor_rows else (tensor_rows[-1] if tensor_rows else "")
    figures = [cmp.plot_pipeline()]
    note = ""
    if point:
        try:
            figures.append(cmp.plot_heatmap(point))
        except (KeyError, ValueError) as e:
            note = f"no heatmap for {point!r}: {e}"
    text = cmp.summary() + "\n\n" + cmp.table()
    if note:
        text += "\n" + note
    html_table = cmp._repr_html_() if hasattr(cmp, "_repr_html_") else None
    page = None
    if html_table:
        page = (f"<div style='font-family:sans-serif'><b>{html.escape(cmp.summary())}</b>"
                f"{'<br>' + html.escape(note) if note else ''}"
                f"<div style='max-height:320px;overflow:auto'>{html_table}</div></div>")
    data = {"summary": cmp.summary(), "first_divergence": cmp.first_divergence, "point": point,
            "points": names, "failures": [r.name for r in cmp.failures]}
    return RenderedView("04 compare", text=text, html=page, figures=figures, data=data)


def compare_view(run_a: str | os.PathLike = "", run_b: str | os.PathLike = "", point: str | None = None,
                 runs_dir: str | os.PathLike = "runs", comparer: Callable | None = None,
                 comparison: Any = None, interactive: bool | None = None) -> View:
    """04: compare trace A with the reference B (run dirs, trace dirs or golden cases, as
    mtlib.compare.load_trace reads them). `comparison`: an mtlib.compare.Comparison of this
    very pair already computed (not computed again). `comparer(a, b)` replaces
    mtlib.compare.compare. Interactive: two combo boxes listing run dirs under `runs_dir`
    (free text allowed) and a dropdown of the compared points."""
    # "_cache" is shared by the shallow state copies each render gets: one compare per pair
    state = {"run_a": str(run_a), "run_b": str(run_b), "point": point or "", "comparer": comparer, "_cache": {}}
    if comparison is not None:
        state["_cache"][(state["run_a"], state["run_b"])] = comparison
    choices = _run_dirs(runs_dir)

    def controls() -> dict:
        w = require("ipywidgets", "notebooks", "mtlib.widgets")

        lay = {"style": {"description_width": "90px"}, "layout": w.Layout(width="720px")}
        return {
            "run_a": lambda: w.Combobox(options=choices, description="run A", ensure_option=False,
                                        continuous_update=False, **lay),
            "run_b": lambda: w.Combobox(options=choices, description="run B (ref)", ensure_option=False,
                                        continuous_update=False, **lay),
        }

    def point_picker(view: View) -> None:
        w = require("ipywidgets", "notebooks", "mtlib.widgets")

        names = view.rendered.data.get("points", [])
        opts = [("(first divergence)", "")] + [(n, n) for n in names]
        if not view.extra_box.children:
            dd = w.Dropdown(options=opts, value="", description="point", layout=w.Layout(width="720px"),
                            style={"description_width": "90px"})
            dd.observe(view._changed("point"), names="value")
            view.controls["point"] = dd
            view.extra_box.children = (dd,)
        dd = view.controls["point"]
        if [o[1] for o in dd.options] != [o[1] for o in opts]:
            keep = view.state.get("point", "")
            with view.quiet():
                dd.options = opts
                dd.value = keep if keep in names else ""

    return View("04 compare", render_compare, state, controls() if is_interactive(interactive) else None,
                interactive, after_render=point_picker)

