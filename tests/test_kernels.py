"""mtlib.kernels.attention: the Triton flash attention (opt-in GPU speed path).

The kernel itself runs here in Triton's CPU interpreter (a subprocess with TRITON_INTERPRET=1),
so CI checks its arithmetic: against float64 attention, inside the tiny DiT against the SDPA
path, compiled against eager. Its speed is measured on the GPU by benchmarks/flash_attention.py.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtlib.accel.compile import set_attention_kernel
from mtlib.config import ConfigError, load_config
from mtlib.models.dit import CONFIGS, build_dit
from mtlib.run.prepare import effective_precision

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def interpreted():
    pytest.importorskip("triton")  # a dev dependency on Linux x86-64: present in CI
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=path)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "kernel_interpreter_check.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def test_flash_kernel_matches_float64_attention(interpreted):
    for case in interpreted["kernel"]:
        B, Lq, Lk, H, d = case["shape"]
        assert case["out_shape"] == [B, Lq, H, d] and case["out_dtype"] == "torch.float32"
        assert case["fp32"] < 1e-5, case  # float32 accumulate: rounding only
        assert case["fp16"] < 2e-3, case  # fp16 operands
    assert interpreted["d16"] < 2e-3  # the tiny model's head dim, bf16 kernel only


def test_fp8_kernel_is_close_and_ignores_a_common_key_shift(interpreted):
    for case in interpreted["fp8"]:
        assert case["dtype"] == "torch.bfloat16" and case["finite"]
        # e4m3 keeps 3 mantissa bits: a few % on random data (GPU: 5.4%), never more than 15%
        assert 1e-3 < case["rel"] < 0.15, case
        assert case["shift_invariant"] < 0.05, (
            case
        )  # centred k: the shift is removed before rounding


def test_tma_kernel_variants_equal_the_pointer_kernel(interpreted):
    # fp8 mode's kernel on Hopper (TMA tiles; pipelined and channel-split variants) computes
    # what the pointer kernel does, tile for tile
    assert interpreted["tma_variants_vs_pointer"] == [0.0, 0.0, 0.0, 0.0]


def test_compiled_fp8_attention_equals_eager(interpreted):
    assert interpreted["compiled_equal"]


def test_tiny_dit_with_triton_self_attention_matches_sdpa(interpreted):
    dit = interpreted["dit"]
    assert dit["kernels"] == ["triton-fp8"]
    assert dit["triton_vs_sdpa"] < 1e-5
    assert 1e-4 < dit["fp8_vs_sdpa"] < 0.2


def test_set_attention_kernel_refuses_unknown_and_cpu():
    model = build_dit(CONFIGS["tiny"], device="cpu")
    with pytest.raises(ValueError) as err:
        set_attention_kernel(model, "flash")
    assert str(err.value) == "attention kernel must be one of sdpa, triton, triton-fp8; got 'flash'"
    if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        with pytest.raises(RuntimeError) as err:
            set_attention_kernel(model, "triton")
        assert str(err.value) == (
            "attention kernel 'triton' needs Triton and a CUDA GPU (the model is on cpu); "
            "use the default 'sdpa'"
        )
    if os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available():
        with pytest.raises(ValueError) as err:  # tiny: 4 heads of 16
            set_attention_kernel(model, "triton-fp8")
        assert str(err.value) == (
            "attention kernel 'triton-fp8' needs a head dim that is a power of two "
            "in 32..256; this DiT's is 16. Use the default 'sdpa'"
        )
    assert {b.self_attn.kernel for b in model.blocks} == {"sdpa"}


def test_flash_attention_input_errors():
    from mtlib.kernels import attention as fa

    if not fa.HAVE_TRITON:
        pytest.skip("Triton not installed")
    q = torch.zeros(1, 8, 2, 24)
    with pytest.raises(
        ValueError, match=r"^flash attention: head dim must be a power of two in 16..256, got 24$"
    ):
        fa.attention(q, q, q)
    q = torch.zeros(1, 8, 2, 16)
    with pytest.raises(
        ValueError,
        match=r"^flash attention: head dim must be a power of two in 32..256 for fp8, got 16$",
    ):
        fa.attention(q, q, q, mode="fp8")
    q = torch.zeros(1, 8, 2, 32)
    with pytest.raises(
        ValueError, match=r"^flash attention: mode must be 'bf16' or 'fp8', got 'int8'$"
    ):
        fa.attention(q, q, q, mode="int8")
    with pytest.raises(
        ValueError, match=r"k and v must be \[B, Lk, H, d\] matching q \[1, 8, 2, 32\]"
    ):
        fa.attention(q, torch.zeros(1, 8, 3, 32), torch.zeros(1, 8, 3, 32))


def test_fp8_precision_is_a_config_choice_refused_off_gpu():
    cfg = load_config("tiny", overrides=["model.precision=fp8"])
    assert cfg.model.precision == "fp8"
    with pytest.raises(ConfigError) as err:
        effective_precision("cpu", "fp8")
    assert str(err.value) == (
        "model.precision: 'fp8' needs a CUDA GPU (fp8 tensor cores), but the run's device is cpu. "
        "Use model.precision=reference, or model.device=cuda on a Hopper-class GPU."
    )
    assert effective_precision("cpu", "reference") == "fp32"
    assert effective_precision("cuda", "fp8") == "fp8"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tiny_generation_in_fp8_on_cuda(tmp_path):
    """model.precision fp8 end to end: fp8 block linears, the Triton fp8 self-attention inside
    the compiled blocks, a finite video with the reference run's shape."""
    from mtlib.accel.fp8 import FP8Linear
    from mtlib.run.generation import generate_video
    from mtlib.run.load import load_models

    cfg = load_config("tiny", overrides=["model.device=cuda", "model.precision=fp8"])
    models = load_models(cfg, compile=True)
    assert models.precision == "fp8"
    # the tiny heads (16) are too narrow for fp8 products: attention stays on SDPA there (the
    # fp8 kernel ran end to end at real size: benchmarks/results/h100_whole_clip_fp8.json)
    assert {b.self_attn.kernel for b in models.dit.blocks} == {"sdpa"}
    assert isinstance(models.dit.blocks[0].self_attn.q, FP8Linear)
    fp8 = generate_video(cfg, tmp_path / "fp8.mp4", models=models, progress=False)
    ref_cfg = load_config("tiny", overrides=["model.device=cuda", "model.precision=reference"])
    ref = generate_video(ref_cfg, tmp_path / "ref.mp4", progress=False)
    assert fp8.video.shape == ref.video.shape and torch.isfinite(fp8.video).all()
    assert (tmp_path / "fp8.mp4").stat().st_size > 0


def test_fp8_kernel_exponential_forms_assemble_for_hopper_and_approximate_exp2():
    """The benchmark-only exponential forms of mtlib.kernels.fp8_attention (_exp2_form, EXP
    1-3: inline PTX, which Triton's interpreter cannot run) assemble for sm_90 through Triton
    and ptxas here, with the MUFU / polynomial split they name; the polynomial, evaluated the way the PTX does
    (float32 steps, integer exponent add), is exp2 to 1e-4 over the softmax's range."""
    import numpy as np

    triton = pytest.importorskip("triton")
    import triton.language as tl
    from triton.backends.compiler import GPUTarget

    from mtlib.kernels import fp8_attention as f8

    @triton.jit
    def probe(X, Y, EXP: tl.constexpr):
        r = tl.arange(0, 64)[:, None] * 128 + tl.arange(0, 128)[None, :]
        x = tl.load(X + r)
        p = f8._exp2_form(x, EXP)
        tl.store(Y + r, p)

    n_threads = 128  # 4 warps: 64 of the 8192 scores per thread
    for exp, mufu_share in ((1, 1.0), (2, 0.5), (3, 0.75)):
        src = triton.compiler.ASTSource(
            fn=probe,
            signature={"X": "*fp32", "Y": "*fp32", "EXP": "constexpr"},
            constexprs={"EXP": exp},
        )
        ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm["ptx"]
        per_thread = 64 * 128 // n_threads
        assert ptx.count("ex2.approx.ftz.f32") == per_thread * mufu_share, exp
        assert ptx.count("shl.b32 pe, pe, 23;") == per_thread * (1 - mufu_share), exp

    c0, c1, c2, c3 = (np.float32(c) for c in f8._POLY)
    x = np.concatenate([-np.linspace(0, 130, 200_001, dtype=np.float32), [-np.inf]]).astype(
        np.float32
    )
    f = np.maximum(x, np.float32(-125.0))
    t = f + np.float32(12582912.0)
    f = f - (t - np.float32(12582912.0))
    p = ((f * c3 + c2) * f + c1) * f + c0
    e = ((t.view(np.int32).astype(np.int64) << 23) & 0xFFFFFFFF).astype(np.uint32).view(np.int32)
    r = (p.view(np.int32) + e).view(np.float32)
    exact = np.exp2(np.maximum(x, -125.0).astype(np.float64))
    assert np.abs(r / exact - 1).max() < 1e-4
