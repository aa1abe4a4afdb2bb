"""Checkpoint headers without tensor data: safetensors (8-byte length + JSON) and the pickle of
`.pth` zip archives (torch's weights-only loader onto the meta device) give every key, shape
and dtype (`read_header`).
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

from mtlib.weights.files import FIX_DOWNLOAD, Problem

# ------------------------------------------------------------------------------------------
# Header readers (no tensor data is ever read)

SAFETENSORS_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2,
                        "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2,
                        "U32": 4, "U64": 8}  # fmt: skip
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}
MAX_HEADER_BYTES = 100_000_000


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: str  # safetensors spelling: F32, BF16, ...

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass
class FileHeader:
    """What a checkpoint file declares, read without its tensor data."""

    path: Path
    tensors: dict[str, TensorInfo]
    file_bytes: int  # actual size on disk
    expected_bytes: int | None  # size the header promises (safetensors); None when unknown
    problem: Problem | None = None  # truncated / corrupt; tensors may still be usable

    @property
    def dtypes(self) -> list[str]:
        return sorted({t.dtype for t in self.tensors.values()})


def read_safetensors_header(path: str | os.PathLike) -> FileHeader:
    """Keys, shapes and dtypes of a .safetensors file from its JSON header only.

    The file must be exactly 8 + header length + the end of the last tensor's bytes long:
    anything shorter was cut off (an interrupted download), anything longer is not a
    safetensors file written by the library.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return FileHeader(path, {}, size, None, Problem(
                "truncated", str(path), f"{path}: truncated: {size} bytes, shorter than the 8-byte "
                f"safetensors header length. Fix: run `{FIX_DOWNLOAD}` (it replaces damaged files)."))  # fmt: skip
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES:
            return FileHeader(path, {}, size, None, Problem(
                "corrupt", str(path), f"{path}: not a safetensors file (declared header length "
                f"{n} bytes is implausible). Fix: run `{FIX_DOWNLOAD}` (it replaces damaged files)."))  # fmt: skip
        if 8 + n > size:
            return FileHeader(path, {}, size, None, Problem(
                "truncated", str(path), f"{path}: truncated: the JSON header alone needs {8 + n} "
                f"bytes, the file has {size}. Fix: run `{FIX_DOWNLOAD}` (it replaces damaged files)."))  # fmt: skip
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except ValueError as e:
        return FileHeader(path, {}, size, None, Problem(
            "corrupt", str(path), f"{path}: the safetensors JSON header does not parse ({e}). "
            f"Fix: run `{FIX_DOWNLOAD}` (it replaces damaged files)."))  # fmt: skip
    tensors: dict[str, TensorInfo] = {}
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        tensors[key] = TensorInfo(tuple(entry["shape"]), entry["dtype"])
        end = max(end, entry["data_offsets"][1])
    expected = 8 + n + end
    problem = None
    if size < expected:
        problem = Problem("truncated", str(path), (
            f"{path}: truncated: expected {expected} bytes (header + tensors), found {size} "
            f"({expected - size} missing; an interrupted download?). Fix: delete it and run "
            f"`{FIX_DOWNLOAD}` (downloads resume)."))  # fmt: skip
    elif size > expected:
        problem = Problem("corrupt", str(path), (
            f"{path}: {size - expected} bytes beyond the last tensor (expected {expected} bytes, "
            f"found {size}); not a file written by safetensors. Fix: delete it and run "
            f"`{FIX_DOWNLOAD}`."))  # fmt: skip
    return FileHeader(path, tensors, size, expected, problem)


_TORCH_DTYPES = {"float32": "F32", "float64": "F64", "float16": "F16", "bfloat16": "BF16",
                 "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8",
                 "bool": "BOOL", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
                 "uint16": "U16", "uint32": "U32", "uint64": "U64"}  # fmt: skip


def _flatten_state(obj, prefix: str = "") -> dict:
    out: dict = {}
    for k, v in obj.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten_state(v, name + "."))
        else:
            out[name] = v
    return out


def _member_data_offsets(path: Path, zf: zipfile.ZipFile) -> dict[int, zipfile.ZipInfo]:
    """File offset of each archive member's data -> its ZipInfo (from the 30-byte local headers,
    whose extra field may differ from the central directory's: torch pads it for alignment)."""
    out = {}
    with open(path, "rb") as f:
        for info in zf.infolist():
            f.seek(info.header_offset + 26)
            n_name, n_extra = struct.unpack("<HH", f.read(4))
            out[info.header_offset + 30 + n_name + n_extra] = info
    return out


def _load_meta(path: Path):
    """torch's safe loader on the meta device: the weights-only unpickler (no code runs), no
    tensor data read; each storage remembers where its bytes start in the file."""
    import torch

    return torch.load(str(path), map_location="meta", weights_only=True, mmap=True)


def read_pth_header(path: str | os.PathLike) -> FileHeader:
    """Keys, shapes and dtypes of a torch zip checkpoint (.pth/.bin) without its tensor data.

    torch.load(map_location="meta", weights_only=True) reads the pickle (refusing anything but
    tensors and containers). Integrity without reading tensor data: the zip's end-of-archive
    record must be there (a cut-off file loses it), every storage must be an archive member of
    exactly numel x itemsize bytes, and every tensor view must fit in its storage.
    """
    path = Path(path)
    size = path.stat().st_size
    fix = f"Fix: run `{FIX_DOWNLOAD}` (it replaces damaged files)."
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic[:1] == b"\x80" and path.suffix == ".bin":
            # torch's pre-1.6 format: one pickle stream with the storages inline; its keys
            # cannot be listed without reading the data, so it is only reported.
            return FileHeader(path, {}, size, None, None)
        if magic == b"PK\x03\x04":
            msg = (f"{path}: truncated: a torch zip archive whose end-of-archive record is missing "
                   f"(the file stops at {size} bytes; an interrupted download?). {fix}")  # fmt: skip
            return FileHeader(path, {}, size, None, Problem("truncated", str(path), msg))
        msg = (f"{path}: not a torch zip checkpoint (legacy pickle or another format; "
               f"starts with {magic!r}). {fix}")  # fmt: skip
        return FileHeader(path, {}, size, None, Problem("corrupt", str(path), msg))
    with zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if not pkl:
            msg = f"{path}: zip archive without <name>/data.pkl; not a torch checkpoint. {fix}"
            return FileHeader(path, {}, size, None, Problem("corrupt", str(path), msg))
        try:
            obj = _load_meta(path)
        except Exception as e:  # noqa: BLE001 - any unpickling failure is a corrupt file
            msg = f"{path}: data.pkl cannot be read as a state dict ({e}). {fix}"
            return FileHeader(path, {}, size, None, Problem("corrupt", str(path), msg))
        if not isinstance(obj, dict):
            msg = f"{path}: holds a {type(obj).__name__}, not a state dict of tensors. {fix}"
            return FileHeader(path, {}, size, None, Problem("corrupt", str(path), msg))
        members = _member_data_offsets(path, zf)
        tensors: dict[str, TensorInfo] = {}
        problem = None
        for key, t in _flatten_state(obj).items():
            if not hasattr(t, "untyped_storage"):
                continue  # a non-tensor entry (an int, a string): not a weight
            dtype = _TORCH_DTYPES.get(str(t.dtype).removeprefix("torch."), "?")
            tensors[key] = TensorInfo(tuple(t.shape), dtype)
            if problem is not None:
                continue
            storage = t.untyped_storage()
            itemsize = t.element_size()
            numel = storage.nbytes() // itemsize
            offset = getattr(storage, "_checkpoint_offset", None)  # torch >= 2.5
            info = members.get(offset)
            if offset is None:
                continue
            if info is None:
                problem = Problem("corrupt", str(path), f"{path}: tensor {key!r}: its storage "
                                  f"is not a member of the archive. {fix}")  # fmt: skip
            elif info.file_size != storage.nbytes():
                problem = Problem("truncated", str(path), (
                    f"{path}: tensor {key!r}: storage {info.filename!r} holds {info.file_size} "
                    f"bytes, expected {storage.nbytes()} ({numel} x {dtype}). {fix}"))  # fmt: skip
            else:
                extent = (
                    0
                    if t.numel() == 0
                    else t.storage_offset()
                    + 1
                    + sum((n - 1) * st for n, st in zip(t.shape, t.stride(), strict=True))
                )
                if extent > numel:
                    problem = Problem("corrupt", str(path), (
                        f"{path}: tensor {key!r} {list(t.shape)} reaches element {extent} of a "
                        f"storage of {numel}. {fix}"))  # fmt: skip
        # Members must not overlap each other or the central directory: a file rewritten
        # in place with fewer bytes would show up here.
        ordered = sorted(zf.infolist(), key=lambda i: i.header_offset)
        limit = getattr(zf, "start_dir", size)
        for a, b in zip(ordered, [*ordered[1:], None], strict=True):
            stop = b.header_offset if b is not None else limit
            if problem is None and a.header_offset + a.compress_size > stop:
                problem = Problem("corrupt", str(path), (
                    f"{path}: archive member {a.filename!r} overruns the next one; the archive is "
                    f"damaged. {fix}"))  # fmt: skip
    header = FileHeader(path, tensors, size, None, problem)
    header.expected_bytes = None  # a zip has no single promised size; members were checked
    return header


def read_header(path: str | os.PathLike) -> FileHeader:
    p = Path(path)
    if p.suffix == ".safetensors":
        return read_safetensors_header(p)
    return read_pth_header(p)
