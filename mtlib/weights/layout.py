"""Where the checkpoints are: `WeightsLayout` (the three published directories, found where
they are, or in the Hugging Face cache), the files a run needs, and the fix when one is missing.

The official README "links" MultiTalk into the Wan directory (renames Wan's index to
*.json_old, symlinks MultiTalk's index and multitalk.safetensors beside the shards). mtlib
does none of that: it reads the three directories where they are, writes nothing into
them, and also accepts a directory that was already linked the official way.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtlib.weights.files import (
    CLIP_FILE,
    CLIP_TOKENIZER_DIR,
    DIT_INDEX,
    DIT_INDEX_OLD,
    FIX_DOWNLOAD,
    FOLDERS,
    MULTITALK_FILE,
    REAL_DIT_SHARDS,
    REPO_IDS,
    STAND_IN_TOKENIZER_MARKER,
    T5_FILE,
    T5_TOKENIZER_DIR,
    VAE_FILE,
    WAN_FOLDER,
    Problem,
    WeightsError,
    revisions,
)

# ------------------------------------------------------------------------------------------
# Layout: where the three checkpoints are


@dataclass(frozen=True)
class WeightsLayout:
    """The three checkpoint directories. Nothing here is ever written by mtlib (except the
    tiny checkpoints, which mtlib.weights.tiny creates itself)."""

    wan_dir: Path  # Wan2.1-I2V-14B-480P: shards, VAE, T5, CLIP, tokenizer, config.json
    multitalk_dir: Path  # MeiGen-MultiTalk: multitalk.safetensors + index (= wan_dir if linked)
    wav2vec_dir: Path  # chinese-wav2vec2-base (HF layout)
    source: str = "dirs"  # dirs | root | hub-cache | tiny: how it was found (for the report)

    @property
    def linked(self) -> bool:
        """True for a Wan directory "linked" the official README's way."""
        return (self.wan_dir / MULTITALK_FILE).exists() and self.multitalk_dir == self.wan_dir

    @property
    def dit_config(self) -> Path:
        return self.wan_dir / "config.json"

    @property
    def multitalk_file(self) -> Path:
        return self.multitalk_dir / MULTITALK_FILE

    @property
    def multitalk_index(self) -> Path:
        return self.multitalk_dir / DIT_INDEX

    @property
    def wan_index(self) -> Path:
        """Wan's own shard index (renamed *.json_old in a linked directory)."""
        old = self.wan_dir / DIT_INDEX_OLD
        return old if old.exists() else self.wan_dir / DIT_INDEX

    @property
    def vae_file(self) -> Path:
        return self.wan_dir / VAE_FILE

    @property
    def clip_file(self) -> Path:
        return self.wan_dir / CLIP_FILE

    @property
    def t5_file(self) -> Path:
        return self.wan_dir / T5_FILE

    @property
    def t5_tokenizer(self) -> str:
        """The tokenizer argument for mtlib.models.t5.build_text_encoder: "stand-in" for the
        tiny checkpoints (marker file), else the umt5-xxl tokenizer directory."""
        d = self.wan_dir / T5_TOKENIZER_DIR
        return "stand-in" if (d / STAND_IN_TOKENIZER_MARKER).exists() else str(d)

    @property
    def wav2vec_weights(self) -> Path:
        st = self.wav2vec_dir / "model.safetensors"
        bin_ = self.wav2vec_dir / "pytorch_model.bin"
        return bin_ if (not st.exists() and bin_.exists()) else st

    def dit_shards(self) -> list[Path]:
        """The DiT base shards named by the index (Wan's, else MultiTalk's), in order."""
        names: set[str] = set()
        for idx in (self.wan_index, self.multitalk_index):
            if idx.exists():
                try:
                    names |= set(json.loads(idx.read_text())["weight_map"].values())
                except (ValueError, KeyError):
                    continue
        names.discard(MULTITALK_FILE)
        if not names:
            names = {
                p.name for p in self.wan_dir.glob("diffusion_pytorch_model-*-of-*.safetensors")
            }
        if not names:
            names = set(REAL_DIT_SHARDS)
        return [self.wan_dir / n for n in sorted(names)]

    def dit_files(self) -> list[Path]:
        return [*self.dit_shards(), self.multitalk_file]

    def to_dict(self) -> dict[str, str]:
        return {"wan_dir": str(self.wan_dir), "multitalk_dir": str(self.multitalk_dir),
                "wav2vec_dir": str(self.wav2vec_dir), "source": self.source}  # fmt: skip


@dataclass(frozen=True)
class RequiredFile:
    component: str  # wan | multitalk | wav2vec
    path: Path
    what: str  # one phrase for the report
    required: bool = True


def required_files(layout: WeightsLayout) -> list[RequiredFile]:
    """Every file a MultiTalk run opens (plus the optional CLIP tokenizer), by component."""
    w, m, a = layout.wan_dir, layout.multitalk_dir, layout.wav2vec_dir
    files = [RequiredFile("wan", w / "config.json", "DiT config (Wan I2V)")]
    files.append(RequiredFile("wan", layout.wan_index, "Wan shard index"))
    files += [RequiredFile("wan", p, "DiT base shard") for p in layout.dit_shards()]
    files += [
        RequiredFile("wan", w / VAE_FILE, "VAE"),
        RequiredFile("wan", w / T5_FILE, "T5 text encoder (bf16)"),
        RequiredFile("wan", w / T5_TOKENIZER_DIR, "umT5 tokenizer"),
        RequiredFile("wan", w / CLIP_FILE, "CLIP image encoder"),
        RequiredFile("wan", w / CLIP_TOKENIZER_DIR, "XLM-R tokenizer (official code only)", False),
        RequiredFile("multitalk", m / MULTITALK_FILE, "audio adapter"),
        RequiredFile("multitalk", m / DIT_INDEX, "MultiTalk shard index"),
        RequiredFile("wav2vec", a / "config.json", "wav2vec2 config"),
        RequiredFile("wav2vec", a / "preprocessor_config.json", "wav2vec2 feature extractor"),
        RequiredFile("wav2vec", layout.wav2vec_weights, "wav2vec2 weights"),
    ]
    if layout.linked:  # Wan's index was renamed; the index in wan_dir is MultiTalk's
        files = [f for f in files if not (f.component == "multitalk" and f.path.name == DIT_INDEX)]
        files.append(RequiredFile("multitalk", w / DIT_INDEX, "MultiTalk shard index (linked)"))
    return files


def missing_files(layout: WeightsLayout, include_optional: bool = False) -> list[RequiredFile]:
    out = []
    for f in required_files(layout):
        if not (f.required or include_optional):
            continue
        if f.path.name == T5_TOKENIZER_DIR.rsplit("/", 1)[-1]:
            if not _tokenizer_ok(f.path):
                out.append(f)
        elif not f.path.exists():
            out.append(f)
    return out


def _tokenizer_ok(d: Path) -> bool:
    if (d / STAND_IN_TOKENIZER_MARKER).exists():
        return True
    return (d / "tokenizer_config.json").exists() and (
        (d / "spiece.model").exists() or (d / "tokenizer.json").exists()
    )


def hub_cache_dir() -> Path:
    """The hub cache, read from the environment at call time (HF_HUB_CACHE, HF_HOME)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _cached_snapshot(
    repo_key: str, probe: str, cache_dir: Path, revs: dict[str, str]
) -> Path | None:
    """The snapshot folder of a cached repo revision holding `probe`, without network."""
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(
        REPO_IDS[repo_key], probe, cache_dir=str(cache_dir), revision=revs[repo_key]
    )
    if isinstance(hit, str):
        return Path(hit).parent  # not resolved: the snapshot folder, not the blob store
    return None


def _weights_config(config) -> Any:
    """A WeightsConfig from a RunConfig / ModelConfig / WeightsConfig / None."""
    for attr in ("model", "weights"):
        if config is not None and hasattr(config, attr) and not isinstance(config, str | Path):
            config = getattr(config, attr)
    return config


def resolve_layout(
    config=None,
    *,
    root: str | os.PathLike | None = None,
    wan_dir: str | os.PathLike | None = None,
    multitalk_dir: str | os.PathLike | None = None,
    wav2vec_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    revisions_: dict[str, str] | None = None,
    check_files: bool = True,
) -> WeightsLayout:
    """Find the three checkpoint directories, without network and without writing anything.

    Per component, the first that applies: an explicit directory (argument, else
    config.model.weights.*_dir), `<root>/<standard folder>`, else (no root given) the hub
    cache (HF_HUB_CACHE layout models--org--name/snapshots/<rev>/, revision from refs/).
    A single directory given as wan_dir that contains the three standard folders is taken
    as the root. A Wan
    directory holding multitalk.safetensors (the official "linking") serves as the
    MultiTalk directory too. With check_files, missing files raise one WeightsError that
    lists them and the command that fetches them.
    """
    wcfg = _weights_config(config)
    explicit = {
        "wan": wan_dir or getattr(wcfg, "wan_dir", None),
        "multitalk": multitalk_dir or getattr(wcfg, "multitalk_dir", None),
        "wav2vec": wav2vec_dir or getattr(wcfg, "wav2vec_dir", None),
    }
    if root is None and explicit["wan"] and not explicit["multitalk"] and not explicit["wav2vec"]:
        cand = Path(explicit["wan"]).expanduser()
        if (cand / WAN_FOLDER).is_dir():
            root, explicit["wan"] = cand, None
    revs = revisions(revisions_)
    cache = Path(cache_dir).expanduser() if cache_dir else hub_cache_dir()
    found: dict[str, Path] = {}
    sources: set[str] = set()
    for key, given in explicit.items():
        if given:
            p = Path(given).expanduser()
            if not p.is_dir():
                raise WeightsError(
                    f"weights {key}_dir {str(p)!r}: not a directory. Fix: point "
                    f"model.weights.{key}_dir at the downloaded {FOLDERS[key]} folder, or run "
                    f"`{FIX_DOWNLOAD} --root DIR`."
                )
            found[key] = p
            sources.add("dirs")
        elif root is not None and (Path(root).expanduser() / FOLDERS[key]).is_dir():
            found[key] = Path(root).expanduser() / FOLDERS[key]
            sources.add("root")
    if "multitalk" not in found and "wan" in found and (found["wan"] / MULTITALK_FILE).exists():
        found["multitalk"] = found["wan"]  # linked the official way
    probes = {"wan": [("wan", "config.json")], "multitalk": [("multitalk", MULTITALK_FILE)],
              "wav2vec": [("wav2vec", "model.safetensors"), ("wav2vec_fallback", "pytorch_model.bin"),
                          ("wav2vec_fallback", "config.json")]}  # fmt: skip
    for key, tries in probes.items():
        if key in found or root is not None:  # an explicit root is not mixed with the cache
            continue
        for repo_key, probe in tries:
            snap = _cached_snapshot(repo_key, probe, cache, revs)
            if snap is not None:
                found[key] = snap
                sources.add("hub-cache")
                break
    absent = [k for k in ("wan", "multitalk", "wav2vec") if k not in found]
    if absent:
        where = f"under {root}" if root is not None else f"in the hub cache {cache}"
        lines = [f"  {REPO_IDS[k]}  (folder {FOLDERS[k]}/)" for k in absent]
        raise WeightsError(
            "MultiTalk checkpoints not found " + where + ":\n" + "\n".join(lines)
            + f"\nFix: `{_download_command(root)}` (or set model.weights.wan_dir / multitalk_dir / "
            "wav2vec_dir to existing folders).",
            [Problem("missing", FOLDERS[k], f"{REPO_IDS[k]} not found {where}") for k in absent],
        )  # fmt: skip
    source = "root" if sources == {"root"} else "hub-cache" if sources == {"hub-cache"} else "dirs"
    layout = WeightsLayout(found["wan"], found["multitalk"], found["wav2vec"], source)
    if check_files:
        gone = missing_files(layout)
        if gone:
            raise WeightsError(
                _missing_message(gone, root), [_missing_problem(f, root) for f in gone]
            )
    return layout


def fix_command(layout: WeightsLayout) -> str:
    """The one command that repairs `layout`: re-download into its root, or rewrite the tiny set."""
    if layout.source == "tiny":
        return f"mtlib setup --tiny {layout.wan_dir.parent}"
    if layout.source == "root":
        return _download_command(layout.wan_dir.parent)
    return FIX_DOWNLOAD


def _download_command(root) -> str:
    return FIX_DOWNLOAD + (f" --root {root}" if root is not None else "")


def _missing_message(gone: list[RequiredFile], root=None) -> str:
    lines = [f"  {f.path}  ({f.what})" for f in gone]
    return (f"{len(gone)} checkpoint file(s) missing:\n" + "\n".join(lines)
            + f"\nFix: `{_download_command(root)}` fetches exactly these (downloads resume).")  # fmt: skip


def _missing_problem(f: RequiredFile, root=None) -> Problem:
    return Problem("missing", str(f.path), (
        f"missing file: {f.path} ({f.what}). Fix: `{_download_command(root)}`."))  # fmt: skip
