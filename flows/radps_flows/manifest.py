"""`manifest.json`: what a run produced and from what, written last into its output.

Its presence beside a product says the product is complete (see :mod:`radps_flows.staging`);
its entries let a reader check that the product is the one written (size and sha256), and its
provenance says how to make it again: the PipelineRun (name, namespace, UID, parameters), the
flow run, package versions and the image, the inputs' identity, start and end times.

A folder product (a zarr store) is hashed file by file: its sha256 is that of the sorted lines
"<relative path> <size> <sha256 of the file>". Readers check a folder by its size and file
count (a stat per file); single files (FITS model images) by size and sha256.

Products and inputs may be on an object store (``s3://`` URLs, :mod:`radps_flows.locations`):
their entries are the same, computed from the objects (read back once, at commit; a folder's
files are its keys below the prefix). An input on a store is identified by its listing (keys,
sizes, ETags), which changes with every write.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from radps_flows import locations

MANIFEST_NAME = "manifest.json"
FORMAT = "radps.io/products/v1"
PACKAGES = ("radps", "prefect", "dask", "distributed", "xarray", "zarr", "numpy", "xradio", "ducc0")
METADATA_FILES = frozenset(
    {"zarr.json", ".zattrs", ".zgroup", ".zarray", ".zmetadata", "table.dat", "table.info"}
)
"""Which files of an input say what it is (its content hash covers these and the listing):
zarr metadata, casacore table descriptions. Reading every visibility to identify an input
would cost as much as processing it."""


class ProductError(ValueError):
    """A product without a matching manifest: incomplete, altered, or not written by radps."""


HASHING_THREADS = 2


OBJECT_BATCH_BYTES = 256 * 2**20
"""How much of a product on an object store is held in memory at once while it is hashed."""


@dataclass(frozen=True)
class Product:
    name: str
    path: str | Path
    """A path or an ``s3://`` URL."""
    kind: str


def describe_file(path: str | Path) -> dict[str, Any]:
    """Size and sha256 of a file, or of a folder's files (see the module docstring)."""
    if locations.is_url(path):
        return _describe_object(str(path))
    path = Path(path)
    if path.is_dir():
        lines, size, files = [], 0, 0
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            stat = file.stat()
            size += stat.st_size
            files += 1
            lines.append(f"{file.relative_to(path).as_posix()} {stat.st_size} {_sha256(file)}")
        digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
        return {"size": size, "files": files, "sha256": digest}
    return {"size": path.stat().st_size, "sha256": _sha256(path)}


def _describe_object(url: str) -> dict[str, Any]:
    fs = locations.filesystem()
    with locations.translated(url, "read the product back"):
        key = locations.key_of(url)
        listing = locations.objects(url)
        sizes = {k: int(v["size"]) for k, v in sorted(listing.items())}
        digests = _sha256_objects(fs, sizes)
        if set(listing) == {key}:  # a single object
            return {"size": sizes[key], "sha256": digests[key]}
        keys = list(sizes)
    lines = [f"{k[len(key) + 1 :]} {listing[k]['size']} {digests[k]}" for k in keys]
    return {
        "size": sum(listing[k]["size"] for k in keys),
        "files": len(keys),
        "sha256": hashlib.sha256("\n".join(lines).encode()).hexdigest(),
    }


def _sha256_objects(fs: Any, sizes: dict[str, int]) -> dict[str, str]:
    """sha256 of each object (key: size), fetched concurrently in batches of about
    OBJECT_BATCH_BYTES."""
    out: dict[str, str] = {}
    batch: list[str] = []
    held = 0
    for key, size in sizes.items():
        batch.append(key)
        held += size
        if held >= OBJECT_BATCH_BYTES:
            out.update(_hash_batch(fs, batch))
            batch, held = [], 0
    if batch:
        out.update(_hash_batch(fs, batch))
    return out


def _hash_batch(fs: Any, keys: list[str]) -> dict[str, str]:
    contents = fs.cat(keys) if len(keys) > 1 else {keys[0]: fs.cat_file(keys[0])}
    return {k: hashlib.sha256(contents[k]).hexdigest() for k in keys}


def input_identity(path: str) -> dict[str, Any]:
    """Path, size, modification time and a hash of the metadata of an input (of its listing,
    on an object store)."""
    if locations.is_url(path):
        return _object_identity(path)
    p = Path(path)
    if not p.exists():
        return {"path": path, "exists": False}
    files = sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]
    meta = hashlib.sha256()
    size = 0
    newest = 0
    for file in files:
        stat = file.stat()
        size += stat.st_size
        newest = max(newest, stat.st_mtime_ns)
        rel = file.relative_to(p).as_posix() if p.is_dir() else file.name
        meta.update(f"{rel} {stat.st_size}\n".encode())
        if file.name in METADATA_FILES or not p.is_dir():
            meta.update(_sha256(file).encode() if not p.is_dir() else file.read_bytes())
    return {
        "path": str(p.resolve()),
        "size": size,
        "files": len(files),
        "modified": datetime.fromtimestamp(newest / 1e9, UTC).isoformat(),
        "metadata_sha256": meta.hexdigest(),
    }


def _object_identity(url: str) -> dict[str, Any]:
    key = locations.key_of(url)
    with locations.translated(url, "list it"):
        listing = locations.objects(url)
    if not listing:
        return {"path": url, "exists": False}
    lines = sorted(
        f"{k[len(key) + 1 :] or locations.name(k)} {v['size']} {v.get('ETag', '')}"
        for k, v in listing.items()
    )
    newest = max(v["LastModified"] for v in listing.values() if v.get("LastModified"))
    return {
        "path": url,
        "size": sum(v["size"] for v in listing.values()),
        "files": len(listing),
        "modified": newest.astimezone(UTC).isoformat(),
        "listing_sha256": hashlib.sha256("\n".join(lines).encode()).hexdigest(),
    }


def build(
    *,
    pipeline: str,
    parameters: Mapping[str, Any],
    products: Iterable[Product],
    root: str | Path,
    inputs: Mapping[str, str],
    started: datetime,
    flow_run_id: str | None,
    run: Mapping[str, Any],
) -> dict[str, Any]:
    """The manifest of the products in ``root`` (paths relative to it); ``run`` is what
    :func:`radps_flows.provenance.of_this_run` says of the PipelineRun and the image."""
    products = list(products)
    # sha256 releases the GIL: two threads hash CLEAN's ten products in about half the 0.18 s
    with ThreadPoolExecutor(HASHING_THREADS) as pool:
        described = list(pool.map(describe_file, [p.path for p in products]))
    entries = [
        {
            "name": product.name,
            "path": _relative(product.path, root),
            "kind": product.kind,
            **description,
        }
        for product, description in zip(products, described, strict=True)
    ]
    return {
        "format": FORMAT,
        "products": entries,
        "provenance": {
            "pipeline": pipeline,
            "parameters": _plain(parameters),
            **_plain(run),
            "flow_run_id": flow_run_id,
            "versions": _versions(),
            "inputs": {name: input_identity(path) for name, path in inputs.items()},
            "started": started.isoformat(),
            "finished": datetime.now(UTC).isoformat(),
        },
    }


def _relative(path: str | Path, root: str | Path) -> str:
    if locations.is_url(path):
        prefix = str(root).rstrip("/") + "/"
        if not str(path).startswith(prefix):
            raise ValueError(f"product {path} is not below {root}")
        return str(path)[len(prefix) :]
    return os.path.relpath(path, root)


def store_manifest_name(store_name: str) -> str:
    """The manifest beside an output that is itself a store (a synthesized set)."""
    return f"{store_name.removesuffix('.ps.zarr')}.manifest.json"


def write(manifest: Mapping[str, Any], path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def verify(
    product: str | os.PathLike[str], manifest_path: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """The manifest entry of ``product`` (a path or URL), checked against it; ProductError
    otherwise. ``manifest_path`` defaults to the one beside a store (`sky.manifest.json` for
    `sky.ps.zarr`), else the ``manifest.json`` of the product's folder."""
    product = locations.absolute(product)
    folder = locations.parent(product)
    if manifest_path is None:
        beside = locations.join(folder, store_manifest_name(locations.name(product)))
        manifest_path = (
            beside if locations.is_file(beside) else locations.join(folder, MANIFEST_NAME)
        )
    manifest_path = str(manifest_path)
    try:
        manifest = json.loads(locations.read_bytes(manifest_path))
    except FileNotFoundError:
        raise ProductError(
            f"{product}: no {locations.name(manifest_path)} beside it, so it is not a complete "
            "radps product (a run that failed or was cancelled, or a file from elsewhere)"
        ) from None
    except (OSError, ValueError) as exc:
        raise ProductError(f"{product}: unreadable {manifest_path}: {exc}") from None
    root = locations.parent(manifest_path)
    entry = next(
        (
            e
            for e in manifest.get("products", [])
            if isinstance(e, dict) and locations.join(root, str(e.get("path"))) == product
        ),
        None,
    )
    if entry is None:
        raise ProductError(f"{product}: not listed in {manifest_path}")
    actual = _actual(product)
    if actual is None:
        raise ProductError(f"{product}: listed in {manifest_path} but missing")
    for key, value in actual.items():
        if entry.get(key) != value:
            raise ProductError(
                f"{product}: its {key} is {value}, but {manifest_path} says {entry.get(key)}: "
                "changed or truncated since it was written"
            )
    return entry


def _actual(product: str) -> dict[str, Any] | None:
    """What a reader checks of a product: a folder's size and file count, a file's size and
    sha256; None when it is missing."""
    if locations.is_url(product):
        with locations.translated(product, "read it"):
            listing = locations.objects(product)
        if not listing:
            return None
        if set(listing) == {locations.key_of(product)}:
            return describe_file(product)
        return {"size": sum(v["size"] for v in listing.values()), "files": len(listing)}
    path = Path(product)
    if path.is_dir():
        return _folder_size(path)
    if path.exists():
        return {"size": path.stat().st_size, "sha256": _sha256(path)}
    return None


def _folder_size(path: Path) -> dict[str, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return {"size": sum(p.stat().st_size for p in files), "files": len(files)}


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def _plain(value: Any) -> Any:
    return json.loads(
        json.dumps(value, default=lambda o: o.model_dump() if hasattr(o, "model_dump") else str(o))
    )
