"""The Colab bridge on a GPU: (a) the official tiny pipeline on CUDA vs mtlib's `cuda` noise
mode, (b) the stats-level tracer's overhead on the real-size official DiT.

Needs the official code fixture and the golden set inside the repo (the device has no
../shared): copy ../shared/reference/official to .ref/official and ../shared/golden to
.ref/golden (git-ignored, carried), or pass --official / --golden. The official code's own
packages must be importable (diffusers 0.33, einops, easydict, ftfy, loguru, scipy,
scikit-image, imageio, torchvision, transformers; `reference` extra); the CUDA-only ones
(flash_attn, xformers, xfuser, optimum-quanto, decord) come from the fixture's shims.

(a) The official MultiTalkPipeline on the golden tiny weights, moved to CUDA as its
    __init__ would, traced (level full) on the streaming case e2e_stream_1p: the draws come
    from the CUDA default generator after torch.manual_seed(seed). mtlib's CudaNoise(seed)
    must give them bit for bit; mtlib's loop (golden tiny models on CUDA, fed from the trace,
    noise from CudaNoise) must match the trace within the golden e2e tolerance.
(b) The real-size official WanModel (14B, random bf16 weights) on one 480p 81-frame latent:
    one sampling step = 3 DiT forwards (cond / drop_text / uncond), untraced vs with the
    tracer's hooks recording every step point at level stats (t, latent_in, the 3
    predictions, noise_pred). Target: overhead <= 3 % of a step.

    python benchmarks/bench_reference_trace.py [--out $OUT] [--skip-a] [--skip-b] [--steps 2]
        [--tf32 default|off|both]

--tf32 (part a): "default" keeps torch's flags (cuda.matmul.allow_tf32 False, cudnn.allow_tf32
True: the VAE's and patch embedding's convolutions may run in TF32, 10-bit mantissas);
"off" sets both False on both sides (official and mtlib run in this process); "both" runs
(a) twice, default then off, and prints one line per variant: whether the decoded-level
difference (e2e.clip0.decoded, 2.2e-3 > 1e-3 on the H200 with the defaults) is TF32's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def load_official(official: Path):
    if not (official / "official_cpu").is_dir():
        raise SystemExit(
            f"official fixture not found at {official} (copy ../shared/reference/official there)"
        )
    sys.path.insert(0, str(official))
    try:
        import official_cpu
    except ImportError as e:
        raise SystemExit(
            f"the official code cannot be imported here: {e}. Install the `reference` extra's "
            "packages (diffusers 0.33.1, einops, easydict, ftfy, loguru, torchvision, ...)."
        ) from e
    return official_cpu


def to_cuda(pipe):
    """What MultiTalkPipeline.__init__ does with device_id 0 (the fixture builds it on the CPU)."""
    dev = torch.device("cuda:0")
    pipe.device = dev
    pipe.vae.model.to(dev)
    pipe.vae.mean = pipe.vae.mean.to(dev)
    pipe.vae.std = pipe.vae.std.to(dev)
    pipe.vae.scale = [pipe.vae.mean, 1.0 / pipe.vae.std]
    pipe.vae.device = dev
    pipe.clip.device = dev
    pipe.clip.model.to(dev)
    pipe.model.to(dev)
    return pipe


class tf32_flags:
    """Set torch.backends.cuda.matmul.allow_tf32 / cudnn.allow_tf32 for the block (None: leave)."""

    def __init__(self, allow: bool | None):
        self.allow = allow

    def __enter__(self):
        self.saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        if self.allow is not None:
            torch.backends.cuda.matmul.allow_tf32 = self.allow
            torch.backends.cudnn.allow_tf32 = self.allow
        return self

    def __exit__(self, *exc):
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved


def part_a(official: Path, golden: Path, work: Path) -> dict:
    from mtlib import trace
    from mtlib.inspect.compare import compare
    from mtlib.models.clip import CLIPConfig, load_clip
    from mtlib.models.dit import DiTConfig, load_dit
    from mtlib.models.vae import VAEConfig, load_vae
    from mtlib.reference import tracing
    from mtlib.reference.noise import CudaNoise
    from mtlib.run.load import DiTCall
    from mtlib.run.loop import Models, generate
    from mtlib.trace import load_trace
    from tests.golden import GoldenSet, case_settings
    from tests.official_ref import generate_kwargs, input_data

    oc = load_official(official)
    g = GoldenSet(golden)
    case = g.case("e2e_stream_1p")
    pipe = to_cuda(oc.tiny_pipeline(str(g.weights), str(work)))
    data = input_data(g, case, work)
    ref_dir = work / "official_cuda_trace"
    t0 = time.perf_counter()
    with tracing(ref_dir, level="full", overwrite=True), oc.tiny_buckets():
        video = oc.generate(pipe, data, **generate_kwargs(case))
    _sync()
    t_official = time.perf_counter() - t0
    ref = load_trace(ref_dir)
    kw = case.params["generate_kwargs"]

    # 1. the draws: mtlib's CudaNoise in the loop's order vs the official CUDA draws
    noise = CudaNoise(kw["seed"])
    draws = [d["name"] for d in case.params["random_draws_in_order"]]
    equal = {
        n: bool(torch.equal(noise.draw(n, tuple(ref.tensor(n).shape)), ref.tensor(n).cpu()))
        for n in draws
    }
    cpu_equal = bool(
        torch.equal(ref.tensor(draws[0]).cpu(), case[draws[0]])
    )  # expected False: CPU != CUDA stream

    # 2. mtlib's loop on CUDA, golden tiny networks, fed from the official trace, CudaNoise
    tc = g.tiny_configs
    dev = "cuda"
    dit = load_dit(
        g.weights / "dit",
        config=DiTConfig.from_official(tc["dit"]["tiny"], tc["dit"]["hardcoded_tiny"]),
        device=dev,
    )
    vae = load_vae(
        g.weights / "vae.safetensors", config=VAEConfig.from_official(tc["vae"]["tiny"]), device=dev
    )
    clip = load_clip(
        g.weights / "clip.safetensors",
        config=CLIPConfig.from_official(tc["clip"]["tiny"]),
        device=dev,
    )
    settings = case_settings(case)  # the golden suite's settings of this case (APG included)
    run_dir = work / "mtlib_cuda_trace"
    t0 = time.perf_counter()
    with trace.TraceWriter(run_dir, "full", overwrite=True) as w, trace.recording(w):
        generate(
            Models(dit=DiTCall(dit), vae=vae, clip=clip),
            ref.tensor("e2e.clip0.cond_image"),
            [ref.tensor("e2e.input.audio_embedding.person1")],
            ref.tensor("e2e.clip0.context"),
            ref.tensor("e2e.clip0.context_null"),
            ref.tensor("e2e.clip0.ref_target_masks"),
            settings,
            CudaNoise(kw["seed"]),
        )
    _sync()
    t_mtlib = time.perf_counter() - t0
    cmp = compare(run_dir, ref_dir, points="e2e.*")
    worst = max(cmp.compared, key=lambda r: (r.max_abs or 0) / max(1.0, r.tol or 1))
    return {
        "gpu": torch.cuda.get_device_name(0),
        "draws_bitwise_equal": equal,
        "cuda_draw_equals_cpu_golden_draw": cpu_equal,
        "official_seconds": round(t_official, 2),
        "mtlib_seconds": round(t_mtlib, 2),
        "compare": cmp.summary(),
        "passed": cmp.passed,
        "first_divergence": cmp.first_divergence,
        "largest_error": {"point": worst.name, "max_abs": worst.max_abs, "rel_l2": worst.rel_l2},
        "decoded_max_abs": {
            r.name: r.max_abs for r in cmp.compared if r.name.endswith((".decoded", ".x0"))
        },
        "video_shape": list(video.shape),
    }


def build_real_dit(official: Path, tiny: bool = False, device: str = "cuda"):
    """The official WanModel with random bf16 weights: real size, or (smoke test) the tiny one."""
    load_official(official)
    import official_cpu.build as B
    import official_cpu.configs as C
    import wan.modules.multitalk_model as mm

    if tiny:
        hc = C.DIT_HARDCODED_TINY
        consts = B.dit_constants(
            hc["img_emb_in_dim"],
            hc["audio_proj_blocks"],
            hc["audio_proj_channels"],
            C.DIT_TINY["text_dim"],
        )
    else:
        import contextlib

        consts = contextlib.nullcontext()
    kw = dict(C.DIT_TINY if tiny else C.DIT_REAL)
    kw["patch_size"] = tuple(kw["patch_size"])
    kw["window_size"] = tuple(kw["window_size"])
    old = torch.get_default_dtype()
    # bf16 like the reference's param_dtype; the CPU smoke test in float32 (the official
    # forward relies on CUDA autocast to run its float32 islands with bf16 weights)
    torch.set_default_dtype(torch.float32 if tiny else torch.bfloat16)
    try:
        with torch.device("meta"), consts:
            model = mm.WanModel(weight_init=False, **kw)
    finally:
        torch.set_default_dtype(old)
    model = model.to_empty(device=device).eval().requires_grad_(False)
    g = torch.Generator(device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                fan_in = p[0].numel()
                p.normal_(0.0, fan_in**-0.5, generator=g)
            elif name.endswith("bias"):
                p.zero_()
            elif "modulation" in name:
                p.normal_(0.0, p.shape[-1] ** -0.5, generator=g)
            else:
                p.fill_(1.0)
    if not tiny:
        # the fixture's attention computes in float32 (160 GB of scores at this size); the
        # official flash_attention casts q, k, v to bf16 and runs flash: SDPA in bf16 here
        # (batch 1, keys cut to k_lens as the official varlen call does)
        def flash_attention_bf16(q, k, v, q_lens=None, k_lens=None, dropout_p=0.0,
                                 softmax_scale=None, q_scale=None, causal=False,
                                 window_size=(-1, -1), deterministic=False,
                                 dtype=torch.bfloat16, version=None):  # fmt: skip
            out_dtype = q.dtype
            if k_lens is not None:
                k, v = k[:, : int(k_lens[0])], v[:, : int(k_lens[0])]
            q, k, v = (x.to(torch.bfloat16).transpose(1, 2) for x in (q, k, v))
            o = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=softmax_scale)
            return o.transpose(1, 2).to(out_dtype)

        mm.flash_attention = flash_attention_bf16
    model.init_freqs()  # the RoPE table was built on the meta device
    model.disable_teacache()  # sets the flag forward() reads (generate() does it per run)
    return model, kw


def part_b(official: Path, work: Path, steps: int, tiny: bool = False) -> dict:
    from mtlib.reference.tracer import _Run
    from mtlib.trace import TraceWriter

    dev = "cpu" if tiny else "cuda"
    model, kw = build_real_dit(official, tiny, dev)
    F, lat_h, lat_w = (13, 6, 8) if tiny else (81, 56, 112)  # 480p bucket 448 x 896
    T = (F - 1) // 4 + 1
    seq_len = T * lat_h * lat_w // 4
    gen = torch.Generator(dev).manual_seed(1)
    x = torch.randn(16, T, lat_h, lat_w, device=dev, generator=gen)
    t = torch.tensor([999.0], device=dev)
    text_dim, clip_dim, layers, width = (32, 80, 3, 48) if tiny else (4096, 1280, 12, 768)
    bf16 = torch.float32 if tiny else torch.bfloat16
    ctx = torch.randn(40, text_dim, device=dev, generator=gen, dtype=bf16)
    ctx_null = torch.randn(120, text_dim, device=dev, generator=gen, dtype=bf16)
    clip_fea = torch.randn(1, 257, clip_dim, device=dev, generator=gen, dtype=bf16)
    y = torch.randn(1, 20, T, lat_h, lat_w, device=dev, generator=gen, dtype=bf16)
    audio = torch.randn(1, F, 5, layers, width, device=dev, generator=gen, dtype=bf16)
    masks = torch.ones(3, lat_h, lat_w, device=dev)
    base = dict(clip_fea=clip_fea, seq_len=seq_len, y=y, ref_target_masks=masks)
    passes = [
        dict(context=[ctx], audio=audio),
        dict(context=[ctx_null], audio=audio),
        dict(context=[ctx_null], audio=torch.zeros_like(audio)[-1:]),
    ]

    def step():
        preds = [model([x], t=t, **base, **p)[0] for p in passes]
        return -(preds[2] + 5.0 * (preds[0] - preds[1]) + 4.0 * (preds[1] - preds[2]))

    class FakePipe:
        pass

    with torch.no_grad():
        step()  # warm-up (cuDNN / SDPA kernels)
        _sync()
        plain, traced, recorded = [], [], 0
        for _ in range(steps):
            _sync()
            t0 = time.perf_counter()
            step()
            _sync()
            plain.append(time.perf_counter() - t0)
            writer = TraceWriter(work / "overhead_trace", "stats", overwrite=True)
            run = _Run(
                type("T", (), {"writer": writer, "generate_code": None})(),
                FakePipe(),
                {"text_guide_scale": 5.0},
            )
            run.clip = 0
            run.calls = len(
                run.passes
            )  # steady state: not the clip's first call (no clip-level points)
            hooks = [
                model.register_forward_pre_hook(run.dit_pre, with_kwargs=True),
                model.register_forward_hook(run.dit_post, with_kwargs=True),
            ]
            _sync()
            t0 = time.perf_counter()
            noise_pred = step()
            run.rec("e2e.clip0.step1.noise_pred", noise_pred)  # what flush_step records per step
            _sync()
            traced.append(time.perf_counter() - t0)
            for h in hooks:
                h.remove()
            writer.close()
            recorded = writer.count
    p, q = statistics.median(plain), statistics.median(traced)
    return {
        "dit": {k: kw[k] for k in ("dim", "num_layers", "num_heads", "ffn_dim")},
        "tokens": seq_len,
        "step_seconds_untraced": [round(v, 4) for v in plain],
        "step_seconds_traced": [round(v, 4) for v in traced],
        "points_per_step": recorded,
        "overhead_percent": round(100 * (q - p) / p, 3),
        "target_percent": 3.0,
        "within_target": (q - p) / p <= 0.03,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--official", default=str(ROOT / ".ref" / "official"))
    ap.add_argument("--golden", default=str(ROOT / ".ref" / "golden"))
    ap.add_argument("--out", default=os.environ.get("OUT", str(ROOT / "benchmarks" / "results")))
    ap.add_argument("--steps", type=int, default=2, help="timed steps per variant in (b)")
    ap.add_argument("--skip-a", action="store_true")
    ap.add_argument("--skip-b", action="store_true")
    ap.add_argument(
        "--tf32",
        choices=["default", "off", "both"],
        default="default",
        help="part (a) with torch's TF32 flags, with both off, or both variants",
    )
    ap.add_argument(
        "--tiny-cpu", action="store_true", help="smoke test of (b) with the tiny DiT on the CPU"
    )
    args = ap.parse_args()
    if args.tiny_cpu:
        work = Path(tempfile.mkdtemp(prefix="bench_ref_"))
        print(json.dumps(part_b(Path(args.official), work, args.steps, tiny=True), indent=1))
        return 0
    if not torch.cuda.is_available():
        print("bench_reference_trace: needs a CUDA GPU", file=sys.stderr)
        return 2
    os.environ.setdefault("MTLIB_GOLDEN_DIR", args.golden)
    work = Path(tempfile.mkdtemp(prefix="bench_ref_"))
    result = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0)}
    if not args.skip_a:
        variants = {
            "default": [("default", None)],
            "off": [("tf32_off", False)],
            "both": [("default", None), ("tf32_off", False)],
        }[args.tf32]
        lines = []
        for label, allow in variants:
            (work / label).mkdir(parents=True, exist_ok=True)
            with tf32_flags(allow):
                flags = {
                    "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                    "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
                }
                a = part_a(Path(args.official), Path(args.golden), work / label)
            a["tf32_flags"] = flags
            key = "a_cuda_noise" if label == "default" else f"a_cuda_noise_{label}"
            result[key] = a
            print(json.dumps(a, indent=1, default=str), flush=True)
            lines.append(
                f"(a) tf32 {label:8s} {flags}: draws equal {all(a['draws_bitwise_equal'].values())}, "
                f"passed {a['passed']}, first divergence {a['first_divergence']}, largest "
                f"{a['largest_error']['point']} max|a-b| {a['largest_error']['max_abs']:.3g}; "
                + ", ".join(
                    f"{k} {v:.3g}" if v is not None else f"{k} -"
                    for k, v in a["decoded_max_abs"].items()
                )
            )
        print("\n".join(lines), flush=True)
    if not args.skip_b:
        result["b_tracer_overhead"] = part_b(Path(args.official), work, args.steps)
        print(json.dumps(result["b_tracer_overhead"], indent=1), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_reference_trace.json").write_text(
        json.dumps(result, indent=1, default=str) + "\n"
    )
    print(f"wrote {out / 'bench_reference_trace.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
