"""Several devices for one run: sequence parallelism of the DiT on torch.distributed.

- `mtlib.parallel.sequence`: the token split and the collectives the DiT calls (Ulysses
  all-to-all over heads, reference map summed over ranks, per-rank audio frames, head
  output gathered); `enable_sequence_parallel(dit)`.
- `mtlib.parallel.launch`: joining a torchrun launch or spawning the ranks for
  `parallel.gpus`, the per-rank device, `agree` (every rank checks, one failure stops all).
- `mtlib.plan.parallel`: per-rank tokens, frames and memory in the shape plan.

See docs/multi-gpu.md for the commands.
"""

from mtlib.parallel.launch import RankContext, agree, join, spawn
from mtlib.plan.parallel import plan_parallel, rank_tokens

_SEQUENCE = ("SequenceParallel", "TokenShard", "enable_sequence_parallel")


def __getattr__(name: str):
    # the sequence module imports torch: only when asked for (`mtlib plan` stays light)
    if name in _SEQUENCE:
        from mtlib.parallel import sequence

        return getattr(sequence, name)
    raise AttributeError(f"module 'mtlib.parallel' has no attribute {name!r}")


__all__ = [
    "RankContext",
    "SequenceParallel",
    "TokenShard",
    "agree",
    "enable_sequence_parallel",
    "join",
    "plan_parallel",
    "rank_tokens",
    "spawn",
]
