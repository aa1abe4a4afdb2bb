"""Where a batch reads its inputs and writes its outputs: local paths, https:// and s3:// URLs.

Reading: `read_bytes(url)` returns the whole object (inputs are small: an image, a few seconds of
speech). Writing: `put_file(local, url)` / `put_bytes(data, url)` make the target appear complete
or not at all:

- local targets: a temporary file beside the target, renamed over it (`mtlib.io.atomic_path`);
- s3:// targets: the file is complete on the local disk first and goes up in ONE PutObject
  request (files below 100 MB; S3 stores an object only when the whole body arrived and matched
  its length), larger ones as a multipart upload, which S3 only materialises on its final
  CompleteMultipartUpload (s3fs aborts it on errors). An interrupted upload (Ctrl-C, a killed
  container) therefore never leaves a partial object under the target key.

S3 credentials and endpoint come from the standard AWS sources, read by botocore:
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_PROFILE and ~/.aws/*,
instance roles, AWS_DEFAULT_REGION, and AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3) for
S3-compatible stores (MinIO, R2, Ceph, moto). Every failure becomes one `StorageError` naming the
URL, the cause (missing object, missing bucket, access denied, unreachable endpoint, no
credentials) and the fix.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from mtlib.io import InputError, atomic_path, is_remote, publish_file, resolve_local

SINGLE_PUT_BYTES = 100 * 2**20  # s3fs uploads below 2 x its 50 MB chunk in one PutObject


NOT_AN_OUTPUT = (
    "only local paths and s3:// URLs can be batch outputs. Fix: a local folder or an s3:// prefix."
)


class StorageError(InputError):
    """An input or output URL that cannot be read or written: names the URL, cause and fix."""


def is_s3(url: str) -> bool:
    return str(url).startswith("s3://")


def join(base: str, *parts: str) -> str:
    """`base`/`part`/... for a local path or a URL (no normalisation of the base)."""
    out = str(base)
    for p in parts:
        out = out.rstrip("/") + "/" + str(p).lstrip("/")
    return out


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def endpoint() -> str:
    """The S3 endpoint botocore will use (for messages)."""
    ep = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return ep or "the AWS default endpoint"


# ------------------------------------------------------------------------------ S3


_AWS_VARS = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
    "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
    "AWS_MAX_ATTEMPTS", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
)  # fmt: skip
_FS: dict[tuple, object] = {}


def s3_filesystem():
    """An s3fs filesystem from the standard AWS configuration, without a listing cache (a
    batch must see what is on the store now); one per distinct set of AWS_* variables."""
    try:
        import s3fs
    except ImportError:
        raise StorageError(
            "s3:// URLs need the s3fs package. Fix: pip install 'mtlib[s3]' (or pip install s3fs)."
        ) from None
    key = tuple(os.environ.get(k) for k in _AWS_VARS)
    if key not in _FS:
        _FS.clear()
        _FS[key] = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)
    return _FS[key]


def _split(url: str) -> tuple[str, str]:
    rest = url[len("s3://") :]
    bucket, _, key = rest.partition("/")
    return bucket, key


def _bucket_exists(fs, bucket: str) -> bool | None:
    try:
        fs.call_s3("head_bucket", Bucket=bucket)
        return True
    except FileNotFoundError:
        return False
    except Exception:  # denied / unreachable: unknown
        return None


def s3_error(url: str, exc: BaseException, action: str, fs=None) -> StorageError:
    """One StorageError for what went wrong with `action` ("read", "write", ...) on `url`."""
    bucket, key = _split(url)
    name, text = type(exc).__name__, str(exc)
    creds = "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
    if isinstance(exc, FileNotFoundError):
        missing_bucket = "bucket does not exist" in text or "NoSuchBucket" in text
        if not missing_bucket and fs is not None:
            missing_bucket = _bucket_exists(fs, bucket) is False
        if missing_bucket or not key:
            return StorageError(
                f"{url}: cannot {action}: the bucket {bucket!r} does not exist at "
                f"{endpoint()} (NoSuchBucket). Fix: create the bucket, or correct the bucket "
                "name / AWS_ENDPOINT_URL."
            )
        return StorageError(
            f"{url}: cannot {action}: no object with the key {key!r} in the bucket {bucket!r} "
            "(NoSuchKey). Fix: upload it, or correct the key (keys are case-sensitive)."
        )
    if isinstance(exc, PermissionError) or "AccessDenied" in text or "Forbidden" in text:
        return StorageError(
            f"{url}: cannot {action}: access denied (403) for the credentials in use. Fix: "
            f"grant s3:GetObject / s3:PutObject on the bucket {bucket!r} to them, or use "
            f"other credentials ({creds})."
        )
    if name in ("NoCredentialsError", "PartialCredentialsError") or "credentials" in text.lower():
        return StorageError(
            f"{url}: cannot {action}: no AWS credentials were found ({name}). Fix: set {creds}, "
            "or run where an instance role provides them."
        )
    if (
        "EndpointConnectionError" in name
        or "ConnectTimeout" in name
        or "ClientConnector" in name
        or "Could not connect" in text
        or isinstance(exc, ConnectionError)
    ):
        return StorageError(
            f"{url}: cannot {action}: the S3 endpoint {endpoint()} cannot be reached ({name}: "
            f"{text}). Fix: check AWS_ENDPOINT_URL (S3-compatible stores) and the network."
        )
    return StorageError(
        f"{url}: cannot {action} ({name}: {text}). Fix: check the URL, AWS_ENDPOINT_URL and "
        "the credentials."
    )


# ------------------------------------------------------------------------------ reading


def read_bytes(url: str, what: str = "input") -> bytes:
    """All bytes of a local path, https:// or s3:// URL; StorageError (an InputError) if not."""
    url = str(url)
    if is_s3(url):
        fs = s3_filesystem()
        try:
            return fs.cat_file(url)
        except Exception as e:
            raise s3_error(url, e, f"read the {what}", fs) from None
    if url.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(url, timeout=60) as r:
                return r.read()
        except urllib.error.HTTPError as e:
            cause = {404: "not found (404)", 403: "access denied (403)"}.get(
                e.code, f"HTTP {e.code}"
            )
            raise StorageError(
                f"{url}: cannot read the {what}: {cause}. Fix: check the URL."
            ) from None
        except Exception as e:
            raise StorageError(
                f"{url}: cannot read the {what}: the server cannot be reached "
                f"({type(e).__name__}: {e}). Fix: check the URL and the network."
            ) from None
    if is_remote(url):
        from mtlib.io import read_bytes as io_read

        return io_read(url, what=what)
    p = resolve_local(url)
    if not p.is_file():
        why = "is a directory" if p.is_dir() else "file not found"
        raise StorageError(f"{url}: cannot read the {what}: {why}. Fix: pass an existing file.")
    return p.read_bytes()


def exists(url: str) -> bool:
    """Whether an object / file is at `url` (errors other than 'missing' raise)."""
    if is_s3(url):
        fs = s3_filesystem()
        try:
            fs.info(url)
            return True
        except FileNotFoundError:
            return False
        except Exception as e:
            raise s3_error(url, e, "look up", fs) from None
    if is_remote(url):
        raise StorageError(f"{url}: {NOT_AN_OUTPUT}")
    return Path(url).is_file()


# ------------------------------------------------------------------------------ writing


def put_file(local: str | os.PathLike, url: str) -> str:
    """Copy a complete local file to `url` so that the target appears whole or not at all."""
    url = str(url)
    if is_s3(url):
        fs = s3_filesystem()
        try:
            publish_file(fs, local, url)  # mtlib's one remote write path (a single upload on S3)
        except Exception as e:
            raise s3_error(url, e, "write", fs) from None
        return url
    if is_remote(url):
        raise StorageError(f"{url}: {NOT_AN_OUTPUT}")
    with atomic_path(url) as tmp:
        shutil.copyfile(local, tmp)
    return url


def put_bytes(data: bytes | str, url: str) -> str:
    """Write `data` to `url` in one piece (one PutObject / a renamed temporary file)."""
    if isinstance(data, str):
        data = data.encode()
    url = str(url)
    if is_s3(url):  # through the same upload as put_file (one write path)
        import tempfile

        with tempfile.TemporaryDirectory(prefix="mtlib-put-") as d:
            local = Path(d) / "data"
            local.write_bytes(data)
            return put_file(local, url)
    if is_remote(url):
        raise StorageError(f"{url}: {NOT_AN_OUTPUT}")
    with atomic_path(url) as tmp:
        tmp.write_bytes(data)
    return url


def put_tree(local_dir: str | os.PathLike, url: str) -> list[str]:
    """Every file under `local_dir` to `url`/<relative path>, each one atomically."""
    local_dir = Path(local_dir)
    done = []
    for p in sorted(q for q in local_dir.rglob("*") if q.is_file()):
        done.append(put_file(p, join(url, p.relative_to(local_dir).as_posix())))
    return done


def remove(url: str) -> None:
    """Delete the object / file at `url` if it is there."""
    if is_s3(url):
        fs = s3_filesystem()
        try:
            fs.rm_file(url)
        except FileNotFoundError:
            pass
        except Exception as e:
            raise s3_error(url, e, "delete", fs) from None
        return
    Path(url).unlink(missing_ok=True)


def list_files(url: str) -> list[str]:
    """Every object / file under the prefix / directory `url` (full URLs, sorted)."""
    if is_s3(url):
        fs = s3_filesystem()
        try:
            return sorted("s3://" + k for k in fs.find(url))
        except Exception as e:
            raise s3_error(url, e, "list", fs) from None
    root = Path(url)
    return sorted(str(p) for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
