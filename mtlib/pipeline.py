"""Moved: the clip / streaming loop is `mtlib.run.loop` (generate, Models, encode_prompts),
`mtlib.run.loop_plan` (GenerationSettings, LoopPlan, PlanDriftError, plan_clips, check_inputs)
and `mtlib.run.noise` (SeededNoise, InjectedNoise). This module re-exports their public names so
`mtlib.pipeline.<name>` keeps working. No logic here.
"""

from mtlib.run.loop import (  # noqa: F401
    CLIP,
    VAE,
    DiT,
    Models,
    encode_prompts,
    generate,
)
from mtlib.run.loop_plan import (  # noqa: F401
    LATENT_CHANNELS,
    PATCH_SIZE,
    VAE_STRIDE,
    ClipInfo,
    GenerationResult,
    GenerationSettings,
    LoopPlan,
    PlanDriftError,
    check_inputs,
    plan_clips,
)
from mtlib.run.noise import (  # noqa: F401
    InjectedNoise,
    NoiseSource,
    SeededNoise,
)
