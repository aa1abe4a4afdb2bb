"""Key checks shared by every network loader: one error that names every missing, unexpected
and mis-shaped key, in the same words for the DiT, the VAE, CLIP and T5.

The loaders compare the shapes a model expects (built on the meta device, so free) with the
shapes a checkpoint holds (read from headers or a memory-mapped state dict) before any tensor
is copied, and raise `CheckpointError(StateDiff.describe())` on a difference.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from mtlib.finite import check_state_finite
from mtlib.io import InputError, resolve_local


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
        for label, items in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("mis-shaped", self.misshaped),
        ):
            if items:
                parts.append(f"{len(items)} {label}: {name_list(items, limit)}")
        return "; ".join(parts)


def state_diff(
    expected: Mapping[str, Sequence[int]], found: Mapping[str, Sequence[int]]
) -> StateDiff:
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


def read_state_dict(
    path,
    what: str,
    keep: Callable[[str], bool] | None = None,
    fix: str = "pass the published .pth or a .safetensors state dict.",
) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a torch .pth state dict (weights_only, mmap when
    the file allows it), restricted to the keys `keep` accepts; `fix` ends the error for an
    unreadable file."""
    p = Path(resolve_local(path))
    if not p.is_file():
        raise InputError(
            f"{what} checkpoint {str(p)!r}: file not found. Fix: check the path (or download the weights)."
        )
    keep = keep or (lambda k: True)
    try:
        if p.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(p), framework="pt") as f:
                sd = {k: f.get_tensor(k) for k in f.keys() if keep(k)}
        else:
            try:
                sd = torch.load(str(p), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy (non-zip) .pth files cannot be memory-mapped
                sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(
            f"{what} checkpoint {str(p)!r}: cannot be read ({type(e).__name__}: {e}). Fix: {fix}"
        ) from e
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise InputError(f"{what} checkpoint {str(p)!r}: is not a flat state dict of tensors.")
    sd = {k: v for k, v in sd.items() if keep(k)}
    check_state_finite(sd, what, repr(str(p)))  # one isfinite per tensor: a NaN byte -> error
    return sd


def assign_state_dict(
    model: nn.Module, sd: dict[str, torch.Tensor], what: str, source: str, config_name: str
) -> None:
    """Strict key + shape check, then load with assign=True (the model may live on meta).

    Raises one CheckpointError listing every missing, unexpected and mis-shaped key.
    """
    diff = state_diff(shapes_of(model.state_dict()), shapes_of(sd))
    if diff:
        raise CheckpointError(
            f"{what} checkpoint {source}: does not match config {config_name}; {diff.describe()}. "
            "Fix: pass the config the checkpoint was made for, or the right checkpoint file."
        )
    model.load_state_dict(sd, strict=True, assign=True)


def check_config_keys(cls, d: Mapping) -> None:
    """A model config's `from_official(d)`: refuse keys the dataclass `cls` has no field for."""
    import dataclasses

    from mtlib.io import ConfigError

    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(
            f"{cls.__name__}.from_official: unknown keys {unknown}; known: {sorted(known)}"
        )


def config_label(cfg, configs: dict) -> str:
    for name, c in configs.items():
        if c == cfg:
            return repr(name)
    return "(custom)"


def pick_config(config, registry: Mapping, what: str, default: str = "multitalk-14b"):
    """A model config from a registry name, the config itself, or None (the real model)."""
    if config is None:
        config = default
    if isinstance(config, str):
        if config not in registry:
            raise ValueError(f"unknown {what} config {config!r}; known: {sorted(registry)}")
        return registry[config]
    return config


class KeyMap:
    """Renames between a checkpoint's key layout and a library module's own one.

    rules: (checkpoint pattern, module pattern) pairs; `{i}` stands for a layer index and
    `{x}` for any one dotted-name segment. The first matching rule wins; a key that no rule
    matches is kept as it is.
    """

    def __init__(self, rules: Sequence[tuple[str, str]]):
        import re

        def compile_(pattern: str):
            rx = (
                re.escape(pattern)
                .replace(r"\{i\}", r"(?P<i>\d+)")
                .replace(r"\{x\}", r"(?P<x>[^.]+)")
            )
            return re.compile(rx + "$")

        self.rules = [(compile_(a), a, compile_(b), b) for a, b in rules]

    @staticmethod
    def _apply(key: str, rx, template: str) -> str | None:
        m = rx.match(key)
        return None if m is None else template.format(**m.groupdict())

    def to_module(self, key: str) -> str:
        for rx, _, _, tmpl in self.rules:
            if (out := self._apply(key, rx, tmpl)) is not None:
                return out
        return key

    def to_checkpoint(self, key: str) -> str:
        for _, tmpl, rx, _ in self.rules:
            if (out := self._apply(key, rx, tmpl)) is not None:
                return out
        return key
