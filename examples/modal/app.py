"""Modal recipe: `mtlib batch` on a cloud GPU, inputs and outputs in S3, weights in a Volume.

One-time setup (see README.md): a Modal secret `aws-s3` with AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION (and AWS_ENDPOINT_URL for an S3-compatible store).
Then the two commands:

    modal run examples/modal/app.py::download_weights            # once: ~100 GB into the Volume
    modal run examples/modal/app.py --jobs s3://bucket/jobs.yaml --out s3://bucket/outputs

`run_batch` is the job function: it takes the GPU memory knobs from the GPU the container got
(`gpu_overrides`), points the config at the weights in the Volume (`weights_overrides`), and runs
`mtlib.batch.run_batch` (what `mtlib batch` runs) with the models loaded once. The logic lives in
plain functions so that `run_batch.local(...)` runs it on any machine (the tests do, on the tiny
config against a local S3 server).
"""

from __future__ import annotations

from pathlib import Path

import modal

APP_NAME = "mtlib-batch"
WEIGHTS = "/weights"  # where the Volume is mounted
VOLUME = "mtlib-weights"
SECRET = "aws-s3"
GPUS = ["H100", "A100-80GB", "A100-40GB"]  # first available; the knobs follow the one we get
REPO = Path(__file__).resolve().parents[2]  # the mtlib checkout this file lives in

app = modal.App(APP_NAME)
weights_volume = modal.Volume.from_name(VOLUME, create_if_missing=True)
aws = modal.Secret.from_name(SECRET)
image = (
    modal.Image.debian_slim(python_version="3.11")
    # CUDA build of torch first, so that mtlib's `torch` requirement is already satisfied
    .pip_install("torch==2.11.*", index_url="https://download.pytorch.org/whl/cu128")
    .add_local_dir(
        REPO,
        "/opt/mtlib",
        copy=True,
        ignore=[".venv", ".git", "runs", ".cache", "**/__pycache__", "benchmarks/results"],
    )
    .run_commands("pip install '/opt/mtlib[s3]'")
    .env({"MTLIB_CACHE": f"{WEIGHTS}/cache"})  # wav2vec2 embedding cache survives containers
)


# ------------------------------------------------------------------------------ plain logic


def gpu_overrides(total_bytes: int | None) -> list[str]:
    """Config overrides for a GPU with `total_bytes` of memory (None: no GPU, nothing to set).

    >= 80 GB (H100, A100-80GB, H200): everything resident. Smaller (A100-40GB, L40S): the DiT's
    blocks stream from pinned host memory (`model.offload`, mtlib.accel.offload), keeping resident
    about what fits beside the other networks and the activations of a 480p clip (~30 GB),
    2 bytes per bf16 parameter.
    """
    if total_bytes is None:
        return []
    if total_bytes >= 79 * 10**9:  # an "80 GB" card reports ~79.6-85 GB
        return []
    resident = max(0, (total_bytes - 30 * 10**9) // 2)
    return ["model.offload.mode=blocks", f"model.offload.resident_params={resident}"]


def weights_overrides(config: str, root: str = WEIGHTS) -> list[str]:
    """Point the real model at the folders `mtlib setup --download --root` made in the Volume
    (the tiny config brings its own random weights)."""
    from mtlib.config import load_config

    if load_config(config).model.name == "tiny":
        return []
    return [
        f"model.weights.wan_dir={root}/Wan2.1-I2V-14B-480P",
        f"model.weights.multitalk_dir={root}/MeiGen-MultiTalk",
        f"model.weights.wav2vec_dir={root}/chinese-wav2vec2-base",
    ]


def cuda_memory() -> int | None:
    import torch

    return torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None


def batch(
    jobs: str,
    out: str,
    config: str = "multitalk-480",
    overrides: list[str] | tuple[str, ...] = (),
    force: bool = False,
    weights_root: str = WEIGHTS,
) -> dict:
    """Run the jobs file into `out` with the knobs of this machine; a JSON-able result."""
    from mtlib.batch import run_batch as mtlib_batch

    over = gpu_overrides(cuda_memory()) + weights_overrides(config, weights_root) + list(overrides)
    print(f"mtlib batch {jobs} -> {out} (config {config}, overrides {over})", flush=True)
    result = mtlib_batch(jobs, out, config=config, overrides=over, force=force, progress=True)
    return {
        "exit_code": result.exit_code,
        "rows": result.rows,
        "summary": result.summary_urls["html"],
        "overrides": over,
        "model_loads": result.model_loads,
    }


# ------------------------------------------------------------------------------ Modal functions


@app.function(image=image, volumes={WEIGHTS: weights_volume}, timeout=4 * 3600, cpu=4)
def download_weights() -> str:
    """Once: the three published checkpoints into the Volume, then verified (headers only)."""
    import subprocess

    subprocess.run(["mtlib", "setup", "--download", "--root", WEIGHTS], check=True)
    report = subprocess.run(
        ["mtlib", "setup", "--root", WEIGHTS, "--verify"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    weights_volume.commit()
    print(report)
    return report


@app.function(
    image=image, gpu=GPUS, volumes={WEIGHTS: weights_volume}, secrets=[aws], timeout=8 * 3600
)
def run_batch(
    jobs: str,
    out: str,
    config: str = "multitalk-480",
    overrides: list[str] | tuple[str, ...] = (),
    force: bool = False,
    weights_root: str = WEIGHTS,
) -> dict:
    return batch(jobs, out, config, overrides, force, weights_root)


@app.local_entrypoint()
def main(
    jobs: str, out: str, config: str = "multitalk-480", override: str = "", force: bool = False
):
    """`modal run app.py --jobs s3://... --out s3://... [--override k=v,k=v] [--force]`."""
    from mtlib.batch.summary import to_text

    res = run_batch.remote(jobs, out, config, [s for s in override.split(",") if s], force)
    print(to_text(res["rows"]))
    print(f"summary: {res['summary']} (overrides {res['overrides']})")
    if res["exit_code"]:
        raise SystemExit(res["exit_code"])
