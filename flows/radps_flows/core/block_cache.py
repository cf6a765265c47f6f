"""A block's flags and gain solutions in the stage cache (:mod:`radps_flows.stage_cache`).

The flags and gains of a block are made inside the one imaging pass, where the block is
processed (see :mod:`radps_flows.core.blocks`), so they are cached there too, per block, keyed
on the block's loaded content: a hit applies the stored flags and gains in the same pass, and
the data are still read once. Flags are kept as a bitmask (one bit per visibility), gains as
their arrays; both are small beside the block.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from radps_flows.stage_cache import (
    HIT,
    MISS,
    REFRESHED,
    CachePolicy,
    array_digest,
    dataset_digest,
    stage_key,
)

FLAGS_FILE = "flags.npz"
GAINS_FILE = "gains.npz"


def flag_parameters(data_group: str, threshold: float, flagger: str) -> dict[str, Any]:
    return {"data_group": data_group, "threshold": float(threshold), "flagger": flagger}


def model_identity(model: Any) -> Any:
    """What identifies a calibration model: its point sources, or a model image's content."""
    if isinstance(model, xr.DataArray):
        return {"image": array_digest({"model": model}), "cell_rad": model.attrs.get("cell_rad")}
    return [dataclasses.asdict(m) if dataclasses.is_dataclass(m) else m for m in model]


class BlockMemo:
    """The cache entries of one loaded block under ``policy``: what it reads and writes, and
    the outcome of each stage (:attr:`outcomes`)."""

    def __init__(self, policy: CachePolicy, block: xr.Dataset):
        self.policy = policy
        self.store = policy.cache()
        self.digest = dataset_digest(block)
        self.outcomes: dict[str, str] = {}
        self._flags_key: str | None = None

    def flags_key(self, parameters: Mapping[str, Any]) -> str:
        self._flags_key = stage_key("flagging", self.digest, parameters)
        return self._flags_key

    def gains_key(self, parameters: Mapping[str, Any]) -> str:
        """Keyed on the flags' key where the block was flagged (the solve reads the flags)."""
        return stage_key("calibration", self._flags_key or self.digest, parameters)

    def flags(self, key: str) -> np.ndarray | None:
        """The cached flags (dims in the block's ORDER), or None (then :meth:`keep_flags`)."""
        found = self._read("flagging", key, FLAGS_FILE)
        if found is None:
            return None
        shape = tuple(int(n) for n in found["shape"])
        bits = np.unpackbits(found["bits"], count=int(np.prod(shape)))
        return bits.reshape(shape).astype(bool)

    def keep_flags(self, key: str, flags: np.ndarray) -> None:
        bits = np.packbits(np.ascontiguousarray(flags, dtype=bool).ravel())
        self._write("flagging", key, FLAGS_FILE, {"bits": bits, "shape": np.array(flags.shape)})

    def gains(self, key: str) -> xr.Dataset | None:
        found = self._read("calibration", key, GAINS_FILE)
        return None if found is None else unpack_dataset(found)

    def keep_gains(self, key: str, gains: xr.Dataset) -> None:
        self._write("calibration", key, GAINS_FILE, pack_dataset(gains))

    def _read(self, stage: str, key: str, name: str) -> Mapping[str, np.ndarray] | None:
        if not self.policy.reads(stage):
            self.outcomes[stage] = REFRESHED
            return None
        content = self.store.read(stage, key, name)
        try:
            found = (
                None if content is None else dict(np.load(io.BytesIO(content), allow_pickle=False))
            )
        except (ValueError, KeyError, OSError):  # not an archive of ours
            found = None
        self.outcomes[stage] = MISS if found is None else HIT
        return found

    def _write(self, stage: str, key: str, name: str, arrays: Mapping[str, np.ndarray]) -> None:
        if not self.policy.writes(stage):
            return
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        replace = self.policy.refreshed(stage)
        about = {"block": self.digest}
        self.store.write(stage, key, name, buffer.getvalue(), about, replace=replace)


def pack_dataset(ds: xr.Dataset) -> dict[str, np.ndarray]:
    """A small dataset (a gain table) as named arrays, with its dims and attributes as JSON."""
    arrays: dict[str, np.ndarray] = {}
    layout: dict[str, Any] = {"vars": {}, "coords": {}, "attrs": ds.attrs}
    for kind, items in (("vars", ds.data_vars.items()), ("coords", ds.coords.items())):
        for name, value in items:
            arrays[f"{kind}:{name}"] = np.asarray(value.values)
            layout[kind][name] = list(value.dims)
    arrays["layout"] = np.array(json.dumps(layout))
    return arrays


def unpack_dataset(arrays: Mapping[str, np.ndarray]) -> xr.Dataset:
    layout = json.loads(str(arrays["layout"]))
    data = {n: (dims, arrays[f"vars:{n}"]) for n, dims in layout["vars"].items()}
    coords = {n: (dims, arrays[f"coords:{n}"]) for n, dims in layout["coords"].items()}
    return xr.Dataset(data, coords=coords, attrs=layout["attrs"])
