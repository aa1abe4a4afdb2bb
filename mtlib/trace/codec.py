"""Exact, compact storage of the tensors a trace keeps in full (TraceWriter(compact=True)).

The reference tracer's archive is downloaded from a Colab, so every stored byte counts; every
transformation here is lossless and checked: the tensor read back is bit for bit the tensor
recorded.

    same_as    a tensor equal to one already stored (same hash, dtype, shape: the per-clip
               contexts and person masks of a streaming run) is stored once; the later
               point's index line names the stored one ("same_as")
    u8-unit    a float32 tensor that is exactly (u / 255 - 0.5) * 2 for uint8 u (the
               official conditioning image: PIL pixels / 255, then (x - 0.5) * 2) is stored
               as u [same shape] uint8: 4x smaller. Checked on write by decoding; a tensor
               that does not decode to itself bit for bit is stored as it is
    shuffle    other float tensors of >= 64 KiB are stored as byte planes [element_size, n]
               uint8 (all first bytes, then all second bytes, ...): the planes holding
               sign and exponent compress well, so the archive's deflate shrinks them
               (Gaussian float32 draws: 8.43 -> 7.17 MB; unshuffled 7.81 MB). Within the
               trace directory the size is unchanged

Index-line fields: "codec" ("u8-unit" | "shuffle") on the stored tensor, "same_as" (the
name of the point holding the bytes) instead of "shard" on a duplicate. `decode` is what
mtlib.trace's reader applies; a reader that does not know a codec says so.
"""

from __future__ import annotations

from typing import Any

import torch

SHUFFLE_MIN_BYTES = 64 << 10  # smaller tensors: the codec's gain is below the index line's cost


def _u8_unit(u: torch.Tensor) -> torch.Tensor:
    """The official image normalisation: uint8 / 255 (true division, float32), then (x - 0.5) * 2."""
    return (u.to(torch.float32) / 255 - 0.5) * 2


def _as_u8_unit(t: torch.Tensor) -> torch.Tensor | None:
    """uint8 u with _u8_unit(u) == t bit for bit, else None."""
    if t.dtype != torch.float32 or t.numel() == 0:
        return None
    with torch.no_grad():
        if not bool(torch.isfinite(t).all()) or float(t.min()) < -1 or float(t.max()) > 1:
            return None
        u = torch.round((t + 1) * 127.5).clamp_(0, 255).to(torch.uint8)
        return u if torch.equal(_u8_unit(u), t) else None


def encode(t: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
    """(tensor to store, index-line fields). `t`: a contiguous CPU tensor."""
    u = _as_u8_unit(t)
    if u is not None:
        return u, {"codec": "u8-unit"}
    size = t.element_size()
    if t.is_floating_point() and size > 1 and t.numel() * size >= SHUFFLE_MIN_BYTES:
        planes = t.reshape(-1).view(torch.uint8).reshape(-1, size).t().contiguous()  # [size, n]
        return planes, {"codec": "shuffle"}
    return t, {}


def decode(stored: torch.Tensor, entry: dict[str, Any]) -> torch.Tensor:
    """The recorded tensor from its stored form and its index line ("codec", "dtype", "shape")."""
    codec = entry.get("codec")
    if codec is None:
        return stored
    if codec == "u8-unit":
        return _u8_unit(stored)
    if codec == "shuffle":
        dtype = getattr(torch, entry["dtype"])
        return stored.t().contiguous().view(dtype).reshape(entry["shape"])
    from mtlib.io import InputError

    raise InputError(
        f"trace point {entry.get('name')!r}: stored with codec {codec!r}, which this mtlib "
        "cannot read. Fix: update mtlib (pip install -U mtlib)."
    )


def pack(entry: dict[str, Any], t: torch.Tensor, stored: dict[tuple, str]) -> torch.Tensor | None:
    """Compact form of `t` for the shard, or None when an equal tensor is already stored
    (then entry["same_as"] names it). `stored`: the writer's (hash, dtype, shape) -> name."""
    h = entry.get("hash")
    if not (h or "").startswith("sha1:"):  # accelerator hashes (mix128) are not cryptographic
        from mtlib.trace import tensor_hash

        h = tensor_hash(t, "sha1")
    key = (h, str(t.dtype), tuple(t.shape))
    if key in stored:
        entry["same_as"] = stored[key]
        return None
    stored[key] = entry["name"]
    out, fields = encode(t)
    entry.update(fields)
    return out
