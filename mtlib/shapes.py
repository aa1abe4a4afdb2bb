"""Moved: the shape plan is the package `mtlib.plan` (planner, records, tensors, costs, render,
buckets, guards); `mtlib plan` is `mtlib/cli/plan.py`. This module re-exports the public names
so `mtlib.shapes.plan`, `mtlib.shapes.PlanInputs`, ... keep working. No logic here.
"""

from mtlib.plan import (  # noqa: F401
    AUDIO_ASSERT,
    CLIP_FRAMES,
    LOUDNESS_BLOCK_S,
    MAX_CLIPS,
    MODEL_SIZES,
    PLAN_DEFAULT_CONFIG,
    ROPE_POSITIONS,
    WEIGHT_BYTES,
    ClipPlan,
    ModelSizes,
    PlanError,
    PlanInputs,
    PlannedTensor,
    PolicyAction,
    ShapePlan,
    Violation,
    audio_padding,
    explain,
    model_sizes,
    plan,
    plan_for,
    plan_table,
    plot_frame_grouping,
)
