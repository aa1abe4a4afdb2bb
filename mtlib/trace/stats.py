"""Statistics and content hash of one tensor (the "stats" level of a trace)."""

from __future__ import annotations

import math
from typing import Any

_STATS_CHUNK = 1 << 24  # elements per reduction chunk: bounds the float64 temporary to 128 MB
_HASH_CHUNK_BYTES = 64 << 20  # bytes hashed per piece (bounds temporaries on any device)

# 64-bit odd constants (splitmix64 / murmur3 finalisers) as signed int64 for torch
_MIX = [
    c - (1 << 64) if c >= 1 << 63 else c
    for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0xD6E8FEB86659FD93)
]


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
        std_v = (
            math.sqrt(m2_v / (count - 1))
            if count > 1 and m2_v >= 0
            else (0.0 if count == 1 else math.nan)
        )
        amax_v = (
            max(abs(lo_v), abs(hi_v)) if not (math.isnan(lo_v) or math.isnan(hi_v)) else math.nan
        )
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
