"""Block offload streams weights per block and gives exactly the resident model's output."""

import pytest
import torch

from mtlib.accel.bench import DitShape, denoise_step, dit_inputs, random_init_
from mtlib.models.dit import CONFIGS, build_dit


def test_offload_refuses_a_cpu_device():
    from mtlib.accel.offload import enable_block_offload

    model = build_dit(CONFIGS["tiny"], device="cpu")
    with pytest.raises(
        ValueError, match="block offload streams weights to a CUDA device, got cpu."
    ):
        enable_block_offload(model, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_offload_matches_resident_on_cuda():
    from mtlib.accel.offload import enable_block_offload

    cfg = CONFIGS["tiny"]
    model = build_dit(cfg, device="cpu")
    random_init_(model)
    model.eval()
    inp = dit_inputs(cfg, DitShape(13, 48, 64), "cuda", torch.float32)
    with torch.inference_mode():
        resident = denoise_step(model.to("cuda"), inp)
        enable_block_offload(model.to("cpu"), "cuda")
        assert all(p.device.type == "cpu" and p.is_pinned() for p in model.blocks.parameters())
        streamed = denoise_step(model, inp)
        again = denoise_step(model, inp)
    assert torch.equal(resident, streamed) and torch.equal(streamed, again)
