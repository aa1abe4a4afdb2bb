"""Run by tests/test_kernels.py in a subprocess with TRITON_INTERPRET=1 (Triton's CPU
interpreter must be switched on before Triton compiles anything): checks mtlib's flash
attention kernel against float64 math and inside the tiny DiT, prints one JSON line."""

import dataclasses
import json
import sys

import torch
import torch.nn.functional as F

from mtlib.accel.bench import DitShape, denoise_step, dit_inputs, random_init_
from mtlib.accel.compile import set_attention_kernel
from mtlib.kernels import attention as fa
from mtlib.models.dit import CONFIGS, build_dit


def exact(q, k, v):  # [B, L, H, d] float64 reference
    return F.scaled_dot_product_attention(
        *(t.double().transpose(1, 2) for t in (q, k, v))
    ).transpose(1, 2)


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


g = torch.Generator().manual_seed(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
out = {"kernel": [], "fp8": [], "dit": {}}
# shapes with partial query and key tiles (the interpreter runs 32 x 32 tiles), two batches,
# unequal query and key lengths, head dims 16..64
for B, Lq, Lk, H, d in [(1, 70, 70, 2, 32), (2, 33, 150, 3, 32), (1, 96, 64, 1, 64)]:
    q, k, v = (torch.randn(B, L, H, d, generator=g) for L in (Lq, Lk, Lk))
    ref = exact(q, k, v)
    o32 = fa._flash_bf16(q, k, v)  # the bf16 op computes in its inputs' dtype
    o16 = fa._flash_bf16(q.half(), k.half(), v.half())
    if d == 32:  # a head dim the bf16 kernel takes and fp8 does not
        o16_d16 = fa._flash_bf16(*(t[..., :16].half() for t in (q, k, v)))
        out.setdefault("d16", rel(o16_d16, exact(*(t[..., :16] for t in (q, k, v)))))
    o8 = fa.attention(q, k, v, "fp8")
    out["kernel"].append(
        {
            "shape": [B, Lq, Lk, H, d],
            "fp32": rel(o32, ref),
            "fp16": rel(o16, ref),
            "out_shape": list(o32.shape),
            "out_dtype": str(o32.dtype),
        }
    )
    out["fp8"].append(
        {
            "shape": [B, Lq, Lk, H, d],
            "rel": rel(o8, ref),
            "dtype": str(o8.dtype),
            "finite": bool(torch.isfinite(o8).all()),
        }
    )
    # k centring is invisible to softmax: shifting every key by one vector changes nothing
    shift = torch.randn(1, 1, H, d, generator=g) * 3
    out["fp8"][-1]["shift_invariant"] = rel(fa.attention(q, k + shift, v, "fp8"), o8)

# the TMA kernel's variants (pipelined q k^T, p @ v split over the channels) against the pointer
# kernel: the same arithmetic, so the same numbers (the GPU autotuner may pick any of them)
from mtlib.kernels import fp8_attention as f8  # noqa: E402

q, k, v = (torch.randn(2, L, 3, 32, generator=g) for L in (33, 150, 150))
ins = fa.quantize_fp8(q, k, v)
pointer = torch.empty(q.shape, dtype=torch.bfloat16)
fa._launch(*ins[:3], pointer, *ins[3:], v_transposed=True, fp8=True)
out["tma_variants_vs_pointer"] = [
    rel(
        f8.launch(*ins, config={"BLOCK_M": 32, "BLOCK_N": 32, "PIPELINE": p, "SPLIT_D": sd}),
        pointer,
    )
    for p in (0, 1)
    for sd in (0, 1)
]

# compiled (the custom op inside a torch.compile graph, as in compile_blocks) == eager
q, k, v = (torch.randn(1, 50, 2, 32, generator=g) for _ in range(3))
compiled = torch.compile(lambda a, b, c: fa.attention(a, b, c, "fp8"), fullgraph=True)
out["compiled_equal"] = bool(torch.equal(compiled(q, k, v), fa.attention(q, k, v, "fp8")))

# the tiny DiT with 2 heads of 32 (fp8 products need a head dim >= 32): one guidance step with
# the Triton self-attention == the SDPA one (fp32)
cfg = dataclasses.replace(CONFIGS["tiny"], num_heads=2)
torch.manual_seed(0)
model = build_dit(cfg, device="cpu")
random_init_(model)
model.eval()
inp = dit_inputs(cfg, DitShape(9, 48, 64), "cpu", torch.float32)
with torch.inference_mode():
    sdpa = denoise_step(model, inp)
    set_attention_kernel(model, "triton")
    tri = denoise_step(model, inp)
    set_attention_kernel(model, "triton-fp8")
    tri8 = denoise_step(model, inp)
out["dit"] = {
    "triton_vs_sdpa": rel(tri, sdpa),
    "fp8_vs_sdpa": rel(tri8, sdpa),
    "kernels": sorted({b.self_attn.kernel for b in model.blocks}),
}
print("RESULT " + json.dumps(out))
