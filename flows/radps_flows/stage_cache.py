"""The content-keyed cache of stage results: an MSv2's conversion, each block's flags and gain
solutions. A second run of the same data with only imaging parameters changed reads them
instead of computing them again.

Why not Prefect's cache policies: a Prefect cache key covers a task's inputs, and the stages
whose results are worth keeping (flagging, the gain solve) run per block inside one imaging
task on the Dask workers, where no Prefect task runs. A block's entry is keyed where the block
is processed, on what that block holds.

**Keys.** An entry's key is the sha256 of the stage's name and code version
(:data:`STAGE_VERSIONS`, with the radps version), the identity of its input and its own
parameters. The input's identity is its content: a block's loaded arrays and coordinates
(:func:`array_digest`), an MSv2's bytes (or, on an object store, its keys, sizes and ETags).
A changed visibility changes the key of its block only; a changed parameter misses only the
stages that take it (the gain solve takes the flags' key, so a new flagging threshold misses
both, a new reference antenna only the gains); an unrelated parameter (``imsize``) hits.

**Entries** are folders ``<root>/<stage>/<key[:2]>/<key>/`` with ``entry.json`` in them. On a
local or shared file system an entry is written into ``<root>/.incoming/`` and renamed into
place whole, so a reader sees all of it or none; when two runs write the same entry at once,
the first rename wins and the other's copy is dropped (the contents are the same). On an
object store the objects are written first and ``entry.json`` last: a reader takes an entry
only with it. A run killed mid-write leaves an incoming folder or objects without
``entry.json``, which no reader takes and :meth:`StageCache.evict` removes.

**Modes** (``spec.cache``): ``Use`` reads and writes entries, ``Refresh`` computes everything
and writes it anew, ``Off`` neither reads nor writes. ``from_stage`` (a rerun from a stage)
refreshes that stage and the ones after it (:data:`STAGES` order) and uses the ones before.

The root is ``$RADPS_CACHE_DIR``: ``<radps home>/cache`` for `radps run`, and on a cluster
``.radps-cache`` on the data volume, which the run's Dask pods mount too. Where it is not set
(a cluster without a data volume, whose Dask pods share no folder with the flow pod), runs go
without the cache and say so.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from radps_flows import locations
from radps_flows.contract import CACHE_DIR_ENV, CACHE_MODES, CACHED_STAGES

log = logging.getLogger(__name__)

MAX_BYTES_ENV = "RADPS_CACHE_MAX_GB"
MAX_AGE_ENV = "RADPS_CACHE_MAX_AGE_DAYS"
DEFAULT_MAX_GB = 50.0
DEFAULT_MAX_AGE_DAYS = 30.0

MODES = CACHE_MODES
STAGES = CACHED_STAGES
"""The stages in the order a run makes them; ``imaging`` is never cached (it is what a rerun
recomputes), it is the last stage a rerun may start from."""
STAGE_VERSIONS = {"conversion": 1, "flagging": 1, "calibration": 1, "gains-plot": 1}
"""Raise a stage's number when its results change for the same input and parameters: every
entry made by the older code then misses."""

HIT, MISS, REFRESHED = "hit", "miss", "refreshed"
"""What the cache gave a stage (of one block, or of a whole run)."""

ENTRY_FILE = "entry.json"
INCOMING = ".incoming"
INCOMING_GRACE_SECONDS = 6 * 3600
IN_USE_SECONDS = 3600
"""Entries used more recently than this are never evicted: a run that took a conversion from
the cache reads its chunks for as long as the run lasts."""
"""An incoming folder older than this is a killed writer's remnant (a live writer of one
entry takes seconds to minutes)."""


def _software_version() -> str:
    from radps_flows.provenance import software_version

    return software_version()


def stage_key(stage: str, identity: Any, parameters: Mapping[str, Any]) -> str:
    """The key of ``stage``'s result for an input of ``identity`` (a digest) and the stage's
    own ``parameters`` (JSON-able)."""
    document = {
        "stage": stage,
        "stage_version": STAGE_VERSIONS[stage],
        "radps": _software_version(),
        "input": identity,
        "parameters": dict(parameters),
    }
    text = json.dumps(document, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def array_digest(arrays: Mapping[str, Any]) -> str:
    """A content digest of named arrays (an xarray dataset's variables and coordinates, or
    plain numpy arrays): names, dims, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        value = arrays[name]
        data = np.ascontiguousarray(getattr(value, "values", value))
        dims = getattr(value, "dims", ())
        h.update(f"{name}|{','.join(map(str, dims))}|{data.dtype.str}|{data.shape}|".encode())
        if data.dtype.kind in "OUS":
            h.update("\0".join(map(str, data.ravel())).encode())
        else:
            h.update(memoryview(data).cast("B"))
    return h.hexdigest()


def dataset_digest(ds: Any) -> str:
    """The content digest of an xarray dataset: every variable and coordinate, and the
    partition it belongs to."""
    named = {f"var:{k}": v for k, v in ds.data_vars.items()}
    named.update({f"coord:{k}": v for k, v in ds.coords.items()})
    named["attr:partition_name"] = np.array([str(ds.attrs.get("partition_name", ""))])
    return array_digest(named)


@dataclass(frozen=True)
class CachePolicy:
    """Where the cache is and what a run may do with it; plain data, so it travels to the
    Dask workers with a block's steps."""

    root: str | None = None
    mode: str = "Use"
    from_stage: str | None = None
    unavailable: str | None = None
    """Why a run that asked for the cache goes without it (its folder cannot be written)."""

    @classmethod
    def of_run(cls, mode: str = "Use", from_stage: str | None = None) -> CachePolicy:
        """The policy of a run's ``cache`` and ``from_stage`` parameters, rooted at
        ``$RADPS_CACHE_DIR``."""
        if mode not in MODES:
            raise ValueError(f"cache: {mode!r} is not one of {', '.join(MODES)}")
        if from_stage is not None and from_stage not in STAGES:
            raise ValueError(f"from_stage: {from_stage!r} is not one of {', '.join(STAGES)}")
        if mode == "Off":
            return cls(None, mode, from_stage)
        root = os.environ.get(CACHE_DIR_ENV)
        if not root:
            return cls(None, mode, from_stage, f"no stage cache is configured (${CACHE_DIR_ENV})")
        if not locations.is_url(root):
            try:
                Path(root).mkdir(parents=True, exist_ok=True)
                if not os.access(root, os.W_OK):
                    raise PermissionError(f"{root} is not writable")
            except OSError as exc:
                return cls(None, mode, from_stage, f"cannot use the stage cache {root}: {exc}")
        return cls(root, mode, from_stage)

    def using(self) -> CachePolicy:
        """This policy reading whatever it holds (for passes after the one that refreshed)."""
        return replace(self, mode="Use" if self.root else self.mode, from_stage=None)

    def refreshed(self, stage: str) -> bool:
        """``stage`` is recomputed whatever the cache holds."""
        if self.mode == "Refresh":
            return True
        return self.from_stage is not None and STAGES.index(stage) >= STAGES.index(self.from_stage)

    def reads(self, stage: str) -> bool:
        return self.root is not None and not self.refreshed(stage)

    def writes(self, stage: str) -> bool:
        return self.root is not None

    def cache(self) -> StageCache:
        assert self.root is not None, "a policy that reads or writes has a root"
        return StageCache(self.root)


class StageCache:
    """The entries under one root (a local or shared folder, or an object-store URL)."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = str(root)
        self.remote = locations.is_url(self.root)

    def location(self, stage: str, key: str) -> str:
        return locations.join(self.root, stage, key[:2], key)

    def get(self, stage: str, key: str) -> str | None:
        """The committed entry of ``key``, or None. A local entry read is marked used (its
        ``entry.json`` touched), which :meth:`evict` keeps longest."""
        where = self.location(stage, key)
        marker = locations.join(where, ENTRY_FILE)
        if self.remote:
            return where if locations.is_file(marker) else None
        try:
            os.utime(marker)
        except OSError:
            return None
        return where

    @contextlib.contextmanager
    def put(
        self,
        stage: str,
        key: str,
        about: Mapping[str, Any] | None = None,
        *,
        replace: bool = False,
    ) -> Iterator[str]:
        """A folder (or prefix) to write the entry of ``key`` into, committed when the block
        exits without error and dropped otherwise. ``about`` is kept in ``entry.json``. An
        entry already there stays (it holds the same) unless ``replace`` (a Refresh run)."""
        final = self.location(stage, key)
        document = {"stage": stage, "key": key, "created": time.time(), **dict(about or {})}
        text = json.dumps(document, indent=1, default=str).encode()
        if self.remote:
            if replace:
                self.remove(stage, key)
            yield final
            locations.write_bytes(locations.join(final, ENTRY_FILE), text)
            return
        incoming = Path(self.root) / INCOMING / f"{key}.{uuid.uuid4().hex[:8]}"
        incoming.mkdir(parents=True)
        try:
            yield str(incoming)
            (incoming / ENTRY_FILE).write_bytes(text)
            Path(final).parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(incoming, final)
            except OSError:
                if replace or not (Path(final) / ENTRY_FILE).is_file():
                    # refreshed, or a remnant without its marker
                    self.remove(stage, key)
                    os.rename(incoming, final)
        finally:
            shutil.rmtree(incoming, ignore_errors=True)

    def read(self, stage: str, key: str, name: str) -> bytes | None:
        """The file ``name`` of the committed entry of ``key``, or None (no entry, or one
        evicted or unreadable meanwhile)."""
        where = self.get(stage, key)
        if where is None:
            return None
        try:
            return locations.read_bytes(locations.join(where, name))
        except OSError:
            return None

    def write(
        self,
        stage: str,
        key: str,
        name: str,
        content: bytes,
        about: Mapping[str, Any] | None = None,
        *,
        replace: bool = False,
    ) -> None:
        """Commit an entry of ``key`` holding one file, ``name`` (see :meth:`put`). A full or
        read-only cache costs the next run a miss, never this run: it is only logged."""
        try:
            with self.put(stage, key, about, replace=replace) as folder:
                locations.write_bytes(locations.join(folder, name), content)
        except OSError as exc:
            log.warning("could not keep a %s entry in the stage cache: %s", stage, exc)

    def remove(self, stage: str, key: str) -> None:
        """Drop an entry (a Refresh run before it writes the entry anew)."""
        where = self.location(stage, key)
        if self.remote:
            with contextlib.suppress(locations.StorageError, FileNotFoundError):
                locations.filesystem().rm(locations.key_of(where), recursive=True)
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(Path(where) / ENTRY_FILE)  # no reader takes it from here on
        shutil.rmtree(where, ignore_errors=True)

    def entries(self) -> list[Entry]:
        """The committed entries under a local root (an object store's are left to the
        bucket's own lifecycle rules)."""
        out = []
        for marker in Path(self.root).glob(f"*/??/*/{ENTRY_FILE}"):
            folder = marker.parent
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            out.append(
                Entry(
                    folder.parent.parent.name,
                    folder.name,
                    str(folder),
                    size,
                    marker.stat().st_mtime,
                )
            )
        return out

    def evict(
        self,
        max_bytes: float | None = None,
        max_age_seconds: float | None = None,
        now: float | None = None,
    ) -> list[Entry]:
        """Remove entries unused for longer than ``max_age_seconds``, then the least recently
        used ones until the rest fit in ``max_bytes`` (never one used in the last
        :data:`IN_USE_SECONDS`), and killed writers' remnants. Returns the entries removed."""
        if self.remote or not Path(self.root).is_dir():
            return []
        now = time.time() if now is None else now
        incoming = Path(self.root) / INCOMING
        if incoming.is_dir():
            for folder in incoming.iterdir():
                with contextlib.suppress(OSError):
                    if now - folder.stat().st_mtime > INCOMING_GRACE_SECONDS:
                        shutil.rmtree(folder, ignore_errors=True)
        every = self.entries()
        # least recently used first; none a run may still be reading
        entries = sorted((e for e in every if now - e.used > IN_USE_SECONDS), key=lambda e: e.used)
        removed = []
        if max_age_seconds is not None:
            removed = [e for e in entries if now - e.used > max_age_seconds]
        kept = [e for e in entries if e not in removed]
        if max_bytes is not None:
            total = sum(e.bytes for e in every) - sum(e.bytes for e in removed)
            while kept and total > max_bytes:
                oldest = kept.pop(0)
                removed.append(oldest)
                total -= oldest.bytes
        for entry in removed:
            self.remove(entry.stage, entry.key)
        return removed


@dataclass(frozen=True)
class Entry:
    stage: str
    key: str
    location: str
    bytes: int
    used: float
    """When it was last written or read (the mtime of its ``entry.json``)."""


def kept_file(
    policy: CachePolicy | None,
    kind: str,
    stage: str,
    identity: str,
    path: str | os.PathLike[str],
    make: Callable[[Path], object],
) -> str | None:
    """Write the file ``path`` with ``make(path)``, or copy it from the cache where an earlier
    run made it from the same ``identity`` (a content digest): for a product that takes long
    to draw from what the cache already holds (``kind`` ``gains-plot``: the plot of the gain
    solutions), read and refreshed as ``stage`` is. Returns the outcome (None without a
    cache)."""
    path = Path(path)
    if policy is None or policy.root is None:
        make(path)
        return None
    cache = policy.cache()
    key = stage_key(kind, identity, {"name": path.name})
    found = cache.read(kind, key, path.name) if policy.reads(stage) else None
    if found is not None:
        path.write_bytes(found)
        return HIT
    make(path)
    cache.write(kind, key, path.name, path.read_bytes(), replace=policy.refreshed(stage))
    return MISS


def evict_by_settings(root: str, environ: Mapping[str, str] = os.environ) -> list[Entry]:
    """:meth:`StageCache.evict` with the limits of ``$RADPS_CACHE_MAX_GB`` (default 50) and
    ``$RADPS_CACHE_MAX_AGE_DAYS`` (default 30); what a run does once its products are in."""
    gb = float(environ.get(MAX_BYTES_ENV) or DEFAULT_MAX_GB)
    days = float(environ.get(MAX_AGE_ENV) or DEFAULT_MAX_AGE_DAYS)
    return StageCache(root).evict(max_bytes=gb * 1e9, max_age_seconds=days * 86400)
