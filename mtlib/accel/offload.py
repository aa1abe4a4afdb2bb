"""Block offload for the DiT: weights live in pinned host memory and stream to the GPU one
transformer block at a time, overlapped with compute.

The 40 blocks hold 97% of the DiT's 18.9 B parameters (37 GB in bf16). With offload on, the
GPU keeps only the small non-block modules plus two "slots", each the size of one block:
while block i computes from slot i % 2, a copy stream fills the other slot with block i+1's
weights from pinned memory. Events order the two streams: a slot is refilled only after the
block that used it has finished, and a block starts only after its weights have arrived.
Results are bit-identical to the resident model (the same kernels see the same weights).

    model = load_dit(..., device="cpu", precision="reference")
    enable_block_offload(model, torch.device("cuda"))

A run config asks for it with `model.offload: {mode: blocks, resident_params: N}`: the first
blocks stay on the GPU while the non-block weights plus theirs fit in N parameters (the
reference's --num_persistent_param_in_dit), the rest stream (mtlib.accel.dit_load builds that).

Memory on the GPU: non-block weights (~0.8 GB) + 2 block slots (~1.9 GB) + activations.
Transfer per pass: ~37 GB host-to-device, hidden behind compute when the host link does
better than ~12 GB/s (one pass of the real model computes for ~3 s).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


def _tensors(block: nn.Module) -> dict[str, torch.Tensor]:
    """A block's parameters and buffers by name (fp8 / int8 layers keep weights in either)."""
    out = {n: p.data for n, p in block.named_parameters()}
    out.update({n: b for n, b in block.named_buffers()})
    return out


def _set(block: nn.Module, name: str, t: torch.Tensor) -> None:
    mod_name, _, leaf = name.rpartition(".")
    mod = block.get_submodule(mod_name) if mod_name else block
    if leaf in mod._parameters:
        mod._parameters[leaf].data = t
    else:
        mod._buffers[leaf] = t


@dataclass
class _Streamer:
    blocks: list[nn.Module]  # the streamed blocks, in compute order
    device: torch.device
    host: list[dict[str, torch.Tensor]]  # pinned CPU weights per streamed block
    slots: list[dict[str, torch.Tensor]]  # GPU buffers, one block each
    copy_stream: torch.cuda.Stream
    ready: list[torch.cuda.Event] = field(default_factory=list)  # slot filled
    free: list[torch.cuda.Event] = field(default_factory=list)  # slot no longer read
    filled_with: list[int] = field(
        default_factory=list
    )  # streamed-block index in each slot (-1: none)

    def prefetch(self, i: int) -> None:
        """Start copying streamed block i's weights into its slot on the copy stream."""
        i %= len(self.blocks)
        s = i % len(self.slots)
        if self.filled_with[s] == i:
            return
        with torch.cuda.stream(self.copy_stream):
            self.copy_stream.wait_event(self.free[s])
            for name, buf in self.slots[s].items():
                buf.copy_(self.host[i][name], non_blocking=True)
            self.ready[s].record(self.copy_stream)
        self.filled_with[s] = i

    def before(self, i: int) -> None:
        self.prefetch(i)  # no-op when already in flight
        s = i % len(self.slots)
        torch.cuda.current_stream(self.device).wait_event(self.ready[s])
        for name, t in self.slots[s].items():
            _set(self.blocks[i], name, t)
        self.prefetch(i + 1)  # overlap the next block's copy with this block's compute

    def after(self, i: int) -> None:
        s = i % len(self.slots)
        self.free[s].record(torch.cuda.current_stream(self.device))
        for name, t in self.host[i].items():
            _set(self.blocks[i], name, t)  # tensors report their home (pinned CPU)


def enable_block_offload(model: nn.Module, device: torch.device | str = "cuda", slots: int = 2,
                         streamed: list[int] | None = None) -> nn.Module:  # fmt: skip
    """Stream `model.blocks` (those listed in `streamed`, default all) from pinned host memory
    per block (see module doc); every other block and submodule moves to `device`. Blocks
    already parked in pinned memory (mtlib.accel.dit_load) stay where they are. Returns the model."""
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"block offload streams weights to a CUDA device, got {device}.")
    streamed = list(range(len(model.blocks))) if streamed is None else sorted(streamed)
    for name, child in model.named_children():
        if name != "blocks":
            child.to(device)
    for i, block in enumerate(model.blocks):
        if i not in streamed:
            block.to(device)
    blocks = [model.blocks[i] for i in streamed]
    if not blocks:
        return model
    host = []
    for block in blocks:
        pinned = {}
        parked = getattr(block, "_parked", False)
        for name, t in _tensors(block).items():
            if not parked and not (t.device.type == "cpu" and t.is_pinned()):
                t = t.to("cpu").contiguous().pin_memory()
                _set(block, name, t)
            pinned[name] = t
        host.append(pinned)
    slot_bufs = [
        {n: torch.empty_like(t, device=device) for n, t in host[0].items()} for _ in range(slots)
    ]
    st = _Streamer(blocks, device, host, slot_bufs, torch.cuda.Stream(device))
    st.ready = [torch.cuda.Event() for _ in range(slots)]
    st.free = [torch.cuda.Event() for _ in range(slots)]
    for ev in st.free:
        ev.record(torch.cuda.current_stream(device))
    st.filled_with = [-1] * slots
    for j, block in enumerate(blocks):
        block.register_forward_pre_hook(lambda _m, _a, j=j: st.before(j))
        block.register_forward_hook(lambda _m, _a, _o, j=j: st.after(j))
    model._offload = st  # keep the streamer alive with the model
    st.prefetch(0)
    return model
