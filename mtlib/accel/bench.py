"""The GPU benchmark of `mtlib bench`: real-size MultiTalk networks with random weights on a GPU.

Speed does not depend on the weights' values, so the benchmark builds the real 14B DiT and
the real VAE on the meta device, materialises them directly on the GPU with random bf16 (DiT)
/ fp32 (VAE) weights, warms up, and reports per-stage times, the time of one denoising step
(3 DiT passes: cond, drop_text, uncond), achieved TFLOP/s and the fraction of the matmul-rate
bound, and peak memory. `--json` writes the record (benchmarks/results/ keeps them).

FLOPs are counted from the shapes (`dit_flops_per_pass`): every Linear (2·m·n·k), the
attention products (4·L_q·L_k·dim), the reference-attention map (2·L·S·dim). Element-wise
work is not counted.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

from mtlib.frames import latent_frames
from mtlib.spec import SPECS
from mtlib.weights.random import random_init_  # noqa: F401 (bench's public name; lives with the random weights)

IMAGE_TOKENS = SPECS["multitalk-14b"].clip_tokens  # CLIP cls + 16x16 patches (every spec)
MATMUL_BOUND_TFLOPS = {"H100": 776.0, "H200": 790.0}  # bf16 8192³ matmul measured there


@dataclass
class DitShape:
    frames: int = 81
    height: int = 448
    width: int = 896
    persons: int = 1
    text_tokens: int = 512  # the DiT always pads the context to text_len

    @property
    def grid(self) -> tuple[int, int, int]:
        unit = SPECS["multitalk-14b"].size_unit  # VAE stride 8 x DiT patch 2
        return latent_frames(self.frames), self.height // unit, self.width // unit

    @property
    def seq_len(self) -> int:
        t, h, w = self.grid
        return t * h * w


def dit_flops_per_pass(cfg, shape: DitShape, persons: int | None = None) -> dict[str, float]:
    """FLOPs of one DiT forward, split into linear and attention work."""
    P = shape.persons if persons is None else persons
    T, Nh, Nw = shape.grid
    L, S, D, F = T * Nh * Nw, Nh * Nw, cfg.dim, cfg.ffn_dim
    ctx_img, ctx_txt = IMAGE_TOKENS, cfg.text_len
    audio_tokens = cfg.context_tokens * P
    lin = (
        2 * L * D * D * 4  # self-attn q k v o
        + 2 * L * D * D * 2
        + 2 * (ctx_txt + ctx_img) * D * D * 2  # cross-attn q o, k v (+img)
        + 2 * L * D * F * 2  # FFN
        + 2 * L * D * D * 2
        + 2 * T * audio_tokens * cfg.output_dim * 2 * D  # audio q/proj, kv
    )
    attn = (
        4 * L * L * D + 4 * L * (ctx_txt + ctx_img) * D + 4 * L * audio_tokens * D + 2 * L * S * D
    )
    n = cfg.num_layers
    return {"linear": lin * n, "attention": attn * n, "total": (lin + attn) * n}


@dataclass
class BenchResult:
    device: str
    torch: str
    config: str
    shape: dict
    results: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)


def _sync():
    import torch

    torch.cuda.synchronize()


def _timed(fn, repeat: int = 1) -> tuple[float, object]:
    _sync()
    t0 = time.perf_counter()
    out = None
    for _ in range(repeat):
        out = fn()
    _sync()
    return (time.perf_counter() - t0) / repeat, out


def dit_inputs(cfg, shape: DitShape, device, dtype):
    import torch

    g = torch.Generator("cpu").manual_seed(0)
    T, Nh, Nw = shape.grid
    h, w = Nh * 2, Nw * 2

    def rnd(*s, dt=dtype):
        return torch.randn(*s, generator=g).to(device, dt)

    audio = rnd(shape.persons, shape.frames, cfg.audio_window, cfg.audio_layers, cfg.audio_width)
    return {
        "latent": rnd(16, T, h, w, dt=torch.float32),
        "t": torch.tensor([996.0], device=device),
        "context": rnd(24, cfg.text_dim),
        "context_null": rnd(60, cfg.text_dim),
        "clip_fea": rnd(1, 257, cfg.clip_dim),
        "y": rnd(1, 20, T, h, w),
        "audio": audio,
        "audio_null": torch.zeros_like(audio[-1:]),
        "ref_target_masks": torch.ones(3, h, w, device=device),
        "seq_len": shape.seq_len,
    }


def denoise_step(model, inp) -> object:
    """The three guidance passes of one step, as the reference runs them."""
    common = dict(
        clip_fea=inp["clip_fea"],
        y=inp["y"],
        ref_target_masks=inp["ref_target_masks"],
        seq_len=inp["seq_len"],
    )
    cond = model(inp["latent"], inp["t"], context=inp["context"], audio=inp["audio"], **common)
    drop_text = model(
        inp["latent"], inp["t"], context=inp["context_null"], audio=inp["audio"], **common
    )
    uncond = model(
        inp["latent"], inp["t"], context=inp["context_null"], audio=inp["audio_null"], **common
    )
    return uncond + 5.0 * (cond - drop_text) + 4.0 * (drop_text - uncond)


def bench_dit(
    shape: DitShape,
    steps: int = 2,
    config: str = "multitalk-14b",
    offload: bool = False,
    compile_blocks: bool = False,
    backend: str = "default",
    fp8: bool = False,
    attn: str = "sdpa",
) -> dict:
    import torch

    from mtlib.models.dit import CONFIGS, build_dit

    cfg = CONFIGS[config]
    dev = torch.device("cuda")
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    model = build_dit(cfg, device="meta", dtype=torch.bfloat16)
    if offload:
        from mtlib.accel.offload import enable_block_offload

        model.to_empty(device="cpu")  # uninitialised host memory: fast
        # values do not matter for speed: initialise one block on the GPU and copy it into
        # every block's host memory (random init of 18 B parameters on the CPU takes minutes)
        for name, child in model.named_children():
            if name != "blocks":
                random_init_(child.to(dev))
        proto = model.blocks[0].to(dev)
        random_init_(proto)
        for block in model.blocks[1:]:
            block.load_state_dict(proto.state_dict())
        proto.to("cpu")
        enable_block_offload(model, dev)
    else:
        model.to_empty(device=dev)
        random_init_(model)
    model.eval().requires_grad_(False)
    if fp8:
        from mtlib.accel.fp8 import enable_fp8

        enable_fp8(model)
    if attn != "sdpa":
        from mtlib.accel.compile import set_attention_kernel

        set_attention_kernel(model, attn, device=dev)
    if compile_blocks:
        from mtlib.accel.compile import compile_blocks as _compile

        _compile(model, rope_fp32=True)
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 16)
    build_s = time.perf_counter() - t0
    inp = dit_inputs(cfg, shape, dev, torch.bfloat16)
    flops = dit_flops_per_pass(cfg, shape)
    flops_null = dit_flops_per_pass(cfg, shape, persons=1)
    step_flops = 2 * flops["total"] + flops_null["total"]
    with torch.inference_mode(), attention_backend(backend):
        warm_s, out = _timed(lambda: denoise_step(model, inp))
        torch.cuda.reset_peak_memory_stats()
        step_s, out = _timed(lambda: denoise_step(model, inp), repeat=steps)
    finite = bool(torch.isfinite(out).all())
    peak = torch.cuda.max_memory_allocated() / 1e9
    name = torch.cuda.get_device_name()
    bound = next((v for k, v in MATMUL_BOUND_TFLOPS.items() if k in name), 776.0)
    tflops = step_flops / step_s / 1e12
    return {
        "seq_len": shape.seq_len,
        "build_s": round(build_s, 2),
        "warmup_step_s": round(warm_s, 3),
        "step_s": round(step_s, 3),
        "pass_s": round(step_s / 3, 3),
        "step_pflop": round(step_flops / 1e15, 3),
        "linear_pflop_per_pass": round(flops["linear"] / 1e15, 3),
        "attention_pflop_per_pass": round(flops["attention"] / 1e15, 3),
        "achieved_tflops": round(tflops, 1),
        "matmul_bound_tflops": bound,
        "bound_step_s": round(step_flops / bound / 1e12, 3),
        "fraction_of_bound": round(tflops / bound, 3),
        "peak_gb": round(peak, 2),
        "output_finite": finite,
        "offload": offload,
        "compiled": compile_blocks,
        "sdpa": backend,
        "fp8": fp8,
        "self_attention": attn,
    }


def attention_backend(name: str):
    """SDPA backend preference: "default" (torch's order) or "cudnn" (cuDNN first: 1.6x faster
    than flash for this attention shape on H100), via sdpa_kernel(set_priority=True)."""
    import contextlib

    if name == "default":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [
        SDPBackend.CUDNN_ATTENTION,
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.EFFICIENT_ATTENTION,
        SDPBackend.MATH,
    ]
    return sdpa_kernel(order, set_priority=True)


def bench_deviation(shape: DitShape, config: str = "multitalk-14b", layers: int = 8) -> dict:
    """Does the speed path change the output beyond bf16 noise? Real width, `layers` blocks (an
    fp32 copy of all 40 does not fit next to the bf16 one), same random weights and inputs, one
    denoising step (3 passes). Three outputs: fp32 eager (the reference numerics without bf16
    rounding), bf16 plain eager (float64 RoPE, as the official code), bf16 fast path (compiled
    blocks, float32 RoPE). The fast path passes when its error against fp32 is within 10% of
    the plain path's error against fp32 (i.e. it is as close to exact math as the reference)."""
    import dataclasses

    import torch

    from mtlib.accel.compile import compile_blocks, set_attention_kernel
    from mtlib.models.dit import CONFIGS, build_dit

    cfg = dataclasses.replace(CONFIGS[config], num_layers=layers)
    dev = torch.device("cuda")
    ref = build_dit(cfg, device="meta", dtype=torch.float32)
    ref.to_empty(device=dev)
    random_init_(ref)
    ref.eval().requires_grad_(False)
    inp32 = dit_inputs(cfg, shape, dev, torch.float32)
    inp16 = {
        k: (
            v.to(torch.bfloat16)
            if torch.is_tensor(v)
            and v.is_floating_point()
            and k not in ("latent", "t", "ref_target_masks")
            else v
        )
        for k, v in inp32.items()
    }

    def metrics(a, b):
        a, b = a.double().flatten(), b.double().flatten()
        return {
            "cosine": round(torch.nn.functional.cosine_similarity(a, b, dim=0).item(), 6),
            "rel_l2": round(((a - b).norm() / b.norm()).item(), 6),
        }

    with torch.inference_mode(), attention_backend("cudnn"):
        exact = denoise_step(ref, inp32)
        model = ref.to(torch.bfloat16)  # same weights, rounded to bf16 as the reference does
        plain = denoise_step(model, inp16)
        compile_blocks(model, rope_fp32=True)
        fast = denoise_step(model, inp16)
        from mtlib.kernels.attention import available

        triton_ok = available(dev)
        if triton_ok:
            set_attention_kernel(model, "triton")
            fast_triton = denoise_step(model, inp16)
        from mtlib.accel.fp8 import FP8Linear, enable_fp8

        set_attention_kernel(model, "sdpa")
        enable_fp8(model)
        fp8 = denoise_step(model, inp16)
        fp8_linears = [m for m in model.modules() if isinstance(m, FP8Linear)]
        for m in fp8_linears:  # the same fp8 GEMMs with fp32-promoted accumulation
            m.fast_accum = False
        fp8_precise = denoise_step(model, inp16)
        for m in fp8_linears:
            m.fast_accum = True
        if triton_ok:
            set_attention_kernel(model, "triton-fp8")
            fp8_attn = denoise_step(model, inp16)
    plain_err, fast_err = metrics(plain, exact), metrics(fast, exact)
    rec = {
        "layers": layers,
        "plain_vs_fp32": plain_err,
        "fast_vs_fp32": fast_err,
        "fast_vs_plain": metrics(fast, plain),
        "fp8_vs_fp32": metrics(fp8, exact),
        "fp8_vs_plain": metrics(fp8, plain),
        "fp8_precise_accum_vs_fp32": metrics(fp8_precise, exact),
        "fp8_fast_vs_precise_accum": metrics(fp8, fp8_precise),
        "passed": fast_err["rel_l2"] <= 1.1 * plain_err["rel_l2"] + 1e-4,
    }
    if triton_ok:  # the Triton bf16 self-attention must pass the same test as the fast path
        tri_err = metrics(fast_triton, exact)
        rec.update(
            {
                "fast_triton_vs_fp32": tri_err,
                "fast_triton_vs_plain": metrics(fast_triton, plain),
                "fp8_attn_vs_fp32": metrics(fp8_attn, exact),
                "fp8_attn_vs_plain": metrics(fp8_attn, plain),
                "triton_passed": tri_err["rel_l2"] <= 1.1 * plain_err["rel_l2"] + 1e-4,
            }
        )
    return rec


def _timed_any(cuda: bool, fn):
    if cuda:
        return _timed(fn)
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def bench_vae(
    frames: int = 81, height: int = 448, width: int = 896, config: str = "multitalk-14b"
) -> dict:
    import torch

    from mtlib.models.vae import CONFIGS, CausalVAE

    dev = torch.device("cuda")
    with torch.device("meta"):
        vae = CausalVAE(CONFIGS[config])
    vae.to_empty(device=dev)
    random_init_(vae)
    vae.eval().requires_grad_(False)
    g = torch.Generator("cpu").manual_seed(0)
    video = torch.zeros(1, 3, frames, height, width)
    video[:, :, :1] = torch.rand(1, 3, 1, height, width, generator=g) * 2 - 1
    video = video.to(dev)
    with torch.inference_mode():
        _timed(lambda: vae.encode(video[:, :, :5]))  # warm-up (cuDNN autotune)
        torch.cuda.reset_peak_memory_stats()
        enc_s, z = _timed(lambda: vae.encode(video))
        enc_peak = torch.cuda.max_memory_allocated() / 1e9
        torch.cuda.reset_peak_memory_stats()
        dec_s, out = _timed(lambda: vae.decode(z))
        dec_peak = torch.cuda.max_memory_allocated() / 1e9
    return {
        "frames": frames,
        "size": [height, width],
        "latent": list(z.shape),
        "encode_s": round(enc_s, 3),
        "decode_s": round(dec_s, 3),
        "encode_peak_gb": round(enc_peak, 2),
        "decode_peak_gb": round(dec_peak, 2),
        "output": list(out.shape),
    }
