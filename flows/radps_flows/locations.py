"""Where data lives: a local path, or an ``s3://bucket/key`` URL on an S3-compatible store.

Every pipeline parameter that names data (``input``, ``output``, ``model_image``) and the
conversion cache (``$RADPS_CACHE_DIR``) may be either. Code that takes a location keeps it a
string and goes through these helpers: ``Path("s3://b/x")`` silently becomes ``s3:/b/x``.

The store and its credentials come from AWS's own environment (``AWS_ENDPOINT_URL_S3``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``) or ``~/.aws``: xradio builds
its own s3fs filesystem with no way to pass it options, and Dask workers build theirs from a
URL, so the environment is the one configuration every process shares. Nothing here ever puts
a key into a message, a parameter or a manifest.

Failures of the store become :class:`StorageError`, whose message names the location and
what is wrong (missing bucket, missing object, refused credential, unreachable endpoint),
never a traceback from botocore.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SCHEME = "s3://"
BUCKET_PATTERN = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
"""S3's bucket naming rules (3-63 characters: lowercase letters, digits, dots, hyphens)."""

SCRATCH_ENV = "RADPS_SCRATCH_DIR"
"""Local scratch space for what must pass through a local file (an MSv2 to convert, a FITS
file on its way up); the system temporary folder when unset."""


class StorageError(OSError):
    """The object store refused or could not serve a location; the message says which and
    why, in words meant for the user."""


class MissingLocation(StorageError, FileNotFoundError):
    """No such bucket, object or prefix."""


def is_url(location: str | os.PathLike[str]) -> bool:
    return "://" in str(location)


def url_problem(location: str) -> str | None:
    """Why ``location``, a URL, cannot name data, or None (a lexical check: nothing is
    contacted)."""
    if not location.startswith(SCHEME):
        scheme = location.split("://", 1)[0]
        return f"{scheme}:// is not supported: give a path or an s3://bucket/key URL"
    bucket, _, key = location[len(SCHEME) :].partition("/")
    if not BUCKET_PATTERN.match(bucket) or ".." in bucket:
        return (
            f"{bucket!r} is not an S3 bucket name (3-63 characters: lowercase letters, "
            "digits, '.' and '-')"
        )
    if not key.strip("/"):
        return f"{location!r} names a whole bucket: give a key below it (s3://{bucket}/name)"
    if "//" in key or any(part in (".", "..") for part in key.split("/")):
        return f"{location!r}: its key must not contain '//', '.' or '..' parts"
    return None


def join(base: str | os.PathLike[str], *names: str) -> str:
    if is_url(base):
        return "/".join([str(base).rstrip("/"), *names])
    return str(Path(base, *names))


def name(location: str | os.PathLike[str]) -> str:
    return str(location).rstrip("/").rsplit("/", 1)[-1]


def parent(location: str | os.PathLike[str]) -> str:
    if is_url(location):
        return str(location).rstrip("/").rsplit("/", 1)[0]
    return str(Path(location).parent)


def absolute(location: str | os.PathLike[str]) -> str:
    """A URL as it is (without a trailing slash), a path made absolute (symlinks kept)."""
    return str(location).rstrip("/") if is_url(location) else os.path.abspath(location)


def key_of(url: str) -> str:
    """``bucket/key``, as s3fs names objects."""
    return url.removeprefix(SCHEME).rstrip("/")


AWS_SETTINGS = (
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
)
"""The environment an s3fs filesystem takes its store and credential from."""


def filesystem() -> Any:
    """s3fs configured from AWS's environment, one per process and setting of that
    environment (fsspec's own instance cache ignores the environment: a credential changed
    in the process would go unnoticed)."""
    return _filesystem(os.getpid(), tuple(os.environ.get(name) for name in AWS_SETTINGS))


@functools.lru_cache(maxsize=4)
def _filesystem(pid: int, settings: tuple[str | None, ...]) -> Any:
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True)


@contextlib.contextmanager
def translated(location: str, doing: str) -> Iterator[None]:
    """Turn the store's failures while ``doing`` something with ``location`` into a
    :class:`StorageError` that says what went wrong in words."""
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:
        problem = describe_failure(exc)
        if problem is None:
            raise
        error = MissingLocation if isinstance(exc, FileNotFoundError) else StorageError
        raise error(f"{location}: cannot {doing}: {problem}") from None


def describe_failure(exc: BaseException) -> str | None:
    """What a failure of the store means, or None when it is not one."""
    text = str(exc)
    kind = type(exc).__name__
    if kind in ("NoCredentialsError", "PartialCredentialsError"):
        return (
            "no credentials for the object store (set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or a profile in ~/.aws)"
        )
    if kind in ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        where = f" at {endpoint}" if endpoint else ""
        return f"the object store{where} is unreachable ({text})"
    if isinstance(exc, FileNotFoundError):
        if "bucket does not exist" in text:
            return "the bucket does not exist"
        return "no such object or prefix"
    if isinstance(exc, PermissionError):
        if "signature" in text.lower() or "access key" in text.lower():
            return "the store refused the credential (wrong access key or secret key)"
        return f"access denied ({text or 'forbidden'}): check the credential and its policy"
    if kind.startswith(("Botocore", "ClientError")) or "botocore" in type(exc).__module__:
        return text
    return None


def objects(url: str) -> dict[str, dict[str, Any]]:
    """Every object at or below ``url`` (``bucket/key``: its listing entry, with ``size``,
    ``ETag`` and ``LastModified``), read afresh. Objects only: a filer-backed store
    (SeaweedFS) lists a folder emptied by deletes as a prefix for a while (2 min by default)
    after its last object went."""
    fs = filesystem()
    key = key_of(url)
    fs.invalidate_cache(key)
    listing = fs.find(key, detail=True)
    return {k: v for k, v in listing.items() if v.get("type") == "file"}


def exists(location: str) -> bool:
    """Whether ``location`` names an object, or a prefix with objects below it."""
    if not is_url(location):
        return os.path.exists(location)
    with translated(location, "check that it exists"):
        return filesystem().exists(key_of(location))


def is_file(location: str) -> bool:
    if not is_url(location):
        return os.path.isfile(location)
    with translated(location, "read it"):
        return filesystem().isfile(key_of(location))


def check_readable(location: str) -> None:
    """Raise a :class:`StorageError` (for a URL) or FileNotFoundError (a path) when
    ``location`` cannot be read: the bucket, the credential, the object itself."""
    if not is_url(location):
        if not os.path.exists(location):
            raise FileNotFoundError(f"no such file or folder: {location}")
        return
    with translated(location, "read it"):
        fs = filesystem()
        bucket = key_of(location).split("/", 1)[0]
        fs.ls(bucket, refresh=True)  # bucket and credential, before the object itself
        if not fs.exists(key_of(location)):
            raise MissingLocation(f"{location}: no such object or prefix")


def check_bucket(location: str) -> None:
    """Raise a :class:`StorageError` unless the bucket of the URL ``location`` exists and the
    credential may list it (where an output will be written)."""
    with translated(location, "write there"):
        filesystem().ls(key_of(location).split("/", 1)[0], refresh=True)


def read_bytes(location: str) -> bytes:
    if not is_url(location):
        return Path(location).read_bytes()
    with translated(location, "read it"):
        return filesystem().cat_file(key_of(location))


def write_bytes(location: str, content: bytes) -> None:
    """Write a small file, or one object."""
    if not is_url(location):
        Path(location).write_bytes(content)
        return
    with translated(location, "write it"):
        filesystem().pipe_file(key_of(location), content)


def scratch_dir() -> Path:
    return Path(os.environ.get(SCRATCH_ENV) or tempfile.gettempdir())


@contextlib.contextmanager
def local_file(location: str, suffix: str = "") -> Iterator[Path]:
    """A local path to write a file (or a folder: a CASA image, for one) that belongs at
    ``location``: the path itself, or a scratch path uploaded to the store (a file as one
    object, a folder as one object per file under it) when the block exits without error."""
    if not is_url(location):
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        yield Path(location)
        return
    with tempfile.TemporaryDirectory(prefix="radps-upload-", dir=scratch_dir()) as folder:
        path = Path(folder) / (name(location) or f"object{suffix}")
        yield path
        with translated(location, "upload it"):
            if path.is_dir():
                filesystem().put(f"{path}/", key_of(location), recursive=True)
            else:
                filesystem().put_file(str(path), key_of(location))


@contextlib.contextmanager
def local_copy(location: str) -> Iterator[Path]:
    """A local path holding the file or folder at ``location`` for the block's duration (a
    download into scratch space for a URL)."""
    if not is_url(location):
        yield Path(location)
        return
    with tempfile.TemporaryDirectory(prefix="radps-download-", dir=scratch_dir()) as folder:
        path = Path(folder) / name(location)
        with translated(location, "download it"):
            fs = filesystem()
            if fs.isdir(key_of(location)):
                fs.get(key_of(location) + "/", str(path), recursive=True)
            else:
                fs.get_file(key_of(location), str(path))
        yield path


def ensure_bucket(bucket: str, wait_s: float = 120.0) -> bool:
    """Create ``bucket`` unless it exists, waiting up to ``wait_s`` for the store to answer
    (the chart's own store, started beside this); True when it was created."""
    import time

    deadline = time.monotonic() + wait_s
    while True:
        try:
            fs = filesystem()
            fs.invalidate_cache()
            if fs.exists(bucket):
                return False
            fs.mkdir(bucket)
            return True
        except Exception as exc:
            problem = describe_failure(exc)
            if problem is None:
                raise
            if time.monotonic() > deadline:
                raise StorageError(f"s3://{bucket}: cannot create the bucket: {problem}") from None
            time.sleep(2)


def main(argv: list[str] | None = None) -> int:
    """`python -m radps_flows.locations make-bucket NAME`: what the chart's hook runs."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m radps_flows.locations")
    parser.add_argument("command", choices=["make-bucket"])
    parser.add_argument("bucket")
    parser.add_argument("--wait", type=float, default=120.0, help="seconds to wait for the store")
    args = parser.parse_args(argv)
    try:
        made = ensure_bucket(args.bucket, args.wait)
    except StorageError as exc:
        print(exc)
        return 1
    print(f"bucket {args.bucket} {'created' if made else 'exists'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
