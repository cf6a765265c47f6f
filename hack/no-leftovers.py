#!/usr/bin/env python3
"""Run a command, then fail if it left a process running or a mount behind: `make test` runs
pytest under it.

Daemons detach (a new session, a parent that exits), so waiting for the command's children says
nothing about them. This process makes itself a child subreaper (Linux prctl
PR_SET_CHILD_SUBREAPER): every process the command orphans, however it detached, becomes our
child instead of init's. Once the command has exited and a grace period has passed, any child
we still have was started by the command and left running. Each is named, then stopped by its
PID (it is ours), and the exit status is non-zero.

Daemons can also leave mounts (a cluster's pod volumes, the network namespace a dockerd
bind-mounts). A mount below the cache (RADPS_CACHE) that was not there before is named and
unmounted, and fails the run too.

The one exception: a local cluster (hack/cluster-up.sh) that was already up before the command
ran is the user's, and the tests may have added its node. Its daemons (its PID files), its
containerd's shims and the mounts below its state dir stay, and are listed as kept.

Usage: hack/no-leftovers.py [--grace SECONDS] -- COMMAND [ARG...]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
HACK = Path(__file__).resolve().parent


def hack_settings(*names: str) -> list[Path]:
    """Paths as hack/lib.sh resolves them (RUN_DIR, RADPS_CACHE, ...)."""
    echo = " ".join(f'"${name}"' for name in names)
    out = subprocess.run(
        ["bash", "-c", f'source "{HACK / "lib.sh"}" && printf "%s\\n" {echo}'],
        capture_output=True,
        text=True,
        check=True,
    )
    return [Path(line) for line in out.stdout.splitlines()]


def mounts_below(root: Path) -> set[str]:
    """Mount points below ``root`` (field 5 of mountinfo)."""
    prefix = f"{root}/"
    with open("/proc/self/mountinfo") as mountinfo:
        return {line.split()[4] for line in mountinfo if line.split()[4].startswith(prefix)}


def cluster_was_up(run_dir: Path) -> bool:
    mode = run_dir / "mode"
    pid_file = run_dir / "kube-apiserver.pid"
    try:
        return mode.read_text().strip() not in ("", "down") and alive(int(pid_file.read_text()))
    except (OSError, ValueError):
        return False


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def children(of: int) -> list[int]:
    """Living processes whose parent is ``of``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == of and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def command_line(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()[:300]


def kept_cluster_processes(run_dir: Path) -> set[int]:
    """The PIDs of a pre-existing cluster's daemons, and its containerd's shims."""
    kept = set()
    for pid_file in run_dir.glob("*.pid"):
        try:
            kept.add(int(pid_file.read_text()))
        except (OSError, ValueError):
            continue
    socket = str(run_dir / "containerd" / "containerd.sock")
    for pid in children(os.getpid()):
        line = command_line(pid)
        if "containerd-shim" in line and socket in line:
            kept.add(pid)
    return kept


def reap() -> None:
    """Collect the exit status of every child that has exited (orphans we inherited)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def stop(pids: list[int]) -> None:
    """SIGTERM, up to 20 s, then SIGKILL; orphans of the stopped come to us and go too."""
    for sig, wait_s in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            reap()
            pids = [p for p in pids if alive(p)]
            if not pids:
                return
            time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grace", type=float, default=30.0, help="seconds to let them exit")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command")

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print("no-leftovers: prctl(PR_SET_CHILD_SUBREAPER) failed", file=sys.stderr)
        return subprocess.call(command)
    run_dir, cache, cluster_dir = hack_settings("RUN_DIR", "RADPS_CACHE", "RADPS_CLUSTER_DIR")
    keep_cluster = cluster_was_up(run_dir)
    mounts_before = mounts_below(cache)

    process = subprocess.Popen(command)
    # Ctrl-C reaches the command (same process group); we stay to check what it leaves.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == process.pid:
            returncode = os.waitstatus_to_exitcode(status)
            break

    left_processes = check_processes(run_dir, keep_cluster, args.grace, command)
    kept_mounts = mounts_below(cluster_dir) if keep_cluster else set()
    left_mounts = check_mounts(mounts_below(cache) - mounts_before - kept_mounts, command)
    if left_processes or left_mounts:
        return returncode or 3
    return returncode


def check_processes(run_dir: Path, keep_cluster: bool, grace: float, command: list[str]) -> bool:
    """Wait up to ``grace`` seconds for our children to exit; stop and name those that do not.
    True when any had to be stopped."""
    me = os.getpid()
    kept = kept_cluster_processes(run_dir) if keep_cluster else set()
    deadline = time.monotonic() + grace
    while True:
        reap()
        left = [pid for pid in children(me) if pid not in kept]
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    for pid in sorted(kept & set(children(me))):
        print(f"no-leftovers: kept (the cluster was up before): {pid} {command_line(pid)}")
    if not left:
        return False
    print(
        f"no-leftovers: {len(left)} process(es) left running by `{' '.join(command)}`"
        f" after {grace:.0f} s; stopping them:",
        file=sys.stderr,
    )
    for pid in left:
        print(f"  {pid} {command_line(pid)}", file=sys.stderr)
    stop(left)
    for _ in range(5):  # their own orphans, which came to us as they stopped
        extra = [pid for pid in children(me) if pid not in kept]
        if not extra:
            break
        stop(extra)
    return True


def check_mounts(new: set[str], command: list[str]) -> bool:
    """Name and unmount (deepest first) the mounts the command left; True when there were any."""
    if not new:
        return False
    print(
        f"no-leftovers: {len(new)} mount(s) left by `{' '.join(command)}`; unmounting them:",
        file=sys.stderr,
    )
    for mount in sorted(new, key=len, reverse=True):
        print(f"  {mount}", file=sys.stderr)
        subprocess.run(["umount", mount], check=False)
    return True


if __name__ == "__main__":
    sys.exit(main())
