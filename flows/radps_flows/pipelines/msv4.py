"""Writing MSv4 outputs: a copy of the input processing set with some arrays replaced.

The calibration and flagging pipelines write their results this way, into the *base* data
group (``VISIBILITY``/``FLAG``), like CASA's ``split`` of a corrected column: the output is an
ordinary processing set any pipeline reads as it is. Arrays are computed lazily from the
input store and written chunk by chunk (Dask), aligned to the copy's zarr chunks.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import xarray as xr
import zarr

from radps_flows.core import io as core_io


def output_store(output: str | Path, name: str) -> Path:
    path = Path(output) / name
    return (
        path
        if path.name.endswith(core_io.PS_SUFFIX)
        else path.with_name(path.name + core_io.PS_SUFFIX)
    )


PRODUCT_ATTRIBUTE = "radps_product"
"""Root attribute of a processing set a radps pipeline wrote: readers then require the
manifest beside it (:func:`radps_flows.manifest.verify`)."""


def copy_processing_set(store: str | Path, dest: Path, pipeline: str) -> Path:
    """Copy the processing set ``store`` to ``dest`` (a new path in the run's staging folder),
    marked as the product of ``pipeline``."""
    shutil.copytree(store, dest)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"zarr\.")
        zarr.open_group(str(dest), mode="r+").attrs[PRODUCT_ATTRIBUTE] = pipeline
        zarr.consolidate_metadata(str(dest))
    return dest


def is_product(store: str | Path) -> bool:
    """Whether a radps pipeline wrote the processing set ``store``."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"zarr\.")
            return PRODUCT_ATTRIBUTE in zarr.open_group(str(store), mode="r").attrs
    except Exception:  # not a zarr group: the reader says what it is
        return False


def replace_arrays(dest: Path, partition: str, arrays: dict[str, xr.DataArray], ex) -> None:
    """Overwrite variables of ``partition`` in the processing set ``dest`` with ``arrays``
    (lazy, same dims and shape), through executor ``ex``; group attributes are kept."""
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
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"zarr\.")
        # every chunk written, none compared with the fill value first (see core.io._convert)
        delayed = data.to_zarr(
            str(dest), group=partition, mode="a", compute=False, write_empty_chunks=True
        )
        ex.compute(delayed)
    group = zarr.open_group(str(dest), path=partition, mode="r+")
    group.attrs.clear()
    group.attrs.update(keep)
    zarr.consolidate_metadata(str(dest))
