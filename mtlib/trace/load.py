"""Reading traces back: a trace directory, a run directory, a golden case or a whole golden
directory as one `Trace` view (`load_trace`).

Golden data uses the same view: a case keeps its tensor names (in `params.trace_order` for
e2e cases, else the JSON's index order); a whole golden directory names its points
`<case>/<name>`, because the same names recur in several cases.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mtlib.trace.points import MemoryRecorder
from mtlib.trace.stats import tensor_stats
from mtlib.trace.writer import INDEX_FILE, META_FILE


class Trace:
    """One uniform, read-only view of recorded points, whatever their source.

    `names` are in execution order. `stats(name)` gives the statistics (computed from the
    tensor on first use when the source stored tensors only, as golden cases do);
    `tensor(name)` the tensor when it was stored in full; `meta` the source's metadata.
    """

    def __init__(
        self,
        names: list[str],
        entries: dict[str, dict],
        tensor_loader: Callable[[str], Any] | None,
        full: set[str],
        meta: dict,
        kind: str,
        path: Path | None = None,
    ):
        self.names = list(names)
        self.entries = entries  # what the source recorded per point (index line / case JSON)
        self._load = tensor_loader
        self._full = set(full)
        self.meta = meta
        self.kind = kind  # "mtlib" | "golden-case" | "golden-dir" | "safetensors" | "memory"
        self.path = path
        self._stats: dict[str, dict] = {}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Any], meta: dict | None = None) -> Trace:
        """An in-memory trace (all points full), e.g. the outputs of a replayed stage."""
        tensors = dict(tensors)
        return cls(
            list(tensors),
            {n: {} for n in tensors},
            tensors.__getitem__,
            set(tensors),
            meta or {},
            "memory",
        )

    @classmethod
    def from_recorder(cls, recorder: MemoryRecorder, meta: dict | None = None) -> Trace:
        """The points a MemoryRecorder kept, in the order they were first recorded."""
        return cls.from_tensors({n: recorder.tensors[n] for n in recorder.order}, meta)

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def __repr__(self) -> str:
        where = f" {str(self.path)!r}" if self.path else ""
        return f"Trace({self.kind}{where}, {len(self.names)} points, {len(self._full)} full)"

    def has_tensor(self, name: str) -> bool:
        return name in self._full

    def tensor(self, name: str) -> Any:
        if name not in self.entries:
            raise KeyError(f"{name!r}: no such point in {self!r}")
        if name not in self._full or self._load is None:
            raise KeyError(
                f"{name!r}: only statistics were recorded (trace level 'stats'); "
                "record it with TraceWriter(full=[...]) to get the tensor."
            )
        return self._load(name)

    def stats(self, name: str) -> dict[str, Any]:
        """shape, dtype, mean, std, absmax, nan, inf, hash (+ i, t, call for mtlib traces)."""
        if name in self._stats:
            return self._stats[name]
        entry = self.entries[name]
        if "mean" in entry and "hash" in entry or name not in self._full:
            s = dict(entry)
        else:
            s = {**entry, **tensor_stats(self.tensor(name))}
        self._stats[name] = s
        return s


def _mtlib_trace(directory: Path) -> Trace:
    from safetensors import safe_open

    from mtlib.io import InputError

    meta_path = directory / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    names: list[str] = []
    entries: dict[str, dict] = {}
    with open(directory / INDEX_FILE, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            try:
                e = json.loads(line)
            except json.JSONDecodeError:
                # a run that died mid-write leaves at most one torn last line: skip it
                continue
            if not isinstance(e, dict) or "name" not in e:
                raise InputError(
                    f"trace {str(directory)!r}: {INDEX_FILE} line {line_no} is not a point entry."
                )
            names.append(e["name"])
            entries[e["name"]] = e
    # tensors whose shard never reached the disk (crash before flush) count as stats-only
    shard_ok = {
        n: (directory / n).exists() for n in {e.get("shard") for e in entries.values()} if n
    }
    full = {n for n, e in entries.items() if e.get("shard") and shard_ok.get(e["shard"])}
    full |= {n for n, e in entries.items() if e.get("same_as") in full}  # compact: stored once
    handles: dict[str, Any] = {}

    def load(name: str) -> Any:
        entry = entries[name]
        if "same_as" in entry:
            return load(entry["same_as"])
        shard = entry["shard"]
        if shard not in handles:
            handles[shard] = safe_open(str(directory / shard), framework="pt")
        stored = handles[shard].get_tensor(name)
        if "codec" in entry:
            from mtlib.trace.codec import decode

            return decode(stored, entry)
        return stored

    return Trace(names, entries, load, full, meta, "mtlib", directory)


def _golden_case_order(case_meta: dict) -> list[str]:
    """Execution order of a golden case: params.trace_order (e2e) first, then index order."""
    index = list(case_meta.get("tensors", {}))
    order = [
        n
        for n in case_meta.get("params", {}).get("trace_order", [])
        if n in case_meta.get("tensors", {})
    ]
    return order + [n for n in index if n not in set(order)]


def _golden_case(json_path: Path) -> Trace:
    from safetensors import safe_open

    case_meta = json.loads(json_path.read_text())
    names = _golden_case_order(case_meta)
    entries = {n: dict(case_meta["tensors"][n]) for n in names}
    tf = case_meta.get("tensor_file")
    handle: list = []

    def load(name: str) -> Any:
        if not handle:
            handle.append(safe_open(str(json_path.parent / tf), framework="pt"))
        return handle[0].get_tensor(name)

    meta = {k: v for k, v in case_meta.items() if k != "tensors"}
    return Trace(
        names,
        entries,
        load if tf else None,
        set(names) if tf else set(),
        meta,
        "golden-case",
        json_path,
    )


def _golden_dir(root: Path, case: str | None = None) -> Trace:
    """All cases of a golden dir as `<case>/<name>` (point names recur across cases), or one
    case under its own names."""
    from mtlib.io import InputError

    index = json.loads((root / "index.json").read_text())
    cases = index["cases"]
    if case is not None:
        for c in cases:
            if c["case"] == case:
                return _golden_case(root / "cases" / c["stage"] / f"{case}.json")
        known = ", ".join(c["case"] for c in cases)
        raise InputError(f"golden case {case!r}: not in {str(root)!r}. Known cases: {known}.")
    names: list[str] = []
    entries: dict[str, dict] = {}
    owner: dict[str, tuple[Trace, str]] = {}
    for c in cases:
        sub = _golden_case(root / "cases" / c["stage"] / f"{c['case']}.json")
        for n in sub.names:
            q = f"{c['case']}/{n}"
            names.append(q)
            entries[q] = {**sub.entries[n], "case": c["case"], "stage": c["stage"]}
            owner[q] = (sub, n)
    full = {q for q, (sub, n) in owner.items() if sub.has_tensor(n)}
    meta = {k: v for k, v in index.items() if k != "cases"}
    meta["cases"] = [c["case"] for c in cases]
    return Trace(
        names, entries, lambda q: owner[q][0].tensor(owner[q][1]), full, meta, "golden-dir", root
    )


def _safetensors_file(path: Path) -> Trace:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        names = list(f.keys())
        meta = dict(f.metadata() or {})
    handle: list = []

    def load(name: str) -> Any:
        if not handle:
            handle.append(safe_open(str(path), framework="pt"))
        return handle[0].get_tensor(name)

    return Trace(names, {n: {} for n in names}, load, set(names), meta, "safetensors", path)


def load_trace(path: str | os.PathLike, case: str | None = None) -> Trace:
    """Open recorded points as a `Trace`. `path` may be:

    * an mtlib trace directory (index.jsonl + meta.json + tensors-*.safetensors),
    * a run directory holding such a trace in `trace/`,
    * a golden case (`<case>.json` or its `<case>.safetensors`),
    * a golden directory (the one with index.json): every case, points named `<case>/<name>`;
      with `case=` (or a path `<golden dir>/<case>` / `<golden dir>::<case>`) that one case,
    * any other .safetensors file (all tensors, file order).
    """
    from mtlib.io import InputError

    p = Path(path).expanduser()
    if case is None and "::" in str(path):
        base, case = str(path).rsplit("::", 1)
        p = Path(base).expanduser()
    if p.is_dir():
        if (p / INDEX_FILE).exists():
            return _mtlib_trace(p)
        if (p / "trace" / INDEX_FILE).exists():
            return _mtlib_trace(p / "trace")
        if (p / "index.json").exists():
            return _golden_dir(p, case)
    elif p.is_file():
        if p.name == INDEX_FILE:
            return _mtlib_trace(p.parent)
        if p.suffix == ".json":
            try:
                doc = json.loads(p.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                doc = None
            if isinstance(doc, dict) and "tensors" in doc and "case" in doc:
                return _golden_case(p)
        if p.suffix == ".safetensors":
            if p.with_suffix(".json").exists():
                return _golden_case(p.with_suffix(".json"))
            return _safetensors_file(p)
    elif case is None and (p.parent / "index.json").exists():
        return _golden_dir(p.parent, p.name)
    raise InputError(
        f"trace {str(path)!r}: not a trace. Expected an mtlib trace directory (with "
        f"{INDEX_FILE}), a run directory with trace/, a golden case .json / .safetensors, a "
        "golden directory (with index.json) or <golden dir>/<case name>."
    )
