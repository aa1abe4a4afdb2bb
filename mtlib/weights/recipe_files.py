"""`mtlib setup` for the fast path: the recipes' LoRA files and the reference's int8 checkpoints.

`find_quant_files(multitalk_dir)` recognises MeiGen's quant_models/ (optimum-quanto format,
see mtlib.accel.quant) from headers only: each checkpoint is paired with its map, the map's modules
are checked against the checkpoint's `<m>.weight._data` / `._scale` keys, and the data dtype is
named. `download_lora(recipe, root)` fetches a recipe's LoRA from the repo the README links
(mtlib.weights.recipes), or says that mtlib cannot know where it is published.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mtlib.weights.recipes import FUSIONX_QUANT_FILE, FUSIONX_QUANT_MAP, LORA_SOURCES, how_to_get

# (checkpoint, map, what) under quant_models/ (facts §1.1)
QUANT_FILES = (
    (
        "dit_model_int8.safetensors",
        "dit_model_map_int8.json",
        "DiT int8 (model.weights.quant=int8)",
    ),
    (
        FUSIONX_QUANT_FILE,
        FUSIONX_QUANT_MAP,
        "DiT int8 with FusionX merged (recipe fusionx + quant int8)",
    ),
    (
        "t5_int8.safetensors",
        "t5_map_int8.json",
        "T5 int8 (recognised; mtlib runs T5 from the bf16 file)",
    ),
)


@dataclass
class QuantFile:
    path: Path
    map_path: Path
    what: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok ' if self.ok else 'BAD'} {self.path.name}: {self.what}: {self.detail}"


def check_quant_pair(st: Path, mp: Path, what: str) -> QuantFile:
    """One int8 checkpoint + map, from the safetensors header and the JSON only."""
    from mtlib.weights import read_safetensors_header

    if not mp.is_file():
        return QuantFile(
            st, mp, what, False, f"its map {mp.name} is missing (it must sit next to it)"
        )
    try:
        qmap = json.loads(mp.read_text())
    except ValueError as e:
        return QuantFile(st, mp, what, False, f"{mp.name} is not valid JSON ({e}); re-download it")
    head = read_safetensors_header(st)
    if head.problem is not None:
        return QuantFile(st, mp, what, False, head.problem.message)
    quantised = [m for m, q in qmap.items() if q.get("weights", "none") != "none"]
    missing = [
        m
        for m in quantised
        if f"{m}.weight._data" not in head.tensors or f"{m}.weight._scale" not in head.tensors
    ]
    if missing:
        return QuantFile(st, mp, what, False, f"{len(missing)} modules of the map have no _data/_scale in the "
                         f"file (e.g. {missing[0]}): map and checkpoint do not belong together")  # fmt: skip
    dtypes = sorted({head.tensors[f"{m}.weight._data"].dtype for m in quantised})
    acts = sorted({q.get("activations", "none") for q in qmap.values()})
    return QuantFile(st, mp, what, True, f"{len(quantised)} quantised linears ({', '.join(dtypes)} data, "
                     f"activations {', '.join(acts)}), {head.file_bytes / 1e9:.1f} GB")  # fmt: skip


def find_quant_files(multitalk_dir: str | Path | None) -> list[QuantFile]:
    if multitalk_dir is None:
        return []
    root = Path(multitalk_dir)
    d = root / "quant_models" if (root / "quant_models").is_dir() else root
    return [
        check_quant_pair(d / st, d / mp, what) for st, mp, what in QUANT_FILES if (d / st).is_file()
    ]


def download_lora(recipe: str, root: str | Path | None) -> Path:
    """The recipe's LoRA file, downloaded from its hub repo into `root` (or the hub cache)."""
    src = LORA_SOURCES.get(recipe)
    if src is None or src.repo_id is None:
        raise ValueError(f"{how_to_get(recipe)}.")
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(src.repo_id, src.filename, local_dir=str(root) if root else None))
