"""Wall time per stage of the generation loop (the per-clip work inside `generate`).

`StageTimer.mark(name)` charges the time since the previous mark to `name` (summed over clips),
after waiting for the device's queued work, so GPU stages are charged where they run rather
than where the next host read happens to wait. One synchronisation per mark: a dozen per clip,
nothing next to a DiT pass. The result lands in GenerationOutput.stage_timings.
"""

from __future__ import annotations

import time

import torch


class StageTimer:
    def __init__(self, device: torch.device | str):
        self.cuda = torch.device(device).type == "cuda"
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def mark(self, name: str) -> None:
        """Charge the time since the last mark (or creation) to `name`."""
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + now - self._last, 4)
        self._last = now
