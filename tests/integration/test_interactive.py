"""An interactive imaging run through `radps run` (a real Prefect server, real Dask): it pauses
after the dirty image, shows what it asks, refuses a wrong answer with the field and why and
waits on, goes on with a right one (`radps resume`), and records it in the products'
HISTORY; an unanswered pause ends as pause_timeout_action says."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import fits

from radps_flows import contract
from radps_flows.core import synth
from tests.conftest import RADPS, RadpsServer
from tests.integration.test_local_run import manifest, radps_command, radps_run

pytestmark = pytest.mark.integration

IMSIZE = 128


@pytest.fixture(scope="module")
def sky(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = synth.SynthesisSpec(
        n_antennas=12,
        n_times=16,
        n_channels=2,
        integration_s=300.0,
        sources=(synth.PointSource(1.0), synth.PointSource(0.5, offset_ra_arcsec=40.0)),
    )
    return synth.synthesize_processing_set(tmp_path_factory.mktemp("sky") / "sky", spec).path


def interactive(sky: Path, out: Path, **extra: Any) -> dict[str, Any]:
    return {
        "input": str(sky),
        "output": str(out),
        "imsize": IMSIZE,
        "cell_arcsec": 4.0,
        "clean": True,
        "niter": 2000,
        "interactive": True,
        **extra,
    }


def run_in_background(env: dict[str, str], path: Path) -> subprocess.Popen[str]:
    """`radps run path`, left to wait at its pauses while the test answers them."""
    return subprocess.Popen(
        [RADPS, "run", str(path)],
        env={**env, "COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def paused_flow_run(server: RadpsServer, name: str, timeout: float = 180, pause: int = 1) -> Any:
    """The run's flow run once it is paused for input at ``pause`` (its request written)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    deadline = time.monotonic() + timeout
    with (
        temporary_settings({PREFECT_API_URL: server.api_url}),
        get_client(sync_client=True) as client,
    ):
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name]))
            )
            for run in runs:
                if (
                    run.state
                    and run.state.is_paused()
                    and run.labels.get(contract.PAUSE_LABEL) == str(pause)
                ):
                    return run
            time.sleep(0.5)
    raise AssertionError(f"{name} did not pause within {timeout} s")


def test_a_run_pauses_refuses_a_wrong_answer_and_goes_on_with_a_right_one(
    radps_server: RadpsServer, sky: Path, tmp_path: Path
):
    env = radps_server.env(RADPS_CACHE_DIR=str(tmp_path / "cache"))
    out = tmp_path / "deep"
    path = manifest(tmp_path, "deep", "imaging", interactive(sky, out))
    run = run_in_background(env, path)
    try:
        flow_run = paused_flow_run(radps_server, "deep")
        assert flow_run.labels[contract.PAUSE_LABEL] == "1"
        code, got, err = radps_command(env, "get", "deep", "-o", "json", timeout=60)
        assert code == 0, err
        status = json.loads(got)["status"]
        assert status["phase"] == "Paused"
        waiting = status["input"]
        assert waiting["pause"] == 1 and "niter" in waiting["schema"]["properties"]
        assert waiting["defaults"]["niter"] == 2000
        assert waiting["answerWith"] == ["radps resume deep -p niter=2000"]

        code, _, err = radps_command(env, "resume", "deep", "-p", "niter=-5", timeout=60)
        assert code == 2
        assert "answer.niter: Input should be greater than or equal to 0 (got -5)" in err
        code, _, err = radps_command(env, "resume", "deep", "-p", "nitre=5", timeout=60)
        assert code == 2 and "answer.nitre: unknown field" in err
        code, _, err = radps_command(
            env, "resume", "deep", "-p", f"mask=[[0,0,{IMSIZE},4]]", timeout=60
        )
        assert code == 2 and f"imsize {IMSIZE}" in err
        time.sleep(3)  # more than the run's poll: a refused answer never reached it
        assert paused_flow_run(radps_server, "deep", timeout=5).state.is_paused()

        # a mask file the run cannot read: it pauses again, saying why
        absent = tmp_path / "absent.fits"
        code, _, err = radps_command(env, "resume", "deep", "-p", f"mask={absent}", timeout=60)
        assert code == 0, err
        paused_flow_run(radps_server, "deep", pause=2)
        code, got, err = radps_command(env, "get", "deep", "-o", "json", timeout=60)
        waiting = json.loads(got)["status"]["input"]
        assert waiting["pause"] == 2 and "mask:" in waiting["refused"]
        assert "absent.fits" in waiting["refused"]

        # the central source only: a FITS mask of the image's size
        mask = np.zeros((IMSIZE, IMSIZE), dtype=np.float32)
        mask[58:71, 58:71] = 1
        fits.writeto(tmp_path / "mask.fits", mask)
        code, out_text, err = radps_command(
            env, "resume", "deep", "-p", "niter=40", "-p", f"mask={tmp_path / 'mask.fits'}",
            timeout=60,
        )  # fmt: skip
        assert code == 0, err
        assert "answered pause 2 of deep:" in out_text and '"niter": 40' in out_text
        output, _ = run.communicate(timeout=300)
    finally:
        run.kill()
    assert run.returncode == 0, output
    assert "paused (1): CLEAN paused after the PSF and dirty image" in output
    assert "radps resume deep -p niter=2000" in output
    assert "the last answer was refused: mask:" in output
    header = fits.getheader(out / "restored.fits")
    history = "\n".join(str(h) for h in header["HISTORY"])
    said = history.replace("\n", "")
    assert "pause 2 after the dirty image (0 components): niter = 40" in said
    assert f'mask = "{tmp_path / "mask.fits"}"' in said
    model = fits.getdata(out / "model.fits")[0, 0]
    assert 0 < np.count_nonzero(model) <= 40
    assert not model[mask == 0].any(), "components outside the mask"
    assert (out / "pauses" / "pause-2-residual.png").stat().st_size > 0
    assert (out / "pauses" / "pause-2-dirty.png").stat().st_size > 0


@pytest.mark.parametrize("action", ["finish", "fail"])
def test_an_unanswered_pause_ends_as_its_timeout_action_says(
    radps_server: RadpsServer, sky: Path, tmp_path: Path, action: str
):
    env = radps_server.env(RADPS_CACHE_DIR=str(tmp_path / "cache"))
    name = f"unanswered-{action}"
    out = tmp_path / name
    extra = {"pause_timeout_seconds": 3, "pause_timeout_action": action}
    code, output = radps_run(
        env, manifest(tmp_path, name, "imaging", interactive(sky, out, **extra))
    )
    if action == "finish":
        assert code == 0, output
        history = "\n".join(str(h) for h in fits.getheader(out / "restored.fits")["HISTORY"])
        assert 'pause 1 after the dirty image (0 components): action = "stop"' in history
        assert not fits.getdata(out / "model.fits").any()
    else:
        assert code == 1, output
        assert "no answer to pause 1 within pause_timeout_seconds (3 s)" in output
        assert not out.exists(), "a failed run leaves no output"
    code, out_text, _ = radps_command(env, "get", name, "-o", "json", timeout=60)
    assert code == 0
    assert json.loads(out_text)["status"]["phase"] == (
        "Completed" if action == "finish" else "Failed"
    )


def test_answers_through_prefects_own_form_after_each_major_cycle(
    radps_server: RadpsServer, sky: Path, tmp_path: Path
):
    """What Prefect's UI does with its form (the schema the run saved, Prefect's resume API),
    a pause after each major cycle, the workers kept meanwhile."""
    from prefect.client.orchestration import get_client
    from prefect.flow_runs import resume_flow_run
    from prefect.settings import PREFECT_API_URL, temporary_settings

    env = radps_server.env(RADPS_CACHE_DIR=str(tmp_path / "cache"))
    out = tmp_path / "cycles"
    parameters = interactive(
        sky, out, interactive_cycles=True, workers_while_paused="keep", niter=500
    )
    path = manifest(tmp_path, "cycles", "imaging", parameters)
    run = run_in_background(env, path)
    try:
        first = paused_flow_run(radps_server, "cycles")
        with (
            temporary_settings({PREFECT_API_URL: radps_server.api_url}),
            get_client(sync_client=True) as client,
        ):
            keyset = first.state.state_details.run_input_keyset
            form = json.loads(client.read_flow_run_input(first.id, keyset["schema"]))
            assert form["properties"]["niter"]["default"] == 500  # the UI's form, filled in
            assert "CLEAN paused after the PSF" in json.loads(
                client.read_flow_run_input(first.id, keyset["description"])
            )
            resume_flow_run(first.id, run_input={"niter": 30})
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                again = client.read_flow_run(first.id)
                if again.state.is_paused() and again.labels[contract.PAUSE_LABEL] == "2":
                    break
                time.sleep(0.5)
            else:
                raise AssertionError("no second pause after the first major cycle")
            resume_flow_run(first.id, run_input={"action": "stop"})
        output, _ = run.communicate(timeout=300)
    finally:
        run.kill()
    assert run.returncode == 0, output
    history = "\n".join(str(h) for h in fits.getheader(out / "restored.fits")["HISTORY"])
    assert "pause 1 after the dirty image (0 components): niter = 30\n" in history + "\n"
    assert "pause 2 after major cycle 1 (" in history and 'action = "stop"' in history
    assert 0 < np.count_nonzero(fits.getdata(out / "model.fits")) <= 30
