"""The CASA half of the CASA benchmark (casa.py), run by the CASA venv's Python: it imports
only the standard library, casatools and casatasks (no radps, numpy only through CASA).

``python casa_side.py simulate MS``: the issue-18 measurement set, with CASA's own simulator.
``python casa_side.py tclean MS IMAGENAME NITER``: one tclean (wproject, 128 planes), its
products exported to FITS beside it; prints the seconds of the tclean call as JSON on the
last line (the process's own wall time, imports included, is the caller's to measure).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

CENTRE = (math.radians(180.0), math.radians(40.0))  # J2000 12h00m +40d
SOURCES = [  # Jy, (l, m) offsets in arcmin: east and north of the phase centre
    (1.0, (0.0, 0.0)),
    (0.5, (3.0, 2.0)),
    (0.3, (-5.0, 4.0)),
    (0.2, (7.0, -6.0)),
    (0.4, (-2.5, -8.0)),
]
IMSIZE = 2048
CELL = "1arcsec"


def source_direction(l_arcmin: float, m_arcmin: float) -> tuple[float, float]:
    """RA and Dec (radians) of direction cosines (l, m) about CENTRE (the SIN projection's
    inverse), so a source lands at exactly that offset in the image."""
    ra0, dec0 = CENTRE
    east, north = math.radians(l_arcmin / 60), math.radians(m_arcmin / 60)
    n = math.sqrt(1 - east * east - north * north)
    dec = math.asin(north * math.cos(dec0) + n * math.sin(dec0))
    ra = ra0 + math.atan2(east, n * math.cos(dec0) - north * math.sin(dec0))
    return ra, dec


def simulate(ms: str) -> None:
    """VLA B, 27 antennas, 64 x 1 MHz from 1.400 GHz, RR RL LR LL, 60 s over HA -2 h..+2 h,
    the five SOURCES, simplenoise 0.5 Jy with seed 12345: 84,240 rows, ~180 MB."""
    import tempfile

    import casatools
    from casatasks.private import simutil

    me, cl, sm = casatools.measures(), casatools.componentlist(), casatools.simulator()
    config = casatools.ctsys.resolve("alma/simmos/vla.b.cfg")
    x, y, z, diam, pads, _names, telescope, _obs = simutil.simutil().readantenna(config)
    sm.open(ms)
    sm.setconfig(
        telescopename=telescope,
        x=x,
        y=y,
        z=z,
        dishdiameter=diam.tolist(),
        mount=["alt-az"],
        antname=pads,
        padname=pads,
        coordsystem="global",
        referencelocation=me.observatory("VLA"),
    )
    sm.setspwindow(
        spwname="LBand",
        freq="1.4GHz",
        deltafreq="1MHz",
        freqresolution="1MHz",
        nchannels=64,
        stokes="RR RL LR LL",
    )
    sm.setfeed(mode="perfect R L")
    centre = me.direction("J2000", f"{CENTRE[0]}rad", f"{CENTRE[1]}rad")
    sm.setfield(sourcename="bench", sourcedirection=centre)
    sm.setlimits(shadowlimit=0.001, elevationlimit="8.0deg")
    sm.setauto(autocorrwt=0.0)
    sm.settimes(
        integrationtime="60s",
        usehourangle=True,
        referencetime=me.epoch("UTC", "2024/03/21/00:00:00"),
    )
    sm.observe(sourcename="bench", spwname="LBand", starttime="-7200s", stoptime="7200s")
    with tempfile.TemporaryDirectory() as tmp:
        components = os.path.join(tmp, "sources.cl")
        for flux, offset in SOURCES:
            ra, dec = source_direction(*offset)
            cl.addcomponent(
                dir=f"J2000 {ra}rad {dec}rad",
                flux=flux,
                fluxunit="Jy",
                freq="1.4GHz",
                shape="point",
                spectrumtype="constant",
            )
        cl.rename(components)
        cl.close()
        sm.predict(complist=components)
    sm.setseed(12345)
    sm.setnoise(mode="simplenoise", simplenoise="0.5Jy")
    sm.corrupt()
    sm.close()
    table = casatools.table()  # the simulator's scratch columns: DATA is the data
    table.open(ms, nomodify=False)
    table.removecols(["MODEL_DATA", "CORRECTED_DATA"])
    table.close()


def tclean(ms: str, imagename: str, niter: int) -> float:
    import glob
    import shutil

    from casatasks import exportfits
    from casatasks import tclean as run_tclean

    for old in glob.glob(f"{glob.escape(imagename)}.*"):  # tclean would restart from them
        shutil.rmtree(old, ignore_errors=True) if os.path.isdir(old) else os.remove(old)
    t0 = time.perf_counter()
    run_tclean(
        vis=ms,
        imagename=imagename,
        datacolumn="data",
        specmode="mfs",
        stokes="I",
        imsize=IMSIZE,
        cell=CELL,
        weighting="natural",
        gridder="wproject",
        wprojplanes=128,
        deconvolver="hogbom",
        niter=niter,
        gain=0.1,
        threshold="0Jy",
        pblimit=-1e-6,  # no primary-beam mask: the whole image, as radps makes it
    )
    seconds = time.perf_counter() - t0
    kinds = ("image", "residual", "model") if niter else ("image",)
    for kind in kinds:
        exportfits(f"{imagename}.{kind}", f"{imagename}.{kind}.fits", overwrite=True)
    return seconds


if __name__ == "__main__":
    command, ms, *rest = sys.argv[1:]
    if command == "simulate":
        simulate(ms)
        print(json.dumps({"ms": ms}))
    elif command == "tclean":
        imagename, niter = rest
        print(json.dumps({"tclean_s": tclean(ms, imagename, int(niter))}))
    else:
        raise SystemExit(f"unknown command {command!r}")
