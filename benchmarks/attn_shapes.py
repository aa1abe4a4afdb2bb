"""Time the DiT's attention calls at the real 480p shapes on the GPU, per SDPA backend, against
an explicit matmul-softmax-matmul for the short-key ones; and the FFN with its GELU fused into
the cuBLASLt epilogue against separate kernels.

    python benchmarks/attn_shapes.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

L, H, D, T, S = 32928, 40, 128, 21, 1568
dev, dt = "cuda", torch.bfloat16


def timed(fn, reps=20) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(True), torch.cuda.Event(True)
    a.record()
    for _ in range(reps):
        fn()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / reps


def manual(q, k, v):
    w = torch.softmax((q @ k.transpose(-1, -2)).float() * D**-0.5, dim=-1).to(q.dtype)
    return w @ v


def main() -> None:
    g = torch.Generator(dev).manual_seed(0)

    def r(*s):
        return torch.randn(*s, device=dev, dtype=dt, generator=g)

    cases = {
        "self (L x L)": (r(1, H, L, D), r(1, H, L, D), r(1, H, L, D)),
        "text (L x 512)": (r(1, H, L, D), r(1, H, 512, D), r(1, H, 512, D)),
        "image (L x 257)": (r(1, H, L, D), r(1, H, 257, D), r(1, H, 257, D)),
        "audio (T x S x 32)": (r(T, H, S, D), r(T, H, 32, D), r(T, H, 32, D)),
        "ref map (L x S)": (r(1, H, L, D), r(1, H, S, D), r(1, H, S, D)),
    }
    backends = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION}  # fmt: skip
    with torch.inference_mode():
        for name, (q, k, v) in cases.items():
            row = []
            for bname, b in backends.items():
                try:
                    with sdpa_kernel([b]):
                        row.append(
                            f"{bname} {timed(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v)):7.3f} ms"
                        )
                except RuntimeError:
                    row.append(f"{bname}     n/a")
            if k.shape[2] <= 512:
                ref = F.scaled_dot_product_attention(q, k, v)
                err = (manual(q, k, v).float() - ref.float()).abs().max().item()
                row.append(
                    f"matmul {timed(lambda q=q, k=k, v=v: manual(q, k, v)):7.3f} ms (max diff {err:.1e})"
                )
                cm = torch.compile(manual)
                row.append(
                    f"compiled matmul {timed(lambda q=q, k=k, v=v, cm=cm: cm(q, k, v)):7.3f} ms"
                )
            print(f"{name:<20}", " | ".join(row), flush=True)

        x = r(L, 5120)
        w1, b1 = r(13824, 5120) * 0.01, r(13824)
        w2, b2 = r(5120, 13824) * 0.01, r(5120)

        def ffn_plain():
            return F.linear(F.gelu(F.linear(x, w1, b1), approximate="tanh"), w2, b2)

        def ffn_epilogue():
            return F.linear(torch._addmm_activation(b1, x, w1.t(), use_gelu=True), w2, b2)

        d = (ffn_plain().float() - ffn_epilogue().float()).abs().max().item()
        print(
            f"FFN plain {timed(ffn_plain):.3f} ms | GELU in the cuBLASLt epilogue "
            f"{timed(ffn_epilogue):.3f} ms (max diff {d:.1e})"
        )
        cp = torch.compile(ffn_plain)
        print(f"FFN compiled {timed(cp):.3f} ms")


if __name__ == "__main__":
    main()
