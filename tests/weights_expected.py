"""Expected state maps for the weights tests, read from the golden tiny weights' headers.

The golden weights ARE tiny-layout files of the official networks, so their keys and shapes
stand in for mtlib.weights.EXPECTED (which needs the model modules) in these tests. The
headers are read with the safetensors library itself (not mtlib's parser under test).
"""

from __future__ import annotations

from pathlib import Path

from safetensors import safe_open

GOLDEN_FILES = {
    "dit": "dit/diffusion_pytorch_model.safetensors",
    "vae": "vae.safetensors",
    "clip": "clip.safetensors",
    "t5": "t5_encoder.safetensors",
    "wav2vec2": "wav2vec2/model.safetensors",
}


def golden_expected(weights_dir: Path) -> dict[str, dict]:
    out = {}
    for net, rel in GOLDEN_FILES.items():
        with safe_open(str(weights_dir / rel), "pt") as f:
            # the published T5 file is bf16 (its name says so); the golden copy is fp32
            dtype = "BF16" if net == "t5" else None
            out[net] = {k: (tuple(f.get_slice(k).get_shape()), dtype) for k in f.keys()}
    return out
