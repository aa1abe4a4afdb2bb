"""The plan: every tensor shape of a run, and every reason the reference would fail, before compute.

`plan(config, inputs)` works from metadata only and returns a `ShapePlan` (see planner.py).
The frame / audio arithmetic is `mtlib.frames`, model geometry and dtypes `mtlib.spec`.
Files: `records.py` (PlanInputs, Violation, ClipPlan, ShapePlan, PlanError, explain),
`planner.py` (plan, plan_for: the rules in the reference's order), `violations.py` (the frame
and audio diagnoses), `tensors.py` (every tensor, the clip schedule), `costs.py` (FLOPs,
memory), `render.py` (plan_table, plot_frame_grouping), `buckets.py` (the resolution buckets),
`guards.py` (refusals before compute: outputs, memory, inputs; the run's notices).
`mtlib plan` is mtlib/cli/plan.py. The public names of the old `mtlib.shapes` are re-exported
here (and `mtlib.shapes` itself still works).
"""

from __future__ import annotations

from mtlib.frames import audio_padding  # noqa: F401 (the plan's public name since mtlib.shapes)
from mtlib.plan.planner import (  # noqa: F401
    plan,
    plan_for,
)
from mtlib.plan.records import (  # noqa: F401
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
    explain,
    model_sizes,
)
from mtlib.plan.render import (  # noqa: F401
    plan_table,
    plot_frame_grouping,
)
