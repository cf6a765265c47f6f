"""`radps run` end to end: real Prefect server, real Dask LocalCluster, real data."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import psutil
import pytest
import yaml
from astropy.io import fits

from radps_flows.manifest import verify
from radps_flows.staging import leftover_staging
from tests.conftest import RADPS, RadpsServer, running_radps_server, shared_dir

pytestmark = pytest.mark.integration


def manifest(folder: Path, name: str, pipeline: str, parameters: dict[str, Any]) -> Path:
    path = folder / f"{name}.yaml"
    document = {
        "apiVersion": "radps.io/v1alpha1",
        "kind": "PipelineRun",
        "metadata": {"name": name},
        "spec": {
            "pipeline": pipeline,
            "parameters": parameters,
            "dask": {"workers": 1, "threadsPerWorker": 2},
        },
    }
    path.write_text(yaml.safe_dump(document))
    return path


def radps_command(env: dict[str, str], *args: str, timeout: float) -> tuple[int, str, str]:
    """`radps args` in a wide terminal: exit code, stdout, stderr (never a traceback)."""
    result = subprocess.run(
        [RADPS, *args],
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr
    return result.returncode, result.stdout, result.stderr


def radps_run(env: dict[str, str], *files: Path, timeout: float = 300) -> tuple[int, str]:
    code, out, err = radps_command(env, "run", *map(str, files), timeout=timeout)
    return code, out + err


def prefect_flow_run(server: RadpsServer, flow_run_id: str):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings({PREFECT_API_URL: server.api_url}),
        get_client(sync_client=True) as client,
    ):
        flow_run = client.read_flow_run(flow_run_id)
        artifacts = client.read_artifacts()
    return flow_run, [a for a in artifacts if a.flow_run_id == flow_run.id]


def ended(process: psutil.Process) -> bool:
    """Exited, reaped or not: an orphan is reaped by the subreaper above pytest
    (hack/no-leftovers.py) a moment after it exits, so it may still be a zombie here."""
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def flow_run_ids(output: str) -> list[str]:
    return re.findall(r"/runs/flow-run/([0-9a-f-]{36})", output)


def test_synthesize_then_image_a_point_source(radps_server: RadpsServer, tmp_path: Path):
    """The demo's path: two PipelineRuns in one `radps run`, outputs printed, state, progress
    and outputs recorded in Prefect; a 1 Jy source at the phase centre images to 1.000."""
    synth = manifest(
        tmp_path,
        "synth",
        "synthesize",
        {"output": str(tmp_path / "sky.ps.zarr"), "n_antennas": 12, "n_times": 20},
    )
    image = manifest(
        tmp_path,
        "image",
        "imaging",
        {"input": str(tmp_path / "sky.ps.zarr"), "output": str(tmp_path / "img"), "imsize": 256},
    )
    cube = manifest(
        tmp_path,
        "cube",
        "imaging",
        {
            "input": str(tmp_path / "sky.ps.zarr"),
            "output": str(tmp_path / "cube"),
            "imsize": 64,
            "specmode": "cube",
        },
    )
    code, output = radps_run(radps_server.env(), synth, image, cube)
    assert code == 0, output
    assert output.count("Completed") >= 3
    cube_data = fits.getdata(tmp_path / "cube" / "image.fits")
    assert cube_data.shape == (1, 32, 64, 64)  # the synthesizer's 32 channels
    np.testing.assert_allclose(cube_data[0, :, 32, 32], 1.0, atol=1e-3)
    fits_path = tmp_path / "img" / "image.fits"
    assert str(fits_path) in output and str(tmp_path / "img" / "image.png") in output
    data = fits.getdata(fits_path)
    assert data.shape == (1, 1, 256, 256)
    assert data[0, 0, 128, 128] == pytest.approx(1.0, abs=1e-3)
    assert np.unravel_index(np.argmax(data), data.shape)[2:] == (128, 128)

    ids = flow_run_ids(output)
    assert len(ids) == 3, output
    flow_run, artifacts = prefect_flow_run(radps_server, ids[1])
    assert flow_run.state.is_completed()
    assert flow_run.name == "image"
    assert flow_run.labels["radps.io/progress-completed"] == "3"
    assert flow_run.labels["radps.io/progress-total"] == "3"
    rows = [row for a in artifacts if a.type == "table" for row in json.loads(a.data)]
    assert {"name": "image", "uri": str(fits_path), "kind": "fits"} in rows
    (preview,) = [a.data for a in artifacts if a.type == "image"]
    header, encoded = preview.split(",", 1)
    assert header == "data:image/png;base64"  # the UI shows it without the data volume
    with PIL.Image.open(io.BytesIO(base64.b64decode(encoded))) as thumbnail:
        assert max(thumbnail.size) == 320


def test_runs_from_standard_input_with_overrides_and_generated_names(
    radps_server: RadpsServer, tmp_path: Path
):
    """kubectl's ways with manifests: two documents on standard input, the second named by
    `generateName`, a parameter set with -p (read as YAML: a boolean) for both; and
    Prefect's own CLI finds the runs with the environment `radps server env` prints."""
    sky = str(tmp_path / "sky.ps.zarr")
    documents = [
        yaml.safe_load(manifest(tmp_path, "stdin-sky", "synthesize", {"output": sky}).read_text()),
        yaml.safe_load(
            manifest(
                tmp_path,
                "x",
                "imaging",
                {"input": sky, "output": str(tmp_path / "img"), "imsize": 128},
            ).read_text()
        ),
    ]
    del documents[1]["metadata"]["name"]
    documents[1]["metadata"]["generateName"] = "stdin-image-"
    documents[0]["spec"]["parameters"].update(n_antennas=8, n_times=10)
    result = subprocess.run(
        [RADPS, "run", "-", "-p", "overwrite=true"],  # a parameter of both pipelines
        input=yaml.safe_dump_all(documents),
        env={**radps_server.env(), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert fits.getdata(tmp_path / "img" / "image.fits").shape == (1, 1, 128, 128)
    (generated,) = re.findall(r"flow run (stdin-image-[a-z0-9]{5})", output)
    env = subprocess.run(
        [RADPS, "server", "env"], env=radps_server.env(), capture_output=True, text=True
    )
    assert env.returncode == 0 and env.stdout.startswith("export PREFECT_API_URL=http")
    url = env.stdout.strip().removeprefix("export PREFECT_API_URL=")
    listed = subprocess.run(
        [str(Path(RADPS).with_name("prefect")), "flow-run", "ls", "--limit", "5"],
        env={**radps_server.env(), "PREFECT_API_URL": url, "COLUMNS": "250"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0 and generated in listed.stdout, listed.stdout + listed.stderr


def radps(env: dict[str, str], *args: str, timeout: float = 120) -> tuple[int, str]:
    code, out, _ = radps_command(env, *args, timeout=timeout)
    return code, out


def test_after_a_run_list_get_logs_and_rerun_it(radps_server: RadpsServer, tmp_path: Path):
    """The CLI for after a run, in kubectl's manner: `list`, `get -o yaml` (the PipelineRun
    as run, with its status), `logs`, and `rerun -p` (the same spec, one parameter changed,
    under a generated name)."""
    env = radps_server.env()
    synth = manifest(
        tmp_path, "hist-synth", "synthesize", {"output": str(tmp_path / "h.ps.zarr"), "n_times": 8}
    )
    assert radps_run(env, synth)[0] == 0
    code, listed = radps(env, "list", "-o", "json")
    assert code == 0
    (row,) = [r for r in json.loads(listed) if r["name"] == "hist-synth"]
    assert row["pipeline"] == "synthesize" and row["state"] == "Completed"
    code, got = radps(env, "get", "hist-synth", "-o", "yaml")
    document = yaml.safe_load(got)
    assert document["spec"]["parameters"]["n_times"] == 8
    assert document["spec"]["dask"]["threadsPerWorker"] == 2  # the whole spec, not only parameters
    assert document["status"]["phase"] == "Completed"
    assert {o["name"] for o in document["status"]["outputs"]} == {"visibilities", "truth"}
    code, log = radps(env, "logs", "hist-synth")
    assert code == 0 and "Finished in state Completed" in log
    first = json.loads((tmp_path / "h.truth.json").read_text())["n_visibilities"]
    code, output = radps(env, "rerun", "hist-synth", "-p", "n_times=5", "-p", "overwrite=true")
    assert code == 0, output
    (rerun,) = re.findall(r"flow run (hist-synth-[a-z0-9]{5})", output)
    again = yaml.safe_load(radps(env, "get", rerun, "-o", "yaml")[1])
    assert again["spec"]["parameters"]["n_times"] == 5
    assert again["spec"]["parameters"]["output"] == str(tmp_path / "h.ps.zarr")
    assert json.loads((tmp_path / "h.truth.json").read_text())["n_visibilities"] == first * 5 // 8
    assert radps(env, "get", "no-such-run")[0] == 1


def test_radps_cancel_stops_a_run_from_another_shell(radps_server: RadpsServer, tmp_path: Path):
    env = radps_server.env()
    sky = str(tmp_path / "c.ps.zarr")
    synth = manifest(
        tmp_path, "c-synth", "synthesize", {"output": sky, "n_antennas": 24, "n_times": 200}
    )
    assert radps_run(env, synth)[0] == 0
    clean = manifest(
        tmp_path,
        "c-clean",
        "imaging",
        {
            "input": sky,
            "output": str(tmp_path / "c"),
            "imsize": 1024,
            "clean": True,
            "niter": 1000000,
            "max_major": 1000,
        },
    )
    process = subprocess.Popen(
        [RADPS, "run", str(clean)],
        env={**env, "COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            rows = json.loads(radps(env, "list", "-o", "json")[1])
            if any(r["name"] == "c-clean" and r["state"] == "Running" for r in rows):
                break
            time.sleep(1)
        else:
            pytest.fail("the run never showed Running")
        code, said = radps(env, "cancel", "c-clean")
        assert code == 0 and said.startswith("cancelling c-clean")
        output, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, output
    assert "Cancelled: radps cancel" in output
    status = yaml.safe_load(radps(env, "get", "c-clean", "-o", "yaml")[1])["status"]
    assert status["phase"] == "Cancelled" and "radps cancel" in status["message"]
    assert not (tmp_path / "c").exists()  # a cancelled run leaves no half-written output
    assert "already ended" in radps(env, "cancel", "c-clean")[1]


def test_real_vla_set_reproduces_casa_dirty_image(
    radps_server: RadpsServer, vla_ms: Path, tmp_path: Path
):
    """The shipped example, pointed at the unpacked data, through the whole pipeline."""
    repo = Path(__file__).resolve().parents[2]
    document = yaml.safe_load((repo / "manifests" / "examples" / "vla-imaging.yaml").read_text())
    document["spec"]["parameters"].update(input=str(vla_ms), output=str(tmp_path / "vla"))
    path = tmp_path / "vla.yaml"
    path.write_text(yaml.safe_dump(document))
    code, output = radps_run(radps_server.env(), path)
    assert code == 0, output
    ours = fits.getdata(tmp_path / "vla" / "image.fits")[0, 0]
    casa = fits.getdata(shared_dir() / "reference" / "vla_dirty.image.fits")[0, 0]
    assert np.unravel_index(np.argmax(ours), ours.shape) == (39, 480)
    assert ours.max() == pytest.approx(5.4607e-4, rel=0.01)
    inner = np.s_[128:384, 128:384]
    assert np.corrcoef(ours[inner].ravel(), casa[inner].ravel())[0, 1] >= 0.999


def test_unreadable_input_fails_with_a_clear_message(radps_server: RadpsServer, tmp_path: Path):
    garbage = tmp_path / "garbage.ms"
    garbage.mkdir()
    (garbage / "table.dat").write_bytes(b"not a casacore table")
    out = tmp_path / "out"
    run = manifest(tmp_path, "garbage", "imaging", {"input": str(garbage), "output": str(out)})
    code, output = radps_run(radps_server.env(), run)
    assert code == 1
    assert "InputDataError" in output and str(garbage) in output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.ms", "garbage.yaml"]


def test_outputs_are_whole_or_absent(radps_server: RadpsServer, tmp_path: Path):
    """A completed run commits its products with a manifest; a re-run does not overwrite
    them unless told to, and then replaces them only when it completes; a run that fails
    after it began writing leaves nothing behind; a model image without its manifest is
    refused."""
    env = radps_server.env()
    sky = tmp_path / "sky.ps.zarr"
    parameters = {"output": str(sky), "n_antennas": 6, "n_times": 4, "n_channels": 4}
    synth = manifest(tmp_path, "synth", "synthesize", parameters)
    code, output = radps_run(env, synth)
    assert code == 0, output
    manifest_path = tmp_path / "sky.manifest.json"
    document = json.loads(manifest_path.read_text())
    assert {p["path"] for p in document["products"]} == {"sky.ps.zarr", "sky.truth.json"}
    first_flow_run = flow_run_ids(output)[0]
    assert document["provenance"]["flow_run_id"] == first_flow_run
    assert document["provenance"]["pipeline_run"]["name"] == "synth"
    assert document["provenance"]["pipeline_run"]["spec"]["parameters"] == parameters
    verify(sky)
    truth = (tmp_path / "sky.truth.json").read_text()
    # what runs killed outright (SIGKILL) left: one of a flow run that has ended, one of a
    # flow run this server never saw (another server's, or live elsewhere)
    ended = tmp_path / f".sky.ps.zarr.staging-{first_flow_run}"
    unknown = tmp_path / f".sky.ps.zarr.staging-{uuid.uuid4()}"
    for leftover in (ended, unknown):
        (leftover / "sky.ps.zarr").mkdir(parents=True)

    code, output = radps_run(env, synth)
    assert code == 1
    assert f"output {sky} already exists and is not empty" in " ".join(output.split())
    assert manifest_path.read_text() == json.dumps(document, indent=1) + "\n"

    again = manifest(
        tmp_path, "again", "synthesize", {**parameters, "n_times": 6, "overwrite": True}
    )
    code, output = radps_run(env, again)
    assert code == 0, output
    assert (tmp_path / "sky.truth.json").read_text() != truth
    verify(sky)
    assert not ended.exists(), "the staging folder of an ended flow run was kept"
    assert unknown.exists(), "the staging folder of a flow run Prefect does not know was removed"
    shutil.rmtree(unknown)

    fake_model = tmp_path / "model.fits"
    fake_model.write_bytes(b"SIMPLE  =                    T" + b" " * 2850)
    out = tmp_path / "cal"
    cal = manifest(
        tmp_path,
        "cal",
        "calibration",
        {"input": str(sky), "output": str(out), "model_image": str(fake_model)},
    )
    code, output = radps_run(env, cal)
    assert code == 1
    assert "no manifest.json beside it, so it is not a complete radps product" in " ".join(
        output.split()
    )
    assert not out.exists() and not leftover_staging(out)
    assert not leftover_staging(sky)


def test_full_disk_fails_with_a_clear_message(radps_server: RadpsServer, tmp_path: Path):
    small = tmp_path / "small-disk"
    small.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        run = manifest(
            tmp_path,
            "full",
            "synthesize",
            {"output": str(small / "sky.ps.zarr"), "n_antennas": 12, "n_times": 20},
        )
        code, output = radps_run(radps_server.env(), run)
        left = list(small.iterdir())
    finally:
        subprocess.run(["umount", str(small)], check=True)
    assert code == 1
    assert "no space left on device" in output.lower()
    assert left == []  # rolled back: no partial store, no staging folder


def _descendants(process: subprocess.Popen[bytes]) -> list[psutil.Process]:
    try:
        return psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def long_synth(folder: Path) -> Path:
    """A synthesize run of ~a minute that writes its store's metadata (in staging) first."""
    sources = [
        {"flux_jy": 0.01, "offset_ra_arcsec": i, "offset_dec_arcsec": -i} for i in range(400)
    ]
    return manifest(
        folder,
        "long",
        "synthesize",
        {"output": str(folder / "long.ps.zarr"), "n_times": 600, "sources": sources},
    )


def _interrupt_while_running(
    env: dict[str, str], tmp_path: Path, server: psutil.Process | None = None
) -> tuple[int, str, list[psutil.Process], list[str]]:
    """Start a long run, wait until its task is writing, then Ctrl-C it the way a terminal
    does (SIGINT to the whole foreground process group). The processes it started: those of
    `radps run`, and the new children of `server` (a `radps server`) if given."""
    before = {p.pid for p in server.children()} if server else set()
    run = long_synth(tmp_path)
    log = tmp_path / "run.out"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [RADPS, "run", str(run)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        # the synthesizer writes the store's metadata first (in staging): the task is running
        while not list(tmp_path.glob(".long.ps.zarr.staging-*/long.ps.zarr")):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the flow never started writing"
            time.sleep(0.2)
        time.sleep(2)
        started = _safe(_descendants(process))
        if server is not None:
            started += _safe([p for p in server.children() if p.pid not in before])
        commands = [" ".join(p.cmdline()) for p in started]
        os.killpg(process.pid, signal.SIGINT)
        code = process.wait(90)
    return code, log.read_text(), started, commands


def _safe(processes: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for p in processes:
        try:
            p.cmdline()
            alive.append(p)
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            pass
    return alive


def _assert_all_gone(processes: list[psutil.Process]) -> None:
    deadline = time.monotonic() + 30
    while True:
        left = [p for p in processes if not ended(p)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not left, [" ".join(p.cmdline()) for p in left]


def test_ctrl_c_cancels_the_flow_run(radps_server: RadpsServer, tmp_path: Path):
    """With a `radps server` up, the run is a child forked from its warm process (the client
    has none): Ctrl-C to the client reaches it, it records Cancelled, and it ends."""
    server = psutil.Process(radps_server.process.pid)
    code, output, started, commands = _interrupt_while_running(radps_server.env(), tmp_path, server)
    assert code == 130, output
    assert "Cancelled" in output
    assert "running in this process" not in output
    assert len(started) == 1 and " server " in f"{commands[0]} ", commands  # the fork alone
    assert not (tmp_path / "long.ps.zarr").exists()  # nothing that looks complete
    _assert_all_gone(started)
    (flow_run_id,) = flow_run_ids(output)
    flow_run, _ = prefect_flow_run(radps_server, flow_run_id)
    assert flow_run.state.is_cancelled(), flow_run.state


def test_ctrl_c_with_the_embedded_server_leaves_no_process(tmp_path: Path):
    home = tmp_path / "home"
    env = {**os.environ, "RADPS_HOME": str(home)}
    code, output, started, commands = _interrupt_while_running(env, tmp_path)
    assert code == 130, output
    assert "Cancelled" in output
    assert any("prefect server start" in c for c in commands), commands
    _assert_all_gone(started)


def test_radps_server_serves_the_ui(radps_server: RadpsServer):
    ui = radps_server.api_url.removesuffix("/api")
    with urllib.request.urlopen(ui, timeout=30) as response:
        page = response.read().decode()
    assert response.status == 200 and "<html" in page.lower()


def test_radps_server_behind_basic_auth(tmp_path: Path):
    """`radps server` stays on loopback and takes Prefect's own server setting for basic
    auth; `radps run` with the client setting runs against it, while a call without the
    credential gets 401."""
    secret = "radps:" + base64.b16encode(os.urandom(12)).decode()
    server_env = {**os.environ, "PREFECT_SERVER_API_AUTH_STRING": secret}
    with running_radps_server(tmp_path / "home", server_env) as server:
        api_url, port = server.api_url, int(server.api_url.split(":")[2].split("/")[0])
        listening = {
            c.laddr.ip for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port
        }
        assert listening == {"127.0.0.1"}, listening
        request = urllib.request.Request(
            f"{api_url}/flow_runs/filter", data=b"{}", method="POST",
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 401
        run = manifest(
            tmp_path, "behind-auth", "synthesize",
            {"output": str(tmp_path / "auth.ps.zarr"), "n_antennas": 4, "n_times": 2,
             "n_channels": 2},
        )  # fmt: skip
        code, output = radps_run(
            {**os.environ, "RADPS_HOME": str(server.home), "PREFECT_API_AUTH_STRING": secret}, run
        )
        assert code == 0, output
        assert (tmp_path / "auth.ps.zarr").is_dir()


def test_paths_are_checked_on_this_machine_before_anything_starts(tmp_path):
    """A missing input, and an output that lies inside the input once a symlink is followed
    (lexically it does not), are refused with both fields before any server starts; the
    input of a later manifest may be the output of an earlier one."""
    data = tmp_path / "data"
    (data / "in.ps.zarr").mkdir(parents=True)
    (tmp_path / "link").symlink_to(data / "in.ps.zarr")
    env = {**os.environ, "RADPS_HOME": str(tmp_path / "home")}
    missing = manifest(
        tmp_path, "missing", "flagging", {"input": str(data / "absent.ms"), "output": "/x/o"}
    )
    code, output = radps_run(env, missing, timeout=120)
    assert code == 2
    assert f"spec.parameters.input: no such file or folder: {data / 'absent.ms'}" in output
    inside = manifest(
        tmp_path,
        "inside",
        "flagging",
        {"input": str(data / "in.ps.zarr"), "output": str(tmp_path / "link" / "products")},
    )
    code, output = radps_run(env, inside, timeout=120)
    assert code == 2
    assert "spec.parameters.output: lies inside input" in output
    assert not (data / "in.ps.zarr" / "products").exists()
