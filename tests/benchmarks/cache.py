"""The stage cache: a flagged, calibrated imaging run, then the same run with only ``imsize``
changed, which takes the conversion, the flags and the gains from the cache; and, for
reference, that second run without the cache.

Both run as a user runs them (`radps run` against a running `radps server`), each pair with
an empty cache of its own; the time is the flow run's own (Prefect start to end), as in
:mod:`pipeline`. Two inputs: the real VLA MeasurementSet (MSv2: the first run converts it)
and a synthesized processing set with gains and RFI (MSv4: no conversion; flagging and the
gain solve are what the cache saves). The target is a second run at most half the first.
The change goes up (512² -> 768²) and down (768² -> 512²): a larger image costs more to grid,
so each second run is also compared with a cold run of its own size, which takes the
direction of the change out.
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
from pathlib import Path

from radps_flows.core import synth

from . import pipeline

IMAGING = {"flag": "mad", "calibrate": True}


def pair(env: dict[str, str], work: Path, name: str, parameters: dict, sizes: tuple) -> dict:
    """On an empty cache: a first run at ``imsize`` ``sizes[0]``, a second at ``sizes[1]``
    (only ``imsize`` changed: hits), and a run at ``sizes[1]`` without the cache (``Off``),
    what the second would cost cold."""
    cache = Path(tempfile.mkdtemp(prefix="radps-bench-cache-", dir=work))
    env = {**env, "RADPS_CACHE_DIR": str(cache)}
    seconds = {}
    for label, changes in (
        ("first_s", {"imsize": sizes[0]}),
        ("second_s", {"imsize": sizes[1]}),
        ("cold_second_s", {"imsize": sizes[1], "cache": "Off"}),
    ):
        run_name = f"{name}-{label[:-2].replace('_', '-')}"
        run = {**parameters, **changes, "output": str(work / run_name)}
        _, flow_run_s, _ = pipeline.radps_run(env, pipeline.imaging_manifest(work, run_name, run))
        if flow_run_s is None:
            raise RuntimeError(f"{run_name}: no flow run time")
        seconds[label] = flow_run_s
    return seconds | {
        "imsizes": list(sizes),
        "ratio": seconds["second_s"] / seconds["first_s"],
        "ratio_vs_cold_same_imsize": seconds["second_s"] / seconds["cold_second_s"],
    }


def measure(env: dict[str, str], work: Path, name: str, parameters: dict, repeat: int) -> dict:
    """Pairs that change ``imsize`` up (512 -> 768) and down (768 -> 512), ``repeat`` each:
    a larger image costs more to grid, so the direction moves the ratio to the first run."""
    out: dict = {"parameters": parameters}
    for direction, sizes in (("up", (512, 768)), ("down", (768, 512))):
        pairs = [
            pair(env, work, f"{name}-{direction}-{k}", parameters, sizes) for k in range(repeat)
        ]
        out[direction] = {
            "pairs": pairs,
            "median_ratio": statistics.median(p["ratio"] for p in pairs),
            "median_ratio_vs_cold_same_imsize": statistics.median(
                p["ratio_vs_cold_same_imsize"] for p in pairs
            ),
        }
    return out


def main(out: Path, repeat: int = 3) -> dict:
    work = Path(tempfile.mkdtemp(prefix="radps-bench-cache-"))
    try:
        result = _measured(work, repeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (out / "cache.json").write_text(json.dumps(result, indent=1))
    return result


def _measured(work: Path, repeat: int) -> dict:
    from tests.conftest import VLA_TARBALL, shared_dir, unpack

    (work / "vla").mkdir()
    unpack(shared_dir() / "data" / VLA_TARBALL, work / "vla")
    (ms,) = (work / "vla").glob("*.ms")
    spec = synth.SynthesisSpec(
        n_antennas=27,
        n_times=300,
        n_channels=64,
        n_polarizations=4,
        gain_amplitude_rms=0.1,
        gain_phase_rms_deg=20.0,
        rfi_fraction=0.01,
        rfi_amplitude_jy=50.0,
        noise_jy=0.1,
    )
    store = synth.synthesize_processing_set(work / "synthetic", spec).path
    with pipeline.prefect_server() as env:
        vla = {"input": str(ms), "cell_arcsec": 0.35, "refant": "2", **IMAGING}
        synthetic = {"input": str(store), "cell_arcsec": 2.0, **IMAGING}
        result = {
            "vla_msv2": measure(env, work, "vla", vla, repeat),
            "synthetic_msv4": measure(env, work, "synthetic", synthetic, repeat)
            | {"n_visibilities": spec.n_visibilities},
        }
    targets = {}
    for k, v in result.items():
        for direction in ("up", "down"):
            d = v[direction]
            targets[f"{k}_{direction}_second_le_half_first"] = d["median_ratio"] <= 0.5
            targets[f"{k}_{direction}_second_le_half_cold_same_imsize"] = (
                d["median_ratio_vs_cold_same_imsize"] <= 0.5
            )
    result["targets"] = targets
    return result
