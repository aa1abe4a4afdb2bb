"""Comparing two traces tensor by tensor, and finding where they part (`mtlib compare A B`).

Files: `tolerances.py` (the acceptance rule, statuses), `diff.py` (one point: compare_point),
`report.py` (compare -> Comparison: every point in execution order, first_divergence, tables),
`plots.py` (error along the pipeline / per step, heatmaps), `stages.py` (STAGES, replay: is a
difference made by one stage or carried in from upstream), `demo.py` (synthetic and tiny run
pairs for notebook 04). `mtlib compare` is mtlib/cli/compare.py. Every public name is
re-exported here (and `mtlib.compare` still works).
"""

from __future__ import annotations

from mtlib.inspect.compare.demo import (  # noqa: F401
    TINY_PAIR_CHANGE,
    demo_traces,
    heatmap_point,
    resolve_pair,
    tiny_pair,
)
from mtlib.inspect.compare.diff import (  # noqa: F401
    PointResult,
    compare_point,
)
from mtlib.inspect.compare.plots import (  # noqa: F401
    plot_difference_heatmap,
    plot_error_along_pipeline,
    plot_error_per_step,
    reduce_to_2d,
)
from mtlib.inspect.compare.report import (  # noqa: F401
    Comparison,
    compare,
    describe_point,
    trace_incomplete,
    trace_status,
)
from mtlib.inspect.compare.stages import (  # noqa: F401
    DIT_PASSES,
    STAGES,
    ReplayResult,
    Stage,
    dit_stage,
    register_model_stages,
    register_stage,
    replay,
    stage_points,
)
from mtlib.inspect.compare.tolerances import (  # noqa: F401
    DTYPE_TOLERANCES,
    FAILING,
    PATTERN_FLOORS,
    STATUS_DIFFERS_STATS,
    STATUS_DTYPE,
    STATUS_FAIL,
    STATUS_ONLY_A,
    STATUS_ONLY_B,
    STATUS_PASS,
    STATUS_SHAPE,
    STATUS_UNVERIFIED,
    tolerance_for,
)
