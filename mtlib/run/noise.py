"""Where the loop's random tensors come from (`NoiseSource`): one seeded CPU generator in the
reference's order (`SeededNoise`), or a recorded trace (`InjectedNoise`).
"""

from __future__ import annotations

from typing import Protocol

import torch

from mtlib.io import InputError


class NoiseSource(Protocol):
    def draw(self, name: str, shape: tuple[int, ...]) -> torch.Tensor: ...  # float32, CPU


class SeededNoise:
    """Every random tensor from ONE CPU generator seeded once, in the order of the calls.

    generate() asks in the reference's order (clip 0 noise; per later clip: noise,
    motion_init, motion_step0 ...), so with a CPU run of the reference seeded the same way the
    draws are identical; on GPU the reference uses the CUDA generator and differs.
    """

    def __init__(self, seed: int):
        self.seed = seed
        self.generator = torch.Generator("cpu").manual_seed(seed)

    def draw(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(tuple(shape), generator=self.generator, dtype=torch.float32)


class InjectedNoise:
    """The random tensors of a recorded run, by trace name (`e2e.clip<c>.rand.*`)."""

    def __init__(self, tensors_by_name: dict[str, torch.Tensor], seed: int | None = None):
        self.tensors = tensors_by_name
        self.seed = seed

    def draw(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if name not in self.tensors:
            have = sorted(k for k in self.tensors if ".rand." in k)
            raise InputError(
                f"injected noise: no tensor named {name!r} (have {have}). Fix: inject a trace "
                "recorded with the same mode, frame_num, motion_frame, steps and audio length, "
                "or use SeededNoise."
            )
        value = self.tensors[name]
        if tuple(value.shape) != tuple(shape):
            raise InputError(
                f"injected noise {name!r}: shape {list(value.shape)} but this run needs "
                f"{list(shape)}. Fix: inject a trace of the same resolution and frame_num."
            )
        return value.detach().to("cpu", torch.float32, copy=True)  # the loop writes into it
