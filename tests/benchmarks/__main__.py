"""`python -m tests.benchmarks --out results`: array-core, pipeline and operator benchmarks,
JSON out (`--only arraycore|operator|cli|objectstore|cache` for one part).

Sizes are visibilities of synthesized sets (default a quick 1e6,1e7; `--sizes 1e8` or
`--large` adds 1e8, which takes minutes and a few GB of disk). Each size writes
`<out>/arraycore-<n>.json`; the operator part (operator.py: PipelineRuns applied at once on
the local control plane; its Prefect server on SQLite and on a throwaway PostgreSQL) writes
`<out>/operator-<db>.json`; `<out>/summary.json` collects them with
the targets checked. The cli part (cli.py: `radps validate` against importing what it needs, and
`radps run`'s start to its first task, cold, warm and in its own process) writes `<out>/cli.json`.
The objectstore part (objectstore.py: imaging with its set and products on a local SeaweedFS
against the same on the local disk) writes `<out>/objectstore.json`.
The cache part (cache.py: a flagged, calibrated imaging run and the same with only imsize
changed, on an empty stage cache) writes `<out>/cache.json`.
The casa part (casa.py, not in `all`: it installs CASA into a cached venv of its own) times
`radps run` against CASA's tclean on one measurement set and writes `<out>/casa.json`.
Not tests: nothing here fails on a slow machine, the numbers are for reading.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from . import arraycore, casa, cli, objectstore, pipeline
from . import cache as cache_bench
from . import operator as operator_bench


def _environment() -> dict:
    import ducc0
    import numpy

    return {
        "python": sys.version.split()[0],
        "numpy": numpy.__version__,
        "ducc0": ducc0.__version__,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "load_average": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--sizes", default="1e6,1e7", help="comma-separated visibility counts")
    parser.add_argument("--large", action="store_true", help="add 1e8 visibilities")
    parser.add_argument("--data", type=Path, help="folder for synthesized sets (kept)")
    parser.add_argument("--no-pipeline", action="store_true", help="skip the end-to-end runs")
    parser.add_argument(
        "--only",
        choices=("all", "arraycore", "operator", "cli", "casa", "objectstore", "cache"),
        default="all",
        help="one part only (casa runs only when asked)",
    )
    parser.add_argument(
        "--objectstore-size",
        type=float,
        help="visibilities of the object-store part (1e8 with --only objectstore or --large, "
        "else the largest of --sizes)",
    )
    parser.add_argument("--casa-repeat", type=int, default=3, help="CASA benchmark repeats")
    parser.add_argument(
        "--operator-runs",
        default="1,200,1000",
        help="PipelineRuns applied at once, comma-separated (1: single runs, one at a time)",
    )
    parser.add_argument(
        "--prefect-db",
        default="sqlite,postgres",
        help="databases of the operator benchmark's Prefect server: sqlite, postgres or both",
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"environment": _environment()}
    if args.only in ("all", "cli"):
        results["cli"] = {"validate": cli.validate(), "start": cli.start()}
        (args.out / "cli.json").write_text(json.dumps(results["cli"], indent=1))
        print(json.dumps(results["cli"], indent=1), flush=True)
    if args.only == "casa":
        results["casa"] = casa.main(args.out, args.casa_repeat)
        print(
            json.dumps(
                {
                    k: results["casa"][k]
                    for k in ("ratio_dirty_vs_casa", "ratio_clean_vs_casa", "accuracy", "targets")
                },
                indent=1,
            ),
            flush=True,
        )
    if args.only in ("all", "arraycore"):
        results |= _arraycore(args)
    if args.only in ("all", "objectstore"):
        largest = max(float(n) for n in args.sizes.split(",") if n)
        n_vis = args.objectstore_size or (
            1e8 if args.large or args.only == "objectstore" else largest
        )
        print(f"== imaging from the object store against a local volume ({n_vis:.0e})", flush=True)
        results["objectstore"] = objectstore.main(n_vis, data=args.data)
        (args.out / "objectstore.json").write_text(json.dumps(results["objectstore"], indent=1))
        print(json.dumps(results["objectstore"], indent=1), flush=True)
    if args.only in ("all", "cache"):
        print("== the stage cache: a second run with only imsize changed", flush=True)
        results["cache"] = cache_bench.main(args.out)
        print(json.dumps(results["cache"]["targets"], indent=1), flush=True)
    if args.only in ("all", "operator"):
        runs = [int(float(n)) for n in args.operator_runs.split(",") if n]
        for db in args.prefect_db.split(","):
            print(f"== operator: {runs} (Prefect on {db})", flush=True)
            results[f"operator-{db}"] = operator_bench.main_standalone(args.out, runs, db)
            print(json.dumps(results[f"operator-{db}"]["targets"]), flush=True)
    (args.out / "summary.json").write_text(json.dumps(results, indent=1))
    return 0


def _arraycore(args: argparse.Namespace) -> dict:
    sizes = [int(float(s)) for s in args.sizes.split(",") if s]
    if args.large and int(1e8) not in sizes:
        sizes.append(int(1e8))
    scratch = Path(tempfile.mkdtemp(prefix="radps-bench-"))
    data = args.data or scratch / "data"
    data.mkdir(parents=True, exist_ok=True)
    results: dict = {"sizes": {}}
    try:
        server = None if args.no_pipeline else pipeline.prefect_server()
        env = server.__enter__() if server else None
        try:
            for n in sizes:
                print(f"== {n:.0e} visibilities", flush=True)
                path, info = arraycore.synthesize(n, data)
                n_vis = info["n_visibilities"]
                entry: dict = {"data": info}
                entry["imaging"] = arraycore.imaging(path, n_vis)
                print(" imaging", json.dumps(entry["imaging"]["ratio_vs_ducc0"]), flush=True)
                entry["clean"] = arraycore.clean(path, n_vis)
                print(
                    " clean per pass / ducc0 pass",
                    round(entry["clean"]["clean_per_pass_vs_ducc0_pass"], 2),
                    flush=True,
                )
                entry["calibration"] = arraycore.calibration(path, n_vis)
                print(" calibration x", round(entry["calibration"]["speedup_vs_reference"], 1))
                entry["flagging"] = arraycore.flagging(path, n_vis)
                if env is not None:
                    entry["pipeline"] = pipeline.end_to_end(env, path, n_vis, scratch)
                    p = entry["pipeline"]
                    print(
                        f" pipeline {p['flow_run_s']:.1f} s, overhead "
                        f"{p['overhead_fraction']:.1%} (vs warm kernels "
                        f"{p['overhead_fraction_vs_warm_kernels']:.1%}), "
                        f"peak RSS {p['peak_rss_gb']:.2f} GB",
                        flush=True,
                    )
                entry["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
                (args.out / f"arraycore-{n_vis}.json").write_text(json.dumps(entry, indent=1))
                results["sizes"][str(n_vis)] = entry
                if args.data is None:
                    shutil.rmtree(path, ignore_errors=True)
        finally:
            if server:
                server.__exit__(None, None, None)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    results["targets"] = _targets(results["sizes"])
    print(json.dumps(results["targets"], indent=1))
    return results


def _targets(sizes: dict) -> dict:
    out = {}
    for n, e in sizes.items():
        row = {"imaging_in_memory_vs_ducc0": e["imaging"]["ratio_vs_ducc0"]["stage_in_memory"]}
        if "pipeline" in e:
            row["pipeline_overhead_fraction"] = e["pipeline"]["overhead_fraction"]
            row["pipeline_overhead_fraction_vs_warm_kernels"] = e["pipeline"][
                "overhead_fraction_vs_warm_kernels"
            ]
            row["pipeline_peak_rss_gb"] = e["pipeline"]["peak_rss_gb"]
            if int(n) >= 10**8:
                row["rss_le_4gb"] = e["pipeline"]["peak_rss_gb"] <= 4.0
                row["overhead_le_5pct"] = e["pipeline"]["overhead_fraction"] <= 0.05
        row["imaging_ge_0p8_ducc0"] = row["imaging_in_memory_vs_ducc0"] >= 0.8
        out[n] = row
    return out


if __name__ == "__main__":
    raise SystemExit(main())
