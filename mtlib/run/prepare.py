"""Before anything loads: resolve the device and precision, plan the run (`prepare_run` ->
`PreparedRun`), and refuse an invalid plan (`PlanError`, with the diagnosis) or a clip the GPU
cannot hold.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mtlib import plan as planning  # the plan package (formerly mtlib.plan)
from mtlib.config import ConfigError, RunConfig, load_config

if TYPE_CHECKING:
    from mtlib.run.loop_plan import GenerationSettings


class PlanError(planning.PlanError):
    """The shape plan refuses the run: carries the plan and its diagnosis (the reference's
    exact error, why, and the fixes), raised before any weights are loaded."""

    def __init__(self, plan: planning.ShapePlan):
        self.plan = plan
        self.violations = list(plan.violations)
        lines = [
            f"the run is refused before loading any weights ({len(self.violations)} problem(s)):"
        ]
        lines += [planning.explain(v) for v in self.violations]
        super().__init__("\n\n".join(lines))

    @property
    def diagnosis(self) -> str:
        return str(self)


# --------------------------------------------------------------------------------------------
# 1. Plan first
# --------------------------------------------------------------------------------------------


@dataclass
class PreparedRun:
    """A run the plan accepted: the resolved config and what the later steps need."""

    config: RunConfig  # generation.frame_num resolved to the planned value
    plan: planning.ShapePlan
    settings: GenerationSettings  # the loop's settings (frame_num resolved)
    device: str  # "cpu" | "cuda" | "cuda:N"
    precision: str  # effective: "fp32" on CPU, the config's choice on CUDA
    persons: int
    src_hw: tuple[int, int]  # source image (height, width)
    target_hw: tuple[int, int]  # conditioning image (H, W)
    pad_to_samples: tuple[int | None, ...]  # per person: silence-pad the 16 kHz track to this
    output_frames: int  # frames of the written video (real audio length)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"model.device {device!r}: no CUDA device is available here. Fix: model.device=cpu "
            "(with the tiny model) or run on a GPU machine."
        )
    return device


def effective_precision(device: str, precision: str) -> str:
    """fp32 on the CPU, the config's choice on CUDA; fp8 off a GPU is refused (mtlib.accel.options)."""
    from mtlib.accel.options import effective_precision as rule

    return rule(device, precision)


def _config(cfg: RunConfig | str | os.PathLike | dict | None) -> RunConfig:
    return cfg if isinstance(cfg, RunConfig) else load_config(cfg)


def prepare_run(
    cfg: RunConfig | str | os.PathLike | dict | None = "tiny", progress: bool = True
) -> PreparedRun:
    """Probe the inputs and plan every shape; refuse an invalid run before anything heavy.

    Raises PlanError (diagnosis: violations, the reference's message, fixes) when the plan is
    invalid, planning.PlanError / InputError for unreadable inputs, ConfigError for bad values.
    """
    from mtlib.accel.options import resolve_dit_options
    from mtlib.media.image import _check_bbox
    from mtlib.run.loop_plan import GenerationSettings
    from mtlib.weights.recipes import check_recipe

    cfg = _config(cfg)
    check_recipe(cfg)  # a distillation recipe without its LoRA: refused before anything
    plan = planning.plan(cfg)  # reads file headers only
    if not plan.valid:
        raise PlanError(plan)
    resolved = cfg.replace(**{"generation.frame_num": int(plan.frame_num)})
    _guard_inputs(cfg, plan)
    # bbox pixel ranges need the source size: checked here (the plan only counts the boxes)
    if cfg.inputs.bbox is not None:
        _check_bbox(cfg.inputs.bbox, plan.persons, plan.src_hw[0], plan.src_hw[1])
    device = resolve_device(cfg.model.device)
    _guard_gpu_memory(plan, device)
    resolve_dit_options(cfg, cuda=str(device).startswith("cuda"))  # refuses impossible options now
    settings = GenerationSettings.from_config(
        resolved.generation, cfg.model.size, progress=progress
    )
    return PreparedRun(
        config=resolved,
        plan=plan,
        settings=settings,
        device=device,
        precision=effective_precision(device, cfg.model.precision),
        persons=plan.persons,
        src_hw=tuple(plan.src_hw),
        target_hw=tuple(plan.target_hw),
        pad_to_samples=tuple(plan.pad_to_samples),
        output_frames=int(plan.output_frames),
    )


def _guard_inputs(cfg: RunConfig, plan: planning.ShapePlan) -> None:
    """What the header-only plan cannot see: a bbox for one speaker, truncated audio."""
    from mtlib.plan import guards

    guards.check_bbox_persons(cfg, plan.persons)
    guards.check_audio_complete(list(cfg.inputs.audio))


def _guard_gpu_memory(plan: planning.ShapePlan, device: str) -> None:
    """Refuse a clip whose activations alone cannot fit the GPU (mtlib.plan.guards.memory_refusal)."""
    if not str(device).startswith("cuda"):
        return
    import torch

    from mtlib.plan import guards

    reason = guards.memory_refusal(plan, torch.cuda.get_device_properties(device).total_memory)
    if reason:
        raise ConfigError(reason)
