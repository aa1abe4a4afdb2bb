"""The pattern every view follows: the headless rule (`is_interactive`), `RenderedView` (text,
HTML, figures, data) and `View` (state, controls bound to state keys, re-render on change).
"""

from __future__ import annotations

import contextlib
import html
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from mtlib.extras import pyplot, require

_TRUE_OFF = ("", "0", "false", "no")


def _pyplot():
    """pyplot for the widgets (headless: Agg; see mtlib.extras.pyplot)."""
    return pyplot("mtlib.inspect.widgets plots")


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
        title,
        text=msg,
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
        w = require("ipywidgets", "notebooks", "mtlib.inspect.widgets")

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
            lines = [
                w.HBox([self.controls[k] for k in row if k in self.controls]) for row in self._rows
            ]
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
