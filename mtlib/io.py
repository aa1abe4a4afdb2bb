"""Reading local / https:// / s3:// files, and atomic writes.

Every artefact mtlib writes goes through `atomic_write` (or `atomic_path`): the bytes land
in a temporary file beside the target and are renamed over it only when complete, so a
crash never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

REMOTE_PREFIXES = ("http://", "https://", "s3://", "gs://", "hf://")


class InputError(ValueError):
    """A user input (file, URL, value) that mtlib refuses, with the rule and the fix."""


def is_remote(path: str | os.PathLike) -> bool:
    return str(path).startswith(REMOTE_PREFIXES)


def project_root() -> Path:
    """The source checkout holding this package (where configs/ and data/ live), else cwd."""
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").exists():
        return here
    return Path.cwd()


def resolve_local(path: str | os.PathLike) -> Path:
    """A local path as given if it exists, else relative to the project root (so notebooks,
    which run from notebooks/, and the CLI, which runs anywhere, agree on `data/x.wav`)."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    alt = project_root() / p
    return alt if alt.exists() else p


def read_bytes(path: str | os.PathLike, what: str = "input") -> bytes:
    """All bytes of a local path or URL (fsspec), with one clear error if unreadable."""
    src = str(path)
    if is_remote(src):
        try:
            import fsspec

            with fsspec.open(src, "rb") as f:
                return f.read()
        except Exception as e:  # network, auth, missing s3fs, 404 ...
            raise InputError(
                f"{what} {src!r}: cannot be read ({type(e).__name__}: {e}). "
                "Fix: check the URL and your network / credentials, or download the file and "
                "pass a local path."
            ) from None
    p = resolve_local(src)
    if not p.exists():
        raise InputError(f"{what} {src!r}: file not found. Fix: pass an existing path.")
    if p.is_dir():
        raise InputError(f"{what} {src!r}: is a directory, not a file.")
    return p.read_bytes()


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it over `target` on success only."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = target.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".tmp{suffix}", dir=target.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; artefacts get the usual permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write(target: str | os.PathLike, data: bytes | str) -> Path:
    """Write bytes or text to `target` atomically; returns the target path."""
    with atomic_path(target) as tmp:
        if isinstance(data, str):
            tmp.write_text(data)
        else:
            tmp.write_bytes(data)
    return Path(target)
