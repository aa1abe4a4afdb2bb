"""Speed: everything that makes the same numbers come faster or fit a smaller GPU.

`compile.py` (torch.compile of the block body, the attention kernel choice; the Triton kernels
themselves are `mtlib.kernels`, below the networks), `fp8.py` (fp8 block matmuls),
`offload.py` (block offload with a resident-parameter budget), `quant.py` (the reference's
int8 checkpoints), `options.py` (the DiT's speed options resolved once from the config),
`dit_load.py` (the DiT as a run config asks for it: precision, LoRA, quant, fp8, offload,
compile) and `bench.py` (the GPU benchmark of the real-size model). Sits above the networks
(`mtlib.models`) and the checkpoint files (`mtlib.weights`), below the run (`mtlib.run`).
"""
