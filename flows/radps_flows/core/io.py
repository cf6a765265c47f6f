"""Open visibility data as xradio MSv4 datasets.

Every pipeline starts here, whatever the user points it at: an MSv2 MeasurementSet (converted
once with xradio and cached), a uvfits, uvh5, MIR or Miriad data set (first written as an MSv2
with pyuvdata, :mod:`radps_flows.core.uvdata_convert`, then the same), or an MSv4
processing-set zarr store. Failures about the *input*
become :class:`InputDataError` with the path and the problem in the message, so a flow can
report them to the user instead of a traceback from deep inside xradio or casacore.

xradio 1.3 keeps the phase centre in a sub-node of the processing-set tree
(``<partition>/field_and_source_base_xds``), which a plain ``xr.Dataset`` loses. We copy what
imaging needs into the attributes of each returned dataset:

``phase_center``
    ``{"ra": rad, "dec": rad, "frame": "fk5"|"icrs"|..., "field_name": str}`` when the partition
    has a single phase centre, else absent and ``phase_centers`` lists them per field.
``telescope_name``, ``source_name``, ``partition_name``, ``source_path``
    plain strings (FITS headers, titles, error messages).
``telescope_position_m``
    the centroid of the antennas (ITRS x, y, z in metres): an image's OBSGEO. CASA writes its
    observatory table's position instead; for the VLA set the two are 32 m apart.
``rest_frequency_hz``
    the line rest frequency, where the field and source data give one (> 0).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import numpy as np
import xarray as xr

from radps_flows import locations
from radps_flows.contract import CACHE_DIR_ENV
from radps_flows.stage_cache import CachePolicy, stage_key

log = logging.getLogger(__name__)

#: Suffix xradio insists on for processing sets (it appends it to any other output name).
PS_SUFFIX = ".ps.zarr"
#: Environment variable naming the default folder for MSv2 -> MSv4 conversions.
CACHE_ENV = CACHE_DIR_ENV
#: Partition by field too (xradio's default is by spectral window and observation only), so that
#: every dataset has one phase centre and can be imaged without phase rotation.
PARTITION_SCHEME = ("FIELD_ID",)


class InputDataError(ValueError):
    """The input data is missing, of the wrong kind, or unreadable.

    The message names the path and what is wrong; it is meant for the user.
    """


def data_variable_names(ds: xr.Dataset, data_group: str = "base") -> dict[str, str]:
    """Names of the visibility, flag, weight and UVW variables of ``data_group`` (xradio's
    ``data_groups`` attribute; MSv4 defaults when a dataset has none). A group the dataset does
    not have is an error, so another group's data is never used by mistake."""
    groups = ds.attrs.get("data_groups") or {}
    if data_group not in groups and data_group != "base":
        raise ValueError(f"data group {data_group!r} not in {sorted(groups)}")
    g = groups.get(data_group, {})
    return {
        "vis": g.get("correlated_data", "VISIBILITY"),
        "flag": g.get("flag", "FLAG"),
        "weight": g.get("weight", "WEIGHT"),
        "uvw": g.get("uvw") or "UVW",
    }


def open_processing_set(
    path: str | os.PathLike, cache_dir: str | os.PathLike | None = None
) -> list[xr.Dataset]:
    """Open an MSv2 MeasurementSet or an MSv4 processing set as lazy MSv4 correlated datasets.

    ``path`` is a local path or an ``s3://`` URL (see :mod:`radps_flows.locations`); a
    processing set on a store is read where it is, chunk by chunk. An MSv2 is converted once
    with ``xradio.measurement_set.convert_msv2_to_processing_set`` (one partition per spectral
    window, polarisation setup, observation and field) into ``cache_dir`` (a folder or a URL);
    the conversion is reused while the MS is unchanged (same newest modification time, file
    count and size; on a store, the same keys, sizes and ETags). Default ``cache_dir``:
    ``$RADPS_CACHE_DIR`` if set, else ``<path>.radps-cache`` beside a local MS when that folder
    is writable, else a folder under the system temporary directory.

    Returns one dataset per partition (dims time, baseline_id, frequency, polarization; with
    VISIBILITY, FLAG, WEIGHT, UVW as Dask arrays), sorted by partition name, with the
    attributes described in the module docstring. Raises :class:`InputDataError` for a missing
    path, something that is neither an MS nor a processing set, or data xradio cannot read.
    """
    source = locations.absolute(path) if locations.is_url(path) else str(Path(path))
    tree = open_datatree(source, cache_dir=cache_dir)
    # A processing set holds partitions; a single MSv4 (one partition's folder) is accepted too.
    nodes = (
        {locations.name(source): tree} if tree.attrs.get("type") == "visibility" else tree.children
    )
    # the few metadata values are read here, in this thread, whatever Dask client is around
    with dask.config.set(scheduler="synchronous"):
        datasets = [
            _with_metadata(node, name, source)
            for name, node in sorted(nodes.items())
            if node.attrs.get("type") == "visibility"
        ]
    if not datasets:
        kinds = sorted({str(node.attrs.get("type")) for node in tree.children.values()})
        raise InputDataError(
            f"{source}: no interferometric visibility partitions found "
            f"(partition types present: {kinds or 'none'})"
        )
    return datasets


def open_datatree(
    path: str | os.PathLike, cache_dir: str | os.PathLike | None = None
) -> xr.DataTree:
    """Open the whole processing-set tree (sub-datasets such as antenna_xds included).

    Same inputs, conversion and errors as :func:`open_processing_set`; for steps that need the
    sub-datasets (calibration needs antenna_xds, for example).
    """
    store = ensure_processing_set(path, cache_dir=cache_dir)
    try:
        # What xradio.measurement_set.open_processing_set does for a local store, without
        # importing xradio (~3 s): lazy Dask arrays, metadata only. A URL's store is opened
        # by zarr's fsspec store, configured from AWS's environment (radps_flows.locations).
        with locations.translated(store, "open it"):
            tree = xr.open_datatree(store, engine="zarr", chunks={}, chunked_array_type="dask")
    except locations.StorageError as exc:
        raise InputDataError(str(exc)) from None
    except Exception as exc:
        raise InputDataError(f"{path}: cannot open the MSv4 processing set {store}: {exc}") from exc
    if tree.attrs.get("type") != "processing_set" and not tree.children:
        raise InputDataError(f"{path}: zarr store {store} is not an xradio processing set")
    return tree


def ensure_processing_set(
    path: str | os.PathLike, cache_dir: str | os.PathLike | None = None
) -> str:
    """The location (path or URL) of an MSv4 processing set for ``path``, converting an MSv2
    if needed."""
    source = locations.absolute(path) if locations.is_url(path) else str(Path(path))
    kind = detect_input_kind(source)
    if kind == "msv4":
        return source
    return _converted(source, _cache_dir_for(source, cache_dir), kind)


#: File name endings of the pyuvdata formats that are single files.
_FILE_SUFFIXES = {".uvfits": "uvfits", ".uvfit": "uvfits", ".uvh5": "uvh5"}
#: Files that make a folder a Miriad data set, or an SMA MIR one.
_FOLDER_FILES = {"miriad": {"visdata", "vartable"}, "mir": {"in_read", "bl_read", "sp_read"}}


def _file_kind(name: str, head: bytes = b"") -> str | None:
    """The pyuvdata format of a single file, by its name or its first bytes."""
    for suffix, kind in _FILE_SUFFIXES.items():
        if name.lower().endswith(suffix):
            return kind
    if head.startswith(b"\x89HDF") and name.lower().endswith((".h5", ".hdf5")):
        return "uvh5"
    if head.startswith(b"SIMPLE") and b"GROUPS  =                    T" in head:
        return "uvfits"  # random-groups FITS: uvfits by any name
    return None


def _folder_kind(files: set[str]) -> str | None:
    for kind, needed in _FOLDER_FILES.items():
        if needed <= files:
            return kind
    return None


def detect_input_kind(path: str | os.PathLike) -> str:
    """Say whether ``path`` (a path or URL) is an MSv2 MeasurementSet ("msv2"), a processing
    set ("msv4"), or a uvfits, uvh5, Miriad or MIR data set ("uvfits", "uvh5", "miriad",
    "mir": by the file's name ending or first bytes, the folder's files).

    Checks only the layout (cheap: one listing on a store); anything else is an
    :class:`InputDataError` whose message says what was found instead.
    """
    if locations.is_url(path):
        return _detect_remote_kind(str(path))
    path = Path(path)
    if not path.exists():
        raise InputDataError(f"{path}: no such file or directory")
    if not path.is_dir():
        try:
            with open(path, "rb") as fh:
                head = fh.read(2880)
        except OSError as exc:
            raise InputDataError(f"{path}: cannot read it: {exc}") from None
        kind = _file_kind(path.name, head)
        if kind is None:
            raise InputDataError(_a_file_message(path))
        return kind
    if (path / "table.dat").is_file():
        _require_ms_subtables(path, {p.name for p in path.iterdir() if p.is_dir()})
        return "msv2"
    if (path / "zarr.json").is_file() or (path / ".zgroup").is_file():
        return "msv4"
    kind = _folder_kind({p.name for p in path.iterdir() if p.is_file()})
    if kind is None:
        raise InputDataError(_neither_message(path))
    return kind


def _detect_remote_kind(url: str) -> str:
    fs = locations.filesystem()
    try:
        with locations.translated(url, "read it"):
            entries = fs.ls(locations.key_of(url), detail=True, refresh=True)
    except locations.StorageError as exc:
        raise InputDataError(str(exc)) from None
    if not entries:
        raise InputDataError(f"{url}: no such object or prefix")
    only = entries[0] if len(entries) == 1 else {}
    if only.get("type") == "file" and only["name"].rstrip("/") == locations.key_of(url):
        kind = _file_kind(locations.name(url))
        if kind is None:
            raise InputDataError(_a_file_message(url))
        return kind
    files = {locations.name(e["name"]) for e in entries if e["type"] == "file"}
    folders = {locations.name(e["name"]) for e in entries if e["type"] == "directory"}
    if "table.dat" in files:
        _require_ms_subtables(url, folders)
        return "msv2"
    if files & {"zarr.json", ".zgroup"}:
        return "msv4"
    kind = _folder_kind(files)
    if kind is None:
        raise InputDataError(_neither_message(url))
    return kind


def _a_file_message(path: str | os.PathLike) -> str:
    hint = ""
    if str(path).endswith((".tar", ".tar.gz", ".tgz")):
        hint = " (it looks like an archive: unpack it first)"
    return (
        f"{path}: a file, but not one radps reads (a uvfits file ends in .uvfits, a uvh5 file "
        f"in .uvh5; a MeasurementSet or processing set is a directory){hint}"
    )


def _neither_message(path: str | os.PathLike) -> str:
    return (
        f"{path}: neither an MSv2 MeasurementSet (no table.dat), an MSv4 processing set (no "
        "zarr.json), a Miriad data set (no visdata, vartable) nor a MIR one (no in_read, "
        "bl_read, sp_read)"
    )


def _require_ms_subtables(path: str | os.PathLike, folders: set[str]) -> None:
    missing = [t for t in ("ANTENNA", "SPECTRAL_WINDOW", "FIELD") if t not in folders]
    if missing:
        raise InputDataError(
            f"{path}: a casacore table but not a MeasurementSet (no {', '.join(missing)} subtable)"
        )


# ---------------------------------------------------------------------------------------------
# MSv2 conversion cache


def cached_processing_set(path: str | os.PathLike, policy: CachePolicy) -> tuple[str, str | None]:
    """The location of an MSv4 processing set for ``path`` and what the stage cache gave
    (``hit``, ``miss``, ``refreshed``; None for a processing set, which needs no conversion):
    an MSv2 or other format is converted once per content (:func:`content_identity`), into
    the stage cache of ``policy`` (see :mod:`radps_flows.stage_cache`)."""
    source = locations.absolute(path) if locations.is_url(path) else str(Path(path))
    kind = detect_input_kind(source)
    if kind == "msv4":
        return source, None
    name = locations.name(source)
    stem = name[:-3] if name.lower().endswith(".ms") else name
    versions = {"xradio": _xradio_version()}
    if kind != "msv2":
        versions["pyuvdata"] = _version_of("pyuvdata")
    parameters = {"kind": kind, "name": stem, "partition_scheme": list(PARTITION_SCHEME)}
    try:
        key = stage_key("conversion", content_identity(source), {**parameters, **versions})
    except OSError as exc:
        raise InputDataError(f"{source}: cannot read it: {exc}") from None
    cache = policy.cache()
    store_name = f"{stem}{PS_SUFFIX}"
    if policy.reads("conversion"):
        found = cache.get("conversion", key)
        if found is not None:
            log.info("reusing the cached MSv4 conversion of %s (%s)", source, found)
            return locations.join(found, store_name), "hit"
    refreshed = policy.refreshed("conversion")
    try:
        with (
            locations.translated(cache.root, "write the conversion"),
            cache.put("conversion", key, {"source": source}, replace=refreshed) as folder,
        ):
            store = locations.join(folder, store_name)
            if locations.is_url(store):
                _upload_conversion(source, store, kind)
            else:
                with locations.local_copy(source) as local:
                    _convert(local, Path(store), source, kind)
    except locations.StorageError as exc:
        raise InputDataError(str(exc)) from None
    return locations.join(cache.location("conversion", key), store_name), (
        "refreshed" if refreshed else "miss"
    )


def content_identity(source: str) -> str:
    """A digest of an input's content: every file's relative path, size and bytes (on an
    object store: its keys, sizes and ETags, which S3 derives from the content)."""
    if locations.is_url(source):
        return _fingerprint(source)["listing_sha256"]
    root = Path(source)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for path in files:
        relative = path.relative_to(root) if path != root else path.name
        h.update(f"{relative}|{path.stat().st_size}|".encode())
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def _cache_dir_for(ms: str, cache_dir: str | os.PathLike | None) -> str:
    if cache_dir is None and os.environ.get(CACHE_ENV):
        cache_dir = os.environ[CACHE_ENV]
    if cache_dir is not None:
        return locations.absolute(cache_dir) if locations.is_url(cache_dir) else str(cache_dir)
    name = locations.name(ms)
    if not locations.is_url(ms):
        parent = Path(ms).resolve().parent
        # Mode bits as well as access(): root passes access() on folders meant to be read-only.
        if parent.stat().st_mode & 0o222 and os.access(parent, os.W_OK):
            beside = parent / f"{name}.radps-cache"
            try:
                beside.mkdir(exist_ok=True)
                return str(beside)
            except OSError:  # read-only mount
                pass
    source = ms if locations.is_url(ms) else str(Path(ms).resolve())
    digest = hashlib.sha1(source.encode()).hexdigest()[:12]
    return str(Path(tempfile.gettempdir()) / "radps-cache" / f"{name}-{digest}")


def _fingerprint(ms: str) -> dict[str, Any]:
    """What decides whether a conversion is stale: newest mtime, file count, total size (on a
    store: the keys, sizes and ETags, which change with every write)."""
    if locations.is_url(ms):
        with locations.translated(ms, "list it"):
            listing = locations.objects(ms)
        lines = sorted(f"{k} {v['size']} {v.get('ETag', '')}" for k, v in listing.items())
        return {
            "files": len(lines),
            "bytes": sum(v["size"] for v in listing.values()),
            "listing_sha256": hashlib.sha256("\n".join(lines).encode()).hexdigest(),
        }
    if Path(ms).is_file():
        st = Path(ms).stat()
        return {"newest_mtime_ns": st.st_mtime_ns, "files": 1, "bytes": st.st_size}
    newest, count, size = 0, 0, 0
    for root, _dirs, files in os.walk(ms):
        for name in files:
            st = os.stat(os.path.join(root, name))
            newest = max(newest, st.st_mtime_ns)
            count += 1
            size += st.st_size
    return {"newest_mtime_ns": newest, "files": count, "bytes": size}


def _xradio_version() -> str:
    return _version_of("xradio")


def _version_of(package: str) -> str:
    from importlib.metadata import version

    return version(package)


@contextlib.contextmanager
def _locked(cache_dir: str, stem: str) -> Iterator[None]:
    """Serialise conversions of the same MS (two flow runs on one input convert it once). A
    cache on a store has no lock: runs each write the same conversion, the marker last."""
    if locations.is_url(cache_dir):
        yield
        return
    with open(Path(cache_dir) / f"{stem}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _converted(ms: str, cache_dir: str, kind: str = "msv2") -> str:
    """The conversion of ``ms`` in ``cache_dir``, made unless the marker beside it (written
    last) says it is of this MS as it is now. An MS or a cache on a store passes through
    local scratch space (:func:`radps_flows.locations.scratch_dir`): casacore reads only local
    tables, and a store has no rename to publish a finished conversion with."""
    if not locations.is_url(cache_dir):
        try:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputDataError(
                f"{ms}: cannot create the conversion cache {cache_dir}: {exc}"
            ) from exc
    name = locations.name(ms)
    stem = name[:-3] if name.lower().endswith(".ms") else name
    store = locations.join(cache_dir, f"{stem}{PS_SUFFIX}")
    marker = locations.join(cache_dir, f"{stem}{PS_SUFFIX}.radps.json")
    wanted = {
        "source": ms if locations.is_url(ms) else str(Path(ms).resolve()),
        "fingerprint": _fingerprint(ms),
        "xradio": _xradio_version(),
        "partition_scheme": list(PARTITION_SCHEME),
    }
    if kind != "msv2":
        wanted.update(kind=kind, pyuvdata=_version_of("pyuvdata"))
    try:
        with _locked(cache_dir, stem), locations.translated(cache_dir, "write the conversion"):
            if _marker_says(marker, wanted):
                log.info("reusing the MSv4 conversion %s of %s", store, ms)
                return store
            if locations.is_url(cache_dir):
                _convert_to_store(ms, store, marker, kind)
            else:
                _convert_in_place(ms, Path(store), Path(marker), stem, kind)
            _write_marker(marker, wanted)
    except locations.StorageError as exc:
        raise InputDataError(str(exc)) from None
    return store


def _marker_says(marker: str, wanted: dict[str, Any]) -> bool:
    try:
        return json.loads(locations.read_bytes(marker)) == wanted
    except (OSError, ValueError):
        return False


def _write_marker(marker: str, wanted: dict[str, Any]) -> None:
    text = json.dumps(wanted, indent=1).encode()
    if locations.is_url(marker):
        locations.filesystem().pipe_file(locations.key_of(marker), text)
    else:
        Path(marker).write_bytes(text)


def _convert_in_place(ms: str, store: Path, marker: Path, stem: str, kind: str) -> None:
    marker.unlink(missing_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{stem}.", suffix=PS_SUFFIX, dir=store.parent))
    try:
        with locations.local_copy(ms) as local_ms:
            _convert(local_ms, tmp, ms, kind)
        if store.exists():
            shutil.rmtree(store)
        tmp.rename(store)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _convert_to_store(ms: str, store: str, marker: str, kind: str) -> None:
    """Convert in scratch space, then upload: the store's old conversion is removed first,
    and the marker, written after the upload, is what makes the new one valid."""
    fs = locations.filesystem()
    if fs.exists(locations.key_of(marker)):
        fs.rm_file(locations.key_of(marker))
    if locations.objects(store):
        fs.rm(locations.key_of(store), recursive=True)
    _upload_conversion(ms, store, kind)


def _upload_conversion(ms: str, store: str, kind: str) -> None:
    fs = locations.filesystem()
    with (
        locations.local_copy(ms) as local_ms,
        tempfile.TemporaryDirectory(
            prefix="radps-convert-", dir=locations.scratch_dir()
        ) as scratch,
    ):
        local_store = Path(scratch) / locations.name(store)
        _convert(local_ms, local_store, ms, kind)
        log.info("uploading the MSv4 conversion of %s to %s", ms, store)
        fs.put(str(local_store) + "/", locations.key_of(store), recursive=True)


def _convert(ms: Path, out: Path, source: str, kind: str = "msv2") -> None:
    """Run xradio's converter on the local MS ``ms`` (``source``, as the user named it),
    turning its failures into an InputDataError about ``source``; ``ms`` of another ``kind``
    is first written as an MSv2 in scratch space with pyuvdata."""
    if kind != "msv2":
        from radps_flows.core import uvdata_convert

        with tempfile.TemporaryDirectory(
            prefix="radps-uvdata-", dir=locations.scratch_dir()
        ) as scratch:
            written = Path(scratch) / "input.ms"
            log.info("writing the %s input %s as a MeasurementSet with pyuvdata", kind, source)
            try:
                uvdata_convert.to_measurement_set(kind, ms, written)
            except uvdata_convert.ConversionError as exc:
                raise InputDataError(f"{source}: {exc}") from None
            _convert(written, out, source)
        return
    try:
        from xradio.measurement_set import convert_msv2_to_processing_set
    except ImportError as exc:  # the optional casacore/arcae backend is missing
        raise InputDataError(
            f"{source}: MSv2 input needs xradio's MSv2 backend (xradio[casacore]): {exc}"
        ) from exc
    import zarr

    log.info("converting %s to MSv4 in %s", ms, out)
    _route_toolviper_logs()
    try:
        # zarr compares each chunk with the fill value before writing it, to leave out empty
        # ones: several full passes over a chunk of visibilities (128 MiB by default). On the
        # CASA benchmark's set: 1.5-1.8 -> 1.3-1.7 s with the allocator of a flow run
        # (radps_flows.allocator), 2.3-3.1 -> 1.5-1.9 s without it.
        with warnings.catch_warnings(), zarr.config.set({"array.write_empty_chunks": True}):
            # xradio writes fixed-length strings and consolidated metadata, which zarr 3 warns
            # about on every array; they say nothing about the user's data.
            warnings.filterwarnings("ignore", module=r"zarr\.")
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"xradio\.")
            convert_msv2_to_processing_set(
                str(ms),
                str(out),
                partition_scheme=list(PARTITION_SCHEME),
                with_pointing=False,  # imaging does not use it; it is the slowest subtable
                persistence_mode="w",
            )
    except Exception as exc:
        raise InputDataError(
            f"{source}: xradio could not convert this MeasurementSet: {exc}"
        ) from exc


def _route_toolviper_logs() -> None:
    """xradio logs through toolviper, which prints straight to stdout unless its logger already
    has a handler; give it one that defers to the caller's logging configuration."""
    name = os.getenv("VIPER_LOGGER_NAME", "viperlog")
    viper = logging.getLogger(name)
    if not viper.handlers:
        viper.addHandler(logging.NullHandler())
        viper.propagate = True
        viper.setLevel(logging.WARNING)


# ---------------------------------------------------------------------------------------------
# Metadata copied from the tree into each dataset


def _with_metadata(node: xr.DataTree, name: str, source: str) -> xr.Dataset:
    ds = node.to_dataset()
    group = ds.attrs.get("data_groups", {}).get("base", {})
    required = [group.get("correlated_data", "VISIBILITY"), group.get("uvw") or "UVW"]
    missing = [v for v in required if v not in ds.data_vars]
    if missing:
        raise InputDataError(f"{source}: partition {name} lacks {', '.join(missing)}")
    attrs: dict[str, Any] = {"partition_name": name, "source_path": str(source)}
    fs_name = group.get("field_and_source", "field_and_source_base_xds")
    if fs_name in node.children:
        attrs.update(_phase_centre(node[fs_name].to_dataset(), name, source))
    if "antenna_xds" in node.children:
        antennas = node["antenna_xds"]
        tel = antennas.attrs.get("overall_telescope_name")
        if tel:
            attrs["telescope_name"] = str(tel)
        position = antennas.to_dataset().get("ANTENNA_POSITION")
        if position is not None and str(position.attrs.get("frame", "")).upper() == "ITRS":
            centre = np.asarray(position.values, dtype=float).reshape(-1, 3).mean(axis=0)
            if np.isfinite(centre).all():
                attrs["telescope_position_m"] = [float(v) for v in centre]
    ds.attrs.update(attrs)
    return ds


def _phase_centre(fs: xr.Dataset, name: str, source: str) -> dict[str, Any]:
    """Phase centre(s) of a partition from its field_and_source_xds (radians)."""
    var = fs.get("FIELD_PHASE_CENTER_DIRECTION")
    if var is None:
        return {}
    frame = str(var.attrs.get("frame", "fk5")).lower()
    units = var.attrs.get("units", "rad")
    units = units[0] if isinstance(units, list) else units
    try:
        values = np.asarray(var.transpose(..., "sky_dir_label").values, dtype=float).reshape(-1, 2)
    except Exception as exc:
        raise InputDataError(f"{source}: partition {name}: unreadable phase centre: {exc}") from exc
    if units != "rad":
        raise InputDataError(f"{source}: partition {name}: phase centre in {units!r}, not rad")
    fields = (
        [str(f) for f in fs["field_name"].values.ravel()]
        if "field_name" in fs.coords
        else ["?"] * len(values)
    )
    out: dict[str, Any] = {}
    if "source_name" in fs.coords:
        out["source_name"] = str(np.asarray(fs["source_name"].values).ravel()[0])
    rest = fs.get("LINE_REST_FREQUENCY")
    if rest is not None and str(rest.attrs.get("units", "Hz")) == "Hz":
        known = [float(v) for v in np.asarray(rest.values, dtype=float).ravel() if v > 0]
        if known and np.allclose(known, known[0]):
            out["rest_frequency_hz"] = known[0]
    if np.allclose(values, values[0], rtol=0, atol=1e-9):
        out["phase_center"] = {
            "ra": float(values[0, 0]),
            "dec": float(values[0, 1]),
            "frame": frame,
            "field_name": fields[0] if len(set(fields)) == 1 else ",".join(sorted(set(fields))),
        }
    else:  # several fields (or an ephemeris) in one partition: imaging must refuse it
        out["phase_centers"] = {
            f: [float(v[0]), float(v[1]), frame] for f, v in zip(fields, values, strict=False)
        }
    return out
