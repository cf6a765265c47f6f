"""uvfits, uvh5 and Miriad inputs (pyuvdata's formats) image as the MeasurementSet they came
from: the real VLA set, written in each format with pyuvdata itself, through the same
conversion a PipelineRun's input goes through; and unreadable inputs get clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from radps_flows.core.imager import make_dirty_image
from radps_flows.core.io import InputDataError, detect_input_kind, open_processing_set
from tests.conftest import RadpsServer
from tests.integration.test_local_run import manifest, radps_run

pytestmark = pytest.mark.integration

WRITE = """
import sys
from radps_flows.core.uvdata_convert import _offline_sites
_offline_sites()
from pyuvdata import UVData
data = UVData.from_file(sys.argv[1])
data.write_uvfits(sys.argv[2] + "/vla.uvfits")
data.write_uvh5(sys.argv[2] + "/vla.uvh5")
data.write_miriad(sys.argv[2] + "/vla.miriad")
"""
FORMATS = {"vla.uvfits": "uvfits", "vla.uvh5": "uvh5", "vla.miriad": "miriad"}


@pytest.fixture(scope="module")
def written(vla_ms: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The VLA MS in pyuvdata's formats, written by pyuvdata (in a child process: its
    casacore must not meet xradio's arcae in this one)."""
    folder = tmp_path_factory.mktemp("uvdata")
    subprocess.run([sys.executable, "-c", WRITE, str(vla_ms), str(folder)], check=True)
    return folder


@pytest.fixture(scope="module")
def from_the_ms(vla_ms: Path, tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    datasets = open_processing_set(vla_ms, cache_dir=tmp_path_factory.mktemp("ms-cache"))
    return make_dirty_image(datasets, imsize=512, cell_arcsec=0.35).values


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_each_format_images_as_the_measurement_set(written, from_the_ms, tmp_path, name):
    assert detect_input_kind(written / name) == FORMATS[name]
    datasets = open_processing_set(written / name, cache_dir=tmp_path)
    image = make_dirty_image(datasets, imsize=512, cell_arcsec=0.35)
    peak = from_the_ms.max()
    np.testing.assert_allclose(image.values, from_the_ms, rtol=0, atol=1e-6 * peak)
    assert image.attrs["object"] == "J1008+0730" and image.attrs["telescope"] == "EVLA"
    again = open_processing_set(written / name, cache_dir=tmp_path)  # converted once
    assert [d.attrs["partition_name"] for d in again] == [
        d.attrs["partition_name"] for d in datasets
    ]


def test_a_uvfits_pipelinerun_matches_casa(
    radps_server: RadpsServer, written: Path, from_the_ms: np.ndarray, tmp_path: Path
):
    """What a PipelineRun runs: `radps run` of the imaging pipeline on the uvfits file."""
    run = manifest(
        tmp_path,
        "uvfits-image",
        "imaging",
        {
            "input": str(written / "vla.uvfits"),
            "output": str(tmp_path / "img"),
            "imsize": 512,
            "cell_arcsec": 0.35,
        },
    )
    code, output = radps_run(radps_server.env(), run)
    assert code == 0, output
    ours = fits.getdata(tmp_path / "img" / "image.fits")[0, 0]
    assert np.unravel_index(np.argmax(ours), ours.shape) == (39, 480)  # CASA's peak pixel
    np.testing.assert_allclose(ours, from_the_ms, rtol=0, atol=1e-6 * from_the_ms.max())


def test_unreadable_inputs_get_clear_errors(tmp_path):
    broken = tmp_path / "broken.uvfits"
    broken.write_bytes(b"SIMPLE  =                    T" + b" " * 3000)
    with pytest.raises(InputDataError, match=r"broken.uvfits: pyuvdata could not convert"):
        open_processing_set(broken, cache_dir=tmp_path / "cache")
    notes = tmp_path / "notes.txt"
    notes.write_text("not data")
    with pytest.raises(InputDataError, match="a file, but not one radps reads"):
        detect_input_kind(notes)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputDataError, match="Miriad data set"):
        detect_input_kind(tmp_path / "empty")


def test_a_mir_folder_goes_to_pyuvdata_s_mir_reader(tmp_path):
    """An SMA MIR data set is a folder of in_read, bl_read, sp_read, ... files. No good one
    can be made here (pyuvdata reads MIR but cannot write it, and its test data are not on
    PyPI), so this checks the dispatch: the folder is taken for MIR and handed to pyuvdata's
    MIR reader, whose refusal of a damaged one is a clear error."""
    mir = tmp_path / "sma_track.mir"
    mir.mkdir()
    for name in ("in_read", "bl_read", "sp_read", "codes_read", "eng_read", "we_read"):
        (mir / name).write_bytes(b"\0" * 16)
    assert detect_input_kind(mir) == "mir"
    with pytest.raises(InputDataError, match=r"sma_track.mir: pyuvdata could not convert this mir"):
        open_processing_set(mir, cache_dir=tmp_path / "cache")
