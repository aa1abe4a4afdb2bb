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


class ConfigError(ValueError):
    """A config value that mtlib refuses: names the key path, the rule and the value.

    Defined here (the bottom layer) so the models and weights can raise it without importing
    `mtlib.config`; `mtlib.config.ConfigError` is the same class."""


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
    return local_file(src, what).read_bytes()


def local_file(src: str | os.PathLike, what: str = "") -> Path:
    """The existing local file `src` names (resolve_local), else one InputError naming it
    (`what`, e.g. "input", prefixes the message when given)."""
    p = resolve_local(src)
    label = f"{what} {str(src)!r}" if what else repr(str(src))
    if not p.exists():
        raise InputError(f"{label}: file not found. Fix: pass an existing path.")
    if p.is_dir():
        raise InputError(f"{label}: is a directory, not a file.")
    return p


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


def _write_data(path: Path, data: bytes | str) -> None:
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)


def atomic_write(target: str | os.PathLike, data: bytes | str) -> Path:
    """Write bytes or text to `target` atomically; returns the target path."""
    with atomic_path(target) as tmp:
        _write_data(tmp, data)
    return Path(target)


# ---------------------------------------------------------------------------------------
# Output URLs: one primitive for every artefact that may go to a local path or to fsspec


class OutputError(InputError):
    """An output location mtlib refuses before any compute (remote directory, bad scheme ...)."""


def _fs_and_path(url: str, what: str = "output"):
    """(fsspec filesystem, path inside it) for a remote output URL; OutputError when the
    scheme's fsspec driver is not installed (e.g. s3:// without s3fs)."""
    try:
        import fsspec

        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:
        raise OutputError(
            f"{what} {url!r}: cannot write there ({type(e).__name__}: {e}). Fix: install the "
            "filesystem's fsspec driver (s3://: pip install s3fs) or write to a local path."
        ) from None


def is_output_url(path: str | os.PathLike) -> bool:
    """A `scheme://` output (s3://, gs://, memory:// ...): written through fsspec."""
    s = str(path)
    return "://" in s and not s.startswith("file://")


@contextlib.contextmanager
def open_output(url: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a LOCAL temporary path to write one artefact into; on success it becomes `url`.

    Complete object or none:
    - local path: a temporary file beside the target, renamed over it (`atomic_path`);
    - `scheme://` URL (fsspec): the file is written locally first, uploaded to a temporary key
      published by `publish_file` (one upload on object stores, a temporary key moved into
      place elsewhere); the local file (and any temporary key) is removed on any failure.
    """
    s = str(url)
    if not is_output_url(s):
        with atomic_path(s[len("file://") :] if s.startswith("file://") else s, suffix) as tmp:
            yield tmp
        return
    fs, rpath = _fs_and_path(s)
    name = rpath.rstrip("/").rsplit("/", 1)[-1]
    suffix = Path(name).suffix if suffix is None else suffix
    fd, local = tempfile.mkstemp(prefix=".mtlib-upload.", suffix=suffix)
    os.close(fd)
    local_path = Path(local)
    try:
        yield local_path
        try:
            publish_file(fs, local_path, rpath)
        except Exception as e:
            raise OutputError(
                f"output {s!r}: upload failed ({type(e).__name__}: {e}); nothing was written "
                "there. Fix: check the bucket / credentials, or write to a local path."
            ) from None
    finally:
        local_path.unlink(missing_ok=True)


# Object stores make an object visible only once its upload completes (one PUT, or a multipart
# upload's completion), so a reader sees the old object or the whole new one: no temporary key.
_ATOMIC_PUT = {"s3", "s3a", "gs", "gcs", "az", "abfs", "memory"}


def publish_file(fs, local: str | os.PathLike, rpath: str) -> None:
    """Upload the complete local file `local` to `rpath` on the fsspec filesystem `fs` so that
    `rpath` appears whole or not at all; the one remote write path of mtlib (mtlib.io outputs and
    the batch runner's storage both use it). Errors propagate unchanged: callers word them.

    Object stores: one upload. Other filesystems: upload to `<dir>/.<name>.<random>.tmp`, then
    move onto `rpath`; the temporary key is removed on failure."""
    import uuid

    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    name = rpath.rstrip("/").rsplit("/", 1)[-1]
    parent = rpath.rstrip("/")[: -len(name)].rstrip("/")
    if protocols & _ATOMIC_PUT:
        fs.put_file(str(local), rpath)
        return
    tmp_key = f"{parent}/.{name}.{uuid.uuid4().hex[:12]}.tmp" if parent else f".{name}.tmp"
    try:
        if parent:
            fs.makedirs(parent, exist_ok=True)
        fs.put_file(str(local), tmp_key)
        fs.mv(tmp_key, rpath)
    finally:
        with contextlib.suppress(Exception):
            if fs.exists(tmp_key):
                fs.rm(tmp_key)


def atomic_write_url(url: str | os.PathLike, data: bytes | str) -> str:
    """Write bytes or text to a local path or fsspec URL, complete or not at all (open_output)."""
    with open_output(url) as tmp:
        _write_data(tmp, data)
    return str(url)
