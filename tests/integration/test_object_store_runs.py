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

from radps_flows.core.io import open_processing_set
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


SOURCES = [{"flux_jy": 1.0}, {"flux_jy": 0.5, "offset_ra_arcsec": 60}]


def _chain(folder: Path, base: str, tag: str) -> list[Path]:
    """synthesize -> flagging -> calibration -> imaging, each reading the one before, all
    under ``base`` (a folder or an s3:// prefix)."""
    sky = f"{base}/sky.ps.zarr"
    synthesis = {
        "output": sky,
        "n_antennas": 12,
        "n_times": 20,
        "n_channels": 16,
        "sources": SOURCES,
        "gain_amplitude_rms": 0.1,
        "gain_phase_rms_deg": 30,
        "rfi_fraction": 0.03,
    }
    imaging = {"imsize": 256, "cell_arcsec": 2.0, "clean": True, "threshold_jy": 0.001}
    return [
        manifest(folder, f"synth-{tag}", "synthesize", synthesis),
        manifest(folder, f"flag-{tag}", "flagging", {"input": sky, "output": f"{base}/f"}),
        manifest(
            folder,
            f"cal-{tag}",
            "calibration",
            {"input": f"{base}/f/flagged.ps.zarr", "output": f"{base}/c", "model": SOURCES},
        ),
        manifest(
            folder,
            f"img-{tag}",
            "imaging",
            {"input": f"{base}/c/calibrated.ps.zarr", "output": f"{base}/i", **imaging},
        ),
    ]


def test_the_whole_chain_on_the_store_equals_the_local_one(
    radps_server: RadpsServer,
    s3_server: S3Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    """Every input and output on s3://: the set is synthesized there, flagged and calibrated
    into new sets there (each Dask block writing its chunks), and imaged from there."""
    base = s3_server.url(f"chain-{uuid.uuid4().hex[:8]}")
    local = tmp_path / "local"
    runs = _chain(tmp_path, base, "s3") + _chain(tmp_path, str(local), "disk")
    code, output = radps_run(_env(radps_server, s3_server), *runs, timeout=600)
    assert code == 0, output
    assert f"{base}/i/restored.fits" in output  # the products are reported where they are
    assert "Warning" not in output

    for key, value in _env(radps_server, s3_server).items():  # to read the sets here
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    for store in ("f/flagged.ps.zarr", "c/calibrated.ps.zarr"):  # the same sets, bit for bit
        (ours,) = open_processing_set(f"{base}/{store}")
        (reference,) = open_processing_set(local / store)
        for name in ("VISIBILITY", "FLAG", "WEIGHT", "UVW"):
            np.testing.assert_array_equal(ours[name].values, reference[name].values, name)
    fs = _fs(s3_server)
    # float32 images summed from blocks that finish in any order: the PSF of one set imaged
    # twice differs by ~3e-6 of its peak, and CLEAN subtracts it scaled by the model's flux,
    # so every image is compared on the flux scale of the data (the dirty image's peak), not
    # on its own (a residual's peak is a thousandth of it: the two runs' residuals differed
    # by 1.7e-7 Jy, 1.7e-4 of that, once in 6 runs).
    flux = float(np.abs(fits.getdata(local / "i" / "image.fits")).max())
    for name in ("image", "restored", "residual", "model", "psf"):
        ours = _fits_data(fs.cat(f"{base}/i/{name}.fits"))
        reference = fits.getdata(local / "i" / f"{name}.fits")
        scale = 1.0 if name == "psf" else flux  # the PSF's peak is 1
        np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-5 * scale, err_msg=name)
    restored = _fits_data(fs.cat(f"{base}/i/restored.fits"))[0, 0]
    assert restored.max() == pytest.approx(1.0, rel=0.01)  # the calibrated source's flux

    for folder in ("f", "c", "i"):
        _assert_manifest_lists_the_objects(fs, f"{base}/{folder}", local / folder)
    beside = {k.rsplit("/", 1)[1] for k in fs.ls(base.removeprefix("s3://"))}
    assert {"sky.ps.zarr", "sky.truth.json", "sky.manifest.json"} <= beside
    leftovers = [k for k in fs.find(base.removeprefix("s3://")) if "staging-" in k or "claim" in k]
    assert leftovers == []
    _assert_nowhere(s3_server.secret_key, radps_server, output)


def _assert_manifest_lists_the_objects(fs, output: str, local: Path) -> None:
    document = json.loads(fs.cat(f"{output}/manifest.json"))
    local_document = json.loads((local / "manifest.json").read_text())
    entries = {e["path"]: e for e in document["products"]}
    assert set(entries) == {e["path"] for e in local_document["products"]}
    for path, entry in entries.items():  # every object, with its size and checksum
        key = f"{output}/{path}".removeprefix("s3://")
        listing = fs.find(key, detail=True)
        assert sum(v["size"] for v in listing.values()) == entry["size"], path
        if "files" in entry:
            assert len(listing) == entry["files"], path
        else:
            assert hashlib.sha256(fs.cat(key)).hexdigest() == entry["sha256"], path
    source = document["provenance"]["inputs"]["input"]
    assert source["path"].startswith("s3://") and source["files"] > 0
    top = {k[len(output) - len("s3://") + 1 :].split("/")[0] for k in fs.find(output)}
    assert top == set(entries) | {"manifest.json"}  # nothing half-written beside them


def test_an_msv2_on_the_store_is_converted_in_scratch_and_written_back(
    radps_server: RadpsServer, s3_server: S3Server, vla_ms: Path, tmp_path: Path
):
    """casacore reads only local tables: the MS comes down to scratch space once, and its
    MSv4 conversion goes up beside the products, where the Dask workers read it."""
    prefix = f"msv2-{uuid.uuid4().hex[:8]}"
    source = _upload(s3_server, vla_ms, f"{prefix}/{vla_ms.name}")
    out = s3_server.url(f"{prefix}/dirty")
    parameters = {"imsize": 256, "cell_arcsec": 1.0}
    # without the stage cache, the conversion goes into the output, on the store
    remote = manifest(
        tmp_path,
        "msv2-s3",
        "imaging",
        {"input": source, "output": out, "cache": "Off", **parameters},
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
