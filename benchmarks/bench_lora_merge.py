"""LoRA merge into the real-size bf16 DiT on a GPU: time, and mtlib's product vs the reference's.

    python benchmarks/bench_lora_merge.py [--rank 32] [--scale 1.0] [--compare-blocks 0 13 26 39]
                                          [--json $OUT/lora_merge.json]

Builds the 14B MultiTalk DiT (mtlib.models.dit CONFIGS["multitalk-14b"]) on the GPU with random
bf16 weights (mtlib.accel.bench.random_init_), writes a random rank-32 LoRA in the reference's format
over every nn.Linear of the 40 blocks (the lightx2v distillation LoRA's shape, plus the audio
cross-attention linears: a superset), with `.diff_b` bias deltas and `.alpha` scalars, as a bf16
safetensors file, then times

    check   mtlib.weights.lora.check_loras: safetensors header against the DiT's shapes (no data read)
    merge   mtlib.weights.lora.merge_checked, arithmetic "fp32": file read, LoRA cast to bf16, product in
            float32 on the GPU, W + delta rounded once to bf16 (what mtlib does)
    merge_reference_gpu   the same file with the reference's GPU arithmetic (LoRA cast to bf16,
            product and scale in bf16, added into the bf16 weights)

and, on the blocks of --compare-blocks, compares both results with the exact merge (float64 of
the same bf16 inputs): max |diff| and mean |diff| over the merged parameters, in absolute terms
and relative to max |delta|, the fraction of elements where mtlib and the reference differ,
and the fraction where each is the correctly rounded bf16 of the exact value.
Prints a summary and writes the JSON record (default $OUT/lora_merge.json).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from mtlib.accel.bench import random_init_
from mtlib.models.dit import CONFIGS, build_dit
from mtlib.weights import lora

DEVICE = "cuda"


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def make_lora(model, rank: int, seed: int) -> dict[str, torch.Tensor]:
    """Reference-format LoRA on every Linear of the blocks: down ~ N(0, 1/in), up ~
    N(0, 0.05²/rank), so std(delta) = 5% of std(W) (random_init_: N(0, 1/in))."""
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    out = {}
    for name, mod in model.blocks.named_modules():
        if not isinstance(mod, torch.nn.Linear):
            continue
        key = f"diffusion_model.blocks.{name}"
        o, i = mod.weight.shape
        down = torch.randn(rank, i, generator=g, device=DEVICE) / math.sqrt(i)
        up = torch.randn(o, rank, generator=g, device=DEVICE) * (0.05 / math.sqrt(rank))
        out[f"{key}.lora_down.weight"] = down.bfloat16().cpu()
        out[f"{key}.lora_up.weight"] = up.bfloat16().cpu()
        out[f"{key}.alpha"] = torch.tensor(float(rank), dtype=torch.bfloat16)
        if mod.bias is not None:
            out[f"{key}.diff_b"] = (
                (torch.randn(o, generator=g, device=DEVICE) * 0.01).bfloat16().cpu()
            )
    return out


def compare_block_params(model_w0: dict, tensors: dict, scale: float) -> dict:
    """mtlib's fp32 product vs the reference's bf16 GPU arithmetic vs the exact merge."""
    stats = {"params": 0, "elements": 0, "ours_max_abs": 0.0, "ref_max_abs": 0.0,
             "ours_sum_abs": 0.0, "ref_sum_abs": 0.0, "delta_max_abs": 0.0, "differ": 0,
             "ours_correctly_rounded": 0, "ref_correctly_rounded": 0, "ours_vs_ref_max_abs": 0.0}  # fmt: skip
    for param, w0 in model_w0.items():
        stem = "diffusion_model." + param.rsplit(".", 1)[0]
        if param.endswith(".weight"):
            up = tensors[f"{stem}.lora_up.weight"].to(DEVICE)
            down = tensors[f"{stem}.lora_down.weight"].to(DEVICE)
            exact_delta = (up.double() @ down.double()) * scale
            ours = (w0.float() + (up.float() @ down.float()) * scale).bfloat16()
            ref = w0 + (up @ down) * scale  # bf16 product, bf16 scale, bf16 add
        else:
            d = tensors[f"{stem}.diff_b"].to(DEVICE)
            exact_delta = d.double() * scale
            ours = (w0.float() + d.float() * scale).bfloat16()
            ref = w0 + d * scale
        exact = w0.double() + exact_delta
        rounded = exact.bfloat16()
        e_ours = (ours.double() - exact).abs()
        e_ref = (ref.double() - exact).abs()
        stats["params"] += 1
        stats["elements"] += w0.numel()
        stats["ours_max_abs"] = max(stats["ours_max_abs"], float(e_ours.max()))
        stats["ref_max_abs"] = max(stats["ref_max_abs"], float(e_ref.max()))
        stats["ours_sum_abs"] += float(e_ours.sum())
        stats["ref_sum_abs"] += float(e_ref.sum())
        stats["delta_max_abs"] = max(stats["delta_max_abs"], float(exact_delta.abs().max()))
        stats["differ"] += int((ours != ref).sum())
        stats["ours_vs_ref_max_abs"] = max(stats["ours_vs_ref_max_abs"],
                                           float((ours.double() - ref.double()).abs().max()))  # fmt: skip
        stats["ours_correctly_rounded"] += int((ours == rounded).sum())
        stats["ref_correctly_rounded"] += int((ref == rounded).sum())
    n = max(stats["elements"], 1)
    return {
        "params_compared": stats["params"],
        "elements_compared": stats["elements"],
        "delta_max_abs": stats["delta_max_abs"],
        "mtlib_fp32_product": {
            "max_abs_err_vs_exact": stats["ours_max_abs"],
            "mean_abs_err_vs_exact": stats["ours_sum_abs"] / n,
            "fraction_correctly_rounded": stats["ours_correctly_rounded"] / n,
        },
        "reference_bf16_gpu": {
            "max_abs_err_vs_exact": stats["ref_max_abs"],
            "mean_abs_err_vs_exact": stats["ref_sum_abs"] / n,
            "fraction_correctly_rounded": stats["ref_correctly_rounded"] / n,
        },
        "mtlib_vs_reference": {
            "max_abs_diff": stats["ours_vs_ref_max_abs"],
            "max_abs_diff_rel_to_max_delta": stats["ours_vs_ref_max_abs"] / max(stats["delta_max_abs"], 1e-30),
            "fraction_of_elements_differing": stats["differ"] / n,
        },
    }  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compare-blocks", type=int, nargs="*", default=[0, 13, 26, 39])
    ap.add_argument("--config", default="multitalk-14b", help="DiT size (tiny: a CPU smoke test)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json", default=os.path.join(os.environ.get("OUT", "."), "lora_merge.json"))
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    assert DEVICE == "cpu" or torch.cuda.is_available(), "needs a CUDA GPU (or --device cpu)"

    t0 = time.perf_counter()
    model = build_dit(CONFIGS[args.config], device="meta", dtype=torch.bfloat16)
    model.to_empty(device=DEVICE)
    random_init_(model, args.seed)
    model.eval().requires_grad_(False)
    sync()
    build_s = time.perf_counter() - t0

    tensors = make_lora(model, args.rank, args.seed + 1)
    tmp = Path(tempfile.mkdtemp()) / "lora_rank32.safetensors"
    save_file(tensors, str(tmp))
    file_bytes = tmp.stat().st_size
    tmp.read_bytes()  # the file in the page cache, as after a download

    compared = [
        p
        for p in model.state_dict()
        if p.startswith(tuple(f"blocks.{b}." for b in args.compare_blocks))
    ]
    spec = lora.LoraSpec(str(tmp), args.scale)

    t0 = time.perf_counter()
    (check,) = lora.check_loras([spec], {k: tuple(v.shape) for k, v in model.state_dict().items()})
    check_s = time.perf_counter() - t0
    w0 = {p: model.state_dict()[p].clone() for p in compared if p in set(check.params)}

    sync()
    t0 = time.perf_counter()
    lora.merge_checked(model, check, arithmetic="fp32")
    sync()
    merge_s = time.perf_counter() - t0
    state = model.state_dict()
    # the merged model must be what compare_block_params calls "ours"
    probe = next(iter(w0))
    stem = "diffusion_model." + probe.rsplit(".", 1)[0]
    up, down = (
        tensors[f"{stem}.lora_up.weight"].to(DEVICE),
        tensors[f"{stem}.lora_down.weight"].to(DEVICE),
    )
    assert torch.equal(
        state[probe], (w0[probe].float() + (up.float() @ down.float()) * args.scale).bfloat16()
    )

    sync()
    t0 = time.perf_counter()
    lora.merge_checked(model, check, arithmetic="reference-gpu")  # timing only (merged twice)
    sync()
    merge_ref_s = time.perf_counter() - t0

    cmp = compare_block_params(w0, tensors, args.scale)
    record = {
        "gpu": torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu",
        "torch": torch.__version__,
        "dit": f"{args.config} (random bf16 weights)",
        "lora": {
            "rank": args.rank,
            "scale": args.scale,
            "file_bytes": file_bytes,
            "tensors": len(tensors),
            "params_touched": len(check.params),
            "format": check.format,
            "alpha_ignored": len(check.ignored),
        },  # fmt: skip
        "build_model_s": round(build_s, 3),
        "check_headers_s": round(check_s, 4),
        "merge_s": round(merge_s, 3),
        "merge_reference_gpu_arithmetic_s": round(merge_ref_s, 3),
        "target_merge_s": 5.0,
        "compare_blocks": args.compare_blocks,
        "difference": cmp,
    }
    text = json.dumps(record, indent=1)
    print(text)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(text + "\n")
    print(f"merge {merge_s:.2f} s ({'under' if merge_s < 5 else 'OVER'} the 5 s target); "
          f"mtlib vs reference GPU arithmetic: max |diff| {cmp['mtlib_vs_reference']['max_abs_diff']:.3g} "
          f"({cmp['mtlib_vs_reference']['fraction_of_elements_differing']:.2%} of elements differ)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
