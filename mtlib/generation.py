"""Moved: the run from a config to an mp4 is the package `mtlib.run`: `prepare.py` (prepare_run,
PlanError), `load.py` (load_models), `preprocess.py` (preprocess_inputs), `generation.py`
(generate_video, summary, open_trace); `mtlib generate` is mtlib/cli/generate.py. This module
re-exports the public names so `mtlib.generation.generate_video`, ... keep working. No logic here.
"""

from mtlib.run.generation import (  # noqa: F401
    GenerationOutput,
    display_video,
    generate_video,
    open_trace,
    opts_line,
    run_warnings,
    sdpa_priority,
    summary,
)
from mtlib.run.load import (  # noqa: F401
    DiTCall,
    EncodedPrompts,
    LoadedModels,
    PromptEncoder,
    load_audio_encoder,
    load_models,
    quant_files,
)
from mtlib.run.prepare import (  # noqa: F401
    PlanError,
    PreparedRun,
    effective_precision,
    prepare_run,
    resolve_device,
)
from mtlib.run.preprocess import (  # noqa: F401
    PreprocessedInputs,
    embedding_cache_dir,
    preprocess,
    preprocess_inputs,
    save_preprocessed,
)
