"""Profile one real-size DiT pass on the GPU (random bf16 weights): top CUDA kernels.

python benchmarks/profile_dit.py [--rope fp32|fp64] [--compile]
"""

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from mtlib.accel.bench import DitShape, attention_backend, dit_inputs, random_init_
from mtlib.accel.compile import compile_blocks
from mtlib.models.dit import CONFIGS, build_dit

ap = argparse.ArgumentParser()
ap.add_argument("--rope", default="fp64")
ap.add_argument("--rows", type=int, default=30)
ap.add_argument("--compile", action="store_true")
args = ap.parse_args()

cfg = CONFIGS["multitalk-14b"]
model = build_dit(cfg, device="meta", dtype=torch.bfloat16)
model.to_empty(device="cuda")
random_init_(model)
model.eval().requires_grad_(False)
if args.rope == "fp32":
    model.rope_dtype = torch.float32
if args.compile:
    compile_blocks(model)
inp = dit_inputs(cfg, DitShape(), "cuda", torch.bfloat16)


def one_pass():
    return model(
        inp["latent"],
        inp["t"],
        context=inp["context"],
        clip_fea=inp["clip_fea"],
        y=inp["y"],
        audio=inp["audio"],
        ref_target_masks=inp["ref_target_masks"],
        seq_len=inp["seq_len"],
    )


with torch.inference_mode(), attention_backend("cudnn"):
    one_pass()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        one_pass()
        torch.cuda.synchronize()
rows = sorted(prof.key_averages(), key=lambda e: -e.device_time_total)
total = sum(e.self_device_time_total for e in prof.key_averages())
print(f"total CUDA time {total / 1e6:.3f} s")
for e in rows[: args.rows]:
    print(f"{e.device_time_total / 1e3:9.1f} ms {e.count:6d}x  {e.key[:110]}")
