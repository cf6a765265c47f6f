"""hack/no-leftovers.py, which `make test` runs pytest under: a process the command leaves
running, however it detached, or a mount it leaves in the cache, fails the run and is stopped or
unmounted; a cluster that was up before is kept."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "hack" / "no-leftovers.py"


def run(command: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(TOOL), "--grace", "1", "--", "bash", "-c", command],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **os.environ,
            "RADPS_CACHE": str(tmp_path / "cache"),
            "RADPS_CLUSTER_DIR": str(tmp_path / "cluster"),
            **env,
        },
    )


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_exit_status_passes_through_when_nothing_is_left(tmp_path):
    assert run("true", tmp_path).returncode == 0
    assert run("exit 4", tmp_path).returncode == 4


def test_a_detached_daemon_fails_the_run_and_is_stopped(tmp_path):
    pid_file = tmp_path / "daemon.pid"
    result = run(f"setsid sleep 600 >/dev/null 2>&1 & echo $! > {pid_file}", tmp_path)
    pid = int(pid_file.read_text())
    assert result.returncode == 3, result.stderr
    assert f"{pid} sleep 600" in result.stderr
    assert "left running" in result.stderr
    assert not alive(pid)


def test_a_failed_command_keeps_its_own_exit_status(tmp_path):
    pid_file = tmp_path / "daemon.pid"
    result = run(f"setsid sleep 600 >/dev/null 2>&1 & echo $! > {pid_file}; exit 5", tmp_path)
    assert result.returncode == 5
    assert not alive(int(pid_file.read_text()))


def test_the_daemons_of_a_cluster_that_was_up_before_are_kept(tmp_path):
    """A stand-in cluster: a live process recorded as its API server, and a daemon the command
    starts and records in the cluster's run dir, as cluster-up.sh adds a node."""
    run_dir = tmp_path / "cluster" / "run"
    run_dir.mkdir(parents=True)
    apiserver = subprocess.Popen(["sleep", "600"])
    try:
        (run_dir / "kube-apiserver.pid").write_text(f"{apiserver.pid}\n")
        (run_dir / "mode").write_text("control-plane\n")
        result = run(
            f"setsid sleep 601 >/dev/null 2>&1 & echo $! > {run_dir}/kubelet.pid", tmp_path
        )
        kubelet = int((run_dir / "kubelet.pid").read_text())
        try:
            assert result.returncode == 0, result.stderr
            assert f"kept (the cluster was up before): {kubelet}" in result.stdout
            assert alive(kubelet)
        finally:
            os.kill(kubelet, 9)
    finally:
        apiserver.kill()
        apiserver.wait()
    # Without that cluster, the same daemon is a leftover.
    (run_dir / "mode").write_text("down\n")
    result = run(f"setsid sleep 602 >/dev/null 2>&1 & echo $! > {run_dir}/kubelet.pid", tmp_path)
    assert result.returncode == 3
    assert not alive(int((run_dir / "kubelet.pid").read_text()))


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_a_mount_left_in_the_cache_fails_the_run_and_is_unmounted(tmp_path):
    """As a private dockerd leaves the host's network namespace bind-mounted in its exec root."""
    target = tmp_path / "cache" / "docker" / "exec" / "netns"
    target.mkdir(parents=True)
    result = run(f"mount -t tmpfs radps-test {target}", tmp_path)
    assert result.returncode == 3, result.stderr
    assert "mount(s) left" in result.stderr and str(target) in result.stderr
    assert str(target) not in Path("/proc/self/mountinfo").read_text()
