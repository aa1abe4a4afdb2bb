"""One downloadable file per trace: `<trace dir>.tar.gz` (written atomically), and its way
back: `resolve(path)` turns an archive given to `mtlib compare` / notebook 04 / the noise
trace into the unpacked trace directory beside it (unpacked once, re-used after)."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

from mtlib.io import InputError, atomic_path

SUFFIXES = (".tar.gz", ".tgz")


def pack(trace_dir: str | os.PathLike, archive: str | os.PathLike | None = None) -> Path:
    """trace_dir -> trace_dir.tar.gz (or `archive`); the members sit under the trace's name."""
    src = Path(trace_dir)
    dst = Path(archive) if archive is not None else src.with_name(src.name + ".tar.gz")
    with atomic_path(dst) as tmp:
        with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
            for p in sorted(src.iterdir()):
                tar.add(p, arcname=f"{src.name}/{p.name}")
    return dst


def is_archive(path: str | os.PathLike) -> bool:
    return str(path).endswith(SUFFIXES) and Path(path).is_file()


def resolve(path: str | os.PathLike) -> Path:
    """An archive -> its unpacked trace directory (beside it); anything else unchanged."""
    p = Path(path)
    if not is_archive(p):
        return p
    name = p.name[: -len(next(s for s in SUFFIXES if p.name.endswith(s)))]
    out = p.with_name(name)
    if (out / "index.jsonl").exists():
        return out
    with tarfile.open(p, "r:gz") as tar:
        members = tar.getmembers()
        bad = [
            m.name
            for m in members
            if not m.isfile()
            or m.name.split("/")[0] != name
            or ".." in m.name.split("/")
            or m.name.count("/") != 1
        ]
        if bad:
            raise InputError(
                f"trace archive {str(p)!r}: unexpected member {bad[0]!r}; a trace archive "
                f"holds only {name}/<file>. Fix: pass the archive `python -m mtlib.reference` wrote."
            )
        tmp = p.with_name(f".{name}.unpacking")
        tar.extractall(tmp, filter="data")
    os.replace(tmp / name, out)
    tmp.rmdir()
    return out
