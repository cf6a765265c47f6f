"""Writing MSv4 outputs: a copy of the input processing set with some arrays replaced.

The calibration and flagging pipelines write their results this way, into the *base* data
group (``VISIBILITY``/``FLAG``), like CASA's ``split`` of a corrected column: the output is an
ordinary processing set any pipeline reads as it is. Arrays are computed lazily from the
input store and written chunk by chunk (Dask), aligned to the copy's zarr chunks.
"""

from __future__ import annotations

import contextlib
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import xarray as xr
import zarr

from radps_flows import locations
from radps_flows.core import io as core_io


def output_store(output: str, name: str) -> str:
    """Where the set ``name`` of an output (a path or URL) goes, with xradio's suffix."""
    return locations.join(
        output, name if name.endswith(core_io.PS_SUFFIX) else name + core_io.PS_SUFFIX
    )


PRODUCT_ATTRIBUTE = "radps_product"
"""Root attribute of a processing set a radps pipeline wrote: readers then require the
manifest beside it (:func:`radps_flows.manifest.verify`)."""


def copy_processing_set(store: str, dest: str, pipeline: str) -> str:
    """Copy the processing set ``store`` to ``dest`` (a new path in the run's staging folder,
    or a new prefix on a store), marked as the product of ``pipeline``. Between two places on
    one object store the copy is the store's own (CopyObject): no byte passes through here."""
    _copy_tree(store, dest)
    with quiet_zarr():
        zarr.open_group(str(dest), mode="r+").attrs[PRODUCT_ATTRIBUTE] = pipeline
        zarr.consolidate_metadata(str(dest))
    return dest


def _copy_tree(source: str, dest: str) -> None:
    if not (locations.is_url(source) or locations.is_url(dest)):
        shutil.copytree(source, dest)
        return
    fs = locations.filesystem()
    with locations.translated(dest, f"copy {source} there"):
        if not locations.is_url(source):
            fs.put(f"{source}/", locations.key_of(dest), recursive=True)
        elif not locations.is_url(dest):
            fs.get(f"{locations.key_of(source)}/", dest, recursive=True)
        else:
            prefix = locations.key_of(source)
            keys = sorted(locations.objects(source))
            fs.copy(keys, [locations.key_of(dest) + k[len(prefix) :] for k in keys])


def is_product(store: str | Path) -> bool:
    """Whether a radps pipeline wrote the processing set ``store``."""
    try:
        with quiet_zarr():
            return PRODUCT_ATTRIBUTE in zarr.open_group(str(store), mode="r").attrs
    except Exception:  # not a zarr group: the reader says what it is
        return False


def replace_arrays(dest: str, partition: str, arrays: dict[str, xr.DataArray], ex) -> None:
    """Overwrite variables of ``partition`` in the processing set ``dest`` with ``arrays``
    (lazy, same dims and shape), through executor ``ex``; group attributes are kept."""
    with quiet_zarr():
        group = zarr.open_group(str(dest), path=partition, mode="r+")
        keep = dict(group.attrs)
        chunks = {}
        for name, da in arrays.items():
            target = zarr.open_array(str(dest), path=f"{partition}/{name}", mode="r")
            chunks[name] = dict(zip(da.dims, target.chunks, strict=True))
        data = xr.Dataset(
            {
                name: da.reset_coords(drop=True)
                .chunk(chunks[name])
                .drop_vars(list(da.coords), errors="ignore")
                for name, da in arrays.items()
            }
        )
        # every chunk written, none compared with the fill value first (see core.io._convert)
        delayed = data.to_zarr(
            str(dest), group=partition, mode="a", compute=False, write_empty_chunks=True
        )
        ex.compute(delayed)
        group = zarr.open_group(str(dest), path=partition, mode="r+")
        group.attrs.clear()
        group.attrs.update(keep)
        zarr.consolidate_metadata(str(dest))


@contextlib.contextmanager
def quiet_zarr() -> Iterator[None]:
    """Without the warnings zarr 3 gives for what xradio's sets hold on purpose (fixed-length
    strings, consolidated metadata): they say nothing about the user's data."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"zarr\.")
        warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification")
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        yield
