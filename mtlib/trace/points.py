"""Trace points: the hook every network and the pipeline call (`point`, `scope`,
`recording`, `active`, `wanted`) and the in-memory recorder.

Names follow the golden data: `<stage>.<point>` (`dit.block0.self_attn`, `vae.y`,
`audio.embedding`, ...), prefixed by the active scopes (`e2e.clip0.step1.` ...).

Cost when nothing records: one attribute read per point. Code on hot paths writes

    if trace.active():
        trace.point(f"dit.block{i}.out", x)

so that not even the name is formatted when tracing is off. `point` returns its tensor
unchanged and never alters results: recorders copy (detach + cpu) what they keep.
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Iterator
from typing import Any, Protocol


class Recorder(Protocol):
    def record(self, name: str, value: Any) -> None: ...


class _State:
    recorders: list[Recorder] = []
    prefix: list[str] = []


_state = _State()


def active() -> bool:
    """True while at least one recorder listens."""
    return bool(_state.recorders)


def wanted(name: str) -> bool:
    """Would a point `name` (scoped like point()) be kept by an active recorder? For values
    that cost something to compute only for the trace. Recorders without `wants` keep all."""
    if not _state.recorders:
        return False
    n = full_name(name)
    return any(getattr(rec, "wants", None) is None or rec.wants(n) for rec in _state.recorders)


def full_name(name: str) -> str:
    return "".join(_state.prefix) + name


def point(name: str, value: Any) -> Any:
    """Offer `value` to every active recorder under the scoped `name`; returns `value`."""
    if _state.recorders:
        n = full_name(name)
        for rec in _state.recorders:
            rec.record(n, value)
    return value


@contextlib.contextmanager
def recording(recorder: Recorder) -> Iterator[Recorder]:
    """Activate `recorder` for the duration of the block (recorders nest)."""
    _state.recorders.append(recorder)
    try:
        yield recorder
    finally:
        _state.recorders.remove(recorder)


@contextlib.contextmanager
def scope(prefix: str) -> Iterator[None]:
    """Prefix every point recorded inside the block, e.g. scope("e2e.clip0.")."""
    if prefix and not prefix.endswith("."):
        prefix += "."
    _state.prefix.append(prefix)
    try:
        yield
    finally:
        _state.prefix.pop()


class MemoryRecorder:
    """Keeps detached CPU copies of the points whose names match `patterns` (globs)."""

    def __init__(self, patterns: tuple[str, ...] | list[str] = ("*",)):
        self.patterns = tuple(patterns)
        self.tensors: dict[str, Any] = {}
        self.order: list[str] = []

    def wants(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.patterns)

    def record(self, name: str, value: Any) -> None:
        if not self.wants(name):
            return
        if hasattr(value, "detach"):
            value = value.detach().to("cpu", copy=True)
        if name not in self.tensors:
            self.order.append(name)
        self.tensors[name] = value

    def __getitem__(self, name: str) -> Any:
        return self.tensors[name]

    def __contains__(self, name: str) -> bool:
        return name in self.tensors
