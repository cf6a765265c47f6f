"""`radps validate` on each example manifest against the floor of any validator of ours:
``python -c "import yaml, pydantic, jsonschema"`` in the same venv. Runs are interleaved
(validate, floor, validate, floor...) so load on the shared machine hits both alike; the
ratio of medians and the validate's CPU seconds (user + system, of the child) are reported.
Targets (issue 13): ratio <= 3, CPU <= 1 s.

`start`: seconds from launching `radps run` to its flow run's first task (Prefect's own start
time of that task), cold (no server: it starts the background one) and warm (a fork of the
server's warm process), against the same run in its own process on the same server (`-v`:
what every run did before the warm process), interleaved. Target (issue 18): warm <= 3 s."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FLOOR = [sys.executable, "-c", "import yaml, pydantic, jsonschema"]


def _timed(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system) of one run of ``cmd``."""
    before = os.times()
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    after = os.times()
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    return wall, cpu


def validate(repeats: int = 5) -> dict:
    radps = str(Path(sys.executable).with_name("radps"))
    out: dict = {"repeats": repeats, "manifests": {}}
    for manifest in sorted((ROOT / "manifests" / "examples").glob("*.yaml")):
        cmd = [radps, "validate", str(manifest)]
        _timed(cmd), _timed(FLOOR)  # warm the page cache for both
        runs, floors = [], []
        for _ in range(repeats):
            runs.append(_timed(cmd))
            floors.append(_timed(FLOOR))
        wall = statistics.median(w for w, _ in runs)
        floor = statistics.median(w for w, _ in floors)
        cpu = statistics.median(c for _, c in runs)
        out["manifests"][manifest.name] = {
            "validate_wall_s": round(wall, 3),
            "floor_wall_s": round(floor, 3),
            "ratio": round(wall / floor, 2),
            "validate_cpu_s": round(cpu, 3),
            "ratio_le_3": wall / floor <= 3,
            "cpu_le_1s": cpu <= 1.0,
        }
    return out


def start(repeats: int = 5) -> dict:
    import tempfile

    import yaml

    radps = str(Path(sys.executable).with_name("radps"))
    work = Path(tempfile.mkdtemp(prefix="radps-bench-start-"))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
        "RADPS_HOME": str(work / "home"),
        "RADPS_SERVER_IDLE_SECONDS": "600",
    }
    manifest = work / "synth.yaml"
    parameters = {"output": str(work / "s.ps.zarr"), "n_antennas": 8, "n_times": 4}
    document = {
        "apiVersion": "radps.io/v1alpha1",
        "kind": "PipelineRun",
        "metadata": {"name": "start"},
        "spec": {"pipeline": "synthesize", "parameters": {**parameters, "overwrite": True}},
    }
    manifest.write_text(yaml.safe_dump(document))
    try:
        cold = _first_task(env, [radps, "run", str(manifest)])
        warm, own_process = [], []
        for _ in range(repeats):
            warm.append(_first_task(env, [radps, "run", str(manifest)]))
            own_process.append(_first_task(env, [radps, "run", "-v", str(manifest)]))
    finally:
        subprocess.run([radps, "server", "stop"], env=env, capture_output=True, timeout=180)
    median = {
        name: {key: round(statistics.median(r[key] for r in runs), 3) for key in runs[0]}
        for name, runs in (("warm", warm), ("own_process", own_process))
    }
    return {
        "repeats": repeats,
        "cold": cold,
        **median,
        "warm_first_task_le_3s": median["warm"]["first_task_s"] <= 3.0,
        "first_task_ratio_warm_to_own_process": round(
            median["warm"]["first_task_s"] / median["own_process"]["first_task_s"], 3
        ),
    }


def _first_task(env: dict[str, str], cmd: list[str]) -> dict[str, float]:
    """Seconds from launch to the flow run's first task start, and to the command's exit."""
    import re

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    launched = time.time()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    wall = time.time() - launched
    (flow_run_id,) = re.findall(r"/runs/flow-run/([0-9a-f-]{36})", result.stdout)
    record = json.loads((Path(env["RADPS_HOME"]) / "server.json").read_text())
    with (
        temporary_settings({PREFECT_API_URL: record["api_url"]}),
        get_client(sync_client=True) as client,
    ):
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    first = min(t.start_time for t in tasks if t.start_time).timestamp()
    return {"first_task_s": round(first - launched, 3), "wall_s": round(wall, 3)}


if __name__ == "__main__":
    print(json.dumps({"validate": validate(), "start": start()}, indent=1))
