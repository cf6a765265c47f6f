"""A throwaway PostgreSQL server for the Prefect server under benchmark (SQLite serialises
every write: with it the operator benchmark measures SQLite's lock, not the operator)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _bin_dir() -> Path:
    for found in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (found / "initdb").exists():
            return found
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql)")


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """Yields the asyncpg URL of a fresh server on a free loopback port; removed after. As
    root the server runs as the `postgres` user (PostgreSQL refuses to run as root)."""
    from radps_operator.local.server import free_port

    bin_dir = _bin_dir()
    root = Path(tempfile.mkdtemp(prefix="radps-bench-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()

    def pg(*args: str) -> None:
        subprocess.run([*as_user, *args], check=True, capture_output=True, timeout=120)

    pg(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=200"
    pg(
        str(bin_dir / "pg_ctl"),
        "-D",
        str(data),
        "-o",
        options,
        "-l",
        str(root / "log"),
        "-w",
        "start",
    )
    try:
        pg(
            str(bin_dir / "createdb"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            "postgres",
            "prefect",
        )
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/prefect"
    finally:
        pg(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)
