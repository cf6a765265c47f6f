"""The `imaging` pipeline with flag, calibrate and clean steps, and the standalone `calibration`
and `flagging` pipelines, through `radps run` (real Prefect server, real Dask LocalCluster).

The VLA example manifest must reproduce CASA 6.7's calibrated CLEAN (shared/reference/
casa-vla.json): peak 1.00486 Jy within 0.5% at pixel (256, 256), fitted beam within 2%,
residual rms within 10% of 0.01545 in the off-source box 20..140.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import xarray as xr
import yaml
from astropy.io import fits

from radps_flows.core.io import open_processing_set
from tests.conftest import RadpsServer, shared_dir
from tests.integration.test_local_run import (
    flow_run_ids,
    manifest,
    prefect_flow_run,
    radps_run,
)

pytestmark = pytest.mark.integration

OFF = slice(20, 141)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def casa() -> dict:
    path = shared_dir() / "reference" / "casa-vla.json"
    if not path.is_file():
        pytest.skip(f"CASA reference not found: {path}")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def vla_run(
    radps_server: RadpsServer, vla_ms: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """The VLA example, as `radps run` runs it, with every image format: its output folder
    and `radps run`'s output."""
    tmp_path = tmp_path_factory.mktemp("vla-run")
    document = yaml.safe_load(
        (REPO / "manifests" / "examples" / "vla-calibrated-clean.yaml").read_text()
    )
    document["spec"]["parameters"].update(
        input=str(vla_ms), output=str(tmp_path / "vla"), image_formats=["fits", "zarr", "casa"]
    )
    path = tmp_path / "vla.yaml"
    path.write_text(yaml.safe_dump(document))
    code, output = radps_run(radps_server.env(), path)
    assert code == 0, output
    return tmp_path / "vla", output


def test_vla_calibrated_clean_example_matches_casa(
    radps_server: RadpsServer, vla_run: tuple[Path, str], vla_ms: Path, casa: dict
):
    out, output = vla_run
    ref = casa["calibrated_clean"]
    with fits.open(out / "restored.fits") as hdul:
        restored = hdul[0].data[0, 0]
        header = hdul[0].header
    residual = fits.getdata(out / "residual.fits")[0, 0]
    assert np.unravel_index(np.argmax(restored), restored.shape) == (256, 256)
    assert restored.max() == pytest.approx(ref["peak"], rel=0.005)
    assert float(np.sqrt(np.mean(residual[OFF, OFF] ** 2))) == pytest.approx(
        ref["residual"]["rms_off"], rel=0.10
    )
    beam = ref["beam"]
    assert header["BMAJ"] * 3600 == pytest.approx(beam["major"]["value"], rel=0.02)
    assert header["BMIN"] * 3600 == pytest.approx(beam["minor"]["value"], rel=0.02)
    for name in ("image.fits", "model.fits", "psf.fits", "restored.png", "gains.zarr"):
        assert (out / name).exists(), name
    gains = xr.open_datatree(out / "gains.zarr", engine="zarr")
    (table,) = [node.to_dataset() for node in gains.children.values()]
    assert table.sizes["time"] == 15 and table.attrs["refant"] == "2_E02"

    (flow_run_id,) = flow_run_ids(output)
    flow_run, artifacts = prefect_flow_run(radps_server, flow_run_id)
    assert (
        flow_run.labels["radps.io/progress-completed"] == flow_run.labels["radps.io/progress-total"]
    )
    rows = [row for a in artifacts if a.type == "table" for row in json.loads(a.data)]
    assert any(row.get("antenna") == "2_E02" for row in rows)
    (outputs,) = [json.loads(a.data) for a in artifacts if a.description == "radps outputs"]
    assert [row["name"] for row in outputs] == [
        *("image", "preview", "restored", "restored-preview", "residual", "residual-preview"),
        *("model", "psf", "images-zarr"),
        *("restored-casa", "residual-casa", "model-casa", "psf-casa", "image-casa"),
        *("gains", "gains-plot"),
    ]
    assert all(Path(row["uri"]).exists() for row in outputs), outputs
    previews = sorted(a.description for a in artifacts if a.type == "image")
    assert previews == sorted(
        [
            *(f"{kind} image of {vla_ms.name}" for kind in ("dirty", "restored", "residual")),
            "gain solutions: amplitude and phase per antenna",
        ]
    ), previews
    for artifact in (a for a in artifacts if a.type == "image"):
        header, encoded = artifact.data.split(",", 1)
        with PIL.Image.open(io.BytesIO(base64.b64decode(encoded))) as thumbnail:
            assert thumbnail.format == "PNG" and max(thumbnail.size) == 320
    # Every artifact is keyed, <run>-<what>, so the UI's Artifacts page lists it.
    run = "vla-j1008-calibrated-clean"
    assert sorted(a.key for a in artifacts) == sorted(
        f"{run}-{what}"
        for what in (
            *("preview", "restored-preview", "residual-preview", "gains-plot"),
            *("gains", "summary", "outputs"),
        )
    )
    (summary,) = [json.loads(a.data) for a in artifacts if a.key == f"{run}-summary"]
    values = {row["quantity"]: row["value"] for row in summary}
    assert float(values["peak_jy_per_beam"]) == pytest.approx(ref["peak"], rel=0.005)
    assert values["peak_pixel_xy"] == "[256, 256]" and values["object"] == "J1008+0730"
    assert values["peak_ra"].startswith("10:08:00.0") and values["peak_dec"].startswith("+07:30:1")
    assert float(values["rms_jy_per_beam"]) == pytest.approx(
        float(np.sqrt(np.mean(residual**2))), rel=1e-3
    )
    assert values["beam"].startswith(f'{header_beam(out)[0]:.3f}" x')
    assert 0 < int(values["clean_components"]) <= 1000 and float(values["model_flux_jy"]) > 0.5
    # `radps run` prints the same summary; the run's log has the dashboard, the calibration
    assert "science summary" in output and values["peak_ra"] in output
    messages = [log.message for log in run_logs(radps_server, flow_run_id) if log.level == 20]
    assert any(m.startswith("Dask dashboard: http://127.0.0.1:") for m in messages), messages
    assert any(m.startswith("calibration: 540 solutions for 18 antennas") for m in messages)


def header_beam(out: Path) -> tuple[float, float]:
    header = fits.getheader(out / "restored.fits")
    return header["BMAJ"] * 3600, header["BMIN"] * 3600


def run_logs(server: RadpsServer, flow_run_id: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings({PREFECT_API_URL: server.api_url}),
        get_client(sync_client=True) as client,
    ):
        return client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )


#: Each product's FITS name, its variable in images.img.zarr, and its CASA image.
PRODUCTS = {
    "image": ("SKY_DIRTY", "image.dirty"),
    "restored": ("SKY", "image.image"),
    "residual": ("SKY_RESIDUAL", "image.residual"),
    "model": ("SKY_MODEL", "image.model"),
    "psf": ("POINT_SPREAD_FUNCTION", "image.psf"),
}

CASA_READ_BACK = """
import json, sys
import casatools
out = {}
ia, qa = casatools.image(), casatools.quanta()
for name in sys.argv[1:]:
    ia.open(name)
    pixels = ia.getchunk()  # [x, y, chan, stokes]
    cs = ia.coordsys()
    beam = ia.restoringbeam()
    world = cs.toworld([10.0, 400.0, 0.0, 0.0], "n")["numeric"]  # rad, rad, Hz, stokes
    out[name] = {
        "shape": list(pixels.shape),
        "pixels": pixels[:, :, 0, 0].T.ravel().tolist(),  # [y, x]
        "world": [float(v) for v in world],
        "unit": ia.brightnessunit(),
        "beam": [
            qa.convert(beam["major"], "arcsec")["value"],
            qa.convert(beam["minor"], "arcsec")["value"],
            qa.convert(beam["positionangle"], "deg")["value"],
        ] if beam else None,
        "object": ia.miscinfo().get("object") or ia.summary(list=False).get("object"),
    }
    ia.close()
print(json.dumps(out))
"""


def test_every_image_product_reads_back_alike_in_astropy_xradio_and_casa(
    vla_run: tuple[Path, str],
):
    """Each image, as FITS (astropy), in the xradio store (xradio, schema-checked) and as a
    CASA image (xradio, reading the CASA images as one tclean set, and CASA's own image
    tool): the same float32 pixels, the same sky at a pixel, the same beam; and HISTORY
    records the run."""
    from astropy.wcs import WCS
    from xradio.image import open_image
    from xradio.image.schema import check_image

    from tests.casa import run_casa_python

    out, _ = vla_run
    store = open_image(str(out / "images.img.zarr"))
    assert not check_image(store), repr(check_image(store))
    casa_images = [str(out / casa_name) for _, casa_name in PRODUCTS.values()]
    casa_set = open_image(casa_images)
    script = out.parent / "read_back.py"
    script.write_text(CASA_READ_BACK)
    found = json.loads(
        run_casa_python(
            f"import sys; sys.argv = ['x', *{casa_images!r}]; exec(open({str(script)!r}).read())",
            cwd=out.parent,
        )
        .strip()
        .splitlines()[-1]
    )
    for name, (variable, casa_name) in PRODUCTS.items():
        with fits.open(out / f"{name}.fits") as hdul:
            header, data = hdul[0].header, hdul[0].data
        assert data.dtype == np.dtype(">f4") and data.shape == (1, 1, 512, 512)
        pixels = data[0, 0]  # [y, x]
        zarr_pixels = store[variable].isel(time=0, frequency=0, polarization=0).values.T
        assert store[variable].dtype == np.float32
        np.testing.assert_array_equal(zarr_pixels, pixels, err_msg=name)
        np.testing.assert_array_equal(
            casa_set[variable].isel(time=0, frequency=0, polarization=0).values.T, pixels
        )
        tool = found[str(out / casa_name)]
        np.testing.assert_array_equal(
            np.asarray(tool["pixels"], dtype=np.float32).reshape(512, 512), pixels, err_msg=name
        )
        # the same sky at pixel (x 10, y 400): astropy on the FITS header, CASA's coordsys
        sky = WCS(header).celestial.pixel_to_world(10, 400)
        ra, dec = tool["world"][:2]
        assert abs(np.degrees(ra) % 360 - sky.ra.deg) * 3600 < 1e-4, name
        assert abs(np.degrees(dec) - sky.dec.deg) * 3600 < 1e-4, name
        if name in ("image", "restored", "residual"):
            bmaj, bmin, bpa = tool["beam"]
            assert bmaj == pytest.approx(header["BMAJ"] * 3600, rel=1e-6), name
            assert bmin == pytest.approx(header["BMIN"] * 3600, rel=1e-6), name
            assert bpa == pytest.approx(header["BPA"], abs=1e-4), name
            beam = store["BEAM_FIT_PARAMS_SKY"].values.ravel()
            assert np.degrees(beam[0]) == pytest.approx(header["BMAJ"], rel=1e-6)
            assert tool["unit"] == header["BUNIT"] == "Jy/beam"
        if name == "model":
            assert header["BUNIT"] == "Jy/pixel" and "BMAJ" not in header
        assert header["OBJECT"] == "J1008+0730"
        history = "\n".join(header["HISTORY"])
        for line in ("radps ", "pipeline imaging", "niter = 1000", 'refant = "2"', "input = "):
            assert line in history, (name, line)


def test_synthetic_flagging_calibration_and_clean(radps_server: RadpsServer, tmp_path: Path):
    """Known gains and RFI: `flagging` then `calibration` then `imaging` (clean, briggs) on
    their outputs, `calibration` against that CLEAN model (self-calibration), and `imaging`
    doing all three itself (its CLEAN reading the data again at each major cycle), in one
    `radps run`."""
    sky = str(tmp_path / "sky.ps.zarr")
    sources = [{"flux_jy": 1.0}, {"flux_jy": 0.5, "offset_ra_arcsec": 60}]
    runs = [
        manifest(
            tmp_path,
            "synth",
            "synthesize",
            {
                "output": sky,
                "n_antennas": 12,
                "n_times": 20,
                "n_channels": 16,
                "sources": sources,
                "gain_amplitude_rms": 0.1,
                "gain_phase_rms_deg": 30,
                "rfi_fraction": 0.03,
            },
        ),
        manifest(tmp_path, "flag", "flagging", {"input": sky, "output": str(tmp_path / "f")}),
        manifest(
            tmp_path,
            "cal",
            "calibration",
            {
                "input": str(tmp_path / "f" / "flagged.ps.zarr"),
                "output": str(tmp_path / "c"),
                "model": sources,
            },
        ),
        manifest(
            tmp_path,
            "img",
            "imaging",
            {
                "input": str(tmp_path / "c" / "calibrated.ps.zarr"),
                "output": str(tmp_path / "i"),
                "imsize": 256,
                "cell_arcsec": 2.0,
                "clean": True,
                "weighting": "briggs",
                "threshold_jy": 0.001,
            },
        ),
        manifest(  # self-calibration: the CLEAN model of "img" as the model
            tmp_path,
            "selfcal",
            "calibration",
            {
                "input": str(tmp_path / "f" / "flagged.ps.zarr"),
                "output": str(tmp_path / "s"),
                "model_image": str(tmp_path / "i" / "model.fits"),
            },
        ),
        manifest(
            tmp_path,
            "all",
            "imaging",
            {
                "input": sky,
                "output": str(tmp_path / "a"),
                "imsize": 256,
                "cell_arcsec": 2.0,
                "flag": True,
                "calibrate": True,
                "model": sources,
                "clean": True,
                "threshold_jy": 0.001,
                "block_mb": 0.1,
                "clean_visibilities": "reread",  # each major cycle reads the blocks again
            },
        ),
    ]
    code, output = radps_run(radps_server.env(), *runs, timeout=600)
    assert code == 0, output
    assert output.count("Completed") >= 6, output
    (flagged,) = open_processing_set(tmp_path / "f" / "flagged.ps.zarr")
    assert 0.02 < float(flagged["FLAG"].values.mean()) < 0.05
    truth = json.loads((tmp_path / "sky.truth.json").read_text())
    rfi = np.zeros(flagged["FLAG"].shape[::2], dtype=bool)  # (time, frequency)
    for t, f in truth["rfi_cells"]:
        rfi[t, f] = True
    found = flagged["FLAG"].values.all(axis=(1, 3))
    assert found[rfi].mean() >= 0.95
    assert found[~rfi].mean() <= 0.01
    for folder in ("i", "a"):
        model = fits.getdata(tmp_path / folder / "model.fits")[0, 0]
        restored = fits.getdata(tmp_path / folder / "restored.fits")[0, 0]
        assert np.unravel_index(np.argmax(restored), restored.shape) == (128, 128)
        assert model.sum() == pytest.approx(1.5, rel=0.01), folder
        assert restored.max() == pytest.approx(1.0, rel=0.01), folder
    (calibrated,) = open_processing_set(tmp_path / "c" / "calibrated.ps.zarr")
    vis = calibrated["VISIBILITY"].values[~calibrated["FLAG"].values]
    assert np.all(np.isfinite(vis))
    # the CLEAN model (1.5 Jy in components) calibrates as well as the true point sources
    point, selfcal = (_gains(tmp_path / folder / "gains.zarr") for folder in ("c", "s"))
    good = ~(point["FLAG"].values | selfcal["FLAG"].values)
    ratio = selfcal["GAIN"].values[good] / point["GAIN"].values[good]
    assert np.median(np.abs(ratio - 1)) < 0.01


def _gains(path: Path) -> xr.Dataset:
    (table,) = [
        node.to_dataset() for node in xr.open_datatree(path, engine="zarr").children.values()
    ]
    return table
