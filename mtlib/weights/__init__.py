"""Checkpoints: download, locate and verify the published MultiTalk weights, without surprises.

Where it sits: first step of every run (notebook 00, `mtlib setup`). The loaders in
mtlib.models.* take a `WeightsLayout` from here, so by the time a network is built every
file is known to be present, complete, and of the right model.

Three published repositories make a MultiTalk checkpoint:
  Wan-AI/Wan2.1-I2V-14B-480P            DiT base shards, VAE, T5, CLIP, tokenizer, config.json
  MeiGen-AI/MeiGen-MultiTalk            multitalk.safetensors (audio adapter) + its shard index
  TencentGameMate/chinese-wav2vec2-base audio encoder (HF Wav2Vec2ForPreTraining layout)

The official README "links" MultiTalk into the Wan directory (renames Wan's index to
*.json_old, symlinks MultiTalk's index and multitalk.safetensors beside the shards). mtlib
does none of that: it reads the three directories where they are, writes nothing into
them, and also accepts a directory that was already linked the official way.

Verification never loads tensor data: safetensors headers (8-byte length + JSON) and the
pickle of `.pth` zip archives (torch's weights-only loader onto the meta device) give
every key, shape and dtype; file sizes are checked against what those headers promise.
The expected key -> shape maps come from the networks themselves (`EXPECTED`, models built
on the meta device), so a checkpoint and the code that loads it cannot silently disagree.

Files: `files.py` (repositories, revisions, file names, WeightsError), `expected.py` (key maps
from the networks), `headers.py` (safetensors / .pth headers without data), `layout.py`
(WeightsLayout, resolve_layout), `verify.py` (verify_layout), `fetch.py` (plan_download,
download), `status.py` (layout_for_config, weights_status), `tiny.py` (the tiny random
checkpoints), `datacheck.py` (`--verify --full`), `lora.py` (LoRA files merged into the DiT),
`recipes.py` + `recipe_files.py` (the distillation recipes and their files), `random.py`
(model.weights.random). `mtlib setup` is `mtlib/cli/setup.py`. The names of the first seven
files are re-exported here (`mtlib.weights.<name>`).
"""

from __future__ import annotations

from mtlib.weights.expected import (  # noqa: F401
    EXPECTED,
    NETWORKS,
    OPTIONAL_KEYS,
    WAV2VEC2_GEOMETRY,
    ExpectedMap,
    expected_digest,
    expected_map,
    expected_maps,
)
from mtlib.weights.fetch import (  # noqa: F401
    DownloadPlan,
    PlannedFile,
    check_disk_space,
    download,
    plan_download,
)
from mtlib.weights.files import (  # noqa: F401
    AUDIO_KEY_RE,
    CLIP_FILE,
    CLIP_TOKENIZER_DIR,
    DEFAULT_REVISIONS,
    DIT_INDEX,
    DIT_INDEX_OLD,
    DIT_SHARD_RE,
    DOWNLOAD_PATTERNS,
    FIX_DOWNLOAD,
    FOLDERS,
    GB,
    MULTITALK_FILE,
    MULTITALK_FOLDER,
    MULTITALK_REPO,
    OPTIONAL_PATTERNS,
    REAL_DIT_SHARDS,
    REPO_IDS,
    STAND_IN_TOKENIZER_MARKER,
    T5_FILE,
    T5_TOKENIZER_DIR,
    VAE_FILE,
    WAN_FOLDER,
    WAN_REPO,
    WAV2VEC_FILES,
    WAV2VEC_FOLDER,
    WAV2VEC_REPO,
    Problem,
    WeightsError,
    revisions,
)
from mtlib.weights.headers import (  # noqa: F401
    FLOAT_DTYPES,
    MAX_HEADER_BYTES,
    SAFETENSORS_ITEMSIZE,
    FileHeader,
    TensorInfo,
    read_header,
    read_pth_header,
    read_safetensors_header,
)
from mtlib.weights.layout import (  # noqa: F401
    RequiredFile,
    WeightsLayout,
    fix_command,
    hub_cache_dir,
    hub_offline,
    missing_files,
    required_files,
    resolve_layout,
)
from mtlib.weights.status import (  # noqa: F401
    default_tiny_dir,
    layout_for_config,
    weights_status,
)
from mtlib.weights.verify import (  # noqa: F401
    ReportRow,
    VerifyReport,
    compare_state,
    verify_layout,
)
