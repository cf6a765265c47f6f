"""A Prefect server on loopback: the one a `radps server` keeps (started by hand, or in the
background by `radps run`, see `radps_operator.local.warm`), or a private one started for a
single `radps run` and stopped after it.

The Prefect server runs in its own session (process group) so a Ctrl-C in the terminal reaches
`radps run` first, which then cancels the flow run while the server can still record it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from radps_flows import contract
from radps_operator.local.home import prefect_base_env

DEFAULT_PORT = 4200
START_TIMEOUT_SECONDS = 120.0
RECORD_FILE = "server.json"
START_LOCK_FILE = "server-start.lock"
LIFE_LOCK_FILE = "server.lock"
"""Held (exclusively) by the `radps server` of a home for its whole life: one per home."""
STARTED_TOLERANCE_SECONDS = 0.05
"""How far a process's start time may be from its record's (both are the system's clock
ticks since boot, in seconds since the epoch: equal for the same process)."""
USERS_LOCK_FILE = "server-users.lock"
"""Held (shared) by each `radps run` that uses the server from its own process: the server
is not idle while one does."""
IDLE_ENV = "RADPS_SERVER_IDLE_SECONDS"
DEFAULT_IDLE_SECONDS = 900.0
"""How long the background server that `radps run` starts waits for the next run; 0: none
(each `radps run` then starts a private server and stops it, 10-30 s per run)."""


class ServerError(RuntimeError):
    pass


@dataclass
class LocalServer:
    api_url: str
    ui_url: str
    process: subprocess.Popen[bytes] | None
    """None when attached to a server this process did not start."""
    log_path: Path | None = None
    supervisor_pid: int | None = None
    """The `radps server` process that keeps this Prefect server (None: a private one)."""
    runner_socket: str | None = None
    """Where that `radps server` takes runs to fork from its warm process (local.warm)."""
    background: bool = False
    """Started by `radps run` and stopped when idle, rather than by hand."""

    def flow_run_link(self, flow_run_id: object) -> str:
        return contract.flow_run_url(self.ui_url, flow_run_id)

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is not None:
            stop_process_group(self.process, timeout)
            self.process = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def is_healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def start_server(
    home: Path,
    port: int | None = None,
    ui: bool = False,
    database: Path | None = None,
    log_path: Path | None = None,
    wait: bool = True,
) -> LocalServer:
    """Start `prefect server start` on 127.0.0.1 and (with `wait`) wait until it answers."""
    port = port or free_port()
    log_path = log_path or home / "logs" / f"prefect-server-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **prefect_base_env(home, database)}
    env["PREFECT_UI_ENABLED"] = "true" if ui else "false"
    env["PREFECT_UI_API_URL"] = f"http://127.0.0.1:{port}/api"
    env.pop("PREFECT_API_URL", None)
    command = [
        sys.executable,
        "-m",
        "prefect",
        "server",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    process = _start_detached(command, env, log_path)
    server = LocalServer(
        api_url=f"http://127.0.0.1:{port}/api",
        ui_url=f"http://127.0.0.1:{port}",
        process=process,
        log_path=log_path,
    )
    if wait:
        try:
            wait_healthy(server)
        except BaseException:
            server.stop()
            raise
    return server


def _start_detached(
    command: list[str], env: dict[str, str], log_path: Path, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """`command` in its own session (a Ctrl-C in the terminal is not its), output to
    `log_path`."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            command,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_healthy(server: LocalServer, timeout: float = START_TIMEOUT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process is not None and server.process.poll() is not None:
            raise ServerError(
                f"the Prefect server exited with code {server.process.returncode} while "
                f"starting; last lines of {server.log_path}:\n{_tail(server.log_path)}"
            )
        if is_healthy(server.api_url):
            return
        time.sleep(0.25)
    raise ServerError(
        f"the Prefect server did not answer at {server.api_url} within {timeout:.0f} s; "
        f"see {server.log_path}"
    )


def stop_process_group(process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM the process group we started, then SIGKILL what is left after `timeout`."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def write_record(home: Path, server: LocalServer) -> Path:
    """Tell later `radps run`s where the persistent server is (written whole, then renamed,
    so a reader never sees half a record)."""
    path = home / RECORD_FILE
    record = {
        "pid": os.getpid(),
        "started": process_started(os.getpid()),
        "api_url": server.api_url,
        "ui_url": server.ui_url,
        "runner_socket": server.runner_socket,
        "background": server.background,
    }
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(json.dumps(record))
    partial.replace(path)
    return path


def process_started(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), or None where none runs."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return None


def recorded_server_pid(record: dict) -> int | None:
    """The PID of the record's server while that process still runs. A server killed outright
    leaves its record behind, and the system may since have given its PID to another
    process: one that did not start when the record says is not the server (nor is any
    process, for a record without the time)."""
    pid = int(record["pid"])
    started = process_started(pid)
    recorded = record.get("started")
    if started is None or recorded is None:
        return None
    if abs(float(recorded) - started) > STARTED_TOLERANCE_SECONDS:
        return None
    return pid


def find_running_server(home: Path) -> LocalServer | None:
    """The persistent `radps server`, when its record is fresh and it answers."""
    path = home / RECORD_FILE
    try:
        record = json.loads(path.read_text())
        pid = recorded_server_pid(record)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if pid is None or not is_healthy(record["api_url"]):
        return None
    return LocalServer(
        api_url=record["api_url"],
        ui_url=record["ui_url"],
        process=None,
        supervisor_pid=pid,
        runner_socket=record.get("runner_socket"),
        background=bool(record.get("background")),
    )


def port_or_free(port: int) -> int:
    """`port` on 127.0.0.1 when nothing listens there, else any free one."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return free_port()
    return port


def remove_record(home: Path) -> None:
    """Remove this process's record (never another server's)."""
    path = home / RECORD_FILE
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        if int(json.loads(path.read_text())["pid"]) == os.getpid():
            path.unlink()


def idle_seconds_setting() -> float:
    raw = os.environ.get(IDLE_ENV, "").strip()
    if not raw:
        return DEFAULT_IDLE_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ServerError(
            f"{IDLE_ENV}={raw!r}: expected a number of seconds >= 0 (0: no background server)"
        )
    return value


def start_background(home: Path, env: dict[str, str]) -> tuple[LocalServer, bool]:
    """The running `radps server` of `home`, else a new one started in the background (its own
    session, outliving this process; it stops itself after `IDLE_ENV` seconds without a run),
    and whether this call started it. Concurrent callers start one server between them."""
    with _start_lock(home):
        running = find_running_server(home)
        if running is not None:
            return running, False
        log_path = home / "logs" / "server.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # -P and the home as its folder: the server (and every run forked from it) must not
        # import modules or read Prefect's .env/prefect.toml from this caller's folder
        command = [sys.executable, "-P", "-m", "radps_operator", "server", "--background"]
        process = _start_detached(command, env, log_path, cwd=home)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            found = find_running_server(home)
            if found is not None and found.supervisor_pid == process.pid:
                return found, True
            if process.poll() is not None:
                raise ServerError(
                    f"the background radps server exited with code {process.returncode} "
                    f"while starting; last lines of {log_path}:\n{_tail(log_path)}"
                )
            if time.monotonic() > deadline:
                stop_process_group(process)
                raise ServerError(
                    f"the background radps server did not start within "
                    f"{START_TIMEOUT_SECONDS:.0f} s; see {log_path}"
                )
            time.sleep(0.2)


@contextlib.contextmanager
def _start_lock(home: Path) -> Iterator[None]:
    """Held while one caller finds or starts the server; others wait, a bounded time."""
    with open(home / START_LOCK_FILE, "w") as lock:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS + 30
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ServerError(
                        f"another radps process has been starting the server of {home} for "
                        f"over {START_TIMEOUT_SECONDS + 30:.0f} s"
                    ) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def hold_life_lock(home: Path) -> int | None:
    """The open file holding `LIFE_LOCK_FILE` for this process's life (a run forked from it
    must close it), or None when another `radps server` of `home` holds it."""
    fd = os.open(home / LIFE_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def using(home: Path) -> Iterator[None]:
    """Held while a `radps run` uses the server of `home` from its own process."""
    with open(home / USERS_LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        yield


def in_use(home: Path) -> bool:
    """Whether a `radps run` uses the server of `home` from its own process now."""
    with open(home / USERS_LOCK_FILE, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock, fcntl.LOCK_UN)
        return False


def stop_running_server(home: Path, timeout: float = START_TIMEOUT_SECONDS) -> int | None:
    """SIGTERM the `radps server` of `home` and wait until it has gone; its PID, or None when
    none runs."""
    path = home / RECORD_FILE
    try:
        pid = recorded_server_pid(json.loads(path.read_text()))
        if pid is None:  # a stale record (the next server replaces it): signal nobody
            return None
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            raise ServerError(f"the radps server (PID {pid}) did not stop within {timeout:.0f} s")
        time.sleep(0.2)
    return pid


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, dead but not yet reaped by its parent, has ended)."""
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _tail(path: Path | None, lines: int = 15) -> str:
    if path is None or not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
