"""Downloading the published checkpoints: a `DownloadPlan` (what is missing, its size, the disk
space it needs) and `download` (huggingface_hub, pinned revisions).
"""

from __future__ import annotations

import fnmatch
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtlib.weights.files import (
    DOWNLOAD_PATTERNS,
    FIX_DOWNLOAD,
    FOLDERS,
    OPTIONAL_PATTERNS,
    REPO_IDS,
    WAV2VEC_REPO,
    Problem,
    WeightsError,
    revisions,
)
from mtlib.weights.layout import WeightsLayout, hub_cache_dir, hub_offline, resolve_layout
from mtlib.weights.verify import _fmt_bytes

# ------------------------------------------------------------------------------------------
# Download planning and download


@dataclass(frozen=True)
class PlannedFile:
    repo_key: str  # wan | multitalk | wav2vec | wav2vec_fallback
    repo_id: str
    revision: str
    filename: str
    size: int | None  # bytes, as the hub reports
    present: bool  # already complete at the destination
    optional: bool = False
    stale: bool = False  # there, but not the size the hub reports: fetched again from scratch


@dataclass
class DownloadPlan:
    files: list[PlannedFile]
    local_dir: Path | None  # None: the hub cache
    cache_dir: Path

    @property
    def to_fetch(self) -> list[PlannedFile]:
        return [f for f in self.files if not f.present]

    @property
    def bytes_needed(self) -> int:
        return sum(f.size or 0 for f in self.to_fetch)

    @property
    def destination(self) -> Path:
        return self.local_dir if self.local_dir is not None else self.cache_dir

    def table(self) -> str:
        lines = [f"download plan -> {self.destination}"]
        for f in self.files:
            state = "have" if f.present else "again" if f.stale else "get"
            size = _fmt_bytes(f.size) if f.size is not None else "?"
            opt = "  (optional)" if f.optional else ""
            lines.append(f"  {state:<5} {f.repo_id}@{f.revision}  {f.filename}  {size}{opt}")
        lines.append(f"to download: {len(self.to_fetch)} file(s), {_fmt_bytes(self.bytes_needed)}")
        return "\n".join(lines)


def _repo_files(api, repo_id: str, revision: str, token) -> dict[str, int | None]:
    info = api.model_info(repo_id, revision=revision, files_metadata=True, token=token)
    return {s.rfilename: getattr(s, "size", None) for s in (info.siblings or [])}


def _local_state(
    repo_key: str, filename: str, size: int | None, revision: str, local_dir, cache_dir
) -> str:
    """absent | complete | stale (there with another size than the hub's: damaged).

    Interrupted downloads never sit at the final path (huggingface_hub keeps them as
    *.incomplete and resumes them), so a wrong-sized final file is damaged, not partial.
    """
    if local_dir is not None:
        p = Path(local_dir) / FOLDERS[repo_key] / filename
    else:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(
            REPO_IDS[repo_key], filename, cache_dir=str(cache_dir), revision=revision
        )
        if not isinstance(hit, str):
            return "absent"
        p = Path(hit)
    if not p.exists():
        return "absent"
    return "complete" if size is None or p.stat().st_size == size else "stale"


def plan_download(
    local_dir: str | os.PathLike | None = None,
    *,
    api=None,
    include_optional: bool = False,
    revisions_: dict[str, str] | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | None = None,
) -> DownloadPlan:
    """The files MultiTalk uses, their sizes from the hub, and which are already there.

    local_dir: download into <local_dir>/<standard folder>/ (a "root"); None: the hub cache.
    api: an object with `model_info(repo_id, revision=, files_metadata=True, token=)` (HfApi).
    wav2vec2 comes from its safetensors PR branch; when that lacks model.safetensors the
    plan falls back to pytorch_model.bin on main.
    """
    if hub_offline():
        raise WeightsError(
            "HF_HUB_OFFLINE is set: a download cannot be planned without the hub. Fix: unset "
            "HF_HUB_OFFLINE for `mtlib setup --download`, or copy the three folders here and pass "
            "--root DIR."
        )
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    token = token or os.environ.get("HF_TOKEN") or None
    revs = revisions(revisions_)
    cache = Path(cache_dir).expanduser() if cache_dir else hub_cache_dir()
    files: list[PlannedFile] = []
    for repo_key in ("wan", "multitalk", "wav2vec"):
        rev = revs[repo_key]
        listing = _repo_files(api, REPO_IDS[repo_key], rev, token)
        patterns = DOWNLOAD_PATTERNS[repo_key]
        if repo_key == "wav2vec" and "model.safetensors" not in listing:
            repo_key, rev = "wav2vec_fallback", revs["wav2vec_fallback"]
            listing = _repo_files(api, WAV2VEC_REPO, rev, token)
            patterns = DOWNLOAD_PATTERNS[repo_key]
        groups = [(patterns, False)]
        if include_optional:
            groups.append((OPTIONAL_PATTERNS.get(repo_key, ()), True))
        for pats, optional in groups:
            for pat in pats:
                hits = sorted(n for n in listing if fnmatch.fnmatchcase(n, pat))
                if not hits:
                    raise WeightsError(
                        f"{REPO_IDS[repo_key]}@{rev}: no file matches {pat!r}; the repository changed "
                        "or the revision is wrong. Fix: set MTLIB_<REPO>_REVISION to a revision that has it."
                    )
                for name in hits:
                    size = listing[name]
                    state = _local_state(repo_key, name, size, rev, local_dir, cache)
                    files.append(
                        PlannedFile(
                            repo_key, REPO_IDS[repo_key], rev, name, size,
                            state == "complete", optional, state == "stale",
                        )
                    )  # fmt: skip
    return DownloadPlan(
        files, Path(local_dir).expanduser() if local_dir is not None else None, cache
    )


def check_disk_space(plan: DownloadPlan, margin: float = 1.02, disk_usage=shutil.disk_usage) -> int:
    """Raise WeightsError before any download when the destination's free space is short.

    Returns the free bytes. The destination may not exist yet: its nearest existing parent
    tells the file system.
    """
    dest = plan.destination
    probe = dest
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = disk_usage(probe).free
    need = int(plan.bytes_needed * margin)
    if need > free:
        raise WeightsError(
            f"not enough disk space at {dest}: the download needs {_fmt_bytes(plan.bytes_needed)} "
            f"(+{(margin - 1) * 100:.0f}% margin), {_fmt_bytes(free)} are free. Fix: free space, or "
            f"download elsewhere with `{FIX_DOWNLOAD} --root DIR` (or set HF_HUB_CACHE).",
            [Problem("disk", str(dest), f"need {plan.bytes_needed} bytes, free {free}")],
        )
    return free


def download(plan: DownloadPlan, *, token: str | None = None, downloader=None) -> WeightsLayout:
    """Fetch every file of the plan that is not there yet (resumable: an interrupted
    download continues where it stopped), then return the layout. Progress bars come from
    huggingface_hub. Nothing is renamed or linked afterwards."""
    if downloader is None:
        from huggingface_hub import hf_hub_download as downloader
    token = token or os.environ.get("HF_TOKEN") or None
    check_disk_space(plan)
    for f in plan.to_fetch:
        # force_download replaces a damaged file (else the hub client would keep it)
        kwargs: dict[str, Any] = {"revision": f.revision, "token": token, "force_download": f.stale}
        if plan.local_dir is not None:
            kwargs["local_dir"] = str(plan.local_dir / FOLDERS[f.repo_key])
        else:
            kwargs["cache_dir"] = str(plan.cache_dir)
        print(
            f"downloading {f.repo_id}@{f.revision} {f.filename} ({_fmt_bytes(f.size or 0)})",
            flush=True,
        )
        downloader(f.repo_id, f.filename, **kwargs)
    if plan.local_dir is not None:
        return resolve_layout(root=plan.local_dir, revisions_=_plan_revisions(plan))
    return resolve_layout(cache_dir=plan.cache_dir, revisions_=_plan_revisions(plan))


def _plan_revisions(plan: DownloadPlan) -> dict[str, str]:
    out = {}
    for f in plan.files:
        out[f.repo_key] = f.revision
    if "wav2vec_fallback" in out:  # the fallback was taken: look for the .bin snapshot
        out["wav2vec"] = out["wav2vec_fallback"]
    return out
