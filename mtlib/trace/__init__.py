"""Named trace points, their recorders, and the on-disk trace format that `mtlib compare` reads.

A base layer: every network (`mtlib.models`) and the sampling loop call `trace.point`, so this
package imports nothing of mtlib but `mtlib.io`. The files:

- `points.py`: `point`, `scope`, `recording`, `active`, `wanted`; `MemoryRecorder` (tests,
  notebooks). Names follow the golden data: `<stage>.<point>` prefixed by the active scopes.
- `stats.py`: `tensor_stats`, `tensor_hash` (the "stats" level of a trace).
- `writer.py`: `TraceWriter`, streaming to a directory; the on-disk format is its docstring.
- `hooks.py`: `hook_modules`, per-module outputs through forward hooks.
- `load.py`: `load_trace` reads a trace / run / golden case / golden directory as a `Trace`.
- `codec.py`: compact traces (duplicates stored once, exact smaller encodings).

`mtlib.trace.<name>` keeps working for every public name (re-exported below).
"""

from __future__ import annotations

from mtlib.trace.hooks import (  # noqa: F401
    ModuleHooks,
    hook_modules,
)
from mtlib.trace.load import (  # noqa: F401
    Trace,
    load_trace,
)
from mtlib.trace.points import (  # noqa: F401
    MemoryRecorder,
    Recorder,
    active,
    full_name,
    point,
    recording,
    scope,
    wanted,
)
from mtlib.trace.stats import (  # noqa: F401
    tensor_hash,
    tensor_stats,
)
from mtlib.trace.writer import (  # noqa: F401
    INDEX_FILE,
    META_FILE,
    TRACE_FORMAT,
    TRACE_VERSION,
    TraceWriter,
    environment_meta,
)
