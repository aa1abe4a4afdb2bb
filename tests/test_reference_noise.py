"""generation.noise (cpu | cuda | trace), generation.noise_trace, and the settings comparison
`mtlib compare` prints first."""

from __future__ import annotations

import pytest
import torch

from mtlib.config import ConfigError, load_config
from mtlib.io import InputError
from mtlib.reference.noise import CudaNoise, noise_source
from mtlib.reference.settings import format_settings_diff, settings_diff
from mtlib.run.generation import generate_video
from mtlib.run.load import load_models
from mtlib.run.noise import SeededNoise


def test_noise_config_rules():
    with pytest.raises(ConfigError) as e:
        load_config("tiny", {"generation.noise": "trace"})
    assert str(e.value) == (
        "preset 'tiny': generation.noise: 'trace' needs generation.noise_trace (the path of a trace "
        "holding the draws, e.g. the one `python -m mtlib.reference` wrote)."
    )
    with pytest.raises(ConfigError) as e:
        load_config("tiny", {"generation.noise_trace": "x"})
    assert str(e.value) == (
        "preset 'tiny': generation.noise_trace is set but generation.noise is 'cpu': the trace would "
        "be ignored. Fix: generation.noise=trace, or drop noise_trace."
    )
    with pytest.raises(
        ConfigError, match="generation.noise: expected 'cpu' or 'cuda' or 'trace', got 'gpu'"
    ):
        load_config("tiny", {"generation.noise": "gpu"})
    assert load_config("tiny").generation.noise == "cpu"


def test_cpu_noise_is_the_seeded_cpu_generator():
    src = noise_source(load_config("tiny", {"generation.seed": 5}).generation)
    assert isinstance(src, SeededNoise)
    g = torch.Generator().manual_seed(5)
    assert torch.equal(
        src.draw("e2e.clip0.rand.noise", (16, 4, 6, 8)), torch.randn(16, 4, 6, 8, generator=g)
    )


def test_cuda_noise_is_the_reference_cuda_stream():
    gen = load_config("tiny", {"generation.noise": "cuda", "generation.seed": 11}).generation
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="generation.noise 'cuda': no CUDA device here"):
            noise_source(gen, "cpu")
        return
    src = noise_source(gen, "cuda")
    assert isinstance(src, CudaNoise)
    torch.manual_seed(11)  # what the reference does before its draws
    want = [
        torch.randn(16, 4, 6, 8, device="cuda"),
        torch.randn_like(torch.zeros(16, 2, 6, 8, device="cuda")),
    ]
    got = [src.draw("a", (16, 4, 6, 8)), src.draw("b", (16, 2, 6, 8))]
    assert all(torch.equal(w.cpu(), g) for w, g in zip(want, got, strict=True))


@pytest.mark.slow
def test_trace_noise_replays_a_run_whatever_the_seed(tmp_path, monkeypatch):
    monkeypatch.setenv("MTLIB_CACHE", str(tmp_path / "cache"))
    base = load_config(
        "tiny",
        {
            "model.weights.tiny_dir": str(tmp_path / "w"),
            "generation.frame_num": 13,
            "generation.sampling_steps": 2,
            "generation.seed": 3,
            "trace.level": "full",
            "trace.full": ["e2e.*.rand.*"],
        },
    )
    models = load_models(base)
    a = generate_video(
        base, tmp_path / "a.mp4", trace_dir=tmp_path / "ta", progress=False, models=models
    )
    replay = base.replace(
        **{
            "generation.noise": "trace",
            "generation.noise_trace": str(tmp_path / "ta"),
            "generation.seed": 99,
        }
    )
    b = generate_video(replay, tmp_path / "b.mp4", progress=False, models=models)
    assert torch.equal(a.video, b.video)  # seed 99 ignored: the draws are the trace's
    # a trace without the draws is refused before any model is loaded
    stats_only = base.replace(**{"trace.level": "stats", "trace.full": []})
    generate_video(
        stats_only, tmp_path / "d.mp4", trace_dir=tmp_path / "td", progress=False, models=models
    )
    bad = base.replace(
        **{"generation.noise": "trace", "generation.noise_trace": str(tmp_path / "td")}
    )
    monkeypatch.setattr(
        "mtlib.run.generation.load_models", lambda *a, **k: pytest.fail("models loaded")
    )
    with pytest.raises(InputError, match="has only statistics of .'e2e.clip0.rand.noise'"):
        generate_video(bad, tmp_path / "e.mp4", progress=False)
    assert not (tmp_path / "e.mp4").exists()


OFFICIAL_META = {
    "official_runs": [
        {
            "generate": {
                "size_buckget": "multitalk-480",
                "frame_num": 81,
                "max_frames_num": 1000,
                "motion_frame": 25,
                "sampling_steps": 20,
                "shift": 7,
                "text_guide_scale": 5.0,
                "audio_guide_scale": 4.0,
                "seed": 42,
                "color_correction_strength": 1.0,
                "face_scale": 0.05,
            },
            "flags": {
                "use_teacache": True,
                "teacache_thresh": 0.2,
                "use_apg": False,
                "num_persistent_param_in_dit": 11000000000,
            },
            "pipeline": {"device": "cuda:0", "dit_dtype": "bfloat16"},
        }
    ],
    "reference": {
        "python": "3.11.13",
        "packages": {"torch": "2.6.0+cu124"},
        "cuda": "12.4",
        "gpu": {"name": "NVIDIA A100-SXM4-40GB"},
        "tf32_matmul": False,  # torch's defaults
        "tf32_cudnn": True,
        "nvidia_tf32_override": None,
        "official": {"matches_golden_commit": True},
    },
}
MTLIB_META = {
    "config": {
        "model": {
            "size": "multitalk-480",
            "device": "cuda",
            "precision": "reference",
            "attention": "sdpa",
        },
        "generation": {
            "seed": 42,
            "mode": "streaming",
            "frame_num": 81,
            "motion_frame": 25,
            "sampling_steps": 20,
            "shift": "auto",
            "text_guide_scale": 5.0,
            "audio_guide_scale": 4.0,
            "color_correction_strength": 1.0,
            "face_scale": 0.05,
            "use_apg": False,
            "teacache": False,
            "teacache_thresh": 0.2,
            "noise": "cpu",
        },
    },
    "environment": {
        "python": "3.11.13",
        "torch": "2.11.0+cu128",
        "cuda": "12.8",
        "device": "cuda: NVIDIA H200",
        "tf32_matmul": False,
        "tf32_cudnn": True,
        "nvidia_tf32_override": "0",
    },
}


def test_settings_diff_names_what_differs():
    diff = settings_diff(OFFICIAL_META, MTLIB_META)
    assert diff == [
        ("settings", "teacache", True, False),
        ("settings", "noise", "cuda", "cpu"),
        ("environment", "torch", "2.6.0+cu124", "2.11.0+cu128"),
        ("environment", "cuda", "12.4", "12.8"),
        ("environment", "gpu", "NVIDIA A100-SXM4-40GB", "NVIDIA H200"),
        ("environment", "tf32", "matmul off, cudnn on", "off (NVIDIA_TF32_OVERRIDE=0)"),
    ]
    text = format_settings_diff(OFFICIAL_META, MTLIB_META)
    assert text.splitlines() == [
        "settings that differ (A | B):",
        "  teacache                   True | False",
        "  noise                      cuda | cpu",
        "environment that differ (A | B):",
        "  torch                      2.6.0+cu124 | 2.11.0+cu128",
        "  cuda                       12.4 | 12.8",
        "  gpu                        NVIDIA A100-SXM4-40GB | NVIDIA H200",
        "  tf32                       matmul off, cudnn on | off (NVIDIA_TF32_OVERRIDE=0)",
    ]
    # a trace written before the TF32 fields existed, or a CPU run: TF32 is not compared
    old = {**MTLIB_META, "environment": {k: v for k, v in MTLIB_META["environment"].items()
                                         if not k.startswith(("tf32", "nvidia"))}}  # fmt: skip
    assert ("environment", "tf32") not in [d[:2] for d in settings_diff(OFFICIAL_META, old)]
    cpu = {**MTLIB_META, "config": {**MTLIB_META["config"],
                                    "model": {**MTLIB_META["config"]["model"], "device": "cpu"}}}  # fmt: skip
    assert ("environment", "tf32") not in [d[:2] for d in settings_diff(OFFICIAL_META, cpu)]
