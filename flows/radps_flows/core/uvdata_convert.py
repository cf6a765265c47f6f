"""uvfits, uvh5, MIR and Miriad inputs: written once as an MSv2 MeasurementSet with pyuvdata,
which :mod:`radps_flows.core.io` then converts to MSv4 as any MSv2.

Much of the field's public data is in these formats (MWA, HERA, ATA, SMA, VLBA), and pyuvdata
reads all of them, with the phasing, baseline and UVW conventions of each. Its MeasurementSet
writer is python-casacore, whose casacore libraries must not meet arcae's (xradio's MSv2
reader, in the flow's process) in one process, so the conversion runs in a child process:
``python -m radps_flows.core.uvdata_convert KIND INPUT OUTPUT.ms``, its failure a last line
on stderr.

Offline (a cluster's pods, a laptop on a train): pyuvdata asks astropy for its list of
observatory sites, which astropy 8 downloads and no longer falls back from; the child gives
astropy an empty list then, and pyuvdata uses its own known telescopes and the file's
positions.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

KINDS = {"uvfits": "uvfits", "uvh5": "uvh5", "miriad": "miriad", "mir": "mir"}
"""Our input kinds and pyuvdata's file_type of each."""


class ConversionError(RuntimeError):
    """pyuvdata could not read the input or write the MeasurementSet; the message says why."""


def to_measurement_set(kind: str, source: Path, ms: Path, timeout: float = 3600) -> None:
    """Write ``source`` (a local file or folder of ``kind``) as the MeasurementSet ``ms``."""
    if kind not in KINDS:
        raise ValueError(f"not a pyuvdata input kind: {kind!r}")
    done = subprocess.run(
        [sys.executable, "-m", __name__, kind, str(source), str(ms)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise ConversionError(lines[-1] if lines else f"exit status {done.returncode}")


def _offline_sites() -> None:
    from astropy.coordinates import EarthLocation
    from astropy.coordinates.sites import SiteRegistry

    try:
        EarthLocation.get_site_names()
    except OSError:  # astropy's site list is a download (astropy 8 has no built-in one)
        # A registry astropy takes as loaded must not be empty; its one site, named "", is one
        # pyuvdata leaves out of its known telescopes.
        sites = SiteRegistry()
        sites.add_site([""], EarthLocation.from_geocentric(0, 0, 0, unit="m"))
        EarthLocation._site_registry = sites


def _main(kind: str, source: str, ms: str) -> int:
    import warnings

    _offline_sites()
    from pyuvdata import UVData

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pyuvdata's notes on each file's conventions
            data = UVData.from_file(source, file_type=KINDS[kind])
            data.write_ms(ms, clobber=True)
    except Exception as exc:
        print(f"pyuvdata could not convert this {kind} input: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(*sys.argv[1:4]))
