"""Content digests of large files, computed once and remembered by (path, size, mtime).

Caches keyed by a weights file must change when its CONTENT changes: a re-download of
different weights of the same size (after corruption, or another revision) must miss them.
`content_digest` reads the whole file once (sha256, ~1 GB/s) and remembers the result in
`<cache>/file-digests.json` under the file's absolute path, size, mtime and inode, so the
next run pays only a stat(); rewriting the file (a download does) changes the mtime.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

CHUNK = 8 * 2**20


def digest_cache_file() -> Path:
    """$MTLIB_CACHE/file-digests.json, else <project>/.cache/file-digests.json."""
    from mtlib.io import project_root

    root = os.environ.get("MTLIB_CACHE")
    base = Path(root).expanduser() if root else project_root() / ".cache"
    return base / "file-digests.json"


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"


def content_digest(path: str | os.PathLike, remember: bool = True) -> str:
    """sha256 hex of the file's bytes (remembered per path + size + mtime + inode)."""
    p = Path(path).absolute()
    stamp = _stamp(p)
    cache_file = digest_cache_file()
    table: dict = {}
    if remember and cache_file.exists():
        try:
            table = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            table = {}
        hit = table.get(str(p))
        if isinstance(hit, dict) and hit.get("stamp") == stamp:
            return str(hit["sha256"])
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    if remember:
        from mtlib.io import atomic_write

        table[str(p)] = {"stamp": stamp, "sha256": digest}
        try:
            atomic_write(cache_file, json.dumps(table, indent=0, sort_keys=True))
        except OSError:  # a read-only cache only costs the hash next time
            pass
    return digest
