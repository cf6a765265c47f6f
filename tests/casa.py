"""CASA itself, for the tests and benchmarks that compare with it: casatools and casatasks from
the package registry in a venv of their own, cached outside the repository
(``$RADPS_CACHE/casa-<version>``, ~1.3 GB with its measures data; about a minute to build),
never imported into radps's own Python.

It runs offline: a site config (``casasiteconfig.py`` in that folder, through
``CASASITECONFIG``) points the measures data at casadata's copy and turns the automatic
updates off; CASA's ``~/.casa`` is that folder's ``home`` (its ``HOME``), so nothing is
written to the user's home. The Python CASA runs under is this one's interpreter (casatools
has wheels for CPython 3.10-3.12 only, and for 3.11 only up to 6.7.0.31).

``python -m tests.casa`` builds it (`make deps` does, so no test builds it under its timeout).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CASA_VERSION = "6.7.0.31"
CASA_PACKAGES = (
    f"casatools=={CASA_VERSION}",
    f"casatasks=={CASA_VERSION}",
    "casaconfig==1.5.2",
    "casadata==2025.9.22",
    "six",
)
SITE_CONFIG = """\
# Written by radps's CASA benchmark: offline CASA, its data from the casadata package.
import casadata

measurespath = casadata.datapath
datapath = [casadata.datapath]
measures_auto_update = False
data_auto_update = False
nologfile = True
nogui = True
agg = True
"""


def cache_dir() -> Path:
    root = Path(os.environ.get("RADPS_CACHE") or Path.home() / ".cache" / "radps")
    return root / f"casa-{CASA_VERSION}"


def casa_environment() -> tuple[Path, dict[str, str]]:
    """CASA's Python and the environment it runs offline in; the venv is built on first use
    (into a temporary folder, renamed when complete, so an interrupted build is not reused)."""
    folder = cache_dir()
    python = folder / "venv" / "bin" / "python"
    if not python.exists():
        folder.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=".venv-", dir=folder))
        try:
            print(
                f"building CASA {CASA_VERSION}'s venv in {folder} (first run only, ~1 min)",
                file=sys.stderr,
                flush=True,
            )
            subprocess.run([sys._base_executable, "-m", "venv", str(building)], check=True)
            subprocess.run(
                [str(building / "bin" / "python"), "-m", "pip", "install", "-q", *CASA_PACKAGES],
                check=True,
            )
            building.rename(folder / "venv")
        finally:
            shutil.rmtree(building, ignore_errors=True)
    (folder / "casasiteconfig.py").write_text(SITE_CONFIG)
    (folder / "home").mkdir(exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(folder / "home"),
        "CASASITECONFIG": str(folder / "casasiteconfig.py"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 1)),
    }
    return python, env


def run_casa_python(code: str, *, cwd: Path, timeout: float = 300) -> str:
    """Run ``code`` in CASA's Python (its stdout back; RuntimeError with its output if it
    fails)."""
    python, env = casa_environment()
    done = subprocess.run(
        [str(python), "-P", "-c", code],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"CASA's Python failed:\n{done.stdout[-4000:]}{done.stderr[-4000:]}")
    return done.stdout


if __name__ == "__main__":
    python, _ = casa_environment()
    print(python)
