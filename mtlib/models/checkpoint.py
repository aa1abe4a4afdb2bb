"""Key checks shared by every network loader: one error that names every missing, unexpected
and mis-shaped key, in the same words for the DiT, the VAE, CLIP and T5.

The loaders compare the shapes a model expects (built on the meta device, so free) with the
shapes a checkpoint holds (read from headers or a memory-mapped state dict) before any tensor
is copied, and raise `CheckpointError(StateDiff.describe())` on a difference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from mtlib.io import InputError


class CheckpointError(InputError):
    """A checkpoint that does not fit the model: names the keys and the fix."""


def name_list(items: Sequence[str], limit: int = 8) -> str:
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


@dataclass
class StateDiff:
    missing: list[str] = field(default_factory=list)  # in the model, not in the checkpoint
    unexpected: list[str] = field(default_factory=list)  # in the checkpoint, not in the model
    misshaped: list[str] = field(default_factory=list)  # "key [checkpoint] (model [expected])"

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.misshaped)

    def describe(self, limit: int = 8) -> str:
        parts = []
        for label, items in (("missing", self.missing), ("unexpected", self.unexpected),
                             ("mis-shaped", self.misshaped)):
            if items:
                parts.append(f"{len(items)} {label}: {name_list(items, limit)}")
        return "; ".join(parts)


def state_diff(expected: Mapping[str, Sequence[int]], found: Mapping[str, Sequence[int]]) -> StateDiff:
    """Compare key -> shape maps (model's expectation vs checkpoint), in the model's key order
    (unexpected keys in the checkpoint's order), which reads like the architecture."""
    return StateDiff(
        missing=[k for k in expected if k not in found],
        unexpected=[k for k in found if k not in expected],
        misshaped=[
            f"{k} {list(found[k])} (model {list(expected[k])})"
            for k in expected
            if k in found and tuple(found[k]) != tuple(expected[k])
        ],
    )


def shapes_of(state: Mapping) -> dict[str, tuple[int, ...]]:
    """key -> shape of a state dict (tensors) or of a header map (shapes)."""
    return {k: tuple(getattr(v, "shape", v)) for k, v in state.items()}
