"""The published repositories, their pinned revisions and file names; `WeightsError`, `Problem`."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

# ------------------------------------------------------------------------------------------
# Repositories, revisions, file names

WAN_REPO = "Wan-AI/Wan2.1-I2V-14B-480P"
MULTITALK_REPO = "MeiGen-AI/MeiGen-MultiTalk"
WAV2VEC_REPO = "TencentGameMate/chinese-wav2vec2-base"

# Standard folder names (the official README's download targets); a "root" holds all three.
WAN_FOLDER = "Wan2.1-I2V-14B-480P"
MULTITALK_FOLDER = "MeiGen-MultiTalk"
WAV2VEC_FOLDER = "chinese-wav2vec2-base"

# Pinned revisions. The commit hashes cannot be looked up offline, so these are the branch
# names the official README downloads ("main"; wav2vec2's safetensors conversion lives on
# the PR branch "refs/pr/1"). Pin a commit by setting the environment variables below (or
# passing `revisions=`); a 40-hex commit makes downloads and cache lookups reproducible.
DEFAULT_REVISIONS: dict[str, str] = {
    "wan": "main",  # MTLIB_WAN_REVISION
    "multitalk": "main",  # MTLIB_MULTITALK_REVISION
    "wav2vec": "refs/pr/1",  # MTLIB_WAV2VEC_REVISION: has model.safetensors
    "wav2vec_fallback": "main",  # MTLIB_WAV2VEC_FALLBACK_REVISION: pytorch_model.bin only
}

DIT_INDEX = "diffusion_pytorch_model.safetensors.index.json"
DIT_INDEX_OLD = DIT_INDEX + "_old"  # Wan's own index after the official "linking"
DIT_SHARD_RE = re.compile(r"^diffusion_pytorch_model-(\d{5})-of-(\d{5})\.safetensors$")
REAL_DIT_SHARDS = tuple(
    f"diffusion_pytorch_model-{i:05d}-of-00007.safetensors" for i in range(1, 8)
)
MULTITALK_FILE = "multitalk.safetensors"
VAE_FILE = "Wan2.1_VAE.pth"
CLIP_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
T5_TOKENIZER_DIR = "google/umt5-xxl"
CLIP_TOKENIZER_DIR = "xlm-roberta-large"
# Written by mtlib.weights.tiny into google/umt5-xxl/: the real umT5 tokenizer cannot be
# shipped with random weights, so the text encoder uses mtlib.models.t5.StandInTokenizer.
STAND_IN_TOKENIZER_MARKER = "mtlib-stand-in-tokenizer.json"
WAV2VEC_FILES = ("config.json", "preprocessor_config.json")

# Files fetched per repository (globs over the repo's file list).
DOWNLOAD_PATTERNS: dict[str, tuple[str, ...]] = {
    "wan": ("config.json", DIT_INDEX, "diffusion_pytorch_model-*-of-00007.safetensors", T5_FILE,
            f"{T5_TOKENIZER_DIR}/*", CLIP_FILE, VAE_FILE),
    "multitalk": (MULTITALK_FILE, DIT_INDEX),
    "wav2vec": ("config.json", "preprocessor_config.json", "model.safetensors"),
    "wav2vec_fallback": ("config.json", "preprocessor_config.json", "pytorch_model.bin"),
}  # fmt: skip
# Only the official code needs it (its CLIP wrapper builds the XLM-R tokenizer in __init__
# although I2V never tokenizes text for CLIP); mtlib runs the visual tower only.
OPTIONAL_PATTERNS: dict[str, tuple[str, ...]] = {"wan": (f"{CLIP_TOKENIZER_DIR}/*",)}
REPO_IDS = {"wan": WAN_REPO, "multitalk": MULTITALK_REPO, "wav2vec": WAV2VEC_REPO,
            "wav2vec_fallback": WAV2VEC_REPO}  # fmt: skip
FOLDERS = {"wan": WAN_FOLDER, "multitalk": MULTITALK_FOLDER, "wav2vec": WAV2VEC_FOLDER,
           "wav2vec_fallback": WAV2VEC_FOLDER}  # fmt: skip

AUDIO_KEY_RE = re.compile(r"^(audio_proj\.|blocks\.\d+\.(audio_cross_attn|norm_x)\.)")
FIX_DOWNLOAD = "mtlib setup --download"
GB = 1e9


def revisions(overrides: dict[str, str] | None = None) -> dict[str, str]:
    """The revision per repository: DEFAULT_REVISIONS, then MTLIB_<KEY>_REVISION, then overrides."""
    out = {}
    for key, default in DEFAULT_REVISIONS.items():
        out[key] = os.environ.get(f"MTLIB_{key.upper()}_REVISION", default)
    out.update(overrides or {})
    return out


class WeightsError(ValueError):
    """A checkpoint problem: names the file, what is wrong, and the fix. `.problems` holds all."""

    def __init__(self, message: str, problems: list[Problem] | None = None):
        super().__init__(message)
        self.problems = problems or []


@dataclass(frozen=True)
class Problem:
    kind: str  # missing | truncated | corrupt | wrong_model | shape | keys | dtype | config | index
    file: str  # the file (or directory) concerned
    message: str  # one self-contained sentence or two: what, expected vs actual, fix
