"""Starting and joining the ranks of a parallel run (torchrun or torch.multiprocessing).

Two ways in, one code path after that:

- `torchrun --nproc-per-node N -m mtlib generate ...`: torchrun starts N processes with
  RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT set; each runs the command and
  `join(cfg)` turns that environment into a process group;
- `parallel: {gpus: N}` in the run config (or `-p parallel.gpus=N`), no torchrun: `spawn`
  starts N processes itself (torch.multiprocessing, start method spawn), sets the same
  variables and runs the same function in each.

Backend: NCCL when the run's device is CUDA (rank r on cuda:r of its node, NCCL_NVLS_ENABLE=0:
NVLink multicast off), gloo on the CPU. Every collective has the run's timeout
(`parallel.timeout_s`), so a rank that hangs cannot stall the others forever.

Failures: `agree(ctx, fn, ...)` runs a step (plan, input checks, loading) on every rank and
then exchanges the outcome, so one rank's bad input stops every rank with that rank's error
before any compute. A rank that dies later (out of memory, a broken GPU) ends the launch:
`spawn` terminates the other processes and raises the failed rank's error (its class when
it has a one-message constructor), torchrun does the same for its workers.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

__all__ = ["RankContext", "agree", "env_world", "join", "spawn"]

# NVLink SHARP / multicast off: not available on every machine and known to hang there
NCCL_ENV = {"NCCL_NVLS_ENABLE": "0"}


@dataclass(frozen=True)
class RankContext:
    """This process's place in a parallel run."""

    rank: int
    world: int
    local_rank: int
    backend: str  # "nccl" | "gloo"

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the outputs and traces and prints; the others only compute."""
        return self.rank == 0

    def device(self, device: str) -> str:
        """The device of this rank for the run's device: cuda -> cuda:<local rank>."""
        if str(device).startswith("cuda"):
            return f"cuda:{self.local_rank}"
        return str(device)

    @property
    def layout(self) -> str:
        return f"sequence parallel: {self.world} ranks"


def env_world() -> tuple[int, int, int] | None:
    """(rank, world, local_rank) from a torchrun / spawn environment, None outside one."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return None
    world = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ["RANK"])
    return rank, world, int(os.environ.get("LOCAL_RANK", rank))


def _is_cuda(device: str) -> bool:
    return str(device) == "auto" or str(device).startswith("cuda")


def check_config(cfg, world: int | None = None) -> None:
    """Refuse a parallel setting that cannot work, before anything starts."""
    from mtlib.config import ConfigError

    gpus = cfg.parallel.gpus
    if world is not None and gpus not in (1, world):
        raise ConfigError(
            f"parallel.gpus = {gpus} but torchrun started {world} processes. Fix: leave "
            f"parallel.gpus at 1 under torchrun (its --nproc-per-node decides), or drop torchrun."
        )
    n = world or gpus
    dev = str(cfg.model.device)
    if n > 1 and dev.startswith("cuda:"):
        raise ConfigError(
            f"model.device {dev!r} with {n} ranks: each rank uses cuda:<its local rank>. "
            "Fix: model.device=cuda (choose the GPUs with CUDA_VISIBLE_DEVICES)."
        )


def join(cfg) -> RankContext | None:
    """The rank context of this process: None for a one-device run; under torchrun (or a
    spawned rank) the process group is initialised here (NCCL on CUDA, gloo on the CPU)."""
    import torch
    import torch.distributed as dist

    found = env_world()
    if found is None or found[1] == 1:
        return None
    rank, world, local_rank = found
    check_config(cfg, world)
    cuda = _is_cuda(cfg.model.device) and torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        for k, v in NCCL_ENV.items():
            os.environ.setdefault(k, v)
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(
            backend, rank=rank, world_size=world, timeout=timedelta(seconds=cfg.parallel.timeout_s)
        )
    return RankContext(rank, world, local_rank, backend)


# ------------------------------------------------------------------------------ agreement


def _rebuild(rank: int, module: str, name: str, message: str) -> Exception:
    """Another rank's exception as this rank raises it: its class when that class takes one
    message (InputError, ConfigError, WeightsError ...), else the nearest base that does."""
    import importlib

    text = f"rank {rank}: {message}"
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        cls = RuntimeError
    for base in getattr(cls, "__mro__", (RuntimeError,)):
        if not (isinstance(base, type) and issubclass(base, Exception)):
            continue
        try:
            err = base(text)
        except Exception:  # noqa: BLE001 - a constructor that wants more than a message
            continue
        if str(err) == text:
            return err
    return RuntimeError(text)


def agree(ctx: RankContext | None, fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """fn(*args, **kwargs) on every rank; when any rank raises, every rank raises: its own
    error, or the first failing rank's (rebuilt, 'rank r: ...'). Without ctx: just fn()."""
    if ctx is None:
        return fn(*args, **kwargs)
    import torch.distributed as dist

    mine, result = None, None
    try:
        result = fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - reported to every rank below
        mine = e
    status = None if mine is None else (type(mine).__module__, type(mine).__qualname__, str(mine))
    statuses: list = [None] * ctx.world
    dist.all_gather_object(statuses, status)
    if mine is not None:
        raise mine
    for rank, st in enumerate(statuses):
        if st is not None:
            err = _rebuild(rank, *st)
            err.mtlib_origin = (rank, *st)  # so a launcher reports the rank it came from
            raise err
    return result


# ------------------------------------------------------------------------------ spawn


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_entry(index: int, world: int, port: int, fn: Callable, args: tuple, box: str) -> None:
    os.environ.update(
        RANK=str(index), WORLD_SIZE=str(world), LOCAL_RANK=str(index), LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **NCCL_ENV,
    )  # fmt: skip
    try:
        result = fn(*args)
        if index == 0:
            import torch

            torch.save(result, Path(box) / "result.pt")
    except BaseException as e:
        # an error agreed from another rank names that rank and its own message
        origin = getattr(
            e, "mtlib_origin", (index, type(e).__module__, type(e).__qualname__, str(e))
        )
        record = dict(zip(("rank", "module", "name", "message"), origin, strict=True))
        record["traceback"] = traceback.format_exc()
        record["time"] = time.time()  # the first failure is the cause, later ones its echoes
        (Path(box) / f"error-{index}.json").write_text(json.dumps(record))
        raise
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def spawn(fn: Callable, world: int, args: tuple = ()) -> Any:
    """Run fn(*args) in `world` new processes (ranks 0..world-1, environment as torchrun
    sets it) and return rank 0's result. fn must be importable (a module-level function).
    When a rank fails, the others are stopped and its error is raised here."""
    import torch
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="mtlib-ranks-") as box:
        ctx = mp.start_processes(
            _rank_entry, args=(world, _free_port(), fn, tuple(args), box), nprocs=world,
            join=False, start_method="spawn",
        )  # fmt: skip
        try:
            while not ctx.join():
                pass
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as e:
            # error records (each naming the rank it came from); a rank that fails first
            # makes the others fail in their next collective: the earliest is the cause
            records = [json.loads(p.read_text()) for p in Path(box).glob("error-*.json")]
            first = min(records, key=lambda r: r["time"], default=None)
            if first is None:  # died without a word (killed, segfault): torch's message
                raise RuntimeError(f"a rank of the parallel run died: {e}") from None
            err = _rebuild(first["rank"], first["module"], first["name"], first["message"])
            err.__notes__ = [f"traceback of rank {first['rank']}:\n{first['traceback']}"]
            raise err from None
        return torch.load(Path(box) / "result.pt", weights_only=False)
