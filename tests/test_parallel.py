"""Sequence parallelism on torch.distributed (gloo, CPU): N ranks equal one process.

The DiT split over 2 and 4 processes (the tiny DiT has 4 heads) against the same DiT in
this process, for 1 and 2 speakers and a token count that no rank count divides; one rank's
error stops every rank with that error (no hang); the plan's per-rank layout; and, marked
slow, a whole streaming run with 2 speakers over 2 spawned ranks.
"""

from __future__ import annotations

import time

import pytest
import torch

from mtlib.config import ConfigError, load_config
from mtlib.io import InputError
from mtlib.parallel import rank_tokens, spawn
from mtlib.parallel.sequence import TokenShard
from tests import parallel_cases as cases

TOL = 1e-5


@pytest.fixture(scope="module")
def one_process() -> dict:
    model = cases.tiny_dit()
    with torch.no_grad():
        return {c: model(**cases.dit_inputs(*c)) for c in cases.DIT_CASES}


@pytest.fixture(scope="module")
def over_ranks() -> dict:
    """One spawn of 4 processes: the DiT over ranks {0, 1}, then over all 4."""
    return spawn(cases.dit_rank, 4, ((2, 4),))


@pytest.mark.parametrize("ranks", [2, 4])
def test_dit_over_ranks_equals_one_process(one_process, over_ranks, ranks):
    got = {case: out for (n, case), out in over_ranks.items() if n == ranks}
    for case, expected in one_process.items():
        persons, T, h, w = case
        L = T * (h // 2) * (w // 2)
        diff = (got[case] - expected).abs().max().item()
        print(
            f"ranks {ranks} persons {persons} L {L} (L % ranks = {L % ranks}): max abs diff {diff:.3g}"
        )
        assert got[case].shape == expected.shape
        assert diff <= TOL, (ranks, case, diff)
    assert any(T * (h // 2) * (w // 2) % ranks for _, T, h, w in one_process)


def test_one_rank_refusing_its_input_stops_all():
    with pytest.raises(InputError) as err:
        spawn(cases.failing_rank, 2, (1,))
    assert str(err.value) == "rank 1: speaker 1 audio 'x.wav': unreadable on rank 1"


def test_a_rank_dying_mid_run_stops_the_others_without_waiting_for_the_timeout():
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError) as err:
        spawn(cases.dying_rank, 2, (1,))
    assert str(err.value) == "rank 1: CUDA out of memory (simulated)"
    assert time.perf_counter() - t0 < 300  # the collective timeout is 600 s


def _shard(rank, world, L, S):
    return TokenShard(rank, world, L, S, group="unused")


def test_token_shard_layout_pads_and_places_frames():
    # L = 27 tokens of 9 per frame over 4 ranks: 7, 7, 7, 6 (+1 padding)
    shards = [_shard(r, 4, 27, 9) for r in range(4)]
    assert [s.local for s in shards] == [7] * 4
    assert [s.real for s in shards] == [7, 7, 7, 6]
    assert [s.frames for s in shards] == [(0, 1), (0, 2), (1, 3), (2, 3)]
    x = torch.arange(27.0).view(1, 27, 1)
    parts = [s.scatter(x) for s in shards]
    assert torch.equal(torch.cat(parts, 1)[:, :27], x) and parts[3][0, -1, 0] == 0
    # rank 1 holds tokens 7..13: frame 0 (rows 7, 8) and frame 1 (rows 0..4) of 9 each
    win = shards[1].frame_window(parts[1])
    assert win.shape == (1, 18, 1)
    assert torch.equal(win[0, :, 0], torch.tensor([0.0] * 7 + list(range(7, 14)) + [0.0] * 4))
    assert torch.equal(shards[1].frame_unwindow(win), parts[1])
    assert rank_tokens(27, 9, 4) == [
        {"rank": 0, "tokens": 7, "padding": 0, "frames": [0, 1]},
        {"rank": 1, "tokens": 7, "padding": 0, "frames": [0, 2]},
        {"rank": 2, "tokens": 7, "padding": 0, "frames": [1, 3]},
        {"rank": 3, "tokens": 6, "padding": 1, "frames": [2, 3]},
    ]


def test_plan_reports_the_layout_per_rank():
    from mtlib.plan import plan, plan_table

    p = plan(load_config("tiny", {"parallel.gpus": 4, "generation.frame_num": 9}))
    assert p.valid and p.seq_len == 54 and p.token_grid == (3, 6, 3)
    par = p.parallel
    assert (par["ranks"], par["heads_per_rank"], par["tokens_per_rank"]) == (4, 1, 14)
    assert [d["tokens"] for d in par["per_rank"]] == [14, 14, 14, 12]
    text = plan_table(p)
    assert (
        "sequence parallel: 4 ranks, 1 heads each | tokens per rank 14, 14, 14, 12+2 pad (of 54)"
        in text
    )
    assert "per rank: weights" in text
    assert plan(load_config("tiny")).parallel == {}


def test_plan_refuses_a_rank_count_that_does_not_divide_the_heads():
    from mtlib.plan import plan

    p = plan(load_config("tiny", {"parallel.gpus": 3, "generation.frame_num": 9}))
    assert not p.valid
    (v,) = p.violations
    assert v.rule == "parallel_ranks_divide_heads"
    assert v.fixes == ("use a rank count that divides 4: 2, 4",)


def test_parallel_config_errors():
    from mtlib.parallel.launch import check_config

    with pytest.raises(ConfigError, match=r"parallel\.gpus: must be >= 1, got 0"):
        load_config("tiny", {"parallel.gpus": 0})
    cfg = load_config("tiny", {"parallel.gpus": 2, "model.device": "cuda:1"})
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    assert str(err.value) == (
        "model.device 'cuda:1' with 2 ranks: each rank uses cuda:<its local rank>. "
        "Fix: model.device=cuda (choose the GPUs with CUDA_VISIBLE_DEVICES)."
    )
    with pytest.raises(ConfigError, match=r"parallel\.gpus = 2 but torchrun started 4 processes"):
        check_config(load_config("tiny", {"parallel.gpus": 2}), world=4)


def test_invalid_plan_is_refused_before_any_rank_starts(monkeypatch):
    from mtlib.parallel import launch
    from mtlib.run.generation import generate_video
    from mtlib.run.prepare import PlanError

    monkeypatch.setattr(launch, "spawn", lambda *a: pytest.fail("ranks spawned"))
    cfg = load_config("tiny", {"parallel.gpus": 2, "generation.frame_num": 43})
    with pytest.raises(PlanError, match="frame_num_4n_plus_1"):
        generate_video(cfg, "/nonexistent/never-written.mp4")


@pytest.mark.slow
def test_whole_runs_over_two_ranks_equal_one_process(tmp_path):
    from mtlib.run.load import load_models

    got = spawn(cases.generate_rank, 2, (str(tmp_path),))
    from mtlib.run.generation import generate_video

    models = load_models(cases.e2e_config(next(iter(cases.E2E_CASES))))
    for case in cases.E2E_CASES:
        one = generate_video(
            cases.e2e_config(case), tmp_path / f"{case}-1.mp4", progress=False, models=models
        )
        video, text = got[case]
        diff = (video - one.video).abs().max().item()
        print(f"{case}: {list(video.shape)} max abs diff {diff:.3g}")
        assert video.shape == one.video.shape and diff <= TOL, (case, diff)
        assert "sequence parallel: 2 ranks" in text.splitlines()
        assert (tmp_path / f"{case}.mp4").is_file()
