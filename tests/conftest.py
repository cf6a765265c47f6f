"""Shared pytest fixtures: real data from the shared folder, unpacked once per session."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest_plugins = ["tests.k8s", "tests.s3"]  # the local Kubernetes cluster, the S3 store

VLA_TARBALL = "day2_TDEM0003_10s_norx_1src_1spw.ms.tar.gz"


def pytest_configure(config: pytest.Config) -> None:
    """Keep every Prefect import of the test run away from the user's ~/.prefect."""
    home = Path(tempfile.mkdtemp(prefix="radps-test-home-"))
    os.environ.setdefault("RADPS_HOME", str(home))
    os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # a `radps run` with no server gets a private one, stopped after it, unless a test asks for
    # the background server (tests/integration/test_warm_runs.py), which would outlive it
    os.environ.setdefault("RADPS_SERVER_IDLE_SECONDS", "0")


PREFECT_TEMPORARY_SERVER = "prefect.server.api.server:create_app"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop the temporary API servers Prefect starts in this process when something calls its
    API with no server configured, now: at interpreter exit they outlived the grace of
    hack/no-leftovers.py twice. Prefect's own stop() ends only the last one it started; when a
    start times out on a loaded machine it starts another and forgets the first, which stays
    our child. So every such child of this process is stopped, by its PID."""
    import psutil

    server_module = sys.modules.get("prefect.server.api.server")
    if server_module is not None:
        for server in list(server_module.SubprocessASGIServer._instances.values()):
            with contextlib.suppress(Exception):
                server.stop()
    servers = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if PREFECT_TEMPORARY_SERVER in " ".join(child.cmdline()):
                servers.append(child)
    for server in servers:
        with contextlib.suppress(psutil.Error):
            server.terminate()
    _, alive = psutil.wait_procs(servers, timeout=10)
    for server in alive:
        with contextlib.suppress(psutil.Error):
            server.kill()


def shared_dir() -> Path:
    """The shared folder beside the repository (``RADPS_SHARED_DIR`` overrides it)."""
    env = os.environ.get("RADPS_SHARED_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared"


def unpack(tarball: Path, dest: Path) -> None:
    """Extract a data tarball safely: with tarfile's "data" filter where this Python has it
    (3.11.4 on), else with the same refusals by hand (Debian 12's Python 3.11.2): only files
    and folders, nothing outside ``dest``."""
    with tarfile.open(tarball) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
            return
        root = dest.resolve()
        for member in tar.getmembers():
            inside = (root / member.name).resolve().is_relative_to(root)
            if not inside or not (member.isfile() or member.isdir()):
                raise ValueError(f"{tarball}: refusing to extract {member.name!r}")
        tar.extractall(dest)


@pytest.fixture(scope="session")
def vla_ms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real VLA MeasurementSet (DATA column only), unpacked into a session temp folder."""
    tarball = shared_dir() / "data" / VLA_TARBALL
    if not tarball.is_file():
        pytest.skip(f"VLA test data not found: {tarball} (set RADPS_SHARED_DIR)")
    dest = tmp_path_factory.mktemp("vla")
    unpack(tarball, dest)
    found = [p for p in dest.iterdir() if p.suffix == ".ms" and p.is_dir()]
    if len(found) != 1:
        pytest.fail(f"{tarball} should hold one .ms directory, found {found}")
    return found[0]


REPO = Path(__file__).resolve().parents[1]
RADPS = str(Path(sys.executable).parent / "radps")


@dataclass
class RadpsServer:
    """A real `radps server` (Prefect API + UI on loopback) in its own radps home."""

    home: Path
    api_url: str
    process: subprocess.Popen[bytes]

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "RADPS_HOME": str(self.home), **extra}


@contextlib.contextmanager
def running_radps_server(home: Path, env: dict[str, str]) -> Iterator[RadpsServer]:
    """A real `radps server` on a free loopback port, its record and log (server.out) in
    ``home``; stopped (its whole session, SIGTERM) on exit."""
    from radps_operator.local.server import RECORD_FILE, free_port, is_healthy

    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with open(home / "server.out", "wb") as log:
        process = subprocess.Popen(
            [RADPS, "server", "--port", str(port)],
            env={**env, "RADPS_HOME": str(home)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = RadpsServer(home=home, api_url=f"http://127.0.0.1:{port}/api", process=process)
    try:
        deadline = time.monotonic() + 180
        while not ((home / RECORD_FILE).exists() and is_healthy(server.api_url)):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"radps server did not start: {(home / 'server.out').read_text()}"
                )
            time.sleep(0.25)
        yield server
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(60)


@pytest.fixture(scope="session")
def radps_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RadpsServer]:
    """Started once per test run; `radps run` finds it through the record it writes in its
    home, as it would on a user's laptop."""
    from radps_operator.local.server import RECORD_FILE, is_healthy

    home = tmp_path_factory.mktemp("radps-home")
    with running_radps_server(home, dict(os.environ)) as server:
        yield server
    assert server.process.returncode == 0, (home / "server.out").read_text()
    assert not (home / RECORD_FILE).exists(), "radps server left its record behind"
    assert not is_healthy(server.api_url), "the Prefect server outlived radps server"
