"""Build the run's DiT from `DiTOptions`: tensors straight from the files to their place.

The 14B DiT is 65 GB in fp32 shards. Loading it through a host copy needs that much RAM
("Killed" on a 53 GB Colab). Here nothing is held on the host except one staging buffer:

    build the model on the meta device (int8 checkpoint: QuantLinear where the map says)
    for each tensor: pread its bytes from the .safetensors file into a pinned staging buffer
      -> copy to the GPU -> cast there to the run dtype -> assign into the meta model
    per block: LoRA deltas, then fp8 conversion (precision fp8) on the GPU; with block
      offload, a streamed block is then parked in one pinned host buffer of its exact size
    offload (mtlib.accel.offload), attention kernel, RoPE dtype, compile: from the options

Host memory: resident mode = the staging buffer (the largest tensor, 283 MB in fp32);
offload mode = the streamed blocks in their run precision (bf16: 37 GB, int8/fp8: ~19 GB)
plus the staging buffer. Files are read with pread, not mmap, so the page cache never counts
as the process's memory. `random=True` fills the same model with random values on the
device instead (the real architecture without checkpoints, for speed runs and notebooks).
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from mtlib.models.checkpoint import CheckpointError

ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}  # fmt: skip


class SafetensorsFile:
    """Header of one .safetensors file and positional reads of its tensors (no mmap)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        self.data_start = 8 + n
        header.pop("__metadata__", None)
        self.entries = {k: (ST_DTYPES[v["dtype"]], tuple(v["shape"]), tuple(v["data_offsets"]))
                        for k, v in header.items()}  # fmt: skip

    def nbytes(self, key: str) -> int:
        a, b = self.entries[key][2]
        return b - a

    def read_into(self, key: str, buf: torch.Tensor) -> torch.Tensor:
        """Read tensor `key` into the uint8 host buffer `buf`; returns a typed view of it."""
        dtype, shape, (a, b) = self.entries[key]
        n = b - a
        view = memoryview(buf.numpy()).cast("B")[:n]
        fd = os.open(self.path, os.O_RDONLY)
        try:
            got = 0
            while got < n:
                k = os.preadv(fd, [view[got:]], self.data_start + a + got)
                if k <= 0:
                    raise CheckpointError(
                        f"{self.path}: truncated while reading {key} ({got} of {n} bytes)"
                    )
                got += k
        finally:
            os.close(fd)
        return buf[:n].view(dtype).reshape(shape)


_REGISTERED: set[int] = set()  # host buffers registered by pinned_empty (data_ptr)


def pinned_empty(nbytes: int) -> torch.Tensor:
    """A page-locked uint8 host buffer of exactly `nbytes` (torch's pinned allocator rounds to a
    power of two: a 37 GB request would take 64 GB). Falls back to pin_memory()."""
    buf = torch.empty(max(nbytes, 1), dtype=torch.uint8)
    if not torch.cuda.is_available():
        return buf
    try:
        rc = torch.cuda.cudart().cudaHostRegister(buf.data_ptr(), buf.numel(), 0)
        if int(getattr(rc, "value", rc)) == 0:
            _REGISTERED.add(buf.data_ptr())
            return buf
    except (AttributeError, RuntimeError):
        pass
    return buf.pin_memory()


def unpin(buf: torch.Tensor | None) -> None:
    """Undo pinned_empty's registration before the memory is freed."""
    if buf is not None and buf.data_ptr() in _REGISTERED:
        _REGISTERED.discard(buf.data_ptr())
        torch.cuda.cudart().cudaHostUnregister(buf.data_ptr())


class TensorSource:
    """Where the DiT's tensors come from: checkpoint files (later files override earlier ones,
    multitalk.safetensors on top of the Wan shards) or random values (`random=True`)."""

    def __init__(
        self, files=(), random: bool = False, seed: int = 0, key_map: Callable[[str], str] = str
    ):
        self.random = random
        self.key_map = key_map
        self.where: dict[str, SafetensorsFile] = {}
        for f in files:
            sf = SafetensorsFile(f)
            for k in sf.entries:
                self.where[k] = sf
        self._staging: torch.Tensor | None = None
        self._gen: dict[str, torch.Generator] = {}
        self.seed = seed

    def shapes(self) -> dict[str, tuple]:
        return {k: sf.entries[k][1] for k, sf in self.where.items()}

    def get(self, model_key: str, like: torch.Tensor, device: torch.device) -> torch.Tensor:
        """The tensor for `model_key` on `device` with `like`'s dtype and shape."""
        if self.random:
            return _random_like(like, model_key, device, self._generator(device))
        key = self.key_map(model_key)
        sf = self.where[key]
        n = sf.nbytes(key)
        if device.type == "cpu":
            raw = torch.empty(n, dtype=torch.uint8)
            return sf.read_into(key, raw).to(like.dtype).clone()
        if self._staging is None:  # one buffer, the size of the largest tensor (never regrown)
            self._staging = pinned_empty(max(sf2.nbytes(k) for k, sf2 in self.where.items()))
        t = sf.read_into(key, self._staging)
        return t.to(device).to(like.dtype)  # cast on the GPU (a synchronous copy: buffer reused)

    def _generator(self, device: torch.device) -> torch.Generator:
        k = str(device)
        if k not in self._gen:
            self._gen[k] = torch.Generator(device=device).manual_seed(self.seed)
        return self._gen[k]


def _random_like(like: torch.Tensor, name: str, device, gen) -> torch.Tensor:
    """N(0, 1/fan_in) matrices, ~1 norm gains, small vectors (finite bf16 activations at real size)."""
    leaf = name.rsplit(".", 1)[-1]
    if like.dtype in (torch.int8,):
        return torch.randint(-127, 128, like.shape, generator=gen, device=device, dtype=torch.int8)
    out = torch.empty(like.shape, dtype=torch.float32, device=device)
    if like.ndim >= 2 and leaf != "weight_scale":
        out.normal_(0.0, 1.0 / math.sqrt(math.prod(like.shape[1:])), generator=gen)
    elif leaf == "weight_scale":
        out.fill_(1.0 / (127 * math.sqrt(like.shape[0])))
    elif leaf == "weight":
        out.normal_(1.0, 0.05, generator=gen)
    else:
        out.normal_(0.0, 0.02, generator=gen)
    return out.to(like.dtype)


def _assign(module: nn.Module, prefix: str, source: TensorSource, device, dtype_of) -> None:
    """Materialise every parameter / buffer of `module` (meta) from the source, on device."""
    from mtlib.finite import check_state_finite

    state = {}
    for name, t in module.state_dict(keep_vars=True).items():
        like = torch.empty(t.shape, dtype=dtype_of(prefix + name, t), device="meta")
        state[name] = source.get(prefix + name, like, device)
        if not source.random:  # a damaged data byte (NaN / inf) named at load, on the device
            key = source.key_map(prefix + name)
            check_state_finite({key: state[name]}, "DiT", repr(str(source.where[key].path)))
    module.load_state_dict(state, strict=True, assign=True)


def park_on_host(block: nn.Module) -> int:
    """Move a block's tensors (on the GPU) into ONE exact-size pinned host buffer; returns bytes."""
    tensors = [(m, n, t) for m in block.modules() for n, t in list(m._parameters.items()) + list(m._buffers.items())
               if t is not None]  # fmt: skip
    sizes = [_aligned(t.numel() * t.element_size()) for _, _, t in tensors]
    buf = pinned_empty(sum(sizes))
    off = 0
    for (m, n, t), size in zip(tensors, sizes, strict=True):
        nb = t.numel() * t.element_size()
        host = buf[off : off + nb].view(t.dtype).view(t.shape)
        host.copy_(t)
        if n in m._parameters:
            m._parameters[n] = nn.Parameter(host, requires_grad=False)
        else:
            m._buffers[n] = host
        off += size
    block._host_buffer = buf  # keep the registration alive with the block
    block._parked = (
        True  # mtlib.accel.offload streams these tensors as they are (no second pinned copy)
    )
    return off


def _aligned(n: int, a: int = 256) -> int:
    return (n + a - 1) // a * a


def streamed_blocks(model: nn.Module, resident_params: int | None) -> list[int]:
    """Indices of the blocks that stream: the first blocks stay resident while the non-block
    parameters plus theirs fit in `resident_params` (the reference's persistent budget)."""
    n = len(model.blocks)
    if not resident_params:
        return list(range(n))
    used = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("blocks."))
    k = 0
    for block in model.blocks:
        size = sum(p.numel() for p in block.parameters())
        if used + size > resident_params:
            break
        used += size
        k += 1
    return list(range(k, n))


def _run_dtype(precision: str) -> torch.dtype:
    from mtlib.spec import torch_dtype  # the one precision table

    return torch_dtype(precision, "dit")


def load_run_dit(
    config,
    device: str | torch.device,
    opts,
    files=(),
    quant: tuple[Path, Path] | None = None,
    block_hook: Callable[[int, nn.Module], None] | None = None,
    seed: int = 0,
    progress: bool = False,
):
    """The DiT of a run, built as `opts` (mtlib.accel.options.DiTOptions) says, every tensor going
    from its file (or the random source) straight to its final place (see module doc).

    files: Wan shards then multitalk.safetensors (ignored with `quant`); quant: (int8
    .safetensors, its quantisation map json); block_hook(i, block): called on each block on
    the device before fp8 conversion and parking, and once as block_hook(None, model) after
    the non-block weights (LoRA merging)."""
    from mtlib.accel.compile import compile_blocks, set_attention_kernel
    from mtlib.accel.quant import checkpoint_key, ignored_file_keys, quantize_modules, read_map
    from mtlib.models.dit import build_dit, check_checkpoint_keys

    device = torch.device(device)
    dtype = _run_dtype(opts.precision)
    model = build_dit(config, device="meta")
    quantised: set[str] = set()
    if quant is not None:
        qfile, qmap_path = quant
        if not Path(qfile).is_file():
            raise CheckpointError(f"int8 DiT checkpoint {qfile}: not found. Fix: `mtlib setup --download` "
                                  "fetches MeiGen-MultiTalk's quant_models/, or set model.weights.quant_dir.")  # fmt: skip
        quantised = set(quantize_modules(model, read_map(qmap_path), dtype, where=str(qmap_path)))
        files = [qfile]
    source = TensorSource(
        files, random=opts.random, seed=seed, key_map=lambda k: checkpoint_key(k, quantised)
    )
    if not opts.random:
        expected = {
            checkpoint_key(k, quantised): tuple(v.shape) for k, v in model.state_dict().items()
        }
        found = source.shapes()
        for k in ignored_file_keys(found, quantised):
            found.pop(k)
        check_checkpoint_keys(expected, found, model.config)

    def dtype_of(_name: str, t: torch.Tensor) -> torch.dtype:
        return t.dtype if not t.dtype.is_floating_point or t.dtype.itemsize == 1 else dtype

    offload = opts.offload == "blocks"
    streamed = set(streamed_blocks(model, opts.resident_params)) if offload else set()
    for name, child in model.named_children():
        if name != "blocks":
            _assign(child, f"{name}.", source, device, dtype_of)
    if block_hook is not None:
        block_hook(None, model)  # the non-block weights (the blocks are still on meta)
    blocks = model.blocks
    it = range(len(blocks))
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="DiT blocks", unit="block")
    for i in it:
        block = blocks[i]
        _assign(block, f"blocks.{i}.", source, device, dtype_of)
        if block_hook is not None:
            block_hook(i, block)
        if opts.precision == "fp8":
            from mtlib.accel.fp8 import fp8_block

            fp8_block(block)
        if i in streamed:
            park_on_host(block)
    unpin(source._staging)
    source._staging = None
    model.eval().requires_grad_(False)
    if offload:
        from mtlib.accel.offload import enable_block_offload

        enable_block_offload(model, device, streamed=sorted(streamed))
    set_attention_kernel(model, opts.attention, device=device)
    model.rope_dtype = torch.float32 if opts.rope_dtype == "float32" else torch.float64
    if opts.compile:
        compile_blocks(model)
    return model
