"""`radps validate` on each example manifest against the floor of any validator of ours:
``python -c "import yaml, pydantic, jsonschema"`` in the same venv. Runs are interleaved
(validate, floor, validate, floor...) so load on the shared machine hits both alike; the
ratio of medians and the validate's CPU seconds (user + system, of the child) are reported.
Targets (issue 13): ratio <= 3, CPU <= 1 s."""

from __future__ import annotations

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


if __name__ == "__main__":
    import json

    print(json.dumps(validate(), indent=1))
