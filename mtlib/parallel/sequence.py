"""Sequence parallelism for the MultiTalk DiT over N ranks (Ulysses), on torch.distributed.

Where it sits: `MultiTalkDiT.forward` asks its `sequence_parallel` attribute (a
`SequenceParallel`, set by `enable_sequence_parallel`) for the `TokenShard` of the call and
routes its tensors through it. Everything before the blocks (embeddings, audio projection,
masks) is computed on every rank; the blocks see only this rank's slice of the L video tokens:

- tokens: the (t, h, w) row-major sequence is cut into N equal slices of ceil(L / N); the
  last slices are padded with zero tokens when N does not divide L. A padded token never
  reaches a real one: it is left out of the self-attention keys, of the reference map and of
  the audio frames, and dropped when the head output is gathered. So the result equals one
  GPU's for every L (the reference pads and does not mask, facts §11.1);
- self-attention (Ulysses): q, k, v [B, L/N, H, d] go through one all-to-all to
  [B, L, H/N, d] (all tokens, this rank's heads), attention runs over the L real keys, and a
  second all-to-all brings the output back to [B, L/N, H, d]. N must divide the head count;
- reference-attention map: in the same head layout each rank holds all of frame 0's keys
  for its heads, so it computes the per-head map for all L tokens and one all-reduce sums
  the heads: every rank then holds the whole [3, L] map of one GPU, so the L-RoPE min-max
  normalisation runs over all L tokens, as on one GPU (no separate min / max exchange);
- audio cross-attention: each rank runs it on the latent frames its tokens cover (its
  tokens placed in a zero-padded [frames, S] window), with those frames' audio tokens only;
- head: the [B, L/N, 64] head output is all-gathered before unpatchify.

The collectives are torch's functional collectives (traceable by torch.compile, so the
compiled block keeps one graph); their timeout is the process group's
(`mtlib.parallel.launch.init`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["SequenceParallel", "TokenShard", "enable_sequence_parallel"]


def _funcol():
    import torch.distributed._functional_collectives as funcol

    return funcol


def _pad_dim(t: torch.Tensor, dim: int, after: int, before: int = 0) -> torch.Tensor:
    """Zero-pad dimension `dim` of t by `before` / `after` entries."""
    if after == 0 and before == 0:
        return t
    pad = [0, 0] * (t.dim() - 1 - dim) + [before, after]
    return F.pad(t, pad)


@dataclass(frozen=True)
class TokenShard:
    """This rank's share of one DiT call: tokens [start, start + local) of the padded
    sequence (the first `real` of them are video tokens), and the collectives over the group.

    rank / world: this rank and the number of ranks; seq_len L and frame_tokens S (tokens
    per latent frame) of the call; group: the process group's name.
    """

    rank: int
    world: int
    seq_len: int
    frame_tokens: int
    group: str

    # ---------------------------------------------------------------- layout
    @property
    def local(self) -> int:
        """Tokens per rank (padding included): ceil(L / N)."""
        return -(-self.seq_len // self.world)

    @property
    def padded(self) -> int:
        return self.local * self.world

    @property
    def start(self) -> int:
        return self.rank * self.local

    @property
    def real(self) -> int:
        """Video tokens of this rank (the rest of `local` is padding)."""
        return max(0, min(self.local, self.seq_len - self.start))

    @property
    def frames(self) -> tuple[int, int]:
        """[first, stop) latent frames this rank's video tokens touch."""
        S = self.frame_tokens
        if self.real == 0:
            return (0, 0)
        return (self.start // S, -(-(self.start + self.real) // S))

    # ---------------------------------------------------------------- token slices
    def scatter(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, ...] (all tokens, on every rank) -> [B, local, ...] (this rank's)."""
        return _pad_dim(x[:, self.start : self.start + self.real], 1, self.local - self.real)

    def rows(self, t: torch.Tensor) -> torch.Tensor:
        """A per-token table [L, ...] -> this rank's rows [local, ...] (zeros for padding)."""
        return _pad_dim(t[self.start : self.start + self.real], 0, self.local - self.real)

    # ---------------------------------------------------------------- collectives
    def _all_to_all(self, t: torch.Tensor) -> torch.Tensor:
        """Chunk i of dim 0 goes to rank i; chunk i of the result came from rank i."""
        fc = _funcol()
        return fc.wait_tensor(fc.all_to_all_single(t.contiguous(), None, None, self.group))

    def to_heads(self, t: torch.Tensor) -> torch.Tensor:
        """Ulysses: [B, local, H, d] (this rank's tokens, all heads) -> [B, L, H/N, d]
        (all video tokens in sequence order, padding dropped; heads [rank * H/N, ...))."""
        B, Ll, H, d = t.shape
        N = self.world
        t = t.reshape(B, Ll, N, H // N, d).permute(2, 0, 1, 3, 4)  # [N (dest), B, Ll, h, d]
        t = self._all_to_all(t)  # [N (source rank = token slice), B, Ll, h, d]
        return t.permute(1, 0, 2, 3, 4).reshape(B, N * Ll, H // N, d)[:, : self.seq_len]

    def to_tokens(self, t: torch.Tensor) -> torch.Tensor:
        """The inverse of to_heads: [B, L, H/N, d] -> [B, local, H, d] (padding rows 0)."""
        t = _pad_dim(t, 1, self.padded - t.shape[1])
        B, Lp, h, d = t.shape
        N = self.world
        t = t.reshape(B, N, Lp // N, h, d).permute(1, 0, 2, 3, 4)  # [N (dest), B, Ll, h, d]
        t = self._all_to_all(t)  # [N (source = head group), B, Ll, h, d]
        return t.permute(1, 2, 0, 3, 4).reshape(B, Lp // N, N * h, d)

    def heads(self, num_heads: int) -> tuple[int, int]:
        """[first, stop) global head indices this rank holds after to_heads."""
        h = num_heads // self.world
        return (self.rank * h, (self.rank + 1) * h)

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over the ranks (every rank gets it)."""
        fc = _funcol()
        return fc.wait_tensor(fc.all_reduce(t.contiguous(), "sum", self.group))

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """[B, local, ...] on each rank -> [B, L, ...] (all video tokens) on every rank."""
        fc = _funcol()
        gather = getattr(fc, "all_gather_single", None) or fc.all_gather_tensor
        full = fc.wait_tensor(gather(t.movedim(1, 0).contiguous(), 0, self.group))  # [Lp, B, ...]
        return full[: self.seq_len].movedim(0, 1)

    # ---------------------------------------------------------------- audio frames
    def frame_window(self, q: torch.Tensor) -> torch.Tensor:
        """[B, local, C] -> [B, n_frames * S, C]: this rank's tokens at their places in the
        latent frames they touch (self.frames), zeros elsewhere."""
        first, stop = self.frames
        S = self.frame_tokens
        before = self.start - first * S
        after = (stop - first) * S - before - self.real
        return _pad_dim(q[:, : self.real], 1, after, before)

    def frame_unwindow(self, out: torch.Tensor) -> torch.Tensor:
        """The inverse of frame_window: [B, n_frames * S, C] -> [B, local, C]."""
        before = self.start - self.frames[0] * self.frame_tokens
        return _pad_dim(out[:, before : before + self.real], 1, self.local - self.real)


class SequenceParallel:
    """The DiT's link to the process group: hands out one TokenShard per forward call."""

    def __init__(self, group=None):
        import torch.distributed as dist

        if not dist.is_initialized():
            raise RuntimeError(
                "sequence parallel needs an initialised process group: launch with torchrun or "
                "parallel.gpus (mtlib.parallel.launch), or call torch.distributed.init_process_group"
            )
        self.group = group if group is not None else dist.group.WORLD
        self.rank = dist.get_rank(self.group)
        self.world = dist.get_world_size(self.group)
        self.group_name = self.group.group_name

    def shard(self, seq_len: int, frame_tokens: int) -> TokenShard:
        return TokenShard(self.rank, self.world, int(seq_len), int(frame_tokens), self.group_name)

    def __repr__(self) -> str:
        return f"SequenceParallel(rank {self.rank} of {self.world})"


def enable_sequence_parallel(model, group=None) -> SequenceParallel | None:
    """Split `model`'s (a MultiTalkDiT) video tokens over the ranks of `group` (default: the
    whole world). A world of one rank leaves the model as it is (returns None)."""
    sp = SequenceParallel(group)
    heads = model.config.num_heads
    if heads % sp.world:
        raise ValueError(
            f"sequence parallel over {sp.world} ranks: the DiT's {heads} heads must divide evenly "
            f"(Ulysses gives each rank heads / ranks). Use a rank count that divides {heads}"
        )
    if sp.world == 1:
        model.sequence_parallel = None
        return None
    model.sequence_parallel = sp
    return sp
