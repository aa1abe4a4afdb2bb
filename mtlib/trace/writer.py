"""TraceWriter: the recorder that streams points to a trace directory.

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
                              compact writers (mtlib.trace.codec) add "codec" to a stored
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

import datetime
import fnmatch
import json
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

from mtlib.trace.stats import _as_tensor, tensor_stats

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
    """python, torch, device, TF32 state, mtlib version and git commit, for meta.json."""
    import platform

    import torch

    import mtlib
    from mtlib.env import tf32_state

    device = "cpu"
    if torch.cuda.is_available():
        device = f"cuda: {torch.cuda.get_device_name(0)}"
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": device,
        **tf32_state(),  # the same three fields as the reference trace's meta
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
            raise ValueError(
                f"TraceWriter shard_mb={shard_mb}, max_queue_mb={max_queue_mb}: must be > 0."
            )
        self.directory = Path(directory)
        self.level = level
        self.full = tuple(full) if (full or level == "stats") else ("*",)
        self.include = tuple(include)
        self._include_all = self.include == ("*",)
        # explicitly stored points are recorded whatever `include` says: they match last
        self._rules = tuple(
            (p[1:], False) if p.startswith("!") else (p, True) for p in self.include
        )
        self._rules += tuple((p, True) for p in full)
        self._seen: dict[str, bool] = {}  # name -> recorded? (glob matching once per name)
        self.shard_bytes = int(shard_mb * (1 << 20))
        self.max_queue_bytes = int(max_queue_mb * (1 << 20))
        self.with_hash = hash
        self.compact = compact  # mtlib.trace.codec: duplicates once, exact smaller encodings
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
            self._worker = threading.Thread(
                target=self._drain, name="mtlib-trace-writer", daemon=True
            )
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
            raise RuntimeError(
                f"TraceWriter({str(self.directory)!r}) is closed; point {name!r} lost."
            )
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
                    from mtlib.trace.codec import pack

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
            raise RuntimeError(
                f"TraceWriter({str(self.directory)!r}): writing the trace failed: "
                f"{type(self._error).__name__}: {self._error}"
            ) from self._error

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
