"""The stage cache through `radps run` (real Prefect server, real Dask, real data): a second
run reuses the conversion, flags and gains it may, and exactly those; `radps rerun --from`;
a run killed mid-stage leaves no entry. Each test has a cache folder of its own
($RADPS_CACHE_DIR in the client's environment, which its flow run takes)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import xarray as xr
import zarr
from astropy.io import fits

from radps_flows.core import synth
from radps_flows.stage_cache import ENTRY_FILE, INCOMING
from tests.conftest import RADPS, RadpsServer
from tests.integration.test_local_run import manifest, radps_command, radps_run

pytestmark = pytest.mark.integration

VLA_STEPS = {"cell_arcsec": 0.35, "flag": "mad", "calibrate": True, "refant": "2"}


def _status(env: dict[str, str], name: str) -> dict[str, Any]:
    code, out, err = radps_command(env, "get", name, "-o", "json", timeout=60)
    assert code == 0, out + err
    return json.loads(out)["status"]


def _cache_line(env: dict[str, str], name: str) -> str:
    code, out, _ = radps_command(env, "logs", name, timeout=60)
    assert code == 0
    (line,) = [x for x in out.splitlines() if "stage cache (" in x]
    return line


def _entries(cache: Path, stage: str) -> list[Path]:
    return sorted(cache.glob(f"{stage}/??/*/{ENTRY_FILE}"))


def test_a_second_imaging_run_with_only_imsize_changed_reuses_every_stage(
    radps_server: RadpsServer, vla_ms: Path, tmp_path: Path
):
    """The real VLA set flagged and calibrated, then imaged again at another size: the
    conversion, the flags and the gains come from the cache (status and log say so), the
    gain table is identical, and the image equals a cold run's."""
    env = radps_server.env(RADPS_CACHE_DIR=str(tmp_path / "cache"))
    runs = {
        "first": {"imsize": 256},
        "second": {"imsize": 512},
        "cold": {"imsize": 512, "cache": "Off"},
    }
    for name, changes in runs.items():
        parameters = {"input": str(vla_ms), "output": str(tmp_path / name), **VLA_STEPS}
        code, output = radps_run(env, manifest(tmp_path, name, "imaging", parameters | changes))
        assert code == 0, output
    assert _status(env, "first")["cache"] == dict.fromkeys(
        ("conversion", "flagging", "calibration"), "miss"
    )
    assert _status(env, "second")["cache"] == dict.fromkeys(
        ("conversion", "flagging", "calibration"), "hit"
    )
    assert "cache" not in _status(env, "cold")
    assert "conversion hit; flagging hit (1 of 1 blocks); calibration hit" in _cache_line(
        env, "second"
    )
    assert not (tmp_path / "second" / "msv4").exists(), "the conversion is in the cache"
    assert (tmp_path / "cold" / "msv4").is_dir(), "without the cache, in the output"

    first = xr.open_datatree(tmp_path / "first" / "gains.zarr", engine="zarr")
    second = xr.open_datatree(tmp_path / "second" / "gains.zarr", engine="zarr")
    for group in first.children:
        np.testing.assert_array_equal(first[group]["GAIN"].values, second[group]["GAIN"].values)
        np.testing.assert_array_equal(first[group]["FLAG"].values, second[group]["FLAG"].values)
    cached = fits.getdata(tmp_path / "second" / "image.fits")
    cold = fits.getdata(tmp_path / "cold" / "image.fits")
    np.testing.assert_allclose(cached, cold, rtol=0, atol=1e-6 * float(np.abs(cold).max()))


@pytest.fixture
def blocks_set(tmp_path: Path) -> Path:
    """A synthetic processing set with gains and RFI, in 4 chunks of 10 times of about 1 MB
    each (16 antennas, 55 channels, 2 polarisations): 4 blocks of ``block_mb`` 1."""
    spec = synth.SynthesisSpec(
        n_antennas=16,
        n_times=40,
        n_channels=55,
        chunk_times=10,
        gain_amplitude_rms=0.1,
        gain_phase_rms_deg=20.0,
        rfi_fraction=0.02,
        rfi_amplitude_jy=50.0,
        noise_jy=0.05,
        seed=3,
    )
    return Path(synth.synthesize_processing_set(tmp_path / "blocks", spec).path)


def test_an_edited_visibility_or_parameter_misses_exactly_the_stages_that_take_it(
    radps_server: RadpsServer, blocks_set: Path, tmp_path: Path
):
    env = radps_server.env(RADPS_CACHE_DIR=str(tmp_path / "cache"))
    base = {
        "input": str(blocks_set),
        "imsize": 128,
        "cell_arcsec": 10.0,
        "flag": "mad",
        "calibrate": True,
        "refant": "A00_N01",
        "block_mb": 1,  # one chunk of 10 times per block
    }

    def run(name: str, **changes: Any) -> dict[str, str]:
        parameters = {**base, "output": str(tmp_path / name), **changes}
        code, output = radps_run(env, manifest(tmp_path, name, "imaging", parameters))
        assert code == 0, output
        return _status(env, name)["cache"]

    assert run("cold") == {"flagging": "miss", "calibration": "miss"}
    assert "flagging miss (0 of 4 blocks)" in _cache_line(env, "cold")
    assert len(_entries(tmp_path / "cache", "flagging")) == 4

    vis = zarr.open_group(str(blocks_set), mode="r+")["blocks_0"]["VISIBILITY"]
    vis[12, 0, 0, 0] = vis[12, 0, 0, 0] + 0.5  # one visibility of the second block
    assert run("edited") == {"flagging": "partial", "calibration": "partial"}
    line = _cache_line(env, "edited")
    assert "flagging partial (3 of 4 blocks)" in line and "calibration partial (3 of 4" in line

    assert run("threshold", flag_threshold=4.0) == {"flagging": "miss", "calibration": "miss"}
    assert run("refant", refant="A01_E01") == {"flagging": "hit", "calibration": "miss"}
    assert run("imsize", imsize=256) == {"flagging": "hit", "calibration": "hit"}

    # a rerun from calibration takes the flags from the cache and solves again
    code, out, err = radps_command(
        env, "rerun", "imsize", "--from", "calibration", "-p", "overwrite=true", timeout=300
    )
    assert code == 0, out + err
    (rerun,) = re.findall(r"flow run (imsize-[a-z0-9]{5})", out + err)
    got = json.loads(radps_command(env, "get", rerun, "-o", "json", timeout=60)[1])
    assert got["spec"]["rerunOf"] == "imsize" and got["spec"]["fromStage"] == "calibration"
    assert got["status"]["cache"] == {"flagging": "hit", "calibration": "refreshed"}

    # a stage the earlier run never committed (gone from the cache) is recomputed, and said so
    for marker in _entries(tmp_path / "cache", "flagging"):
        marker.unlink()
    code, out, err = radps_command(
        env, "rerun", "imsize", "--from", "imaging", "-p", "overwrite=true", timeout=300
    )
    assert code == 0, out + err
    (rerun,) = re.findall(r"flow run (imsize-[a-z0-9]{5})", out + err)
    # the flags are made again as they were: the gains keyed on them are still there
    assert _status(env, rerun)["cache"] == {"flagging": "miss", "calibration": "hit"}
    log = radps_command(env, "logs", rerun, timeout=60)[1]
    assert "flagging: not in the cache (the earlier run never committed it" in log


def test_a_run_killed_mid_conversion_leaves_no_entry(
    radps_server: RadpsServer, vla_ms: Path, tmp_path: Path
):
    """SIGKILL to the flow run while it converts into the cache: no conversion entry, only
    an incoming folder that no reader takes; the next run converts again and commits."""
    cache = tmp_path / "cache"
    env = radps_server.env(RADPS_CACHE_DIR=str(cache))
    parameters = {"input": str(vla_ms), "output": str(tmp_path / "out"), "imsize": 256}
    run = manifest(tmp_path, "killed", "imaging", parameters)
    server = psutil.Process(radps_server.process.pid)
    before = {p.pid for p in server.children(recursive=True)}
    with open(tmp_path / "run.out", "w") as out:
        client = subprocess.Popen(
            [RADPS, "run", str(run)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 120
    while not list((cache / INCOMING).glob("*/*.ps.zarr")):
        assert client.poll() is None, (tmp_path / "run.out").read_text()
        assert time.monotonic() < deadline, "the conversion never started"
        time.sleep(0.02)
    for process in server.children(recursive=True):
        if process.pid not in before:
            process.kill()  # the flow run, forked from the server's warm process
    os.killpg(client.pid, signal.SIGKILL)
    client.wait(30)
    assert _entries(cache, "conversion") == []
    assert list((cache / INCOMING).iterdir()), "the killed conversion's folder"

    again = manifest(tmp_path, "again", "imaging", parameters | {"overwrite": True})
    code, output = radps_run(env, again)
    assert code == 0, output
    assert _status(env, "again")["cache"] == {"conversion": "miss"}
    assert len(_entries(cache, "conversion")) == 1
