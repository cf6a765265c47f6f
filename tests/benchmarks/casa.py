"""`python -m tests.benchmarks --only casa`: `radps run` against CASA's own tclean, on the
measurement set of issue 18, timed side by side in one run.

CASA runs in its own venv (:mod:`tests.casa`).

The set (``casa_side.simulate``, CASA's simulator, built once and cached beside the venv):
VLA B, 27 antennas, 64 x 1 MHz channels from 1.400 GHz, RR RL LR LL, 60 s integrations over
hour angle -2 h..+2 h, five point sources (1.0 Jy at the centre, 0.5, 0.3, 0.2 and 0.4 Jy
off it), 0.5 Jy simple noise with seed 12345: 84,240 rows, 21.6 M visibilities, ~180 MB.

Both sides image it at 2048 x 2048 pixels of 1", natural weighting, Stokes I: CASA with
wproject (128 w planes), radps with ducc0's w-gridder. Dirty (niter 0), then Hogbom CLEAN
(niter 1000, gain 0.1, threshold 0). Every measurement is a fresh process, what a user
waits for: ``tclean`` in a new CASA Python, `radps run` of a PipelineRun on the MSv2 (its
conversion to MSv4 included) against a running `radps server`. The four alternate,
``repeat`` times; ratios are radps / CASA of the medians (and of the minima). One cold `radps
run` (no server yet: it starts its own) is timed first.

Accuracy against CASA, as the issue asks: the dirty images' correlation over the inner half
and their peaks; CLEAN's residual rms and model flux.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from tests.casa import CASA_VERSION, cache_dir, casa_environment

from . import pipeline

CASA_SIDE = Path(__file__).with_name("casa_side.py")
IMSIZE, CELL_ARCSEC, NITER = 2048, 1.0, 1000
KINDS = ("dirty", "clean")
INNER = slice(IMSIZE // 4, 3 * IMSIZE // 4)


def _casa(python: Path, env: dict[str, str], *args: str, cwd: Path) -> tuple[float, dict]:
    """One fresh CASA process running ``casa_side.py args`` in ``cwd`` (where CASA writes its
    log): its wall time and its JSON."""
    t0 = time.perf_counter()
    done = subprocess.run(
        # -P: the script's folder (tests/benchmarks, with an operator.py) is not on sys.path
        [str(python), "-P", str(CASA_SIDE), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"CASA {args[0]} failed:\n{done.stdout[-4000:]}{done.stderr[-4000:]}")
    return wall, json.loads(done.stdout.strip().splitlines()[-1])


def measurement_set(python: Path, env: dict[str, str], work: Path) -> Path:
    """The issue-18 MS, simulated once (into a temporary name, renamed when complete)."""
    ms = cache_dir() / "issue18-vla-b.ms"
    if not ms.exists():
        building = cache_dir() / ".issue18-vla-b.ms.building"
        shutil.rmtree(building, ignore_errors=True)
        wall, _ = _casa(python, env, "simulate", str(building), cwd=work)
        building.rename(ms)
        print(f"== simulated {ms} in {wall:.0f} s", flush=True)
    return ms


def _manifest(work: Path, ms: Path, name: str, clean: bool) -> Path:
    parameters: dict = {
        "input": str(ms),
        "output": str(work / name),
        "imsize": IMSIZE,
        "cell_arcsec": CELL_ARCSEC,
        "weighting": "natural",
        "overwrite": True,
    }
    if clean:
        parameters |= {"clean": True, "niter": NITER, "clean_gain": 0.1, "threshold_jy": 0.0}
    document = {
        "apiVersion": "radps.io/v1alpha1",
        "kind": "PipelineRun",
        "metadata": {"name": name},
        "spec": {"pipeline": "imaging", "parameters": parameters},
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _plane(path: Path) -> np.ndarray:
    from astropy.io import fits

    with fits.open(path) as hdul:
        data = np.asarray(hdul[0].data, dtype=np.float64)
    return data.reshape(data.shape[-2:])  # [stokes, freq, y, x] -> [y, x], both sides


def _cold_radps_run(manifest: Path) -> float:
    """`radps run` with no server anywhere: it starts its own Prefect server and stops it."""
    home = Path(tempfile.mkdtemp(prefix="radps-bench-cold-"))
    env = {**os.environ, "RADPS_HOME": str(home), "RADPS_SERVER_IDLE_SECONDS": "0"}
    env.pop("RADPS_API_URL", None)
    try:
        t0 = time.perf_counter()
        subprocess.run(
            [pipeline.RADPS, "run", str(manifest)], env=env, check=True, capture_output=True
        )
        return time.perf_counter() - t0
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _ratios(ours: list[float], theirs: list[float]) -> dict:
    return {
        "median": statistics.median(ours) / statistics.median(theirs),
        "min_over_min": min(ours) / min(theirs),
    }


def compare(work: Path) -> dict:
    """The accuracy of the last images of both sides, as the issue measures it."""
    ours, casa = _plane(work / "radps-dirty" / "image.fits"), _plane(work / "casa-dirty.image.fits")
    peak_ours = np.unravel_index(np.nanargmax(ours), ours.shape)
    peak_casa = np.unravel_index(np.nanargmax(casa), casa.shape)
    dirty = {
        "inner_half_correlation": float(
            np.corrcoef(ours[INNER, INNER].ravel(), casa[INNER, INNER].ravel())[0, 1]
        ),
        "peak_pixel_yx": [int(i) for i in peak_ours],
        "casa_peak_pixel_yx": [int(i) for i in peak_casa],
        "peak_ratio": float(ours[peak_ours] / casa[peak_casa]),
    }
    clean_dir = work / "radps-clean"
    residual = _plane(clean_dir / "residual.fits")
    casa_residual = _plane(work / "casa-clean.residual.fits")
    flux, casa_flux = (
        float(np.nansum(_plane(clean_dir / "model.fits"))),
        float(np.nansum(_plane(work / "casa-clean.model.fits"))),
    )
    rms = float(np.sqrt(np.nanmean(residual**2)))
    casa_rms = float(np.sqrt(np.nanmean(casa_residual**2)))
    clean = {
        "residual_rms": rms,
        "casa_residual_rms": casa_rms,
        "residual_rms_ratio": rms / casa_rms,
        "model_flux_jy": flux,
        "casa_model_flux_jy": casa_flux,
        "model_flux_ratio": flux / casa_flux,
    }
    return {"dirty": dirty, "clean": clean}


def main(out: Path, repeat: int = 3) -> dict:
    python, casa_env = casa_environment()
    work = Path(tempfile.mkdtemp(prefix="radps-bench-casa-"))  # CASA's log files go here too
    walls: dict[str, list[float]] = {
        "casa_dirty": [],
        "radps_dirty": [],
        "casa_clean": [],
        "radps_clean": [],
    }
    tclean_s: dict[str, list[float]] = {"dirty": [], "clean": []}
    flow_run_s: dict[str, list[float | None]] = {"dirty": [], "clean": []}
    try:
        ms = measurement_set(python, casa_env, work)
        manifests = {kind: _manifest(work, ms, f"radps-{kind}", kind == "clean") for kind in KINDS}
        cold = _cold_radps_run(manifests["dirty"])
        print(f" cold radps run (dirty, its own Prefect server): {cold:.1f} s", flush=True)
        with pipeline.prefect_server() as env:
            pipeline.radps_run(env, manifests["dirty"])  # the server's first run: not timed
            for i in range(repeat):
                for kind in KINDS:
                    niter = str(NITER if kind == "clean" else 0)
                    image = str(work / f"casa-{kind}")
                    wall, found = _casa(python, casa_env, "tclean", str(ms), image, niter, cwd=work)
                    walls[f"casa_{kind}"].append(wall)
                    tclean_s[kind].append(found["tclean_s"])
                    wall, flow, _ = pipeline.radps_run(env, manifests[kind])
                    walls[f"radps_{kind}"].append(wall)
                    flow_run_s[kind].append(flow)
                    print(
                        f" {i + 1}/{repeat} {kind}: CASA {walls[f'casa_{kind}'][-1]:.1f} s, "
                        f"radps run {wall:.1f} s",
                        flush=True,
                    )
        accuracy = compare(work)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(work)
    dirty_ratio = _ratios(walls["radps_dirty"], walls["casa_dirty"])
    clean_ratio = _ratios(walls["radps_clean"], walls["casa_clean"])
    result = {
        "casa_version": CASA_VERSION,
        "measurement_set": str(ms),
        "repeat": repeat,
        "wall_s": walls,
        "tclean_call_s": tclean_s,
        "radps_flow_run_s": flow_run_s,
        "radps_cold_dirty_wall_s": cold,
        "ratio_dirty_vs_casa": dirty_ratio,
        "ratio_clean_vs_casa": clean_ratio,
        "accuracy": accuracy,
        "targets": {
            "dirty_ratio_le_0p2": dirty_ratio["median"] <= 0.2,
            "dirty_inner_half_r_ge_0p99999": accuracy["dirty"]["inner_half_correlation"] >= 0.99999,
            "clean_ratio_le_0p2": clean_ratio["median"] <= 0.2,
            "clean_residual_rms_within_5pct": abs(accuracy["clean"]["residual_rms_ratio"] - 1)
            <= 0.05,
            "clean_model_flux_within_0p5pct": abs(accuracy["clean"]["model_flux_ratio"] - 1)
            <= 0.005,
        },
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    (out / "casa.json").write_text(json.dumps(result, indent=1))
    return result
