"""The notebooks as a workbench: one interactive view per notebook, static when run headless.

The same notebooks serve two audiences: `mtlib run` / papermill / nbval execute them
headless with injected parameters, and a person explores them in JupyterLab. Each view
here is one function a notebook calls in one cell, as the cell's last expression:

    01  preprocessing_view(image, audio, ...)   crop, person masks, waveforms, embedding
    02  plan_view(config, image_size, ...)       shape plan + diagnosis, "apply fix" buttons
    03  video_view(run_dir_or_mp4, ...)          frame scrubber, latent scrubber, player
    04  compare_view(run_a, run_b, point=None)   comparison table, error plot, heatmap

Files: `view.py` (the headless rule, RenderedView, View), `plan.py`, `preprocessing.py`,
`video.py`, `compare.py` (one view each); every public name is re-exported here (and
`mtlib.widgets` still works).

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

from mtlib.inspect.widgets.compare import (  # noqa: F401
    compare_view,
    render_compare,
)
from mtlib.inspect.widgets.plan import (  # noqa: F401
    PLAN_RULES,
    Fix,
    plan_fixes,
    plan_of,
    plan_view,
    render_plan,
)
from mtlib.inspect.widgets.preprocessing import (  # noqa: F401
    preprocessing_view,
    render_preprocessing,
)
from mtlib.inspect.widgets.video import (  # noqa: F401
    latent_image,
    latent_steps,
    render_video,
    video_view,
)
from mtlib.inspect.widgets.view import (  # noqa: F401
    RenderedView,
    View,
    close_figures,
    is_interactive,
)
