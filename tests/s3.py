"""pytest plugin: a real S3-compatible object store for the tests.

Registered from ``tests/conftest.py`` (``pytest_plugins``).

Fixtures
  ``s3_server`` (session)  a :class:`S3Server`: SeaweedFS (``weed server`` with its S3 gateway),
      built from upstream by ``hack/build.sh seaweedfs`` (``make deps``), on loopback ports,
      in a session temp folder, with a generated credential and one bucket. Stopped (its whole
      session, SIGTERM) at the end.

Environment
  ``RADPS_TEST_S3_ENDPOINT`` (with ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and
      ``RADPS_TEST_S3_BUCKET``)  use that store instead of starting one.

Clients find the store as any AWS client does, through :meth:`S3Server.env`
(``AWS_ENDPOINT_URL_S3`` and the key pair): xradio builds its own s3fs filesystem, with no way
to pass it options.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.k8s import hack_setting

START_TIMEOUT_S = 120.0
GRPC_PORT_OFFSET = 10_000
"""Each SeaweedFS service also listens on its HTTP port + 10000 (gRPC)."""


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    region: str = "us-east-1"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a process that should use this store (AWS's own variables)."""
        return {
            **os.environ,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_REGION": self.region,
            **extra,
        }

    def storage_options(self, **overrides: Any) -> dict[str, Any]:
        """s3fs options for this store (fsspec, zarr and xarray take them)."""
        options: dict[str, Any] = {
            "key": self.access_key,
            "secret": self.secret_key,
            "client_kwargs": {"endpoint_url": self.endpoint, "region_name": self.region},
        }
        return {**options, **overrides}

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key.lstrip('/')}"


def weed_binary() -> Path:
    return Path(hack_setting("SEAWEEDFS_BIN")) / "weed"


def _free_ports(n: int) -> list[int]:
    """``n`` free loopback ports whose gRPC twins (port + 10000) are free too."""
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port + GRPC_PORT_OFFSET > 65535 or port in ports:
            continue
        with socket.socket() as twin:
            try:
                twin.bind(("127.0.0.1", port + GRPC_PORT_OFFSET))
            except OSError:
                continue
        ports.append(port)
    return ports


def _healthy(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/healthz", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _bucket_made(server: S3Server) -> bool:
    """The bucket exists and takes a write: a healthy gateway may still lack a volume."""
    import s3fs

    fs = s3fs.S3FileSystem(**server.storage_options(), skip_instance_cache=True)
    try:
        if not fs.exists(server.bucket):
            fs.mkdir(server.bucket)
        fs.pipe_file(server.url(".ready"), b"ok")
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    external = os.environ.get("RADPS_TEST_S3_ENDPOINT")
    if external:
        yield S3Server(
            endpoint=external,
            access_key=os.environ["AWS_ACCESS_KEY_ID"],
            secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],
            bucket=os.environ.get("RADPS_TEST_S3_BUCKET", "radps-tests"),
        )
        return
    weed = weed_binary()
    if not weed.exists():
        pytest.fail(f"SeaweedFS is not built ({weed}): run `make deps` first")
    with running_s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@contextlib.contextmanager
def running_s3_server(home: Path, bucket: str = "radps-tests") -> Iterator[S3Server]:
    """SeaweedFS on free loopback ports, its data and log in ``home``, with a generated
    credential and ``bucket``; stopped (its whole session, SIGTERM) on exit."""
    master, volume, filer, s3 = _free_ports(4)
    server = S3Server(
        endpoint=f"http://127.0.0.1:{s3}",
        access_key=f"radps-{secrets.token_hex(4)}",
        secret_key=secrets.token_urlsafe(24),
        bucket=bucket,
    )
    command = [
        str(weed_binary()), "server",
        f"-dir={home / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={master}", "-master.peers=none", "-master.telemetry=false",
        "-master.volumeSizeLimitMB=64",
        f"-volume.port={volume}", "-volume.max=0", "-volume.preStopSeconds=0",
        "-filer", f"-filer.port={filer}",
        "-s3", f"-s3.port={s3}", "-s3.port.iceberg=0", "-s3.port.lance=0",
    ]  # fmt: skip
    (home / "data").mkdir(parents=True, exist_ok=True)
    with open(home / "weed.log", "wb") as log:
        # The key pair in its environment is the store's admin identity.
        process = subprocess.Popen(
            command,
            env=server.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=home,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (_healthy(server.endpoint) and _bucket_made(server)):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"SeaweedFS did not start: {(home / 'weed.log').read_text()}")
            time.sleep(0.5)
        yield server
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
