"""TeaCache: skip a DiT call when the modulated input changed little since the last computed
one (the official coefficients per model size).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# ------------------------------------------------------------------------------------------
# TeaCache


TEACACHE_COEFFICIENTS = {
    # use_ret_steps=True variant (the one the CLI uses), numpy poly1d order (highest first)
    "multitalk-480": (2.57151496e05, -3.54229917e04, 1.40286849e03, -1.35890334e01, 1.32517977e-01),
    "multitalk-720": (8.10705460e03, 2.13393892e03, -3.72934672e02, 1.66203073e01, -4.17769401e-02),
}


@dataclass
class TeaCacheState:
    """TeaCache (facts §3.10): skip all blocks when e0 barely changed since the branch's last
    call, reusing that branch's cached block residual.

    Assumes 3 DiT calls per step in the order cond, drop_text, uncond (like the official);
    `calls` counts them mod 3 * sample_steps. The first `ret_steps` calls always compute.
    """

    sample_steps: int
    coefficients: tuple[float, ...] = TEACACHE_COEFFICIENTS["multitalk-480"]
    thresh: float = 0.2
    ret_steps: int = 15  # 5 sampling steps x 3 branches
    calls: int = 0
    accumulated: list = field(default_factory=lambda: [0.0, 0.0, 0.0])
    previous_e0: list = field(default_factory=lambda: [None, None, None])
    previous_residual: list = field(default_factory=lambda: [None, None, None])
    skipped: int = 0  # calls that reused the cache (for reports)
    # one (call index, rel change of e0 or None, accumulator, computed) per decision
    decisions: list = field(default_factory=list)

    @classmethod
    def for_size(cls, size: str, sample_steps: int, thresh: float = 0.2) -> TeaCacheState:
        if size not in TEACACHE_COEFFICIENTS:
            raise ValueError(
                f"TeaCache size must be one of {sorted(TEACACHE_COEFFICIENTS)}, got {size!r}"
            )
        return cls(
            sample_steps=sample_steps, coefficients=TEACACHE_COEFFICIENTS[size], thresh=thresh
        )

    @property
    def cutoff(self) -> int:
        return 3 * self.sample_steps

    def should_compute(self, e0: torch.Tensor) -> bool:
        branch = self.calls % 3
        prev = self.previous_e0[branch]
        rel = None
        if self.calls < self.ret_steps or self.calls >= self.cutoff or prev is None:
            compute = True
            self.accumulated[branch] = 0.0
        else:
            rel = ((e0 - prev).abs().mean() / prev.abs().mean()).item()  # host sync, as official
            acc = self.accumulated[branch] + sum(
                c * rel ** (len(self.coefficients) - 1 - i) for i, c in enumerate(self.coefficients)
            )
            compute = acc >= self.thresh
            self.accumulated[branch] = 0.0 if compute else acc
        self.decisions.append((self.calls, rel, self.accumulated[branch], compute))
        self.previous_e0[branch] = e0.detach().clone()
        return compute

    def advance(self) -> None:
        self.calls += 1
        if self.calls >= 3 * self.sample_steps:
            self.calls = 0
