"""Shared pytest fixtures: real data from the shared folder, unpacked once per session."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

VLA_TARBALL = "day2_TDEM0003_10s_norx_1src_1spw.ms.tar.gz"


def shared_dir() -> Path:
    """The shared folder beside the repository (``RADPS_SHARED_DIR`` overrides it)."""
    env = os.environ.get("RADPS_SHARED_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def vla_ms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real VLA MeasurementSet (DATA column only), unpacked into a session temp folder."""
    tarball = shared_dir() / "data" / VLA_TARBALL
    if not tarball.is_file():
        pytest.skip(f"VLA test data not found: {tarball} (set RADPS_SHARED_DIR)")
    dest = tmp_path_factory.mktemp("vla")
    with tarfile.open(tarball) as tar:
        tar.extractall(dest, filter="data")
    found = [p for p in dest.iterdir() if p.suffix == ".ms" and p.is_dir()]
    if len(found) != 1:
        pytest.fail(f"{tarball} should hold one .ms directory, found {found}")
    return found[0]
