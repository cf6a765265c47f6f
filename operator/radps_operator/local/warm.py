"""Warm `radps run`s: the `radps server` process imports Prefect, Dask, the array stack and
every pipeline once, then forks one child per `radps run` that asks for it.

Why: with a Prefect server already up, a `radps run` spent ~4 s in its own process before the
flow run's first task, almost all of it imports (Prefect 1.6 s, its collections 1.2 s, the
science stack and the flows 2.4 s, measured with cProfile). A fork of a process that has done
them takes ~15 ms, so a warm run starts its first task about a second after `radps run` starts
(docs/architecture.md, "radps run"). The child is a fresh process per run, so one run's state
(Prefect's context, Dask's cluster, memory) never leaks into the next, as a long-lived worker
process would.

The client (`radps run`) reads and validates its manifests first, then sends the server their
documents, its working folder, environment and its own stdin/stdout/stderr (SCM_RIGHTS), so
the child draws the progress bar on the user's terminal and its exit code becomes `radps
run`'s. Ctrl-C reaches the client (the terminal's foreground process), which passes it on as
SIGINT; if the client dies, the server interrupts the child, which cancels its flow run as
Ctrl-C does.

A child is a copy of the server's imports, so it is used only when they are the ones this
`radps run` would make: the same Python, the same radps code (a stamp of its files) and the
same settings that Prefect, Dask and the BLAS libraries read at import (`import_settings`).
Otherwise `radps run` runs in its own process, as before, and says why.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import importlib
import importlib.util
import json
import os
import selectors
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IMPORT_SETTING_PREFIXES = (
    "PREFECT_",
    "DASK_",
    "PYTHON",
    "OMP_",
    "OPENBLAS_",
    "MKL_",
    "NUMBA_",
    "MPL",
    "MALLOC_",
    "LD_",
)
"""Environment variables read when the modules are imported (Prefect's settings, Dask's config,
thread pools, the import path): a child must have imported with the same values. radps's own
RADPS_* settings are read when used, so a child takes them from the client's environment."""

SOCKET_NAME = "runner.sock"
UNIX_PATH_MAX = 100
"""sun_path holds 108 bytes on Linux; longer homes get a private folder in the temp dir."""
REQUEST_TIMEOUT_SECONDS = 10.0
STOP_CHILDREN_SECONDS = 30.0
"""How long a stopping server lets interrupted runs record their cancellation."""


@dataclass
class Request:
    """What a `radps run` sends: enough to be that process, but warm."""

    manifests: list[dict]
    """The runs' documents as read by the client (:class:`radps_operator.local.manifests.
    Manifest` in JSON): standard input and overrides are the client's, not the server's."""
    cwd: str
    env: dict[str, str]
    settings: dict[str, str]

    def to_bytes(self) -> bytes:
        return json.dumps(self.__dict__).encode() + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> Request:
        document = json.loads(data)
        return cls(
            manifests=[dict(m) for m in document["manifests"]],
            cwd=str(document["cwd"]),
            env={str(k): str(v) for k, v in document["env"].items()},
            settings={str(k): str(v) for k, v in document["settings"].items()},
        )


def import_settings(env: Mapping[str, str]) -> dict[str, str]:
    """What must be equal between the server's imports and a `radps run` for a fork of the
    former to stand in for the latter."""
    settings = {k: v for k, v in env.items() if k.startswith(IMPORT_SETTING_PREFIXES)}
    settings["python"] = f"{sys.executable} {sys.version}"
    settings["radps code"] = code_stamp()
    return settings


def code_stamp() -> str:
    """Changes when a file of radps (its flows or its operator) or the set of installed
    packages changes, so an edit or an upgrade is never run by an older warm process."""
    import radps_flows
    import radps_operator

    digest = hashlib.sha256()
    for package in (radps_flows, radps_operator):
        root = Path(package.__file__).parent
        for path in sorted(root.rglob("*.py")):
            stat = path.stat()
            digest.update(f"{path}:{stat.st_mtime_ns}:{stat.st_size}".encode())
    prefect = importlib.util.find_spec("prefect")  # where the installed packages live
    site = Path(prefect.origin if prefect and prefect.origin else sys.prefix).parents[1]
    digest.update(f"{site}:{site.stat().st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def differences(ours: Mapping[str, str], theirs: Mapping[str, str]) -> list[str]:
    return sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))


def socket_path(home: Path) -> Path:
    path = home / SOCKET_NAME
    if len(str(path)) <= UNIX_PATH_MAX:
        return path
    return Path(tempfile.mkdtemp(prefix="radps-")) / SOCKET_NAME


def warm_up() -> None:
    """Import what any run imports, in the server, before it serves: the forks share it."""
    from prefect._internal.plugins.collections import load_prefect_collections

    load_prefect_collections()
    import distributed  # noqa: F401 - the local task runner's cluster
    import prefect.client.orchestration
    import prefect.flow_engine  # noqa: F401

    from radps_flows.catalog import pipelines
    from radps_flows.core import previews

    for pipeline in pipelines().values():
        pipeline.load_flow()
    import radps_flows.core.minor_cycle  # CLEAN's compiled loop (about 4 s)
    import radps_flows.preload  # noqa: F401 - xradio's reader (2-3 s), which an MSv2 input needs

    _import_what_runs_import_late()

    previews.warm_up_plotting(wait=True)  # a process's first figure costs 0.3-1 s
    # What is imported now lives as long as the server: out of the garbage collector's sight,
    # a fork's full collections (xradio's conversion runs one; Python's own run as a run
    # allocates) scan only the run's objects, not the ~0.5 GB of imports, and do not touch,
    # so copy, the pages the forks share.
    gc.collect()
    gc.freeze()


def _import_what_runs_import_late() -> None:
    """What the flows import inside functions, so that a flow pod's process starts without it:
    the FITS header's WCS and observatory, the PNG preview's WCS axes, the image store, the
    beam fit, the Dask dashboard. A fork would import it in every run, about 0.8 s of a run's
    products (a third of a short cached run)."""
    for module in (
        "astropy.coordinates",
        "astropy.visualization.wcsaxes",
        "astropy.wcs",
        "distributed.http.scheduler.prometheus",
        "scipy.fft",
        "scipy.optimize",
        "xradio.image",
    ):
        importlib.import_module(module)


# --- the server side -------------------------------------------------------------------


@dataclass
class _Child:
    connection: socket.socket
    interrupted: bool = False


@dataclass
class WarmRunner:
    """Forks a child per request and reports its exit code to the client that asked."""

    home: Path
    settings: dict[str, str]
    run_child: Callable[[Request], int]
    """What a child does (in `radps_operator.cli`: validate, then run on this server)."""
    close_in_child: list[int] = field(default_factory=list)
    """Files of the server a run must not keep open (its life lock)."""
    listener: socket.socket | None = None
    path: Path | None = None
    _inode: int | None = None
    children: dict[int, _Child] = field(default_factory=dict)
    last_active: float = field(default_factory=time.monotonic)
    selector: selectors.BaseSelector = field(default_factory=selectors.DefaultSelector)
    _wakeup: tuple[int, ...] = ()

    def listen(self) -> Path:
        self.path = socket_path(self.home)
        self.path.unlink(missing_ok=True)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        previous = os.umask(0o177)  # the socket is this user's alone
        try:
            self.listener.bind(str(self.path))
        finally:
            os.umask(previous)
        self.listener.listen(16)
        self._inode = self.path.stat().st_ino
        return self.path

    def serve(
        self,
        alive: Callable[[], bool],
        idle_seconds: float | None,
        in_use: Callable[[], bool] = lambda: False,
    ) -> str:
        """Serve until `alive()` is false or nothing ran for `idle_seconds` (None: forever;
        runs of its own and, by `in_use()`, runs in their own processes count); the reason it
        stopped."""
        assert self.listener is not None
        self.selector.register(self.listener, selectors.EVENT_READ)
        # A child's exit wakes the loop at once (its client is told its exit code then, not
        # up to half a second later): Python writes every signal's number to this pipe.
        self._wakeup = os.pipe()
        for fd in self._wakeup:
            os.set_blocking(fd, False)
        self.selector.register(self._wakeup[0], selectors.EVENT_READ)
        previous = signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.set_wakeup_fd(self._wakeup[1], warn_on_full_buffer=False)
        try:
            while True:
                for key, _ in self.selector.select(timeout=0.5):
                    try:
                        if key.fileobj is self.listener:
                            self._accept()
                        elif key.fileobj == self._wakeup[0]:
                            with contextlib.suppress(BlockingIOError):
                                os.read(self._wakeup[0], 4096)
                        else:
                            self._client_readable(key.fileobj)  # type: ignore[arg-type]
                    except Exception as exc:  # one client's trouble never stops the others' runs
                        print(f"radps server: a request failed: {exc!r}", file=sys.stderr)
                self._reap()
                if not alive():
                    return "the Prefect server exited"
                idle = time.monotonic() - self.last_active
                if idle_seconds is not None and not self.children and idle > idle_seconds:
                    if not in_use():
                        return f"idle for {idle_seconds:g} s"
                    self.last_active = time.monotonic()
        finally:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, previous)

    def close(self) -> None:
        """Stop listening, interrupt the runs still going (each cancels its flow run) and
        wait for them a bounded time."""
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        if self.path is not None:
            with contextlib.suppress(OSError):
                if self.path.stat().st_ino == self._inode:  # not another server's socket
                    self.path.unlink()
            if self.path.parent != self.home:
                with contextlib.suppress(OSError):
                    self.path.parent.rmdir()
        if self.children:
            print(
                f"radps server: waiting up to {STOP_CHILDREN_SECONDS:g} s for "
                f"{len(self.children)} run(s) to record their cancellation",
                file=sys.stderr,
            )
        for pid, child in self.children.items():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)
            child.interrupted = True
        deadline = time.monotonic() + STOP_CHILDREN_SECONDS
        while self.children and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.1)
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            self._report(pid, 128 + signal.SIGKILL)
        self.selector.close()
        for fd in self._wakeup:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wakeup = ()

    def _accept(self) -> None:
        assert self.listener is not None
        connection, _ = self.listener.accept()
        try:
            connection.settimeout(REQUEST_TIMEOUT_SECONDS)
            if not _same_user(connection):
                connection.close()
                return
            request, fds = _receive_request(connection)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            connection.close()
            return
        try:
            differing = differences(self.settings, request.settings)
            refusal: dict[str, Any] | None = None
            if differing:
                refusal = {"accepted": False, "differing": differing}
            elif threading.active_count() > 1:  # a fork would copy their locks, held or not
                names = ", ".join(t.name for t in threading.enumerate())
                refusal = {"accepted": False, "reason": f"threads running ({names})"}
            if refusal is not None:
                with contextlib.suppress(OSError):  # the client may have gone meanwhile
                    _send(connection, refusal)
                connection.close()
                return
            sys.stdout.flush()
            sys.stderr.flush()
            # no signal of the server's between the fork and the child's own handlers
            stopping = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
            signal.pthread_sigmask(signal.SIG_BLOCK, stopping)
            try:
                pid = os.fork()
            except OSError as exc:  # out of memory or processes: the client runs it itself
                signal.pthread_sigmask(signal.SIG_UNBLOCK, stopping)
                with contextlib.suppress(OSError):
                    _send(connection, {"accepted": False, "reason": f"cannot fork ({exc})"})
                connection.close()
                return
            if pid == 0:  # the child: never returns
                self._become_child(request, fds, connection)
            self.children[pid] = _Child(connection)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, stopping)
        finally:
            for fd in fds:
                os.close(fd)
        self.last_active = time.monotonic()
        connection.settimeout(None)
        with contextlib.suppress(OSError):
            _send(connection, {"accepted": True, "pid": pid})
        self.selector.register(connection, selectors.EVENT_READ)

    def _become_child(self, request: Request, fds: list[int], connection: socket.socket) -> None:
        code = 1
        try:
            os.setpgid(0, 0)  # a signal to the server's process group is not one to the run
            for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # as Python sets it: EPIPE, not death
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.pthread_sigmask(
                signal.SIG_UNBLOCK, (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
            )
            signal.set_wakeup_fd(-1)
            for fd in (*self.close_in_child, *self._wakeup):
                os.close(fd)
            self.selector.close()
            if self.listener is not None:
                self.listener.close()
            for child in self.children.values():
                child.connection.close()
            connection.close()
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
            for fd in fds:
                if fd > 2:
                    os.close(fd)
            os.chdir(request.cwd)
            os.environ.clear()
            os.environ.update(request.env)
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.reconfigure(line_buffering=stream.isatty())  # type: ignore[union-attr]
            code = self.run_child(request)
        except KeyboardInterrupt:
            code = 130
        except BaseException as exc:
            with contextlib.suppress(Exception):
                print(f"radps: {type(exc).__name__}: {exc}", file=sys.stderr)
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    def _client_readable(self, connection: socket.socket) -> None:
        try:
            data = connection.recv(64)
        except OSError:
            data = b""
        if data:
            return
        self.selector.unregister(connection)
        for pid, child in self.children.items():
            if child.connection is connection and not child.interrupted:
                # the client is gone (killed, or its terminal closed): end the run as Ctrl-C does
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGINT)
                child.interrupted = True

    def _reap(self) -> None:
        for pid in list(self.children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 1 << 8
            if done:
                self._report(pid, os.waitstatus_to_exitcode(status))

    def _report(self, pid: int, code: int) -> None:
        child = self.children.pop(pid, None)
        if child is None:
            return
        self.last_active = time.monotonic()
        with contextlib.suppress(OSError):
            _send(child.connection, {"exit": code if code >= 0 else 128 - code})
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(child.connection)  # not if the client left first
        child.connection.close()


def _same_user(connection: socket.socket) -> bool:
    credentials = connection.getsockopt(
        socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")
    )
    _, uid, _ = struct.unpack("3i", credentials)
    return uid == os.getuid()


def _receive_request(connection: socket.socket) -> tuple[Request, list[int]]:
    data, fds, _, _ = socket.recv_fds(connection, 1 << 16, 3)
    try:
        while not data.endswith(b"\n"):
            more = connection.recv(1 << 16)
            if not more:
                raise ValueError("the request ended early")
            data += more
        if len(fds) != 3:
            raise ValueError("a request carries stdin, stdout and stderr")
        return Request.from_bytes(data), fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def _send(connection: socket.socket, message: dict[str, Any]) -> None:
    connection.sendall(json.dumps(message).encode() + b"\n")


# --- the client side (`radps run`) ---------------------------------------------------------


@dataclass
class Refused:
    """The server's warm process cannot stand in for this `radps run`."""

    reason: str
    unreachable: bool = False
    """The server did not answer at all (it may be stopping): do not use it."""


def run_warm(socket_file: str, manifests: list[dict]) -> int | Refused:
    """Have the server at `socket_file` run `manifests` (Manifest.to_json) in a fork of its
    warm process, on this terminal; its exit code, or why not."""
    request = Request(
        manifests=list(manifests),
        cwd=os.getcwd(),
        env=dict(os.environ),
        settings=import_settings(os.environ),
    )
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with _Forwarding() as forwarding:  # from the start: a Ctrl-C never falls between
        try:
            connection.settimeout(REQUEST_TIMEOUT_SECONDS)
            try:
                connection.connect(socket_file)
                socket.send_fds(connection, [request.to_bytes()], [0, 1, 2])
                reader = connection.makefile("rb")
                answer = json.loads(reader.readline() or b"{}")
            except (OSError, ValueError) as exc:
                reason = f"the radps server did not take the run ({exc})"
                return Refused(reason, unreachable=True)
            if not answer.get("accepted"):
                if "differing" in answer:
                    differing = ", ".join(answer["differing"])
                    return Refused(
                        f"the radps server was started with other settings ({differing})"
                    )
                return Refused(f"the radps server did not take the run: {answer.get('reason')}")
            connection.settimeout(None)
            forwarding.to(int(answer["pid"]))
            return _wait_for_exit(reader)
        finally:
            connection.close()


class _Forwarding:
    """SIGINT and SIGTERM to this process become SIGINT to the run's process; one that
    arrives before its PID is known is passed on as soon as it is."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.pending = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Forwarding:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._forward)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self.pending and self.pid is None:  # never reached a run: this process stops
            raise KeyboardInterrupt

    def to(self, pid: int) -> None:
        self.pid = pid
        if self.pending:
            self._forward(signal.SIGINT, None)

    def _forward(self, signum: int, frame: object) -> None:
        if self.pid is None:
            self.pending = True
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGINT)


def _wait_for_exit(reader: Any) -> int:
    while True:
        line = reader.readline()  # a forwarded signal does not end it (PEP 475)
        if not line:
            print("radps: the radps server ended before the run did", file=sys.stderr)
            return 1
        message = json.loads(line)
        if "exit" in message:
            return int(message["exit"])
