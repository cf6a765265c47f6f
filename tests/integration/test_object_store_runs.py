"""Pipelines with their data on the tests' S3 store (tests/s3.py: SeaweedFS built from
upstream), run by `radps run` as a user would, the store named by AWS's own variables: the
products equal a local run's, the manifest lists the objects, store failures are errors that
name the field and the URL, and the credential appears nowhere radps writes."""

from __future__ import annotations

import hashlib
import io
import json
import re
import uuid
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from radps_flows.core.synth import SynthesisSpec, synthesize_processing_set
from tests.conftest import RADPS, RadpsServer
from tests.integration.test_local_run import manifest, radps_run
from tests.s3 import S3Server

pytestmark = pytest.mark.integration

CLEAN = {"imsize": 256, "cell_arcsec": 4.0, "clean": True, "niter": 100}


def _fs(server: S3Server):
    import s3fs

    return s3fs.S3FileSystem(**server.storage_options(), skip_instance_cache=True)


def _upload(server: S3Server, local: Path, key: str) -> str:
    url = server.url(key)
    _fs(server).put(f"{local}/", url.removeprefix("s3://"), recursive=True)
    return url


def _env(radps_server: RadpsServer, s3_server: S3Server) -> dict[str, str]:
    store = {k: v for k, v in s3_server.env().items() if k.startswith("AWS_")}
    return radps_server.env(**store)


def _fits_data(content: bytes) -> np.ndarray:
    return fits.getdata(io.BytesIO(content))


@pytest.fixture(scope="module")
def sky_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = SynthesisSpec(n_antennas=8, n_times=16, n_channels=4)
    return Path(synthesize_processing_set(tmp_path_factory.mktemp("sky") / "sky", spec).path)


def test_clean_imaging_on_the_store_equals_the_local_run(
    radps_server: RadpsServer, s3_server: S3Server, sky_set: Path, tmp_path: Path
):
    prefix = f"imaging-{uuid.uuid4().hex[:8]}"
    source = _upload(s3_server, sky_set, f"{prefix}/sky.ps.zarr")
    out = s3_server.url(f"{prefix}/image")
    remote = manifest(tmp_path, "on-s3", "imaging", {"input": source, "output": out, **CLEAN})
    local_out = tmp_path / "image"
    local = manifest(
        tmp_path, "on-disk", "imaging", {"input": str(sky_set), "output": str(local_out), **CLEAN}
    )
    code, output = radps_run(_env(radps_server, s3_server), remote, local)
    assert code == 0, output
    assert f"{out}/restored.fits" in output  # the products are reported where they are

    fs = _fs(s3_server)
    for name in ("image", "restored", "residual", "model", "psf"):
        ours = _fits_data(fs.cat(f"{out}/{name}.fits"))
        reference = fits.getdata(local_out / f"{name}.fits")
        scale = float(np.abs(reference).max())
        np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-6 * scale, err_msg=name)

    document = json.loads(fs.cat(f"{out}/manifest.json"))
    local_document = json.loads((local_out / "manifest.json").read_text())
    entries = {e["path"]: e for e in document["products"]}
    assert set(entries) == {e["path"] for e in local_document["products"]}
    for path, entry in entries.items():  # every object, with its size and checksum
        key = f"{out}/{path}".removeprefix("s3://")
        listing = fs.find(key, detail=True)
        assert sum(v["size"] for v in listing.values()) == entry["size"], path
        if "files" in entry:
            assert len(listing) == entry["files"], path
        else:
            assert hashlib.sha256(fs.cat(key)).hexdigest() == entry["sha256"], path
    assert document["provenance"]["inputs"]["input"]["path"] == source
    assert document["provenance"]["inputs"]["input"]["files"] == len(fs.find(source))
    top = {k.split("/")[3] for k in fs.find(out.removeprefix("s3://"))}
    assert top == set(entries) | {"manifest.json"}  # no claim, nothing half-written
    assert not [k for k in fs.ls(f"{s3_server.bucket}/{prefix}") if ".staging-" in k]
    _assert_nowhere(s3_server.secret_key, radps_server, output)


def test_an_msv2_on_the_store_is_converted_in_scratch_and_written_back(
    radps_server: RadpsServer, s3_server: S3Server, vla_ms: Path, tmp_path: Path
):
    """casacore reads only local tables: the MS comes down to scratch space once, and its
    MSv4 conversion goes up beside the products, where the Dask workers read it."""
    prefix = f"msv2-{uuid.uuid4().hex[:8]}"
    source = _upload(s3_server, vla_ms, f"{prefix}/{vla_ms.name}")
    out = s3_server.url(f"{prefix}/dirty")
    parameters = {"imsize": 256, "cell_arcsec": 1.0}
    remote = manifest(
        tmp_path, "msv2-s3", "imaging", {"input": source, "output": out, **parameters}
    )
    local_out = tmp_path / "dirty"
    local = manifest(
        tmp_path,
        "msv2-disk",
        "imaging",
        {"input": str(vla_ms), "output": str(local_out), **parameters},
    )
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {**_env(radps_server, s3_server), "RADPS_SCRATCH_DIR": str(scratch)}
    code, output = radps_run(env, remote, local)
    assert code == 0, output
    fs = _fs(s3_server)
    ours = _fits_data(fs.cat(f"{out}/image.fits"))
    reference = fits.getdata(local_out / "image.fits")
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-6 * float(np.abs(reference).max()))
    converted = [k for k in fs.find(f"{out}/msv4".removeprefix("s3://")) if k.endswith("zarr.json")]
    assert converted, "the MSv4 conversion was not written back to the store"
    assert list(scratch.iterdir()) == [], "scratch space was not cleaned"


def test_store_problems_are_field_errors_before_anything_runs(
    radps_server: RadpsServer, s3_server: S3Server, tmp_path: Path
):
    """A missing input, a missing bucket and a refused credential, each named with its field
    and URL by `radps validate --check-data` and by `radps run`, all at once."""
    import subprocess

    missing_input = s3_server.url(f"missing-{uuid.uuid4().hex[:8]}.ps.zarr")
    run = manifest(
        tmp_path,
        "bad",
        "imaging",
        {"input": missing_input, "output": "s3://no-such-bucket-radps/out", **CLEAN},
    )
    env = _env(radps_server, s3_server)
    checked = subprocess.run(
        [RADPS, "validate", "--check-data", str(run)],
        env={**env, "COLUMNS": "300"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode != 0
    said = " ".join(checked.stderr.split())
    assert f"spec.parameters.input: {missing_input}: no such object or prefix" in said
    assert (
        "spec.parameters.output: s3://no-such-bucket-radps/out: cannot write there: "
        "the bucket does not exist" in said
    )
    code, output = radps_run(env, run)
    assert code != 0 and "no such object or prefix" in output

    wrong = {**env, "AWS_SECRET_ACCESS_KEY": "not-the-secret-at-all"}
    fine = manifest(
        tmp_path, "fine", "imaging", {"input": missing_input, "output": s3_server.url("x")}
    )
    code, output = radps_run(wrong, fine)
    said = " ".join(output.split())
    assert code != 0
    assert (
        f"spec.parameters.input: {missing_input}: cannot read it: the store refused the "
        "credential" in said
    )
    assert "not-the-secret-at-all" not in said


def _assert_nowhere(secret: str, radps_server: RadpsServer, *outputs: str) -> None:
    """The credential is in no file of the radps home (the Prefect database and its
    write-ahead log, the server's and the runs' logs) and in nothing `radps run` printed."""
    needle = secret.encode()
    found = [
        str(path)
        for path in radps_server.home.rglob("*")
        if path.is_file() and needle in path.read_bytes()
    ]
    assert found == [], f"the S3 secret key was written to {found}"
    for text in outputs:
        assert not re.search(re.escape(secret), text)
    assert any(radps_server.home.rglob("*.db*")), "no Prefect database was searched"
