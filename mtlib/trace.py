"""Named trace points: the hook every network and the pipeline call, its recorders, and
the on-disk trace format that `mtlib compare` reads.

Names follow the golden data: `<stage>.<point>` (`dit.block0.self_attn`, `vae.y`,
`audio.embedding`, ...), prefixed by the active scopes (`e2e.clip0.step1.` ...).

Cost when nothing records: one attribute read per point. Code on hot paths writes

    if trace.active():
        trace.point(f"dit.block{i}.out", x)

so that not even the name is formatted when tracing is off. `point` returns its tensor
unchanged and never alters results: recorders copy (detach + cpu) what they keep.

Recorders: `MemoryRecorder` (tensors in a dict, for tests and notebooks) and `TraceWriter`
(streams to a directory). `load_trace` reads a trace directory, a run directory, a golden
case or a whole golden directory back as one `Trace` view; `hook_modules` records
per-module outputs through forward hooks.

On-disk format of a trace directory (version 1)
-----------------------------------------------
    meta.json                 {"format": "mtlib-trace", "version": 1, "created", "status":
                              "recording" | "complete", "level", "full": [globs], "include":
                              [globs], "hash": "sha1|mix128" note, "shard_mb", "environment": {python, platform,
                              torch, cuda, device, mtlib, git_commit}, "config": <run config>,
                              ...user meta; after close: "points", "shards", "wall_s"}
                              (rewritten atomically at open and at close)
    index.jsonl               one JSON object per point, in execution order, appended as
                              the point arrives
                              (flushed at least every 0.2 s and before each shard)
                              {"i": execution index, "name": unique point name, "base": name
                              as offered, "call": n-th offer of that name (0-based), "t":
                              seconds since the writer opened, "shape", "dtype", "device",
                              "mean", "std" (unbiased; 0 for one element), "absmax" (all in
                              float64, NaN/Inf propagate), "nan", "inf": counts, "hash":
                              "sha1:<hex>" of the raw C-order bytes (CPU tensors) or
                              "mix128:<hex>" computed on the accelerator (tensor_hash),
                              and "shard": file holding the tensor when stored in full;
                              compact writers (mtlib.trace_codec) add "codec" to a stored
                              tensor or "same_as": <point holding the same tensor>}
                              Non-tensor values get {"type", "repr"} instead of statistics.
    tensors-00000.safetensors the tensors stored in full, keyed by unique point name; a new
    tensors-00001.safetensors shard starts once the current one holds `shard_mb`; each shard
                              is written atomically (temp file + rename) when full or at close.
A name offered again (a module hook firing once per DiT call) is stored as `<name>#<n>`
(n = 1, 2, ...; the first offer keeps the plain name), with "base" and "call" in its line.
A crashed run leaves a readable trace: complete index lines, whole shards (points whose
shard was never written read back as stats-only), status "recording".

Golden data read by `load_trace` uses the same view: a case keeps its tensor names (in
`params.trace_order` for e2e cases, else the JSON's index order); a whole golden directory
names its points `<case>/<name>`, because the same names recur in several cases.
"""

from __future__ import annotations

import contextlib
import datetime
import fnmatch
import json
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
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


# ---------------------------------------------------------------------------------------
# Statistics of one tensor (the "stats" level of a trace)
# ---------------------------------------------------------------------------------------

_STATS_CHUNK = 1 << 24  # elements per reduction chunk: bounds the float64 temporary to 128 MB
_HASH_CHUNK_BYTES = 64 << 20  # bytes hashed per piece (bounds temporaries on any device)

# 64-bit odd constants (splitmix64 / murmur3 finalisers) as signed int64 for torch
_MIX = [c - (1 << 64) if c >= 1 << 63 else c for c in (
    0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0xD6E8FEB86659FD93)]


def _mix128(flat_bytes: Any) -> str:
    """128-bit content hash computed where the bytes live (no device -> host copy).

    The bytes are read as little-endian 64-bit words w_i; each word is mixed with its
    position (x = (w_i ^ i*K1) * K2, xor-shifted, then multiplied by K3 / K4 for two lanes)
    and the lanes are summed modulo 2**64. Integer sums do not depend on reduction order, so
    the value is the same on every device and thread count."""
    import torch

    mask = (1 << 64) - 1
    lanes = [0, 0]
    n = flat_bytes.numel()
    step = _HASH_CHUNK_BYTES
    for start in range(0, n, step):
        b = flat_bytes[start : start + step]
        pad = (-b.numel()) % 8
        if pad:
            b = torch.cat([b, b.new_zeros(pad)])
        elif b.storage_offset() % 8:  # a view starting mid-word (x[1:] of bf16) cannot be re-typed
            b = b.clone()
        w = b.view(torch.int64)
        idx = torch.arange(start // 8, start // 8 + w.numel(), device=w.device, dtype=torch.int64)
        x = (w ^ (idx * _MIX[0])) * _MIX[1]
        x = x ^ (x >> 31)
        y = x * _MIX[3]
        x = x * _MIX[2]
        x = x ^ (x >> 29)
        y = y ^ (y >> 32)
        s0, s1 = torch.stack([x.sum(), y.sum()]).tolist()
        lanes = [(lanes[0] + s0) & mask, (lanes[1] + s1) & mask]
    lanes[0] = (lanes[0] ^ (n * 0x9E3779B97F4A7C15)) & mask  # length matters too
    return f"mix128:{lanes[0]:016x}{lanes[1]:016x}"


def tensor_hash(tensor: Any, algorithm: str = "auto") -> str:
    """Content hash of the tensor's raw bytes in C order, prefixed by its algorithm; equal
    hashes of the same algorithm mean identical bytes.

    "sha1" (CPU tensors under "auto": OpenSSL sha1 is the fastest strong hash in the
    standard library, ~2x blake2b) or "mix128" (tensors on an accelerator under "auto":
    computed there by `_mix128`, so stats tracing never copies activations to the host).
    Hashes of different algorithms are not comparable: compare falls back to statistics."""
    import hashlib

    import torch

    flat = tensor.detach().reshape(-1)
    if not flat.is_contiguous():
        flat = flat.contiguous()
    if algorithm == "auto":
        algorithm = "sha1" if flat.device.type == "cpu" else "mix128"
    as_bytes = flat.view(torch.uint8) if flat.numel() else flat.new_zeros(0, dtype=torch.uint8)
    if algorithm == "mix128":
        return _mix128(as_bytes)
    if algorithm != "sha1":
        raise ValueError(f"tensor_hash algorithm {algorithm!r}: use 'auto', 'sha1' or 'mix128'.")
    h = hashlib.sha1()
    for start in range(0, as_bytes.numel(), _HASH_CHUNK_BYTES):
        piece = as_bytes[start : start + _HASH_CHUNK_BYTES]
        if piece.device.type != "cpu":
            piece = piece.to("cpu")
        h.update(piece.numpy().data)
    return "sha1:" + h.hexdigest()


def tensor_stats(tensor: Any, with_hash: bool = True) -> dict[str, Any]:
    """shape, dtype, mean, std (unbiased, 0 for one element), absmax, NaN and Inf counts, hash.

    Reductions run on the tensor's own device in float64, chunk by chunk (one float64
    temporary of at most 16 M elements), and come back with a single host sync.
    mean / std / absmax include NaN / Inf values (they propagate): the counts say why."""
    import torch

    t = tensor.detach()
    out: dict[str, Any] = {
        "shape": list(t.shape),
        "dtype": str(t.dtype).removeprefix("torch."),
        "device": str(t.device),
    }
    n = t.numel()
    if n == 0 or t.is_complex():
        out.update(mean=None, std=None, absmax=None, nan=0, inf=0)
    else:
        with torch.no_grad():
            flat = t.reshape(-1)
            count = mean = m2 = lo = hi = None
            if not (flat.is_floating_point()):
                flat = flat.to(torch.float64)  # ints / bool: rare and small
            for start in range(0, n, _STATS_CHUNK):
                c = flat[start : start + _STATS_CHUNK]
                k = c.numel()
                mean_k = torch.mean(c, dtype=torch.float64)  # accumulates in float64, no copy of c
                # deviations in float64, two passes: a near-constant tensor (std << |mean|, e.g.
                # an attention map) keeps its std; fp32 deviations lose it to the mean's rounding
                d = c.to(torch.float64) - mean_k
                m2_k = torch.dot(d, d)
                lo_k, hi_k = (v.to(torch.float64) for v in torch.aminmax(c))
                if count is None:
                    count, mean, m2, lo, hi = k, mean_k, m2_k, lo_k, hi_k
                else:  # Chan et al.: merge (count, mean, M2) of two parts
                    total = count + k
                    delta = mean_k - mean
                    mean = mean + delta * (k / total)
                    m2 = m2 + m2_k + delta * delta * (count * k / total)
                    count = total
                    lo, hi = torch.minimum(lo, lo_k), torch.maximum(hi, hi_k)
            mean_v, m2_v, lo_v, hi_v = torch.stack([mean, m2, lo, hi]).tolist()
        std_v = math.sqrt(m2_v / (count - 1)) if count > 1 and m2_v >= 0 else (0.0 if count == 1 else math.nan)
        amax_v = max(abs(lo_v), abs(hi_v)) if not (math.isnan(lo_v) or math.isnan(hi_v)) else math.nan
        nan = inf = 0
        if not math.isfinite(mean_v):  # a finite sum proves there is no NaN / Inf: skip counting
            nan = int(torch.isnan(t).sum())
            inf = int(torch.isinf(t).sum())
        out.update(mean=mean_v, std=std_v, absmax=amax_v, nan=nan, inf=inf)
    if with_hash:
        out["hash"] = tensor_hash(t)
    return out


def _as_tensor(value: Any) -> Any:
    """The tensor behind a trace value (tensors, numpy arrays, Python numbers), else None."""
    import torch

    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, bool | int | float):
        return torch.tensor(value)
    if type(value).__module__ == "numpy" and hasattr(value, "dtype"):
        import numpy as np

        return torch.from_numpy(np.ascontiguousarray(value))
    return None


# ---------------------------------------------------------------------------------------
# TraceWriter: the on-disk recorder
# ---------------------------------------------------------------------------------------

TRACE_FORMAT = "mtlib-trace"
TRACE_VERSION = 1
INDEX_FILE = "index.jsonl"
META_FILE = "meta.json"


def _git_commit() -> str | None:
    import subprocess

    from mtlib.io import project_root

    try:
        r = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=project_root(),
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() or None if r.returncode == 0 else None


def environment_meta() -> dict[str, Any]:
    """python, torch, device, mtlib version and git commit, for meta.json."""
    import platform

    import torch

    import mtlib

    device = "cpu"
    if torch.cuda.is_available():
        device = f"cuda: {torch.cuda.get_device_name(0)}"
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": device,
        "mtlib": mtlib.__version__,
        "git_commit": _git_commit(),
    }


def _jsonable(obj: Any) -> Any:
    """A run config (dataclasses, tuples, paths) as plain JSON data."""
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    return str(obj)


class TraceWriter:
    """Recorder that streams every point to `directory` (format in the module docstring).

        with TraceWriter("runs/x/trace", full=("e2e.*",)) as tw, trace.recording(tw):
            run()

    level "stats": statistics of every point; tensors only of the points matching `full`.
    level "full": same, and `full` defaults to every point ("*").

    By default each point is handled inline: statistics (a handful of reductions on the
    tensor's device, one sync), hash, index line; stored tensors are copied to the host and
    wait in the current shard, written atomically once it holds `shard_mb` or on close().
    `background=True` moves that work to a writer thread: `record` then only snapshots the
    tensor (a clone on its device, since the caller may change it in place) and queues it,
    with at most `max_queue_mb` of snapshots waiting (the caller blocks beyond that). On a
    CPU-only run this is SLOWER (the writer thread competes for the GIL and the cores:
    measured 3x the inline cost on the tiny DiT); it is meant for accelerator runs, where
    the per-point sync of the inline path stalls the launch queue (not measured yet).
    `hash=False` skips the content hash (~1 GB/s on a CPU; on accelerators it is mix128).
    `include` (globs) limits the trace to some points, e.g. ("e2e.*",) to leave out the
    per-block points of the networks: each point costs ~50 us on a CPU for small tensors
    (about 8 tensor ops, the hash and the index line), which is felt where a tiny network
    offers a point every ~200 us. A pattern "!glob" leaves its matches out again, the last
    matching pattern deciding (("e2e.*", "!*.dit.*"): the pipeline's points without the
    DiT's internals). Points matching an explicitly given `full` pattern are recorded
    whatever `include` says.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        level: str = "stats",
        full: tuple[str, ...] | list[str] = (),
        meta: dict | None = None,
        shard_mb: float = 256,
        hash: bool = True,
        overwrite: bool = False,
        background: bool = False,
        max_queue_mb: float = 512,
        include: tuple[str, ...] | list[str] = ("*",),
        compact: bool = False,
    ):
        from mtlib.io import InputError

        if level not in ("stats", "full"):
            raise ValueError(f"TraceWriter level {level!r}: must be 'stats' or 'full'.")
        if shard_mb <= 0 or max_queue_mb <= 0:
            raise ValueError(f"TraceWriter shard_mb={shard_mb}, max_queue_mb={max_queue_mb}: must be > 0.")
        self.directory = Path(directory)
        self.level = level
        self.full = tuple(full) if (full or level == "stats") else ("*",)
        self.include = tuple(include)
        self._include_all = self.include == ("*",)
        # explicitly stored points are recorded whatever `include` says: they match last
        self._rules = tuple((p[1:], False) if p.startswith("!") else (p, True) for p in self.include)
        self._rules += tuple((p, True) for p in full)
        self._seen: dict[str, bool] = {}  # name -> recorded? (glob matching once per name)
        self.shard_bytes = int(shard_mb * (1 << 20))
        self.max_queue_bytes = int(max_queue_mb * (1 << 20))
        self.with_hash = hash
        self.compact = compact  # mtlib.trace_codec: duplicates once, exact smaller encodings
        self._stored: dict[tuple, str] = {}
        if (self.directory / INDEX_FILE).exists():
            if not overwrite:
                raise InputError(
                    f"trace directory {str(self.directory)!r}: already holds a trace. "
                    "Fix: choose a new directory, or pass overwrite=True to replace it."
                )
            for p in self.directory.iterdir():
                if p.name in (INDEX_FILE, META_FILE) or p.name.startswith("tensors-"):
                    p.unlink()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.count = 0
        self.calls: dict[str, int] = {}
        self.shards: list[str] = []
        self._pending: dict[str, Any] = {}
        self._pending_bytes = 0
        self._t0 = self._last_flush = time.perf_counter()
        self._closed = False
        self.meta = {
            "format": TRACE_FORMAT,
            "version": TRACE_VERSION,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "status": "recording",
            "level": level,
            "full": list(self.full),
            "include": list(self.include),
            "hash": "sha1 (CPU tensors) | mix128 (accelerator tensors)" if hash else None,
            "shard_mb": shard_mb,
            "environment": environment_meta(),
            **_jsonable(meta or {}),
        }
        self._write_meta()
        self._index = open(self.directory / INDEX_FILE, "w", encoding="utf-8")  # noqa: SIM115
        self.background = background
        self._error: BaseException | None = None
        self._queued_bytes = 0
        self._cv = threading.Condition()
        self._queue: queue.Queue | None = None
        if background:
            self._queue = queue.Queue()
            self._worker = threading.Thread(target=self._drain, name="mtlib-trace-writer", daemon=True)
            self._worker.start()

    @classmethod
    def from_config(cls, directory, trace_config, run_config=None, **kw) -> TraceWriter | None:
        """The writer a RunConfig.trace asks for (None when level is "off")."""
        if trace_config.level == "off":
            return None
        meta = {"config": _jsonable(run_config)} if run_config is not None else {}
        include = tuple(getattr(trace_config, "include", ("*",)))
        full = tuple(trace_config.full)
        if trace_config.level == "stats":  # `full` names points to record, as statistics only
            include, full = include + full, ()
        kw.setdefault("include", include)
        return cls(directory, trace_config.level, full, meta=meta, **kw)

    def wants_full(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.full)

    def wants(self, name: str) -> bool:
        """Is point `name` recorded at all? The last `include` pattern it matches decides
        ("!glob": no); explicit `full` patterns come after them; no match: no."""
        if self._include_all:
            return True
        seen = self._seen.get(name)
        if seen is None:
            seen = False
            for pattern, keep in self._rules:
                if fnmatch.fnmatchcase(name, pattern):
                    seen = keep
            self._seen[name] = seen
        return seen

    def _shard_name(self) -> str:
        return f"tensors-{len(self.shards):05d}.safetensors"

    def record(self, name: str, value: Any) -> None:
        if self._closed:
            raise RuntimeError(f"TraceWriter({str(self.directory)!r}) is closed; point {name!r} lost.")
        self._raise_worker_error()
        if not self.wants(name):
            return
        call = self.calls.get(name, 0)
        self.calls[name] = call + 1
        key = name if call == 0 else f"{name}#{call}"
        entry: dict[str, Any] = {"i": self.count, "name": key, "base": name, "call": call}
        entry["t"] = round(time.perf_counter() - self._t0, 6)
        self.count += 1
        tensor = _as_tensor(value)
        store = False
        if tensor is None:
            entry["type"] = type(value).__name__
            entry["repr"] = repr(value)[:200]
        else:
            tensor = tensor.detach()
            store = self.wants_full(name) or self.wants_full(key)
        if self._queue is None:
            self._process(entry, tensor, store)
            return
        nbytes = 0
        if tensor is not None:
            import torch

            # the caller may modify its tensor in place once point() returns: keep a copy
            tensor = tensor.clone(memory_format=torch.contiguous_format)
            nbytes = tensor.numel() * tensor.element_size()
            with self._cv:  # bounded memory: wait while the writer is behind
                while self._queued_bytes and self._queued_bytes + nbytes > self.max_queue_bytes:
                    self._cv.wait()
                self._queued_bytes += nbytes
        self._queue.put((entry, tensor, store, nbytes))

    def _process(self, entry: dict, tensor: Any, store: bool) -> None:
        """Statistics, index line and shard bookkeeping of one point (writer thread)."""
        if tensor is not None:
            entry.update(tensor_stats(tensor, with_hash=self.with_hash))
            if store:
                # background: `tensor` is already a private snapshot; inline: copy it now
                cpu = tensor.to("cpu", copy=not self.background).contiguous()
                if self.compact:
                    from mtlib.trace_codec import pack

                    cpu = pack(entry, cpu, self._stored)  # None: a duplicate (entry["same_as"])
                if cpu is not None:
                    self._pending[entry["name"]] = cpu
                    self._pending_bytes += cpu.numel() * cpu.element_size()
                    entry["shard"] = self._shard_name()
        self._index.write(json.dumps(entry, allow_nan=True) + "\n")
        now = time.perf_counter()
        if now - self._last_flush > 0.2:  # a killed run loses at most ~0.2 s of index lines
            self._index.flush()
            self._last_flush = now
        if self._pending_bytes >= self.shard_bytes:
            self._flush_shard()

    def _drain(self) -> None:
        assert self._queue is not None
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                entry, tensor, store, nbytes = item
                if self._error is None:
                    try:
                        self._process(entry, tensor, store)
                    except BaseException as e:  # reported to the caller on its next call
                        self._error = e
                with self._cv:
                    self._queued_bytes -= nbytes
                    self._cv.notify_all()
            finally:
                self._queue.task_done()

    def _raise_worker_error(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"TraceWriter({str(self.directory)!r}): writing the trace failed: "
                               f"{type(self._error).__name__}: {self._error}") from self._error

    def wait(self) -> None:
        """Block until every point offered so far has its index line on disk."""
        if self._queue is not None:
            self._queue.join()
        self._raise_worker_error()
        if not self._closed:
            self._index.flush()

    def _flush_shard(self) -> None:
        if not self._pending:
            return
        from safetensors.torch import save_file

        from mtlib.io import atomic_path

        self._index.flush()
        name = self._shard_name()
        with atomic_path(self.directory / name) as tmp:
            save_file(self._pending, str(tmp))
            # safetensors re-creates the file owner-only: back to the usual umask permissions
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        self.shards.append(name)
        self._pending = {}
        self._pending_bytes = 0

    def _write_meta(self) -> None:
        from mtlib.io import atomic_write

        atomic_write(self.directory / META_FILE, json.dumps(self.meta, indent=1) + "\n")

    def close(self) -> None:
        """Finish the queued points, write the last shard and the final meta.json."""
        if self._closed:
            return
        self._closed = True
        if self._queue is not None:
            self._queue.put(None)
            self._worker.join()
        try:
            self._raise_worker_error()
            self._flush_shard()
        finally:
            self._index.close()
        self.meta.update(status="complete", points=self.count, shards=list(self.shards))
        self.meta["wall_s"] = round(time.perf_counter() - self._t0, 6)
        self._write_meta()

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------------------
# Module hooks: per-block outputs without touching the model code
# ---------------------------------------------------------------------------------------


class ModuleHooks:
    """Handles of the forward hooks set by `hook_modules`; `remove()` or use as a context."""

    def __init__(self, handles: list, names: list[str]):
        self.handles = handles
        self.names = names

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def __enter__(self) -> ModuleHooks:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def hook_modules(model: Any, prefix: str, patterns: tuple[str, ...] | list[str] = ("*",)) -> ModuleHooks:
    """Record the output of every submodule of `model` whose qualified name matches a glob.

    The point name is `prefix + qualified name` (`hook_modules(dit, "dit.", ["blocks.*"])`
    records `dit.blocks.0`, ...); a tuple / list output records each tensor as `<name>.<k>`,
    a dict output as `<name>.<key>`. A module that runs several times per run (one DiT call
    per pass and step) records the same name again: TraceWriter stores the repeats as
    `<name>#1`, `<name>#2`, ... with the call number in the index. Costs nothing while no
    recorder is active."""
    if prefix and not prefix.endswith("."):
        prefix += "."
    handles, names = [], []
    for qualname, module in model.named_modules():
        if not qualname or not any(fnmatch.fnmatchcase(qualname, p) for p in patterns):
            continue
        point_name = prefix + qualname

        def hook(_module, _inputs, output, _name=point_name):
            if not _state.recorders:
                return None
            if isinstance(output, tuple | list):
                for k, item in enumerate(output):
                    if hasattr(item, "detach"):
                        point(f"{_name}.{k}", item)
            elif isinstance(output, dict):
                for k, item in output.items():
                    if hasattr(item, "detach"):
                        point(f"{_name}.{k}", item)
            else:
                point(_name, output)
            return None

        handles.append(module.register_forward_hook(hook))
        names.append(point_name)
    return ModuleHooks(handles, names)


# ---------------------------------------------------------------------------------------
# Reading traces back: mtlib trace dirs, run dirs, golden cases and golden dirs
# ---------------------------------------------------------------------------------------


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
        return cls(list(tensors), {n: {} for n in tensors}, tensors.__getitem__, set(tensors),
                   meta or {}, "memory")

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
            raise KeyError(f"{name!r}: only statistics were recorded (trace level 'stats'); "
                           "record it with TraceWriter(full=[...]) to get the tensor.")
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
                raise InputError(f"trace {str(directory)!r}: {INDEX_FILE} line {line_no} is not a point entry.")
            names.append(e["name"])
            entries[e["name"]] = e
    # tensors whose shard never reached the disk (crash before flush) count as stats-only
    shard_ok = {n: (directory / n).exists() for n in {e.get("shard") for e in entries.values()} if n}
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
            from mtlib.trace_codec import decode

            return decode(stored, entry)
        return stored

    return Trace(names, entries, load, full, meta, "mtlib", directory)


def _golden_case_order(case_meta: dict) -> list[str]:
    """Execution order of a golden case: params.trace_order (e2e) first, then index order."""
    index = list(case_meta.get("tensors", {}))
    order = [n for n in case_meta.get("params", {}).get("trace_order", []) if n in case_meta.get("tensors", {})]
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
    return Trace(names, entries, load if tf else None, set(names) if tf else set(), meta,
                 "golden-case", json_path)


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
    return Trace(names, entries, lambda q: owner[q][0].tensor(owner[q][1]), full, meta,
                 "golden-dir", root)


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
