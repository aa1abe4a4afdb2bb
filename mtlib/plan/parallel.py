"""The parallel layout in the shape plan: per-rank tokens, latent frames and memory.

`plan_parallel(plan, ranks, sizes)` is called by `mtlib.plan.plan` with
`config.parallel.gpus` (or torchrun's world size). It fills `plan.parallel`:

    ranks, heads_per_rank, tokens_per_rank (ceil(L / N), padding included), padded_tokens,
    per_rank: [{rank, tokens (video tokens), padding, frames [first, stop)}],
    weights_bytes_per_rank (every rank holds the whole model: no FSDP), activation_bytes_per_rank

and refuses, as a plan violation, a rank count that does not divide the DiT's heads (the
Ulysses exchange gives each rank heads / ranks of them). The token split is the one
`mtlib.parallel.sequence.TokenShard` uses, so the plan shows what the run will do.
"""

from __future__ import annotations

from typing import Any

__all__ = ["plan_parallel", "parallel_lines", "rank_tokens", "ranks_of"]


def ranks_of(cfg: Any) -> int:
    """The run's rank count: torchrun's world size when launched by it, else parallel.gpus."""
    from mtlib.parallel.launch import env_world

    found = env_world()
    return found[1] if found is not None else cfg.parallel.gpus


def rank_tokens(seq_len: int, frame_tokens: int, ranks: int) -> list[dict]:
    """Per rank: video tokens, padding tokens, latent frames [first, stop) it touches."""
    local = -(-seq_len // ranks)
    out = []
    for r in range(ranks):
        start = r * local
        real = max(0, min(local, seq_len - start))
        frames = [start // frame_tokens, -(-(start + real) // frame_tokens)] if real else [0, 0]
        out.append({"rank": r, "tokens": real, "padding": local - real, "frames": frames})
    return out


def plan_parallel(p: Any, ranks: int, m: Any) -> None:
    """Fill p.parallel for `ranks` ranks (nothing for one), or add a violation."""
    from mtlib.plan import Violation

    if ranks <= 1:
        return
    if m.num_heads % ranks:
        good = [n for n in range(2, m.num_heads + 1) if m.num_heads % n == 0][:6]
        p.violations.append(Violation(
            "parallel_ranks_divide_heads", {"ranks": ranks, "num_heads": m.num_heads}, None,
            f"sequence parallel gives each rank num_heads / ranks of the DiT's {m.num_heads} "
            f"attention heads (Ulysses all-to-all); {ranks} ranks do not divide them.",
            (f"use a rank count that divides {m.num_heads}: {', '.join(map(str, good))}",),
        ))  # fmt: skip
        return
    if p.seq_len is None:  # invalid plan: no token grid to split
        return
    T, nh, nw = p.token_grid
    S, L = nh * nw, p.seq_len
    local = -(-L // ranks)
    a = 4 if p.precision == "fp32" else 2
    act = p.activation_bytes or 0
    # token-proportional activations of one pass, plus the Ulysses buffers: q, k, v over all
    # tokens for this rank's heads, and the exchange's send / receive copies
    act_rank = int(act * local / L + 2 * 3 * local * ranks * (m.dim // ranks) * a)
    p.parallel = {
        "mode": "sequence",
        "ranks": ranks,
        "heads_per_rank": m.num_heads // ranks,
        "tokens_per_rank": local,
        "padded_tokens": local * ranks,
        "per_rank": rank_tokens(L, S, ranks),
        "weights_bytes_per_rank": int(sum(p.weight_bytes.values())),
        "activation_bytes_per_rank": act_rank,
    }


def parallel_lines(p: Any) -> list[str]:
    """The plan table's lines for the layout (none for one device)."""
    par = getattr(p, "parallel", None)
    if not par:
        return []
    per = par["per_rank"]
    tokens = ", ".join(
        f"{d['tokens']}" + (f"+{d['padding']} pad" if d["padding"] else "") for d in per
    )
    frames = ", ".join(f"[{d['frames'][0]},{d['frames'][1]})" for d in per)
    return [
        f"sequence parallel: {par['ranks']} ranks, {par['heads_per_rank']} heads each | tokens per "
        f"rank {tokens} (of {p.seq_len}) | latent frames {frames}",
        f"per rank: weights {par['weights_bytes_per_rank'] / 1e9:.2f} GB (whole model on every rank) "
        f"| activations/pass ~{par['activation_bytes_per_rank'] / 1e9:.2f} GB",
    ]
