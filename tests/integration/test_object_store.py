"""The tests' S3 store (tests/s3.py: SeaweedFS built from upstream) as radps' libraries use it:
zarr through xarray, with explicit options and with AWS's environment only (as xradio's own
s3fs filesystem finds it), and a refused credential."""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import UTC, datetime

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


# --- outputs that appear whole or not at all, without a rename (radps_flows.object_output) ---


@pytest.fixture
def store_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """This process configured as a flow run is: AWS's variables name the store."""
    for key, value in s3_server.env().items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    return s3_server


def _write(url: str, content: bytes) -> None:
    from radps_flows import locations

    locations.filesystem().pipe_file(locations.key_of(url), content)


def _commit(output, files: dict[str, bytes], products: list[str] | None = None) -> None:
    """What a flow's transaction does: write the products' files, place them, manifest last
    (``products``: the files, or folders of them)."""
    from radps_flows import locations, manifest

    for name, content in files.items():
        _write(locations.join(output.path, name), content)
    products = list(files) if products is None else products
    output.place()
    where = output.manifest_location(manifest.MANIFEST_NAME)
    document = manifest.build(
        pipeline="test",
        parameters={},
        products=[
            manifest.Product(n, output.current(locations.join(output.path, n)), "file")
            for n in products
        ],
        root=locations.parent(where),
        inputs={},
        started=datetime.now(UTC),
        flow_run_id=output.run_id,
        run={},
    )
    output.commit_manifest(where, document)


def _objects(url: str) -> list[str]:
    from radps_flows import locations

    key = locations.key_of(url)
    return sorted(k[len(key) + 1 :] for k in locations.objects(url))


def test_a_new_output_is_committed_by_its_manifest_and_claimed_while_written(store_env):
    from radps_flows import manifest
    from radps_flows.object_output import ObjectOutput, OutputClaimedError

    final = store_env.url(f"out-{uuid.uuid4().hex[:8]}")
    first = ObjectOutput(final, overwrite=False, run_id="run-one")
    assert first.begin() == final  # a new output is written in place: no copy
    parent, name = final.rsplit("/", 1)
    assert f".{name}.radps-claim.json" in _objects(parent)  # beside it: zarr wants it empty
    assert _objects(final) == []
    with pytest.raises(OutputClaimedError, match="being written by flow run run-one"):
        ObjectOutput(final, overwrite=True, run_id="run-two").begin()
    _write(f"{final}/a.fits", b"x" * 10)
    with pytest.raises(manifest.ProductError, match=r"no manifest\.json beside it"):
        manifest.verify(f"{final}/a.fits")
    _commit(first, {"a.fits": b"a" * 100, "b/zarr.json": b"{}"}, ["a.fits", "b"])
    assert _objects(final) == ["a.fits", "b/zarr.json", "manifest.json"]
    assert manifest.verify(f"{final}/a.fits")["size"] == 100
    assert manifest.verify(f"{final}/b")["files"] == 1

    _write(f"{final}/a.fits", b"a" * 99)  # altered after the commit
    with pytest.raises(manifest.ProductError, match="its size is 99"):
        manifest.verify(f"{final}/a.fits")


def test_a_failed_run_leaves_nothing_and_a_killed_ones_leftovers_are_cleared(store_env):
    from radps_flows.object_output import ObjectOutput
    from radps_flows.staging import OutputExistsError

    final = store_env.url(f"out-{uuid.uuid4().hex[:8]}")
    failed = ObjectOutput(final, overwrite=False, run_id="failed")
    failed.begin()
    _write(f"{final}/image.fits", b"half")
    failed.rollback()
    assert _objects(final) == []
    assert not failed.open

    killed = ObjectOutput(final, overwrite=False, run_id="killed")
    killed.begin()
    _write(f"{final}/image.zarr/c/0", b"half")  # then SIGKILL: no rollback
    killed.clear_abandoned("killed")  # what the next run does once Prefect says it ended
    assert _objects(final) == []

    _write(f"{final}/notes.txt", b"someone else's")
    with pytest.raises(OutputExistsError, match="not a radps output"):
        ObjectOutput(final, overwrite=True, run_id="late").begin()
    assert _objects(final) == ["notes.txt"]


def test_overwrite_keeps_the_old_output_until_the_new_one_commits(store_env):
    from radps_flows import manifest
    from radps_flows.object_output import ObjectOutput
    from radps_flows.staging import OutputExistsError

    final = store_env.url(f"out-{uuid.uuid4().hex[:8]}")
    _commit(_begun(final, False, "old"), {"a.fits": b"old", "old-only.fits": b"o"})
    with pytest.raises(OutputExistsError, match="already exists"):
        ObjectOutput(final, overwrite=False, run_id="again").begin()

    failing = _begun(final, True, "failing")
    assert failing.path != final  # a replacement is written beside the old output
    _write(f"{failing.path}/a.fits", b"new but never committed")
    failing.rollback()
    assert manifest.verify(f"{final}/a.fits")["size"] == 3
    assert _objects(final) == ["a.fits", "manifest.json", "old-only.fits"]

    replacing = _begun(final, True, "new")
    _commit(replacing, {"a.fits": b"newer", "c/zarr.json": b"{}"}, ["a.fits", "c"])
    assert _objects(final) == ["a.fits", "c/zarr.json", "manifest.json"]
    assert manifest.verify(f"{final}/a.fits")["size"] == 5
    parent = final.rsplit("/", 1)[0]
    assert not [k for k in _objects(parent) if ".staging-" in k]


def _begun(final: str, overwrite: bool, run_id: str):
    from radps_flows.object_output import ObjectOutput

    output = ObjectOutput(final, overwrite=overwrite, run_id=run_id)
    output.begin()
    return output


def test_store_failures_are_errors_in_words(store_env, monkeypatch: pytest.MonkeyPatch):
    from radps_flows import locations

    with pytest.raises(locations.MissingLocation, match="the bucket does not exist"):
        locations.check_readable("s3://no-such-bucket/x")
    with pytest.raises(locations.MissingLocation, match="no such object"):
        locations.check_readable(store_env.url("nothing-here"))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(locations.StorageError, match="refused the credential") as refused:
        locations.check_readable(store_env.url("x"))
    assert "not-the-secret" not in str(refused.value)
