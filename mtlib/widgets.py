"""Moved: the notebook views are the package `mtlib.inspect.widgets` (view, plan, preprocessing,
video, compare). This module re-exports the public names so `mtlib.widgets.plan_view`, ... keep
working. No logic here.
"""

from mtlib.inspect.widgets import (  # noqa: F401
    PLAN_RULES,
    Fix,
    RenderedView,
    View,
    close_figures,
    compare_view,
    is_interactive,
    latent_image,
    latent_steps,
    plan_fixes,
    plan_of,
    plan_view,
    preprocessing_view,
    render_compare,
    render_plan,
    render_preprocessing,
    render_video,
    video_view,
)
