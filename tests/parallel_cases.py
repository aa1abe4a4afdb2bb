"""Rank functions for tests/test_parallel.py (spawned processes import them from here)."""

from __future__ import annotations

import torch

from mtlib.config import load_config
from mtlib.models.dit import build_dit

# (persons, T, h, w): L = T * h/2 * w/2 = 27 tokens (not divisible by 2 or 4; frames of 9
# tokens cut mid-frame) and 24 (divisible)
DIT_CASES = ((1, 3, 6, 6), (2, 3, 6, 6), (2, 3, 4, 8))


def tiny_dit(seed: int = 0):
    torch.manual_seed(seed)
    model = build_dit("tiny", device="cpu")
    with torch.no_grad():  # non-trivial norms / modulation (their defaults are 1 and 0)
        g = torch.Generator().manual_seed(seed + 1)
        for name, p in model.named_parameters():
            if p.ndim == 1 or "modulation" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval().requires_grad_(False)


def dit_inputs(persons: int, T: int, h: int, w: int) -> dict:
    """test_dit's tiny DiT inputs, seeded per shape."""
    from tests.test_dit import _tiny_inputs

    g = torch.Generator().manual_seed(100 * persons + 10 * T + h + w)
    return _tiny_inputs(T=T, h=h, w=w, persons=persons, gen=g)


def dit_rank(worlds=(2, 4), cases=DIT_CASES):
    """Every rank of a world of max(worlds): the tiny DiT (same seed) split over the first
    n ranks for each n in worlds (one spawn for all); {(n, case): output} of rank 0."""
    import torch.distributed as dist

    from mtlib.parallel import agree, enable_sequence_parallel, join

    rank = join(load_config("tiny"))
    model = tiny_dit()
    out = {}
    for n in worlds:
        group = dist.new_group(list(range(n)))  # every rank takes part in creating it
        if rank.rank < n:
            agree(None, enable_sequence_parallel, model, group)
            with torch.no_grad():
                out.update({(n, case): model(**dit_inputs(*case)) for case in cases})
        dist.barrier()
    return out


def failing_rank(bad_rank: int):
    """Rank `bad_rank` refuses its input in an agreed step; the others would go on."""
    from mtlib.io import InputError
    from mtlib.parallel import agree, join

    rank = join(load_config("tiny"))

    def check():
        if rank.rank == bad_rank:
            raise InputError(f"speaker 1 audio 'x.wav': unreadable on rank {bad_rank}")
        return True

    agree(rank, check)
    return "not reached"


def dying_rank(bad_rank: int):
    """Rank `bad_rank` fails in the middle of the compute; the others wait in a collective."""
    import torch.distributed as dist

    from mtlib.parallel import join

    rank = join(load_config("tiny", {"parallel.timeout_s": 600}))
    if rank.rank == bad_rank:
        raise RuntimeError("CUDA out of memory (simulated)")
    dist.barrier()
    return "not reached"


# end-to-end: (config overrides) per case; frame_num 9 = 3 latent frames of 6x3 tokens (L = 54)
E2E_BASE = {"generation.sampling_steps": 2, "generation.frame_num": 9}
E2E_CASES = {
    # streaming: 3 clips (the first one is a clip-mode clip), two speakers (L-RoPE)
    "streaming-2-speakers": {
        "inputs.image": "data/two_person_16x9.png",
        "inputs.audio": ["data/speech_1p79s.wav", "data/speech_b_1p79s.wav"],
        "generation.mode": "streaming",
        "generation.motion_frame": 5,
        "generation.max_frames_num": 17,
    },
}


def e2e_config(case: str):
    return load_config("tiny", {**E2E_BASE, **E2E_CASES[case]})


def generate_rank(out_dir: str, cases=tuple(E2E_CASES)):
    """Every rank: the whole pipeline of each case (models loaded once); rank 0's videos."""
    from mtlib.run.generation import generate_video, summary
    from mtlib.run.load import load_models

    models = load_models(e2e_config(cases[0]))
    results = {}
    for case in cases:
        r = generate_video(e2e_config(case), f"{out_dir}/{case}.mp4", progress=False, models=models)
        results[case] = (r.video, summary(r) if r.rank == 0 else None)
    return results
