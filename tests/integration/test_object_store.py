"""The tests' S3 store (tests/s3.py: SeaweedFS built from upstream) as radps' libraries use it:
zarr through xarray, with explicit options and with AWS's environment only (as xradio's own
s3fs filesystem finds it), and a refused credential."""

from __future__ import annotations

import subprocess
import sys
import uuid

import numpy as np
import pytest
import xarray as xr

from tests.s3 import S3Server

pytestmark = pytest.mark.integration


def _dataset() -> xr.Dataset:
    rng = np.random.default_rng(7)
    vis = rng.normal(size=(40, 30, 8)) + 1j * rng.normal(size=(40, 30, 8))
    return xr.Dataset(
        {"VISIBILITY": (("time", "baseline_id", "frequency"), vis)},
        coords={"time": np.arange(40.0), "frequency": 1.4e9 + 1e6 * np.arange(8)},
    )


def test_zarr_round_trips_through_the_store_chunk_by_chunk(s3_server: S3Server):
    url = s3_server.url(f"round-trip-{uuid.uuid4().hex[:8]}.zarr")
    original = _dataset()
    options = s3_server.storage_options()
    original.chunk({"time": 10}).to_zarr(url, storage_options=options, mode="w")
    again = xr.open_zarr(url, storage_options=options, chunks={})
    assert again["VISIBILITY"].chunks[0] == (10, 10, 10, 10)  # read lazily, a chunk at a time
    xr.testing.assert_identical(again.load(), original)

    import s3fs

    fs = s3fs.S3FileSystem(**options)
    chunk_keys = fs.ls(f"{url}/VISIBILITY/c/")
    assert len(chunk_keys) == 4, chunk_keys


def test_a_process_finds_the_store_through_aws_environment_alone(s3_server: S3Server):
    """What xradio does: `s3fs.S3FileSystem()` with no options, the endpoint and keys from
    AWS's own variables."""
    url = s3_server.url(f"env-{uuid.uuid4().hex[:8]}.zarr")
    _dataset().to_zarr(url, storage_options=s3_server.storage_options(), mode="w")
    probe = (
        "import sys, s3fs, xarray as xr\n"
        "fs = s3fs.S3FileSystem()\n"
        f"ds = xr.open_zarr(fs.get_mapper({url!r}))\n"
        "print(ds.sizes['time'], float(abs(ds['VISIBILITY']).sum()) > 0)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], env=s3_server.env(), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["40", "True"]


def test_a_wrong_secret_is_refused(s3_server: S3Server):
    import s3fs

    fs = s3fs.S3FileSystem(**s3_server.storage_options(secret="not-the-secret"))
    with pytest.raises(PermissionError):
        fs.ls(s3_server.bucket)
