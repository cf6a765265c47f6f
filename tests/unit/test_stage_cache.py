"""The stage cache's entries, keys and eviction (radps_flows.stage_cache), and a block's flags
and gains in it (radps_flows.core.block_cache), on a real folder."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from radps_flows.core import block_cache
from radps_flows.stage_cache import (
    ENTRY_FILE,
    IN_USE_SECONDS,
    INCOMING,
    INCOMING_GRACE_SECONDS,
    CachePolicy,
    StageCache,
    dataset_digest,
    stage_key,
)


def _block(seed: int = 0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    vis = rng.normal(size=(4, 3, 5, 2)) + 1j * rng.normal(size=(4, 3, 5, 2))
    return xr.Dataset(
        {
            "VISIBILITY": (("time", "baseline_id", "frequency", "polarization"), vis),
            "FLAG": (("time", "baseline_id", "frequency", "polarization"), vis.real > 1.5),
        },
        coords={"time": np.arange(4.0), "frequency": np.linspace(1e9, 2e9, 5)},
        attrs={"partition_name": "p0"},
    )


def test_keys_change_with_input_parameters_and_stage_only():
    a = stage_key("flagging", "digest-1", {"threshold": 5.0})
    assert a == stage_key("flagging", "digest-1", {"threshold": 5.0})
    assert a != stage_key("flagging", "digest-2", {"threshold": 5.0})
    assert a != stage_key("flagging", "digest-1", {"threshold": 4.0})
    assert a != stage_key("calibration", "digest-1", {"threshold": 5.0})


def test_a_dataset_digest_sees_one_changed_visibility_and_its_partition():
    block = _block()
    edited = block.copy(deep=True)
    edited["VISIBILITY"].values[2, 1, 3, 0] += 1e-6
    renamed = block.assign_attrs(partition_name="p1")
    assert dataset_digest(block) == dataset_digest(_block())
    assert dataset_digest(edited) != dataset_digest(block)
    assert dataset_digest(renamed) != dataset_digest(block)


def test_an_entry_appears_whole_or_not_at_all(tmp_path: Path):
    cache = StageCache(tmp_path)
    assert cache.get("flagging", "ab" * 32) is None
    with pytest.raises(RuntimeError), cache.put("flagging", "ab" * 32) as folder:
        (Path(folder) / "half.npz").write_bytes(b"x")
        raise RuntimeError("killed mid-write")
    assert cache.get("flagging", "ab" * 32) is None
    assert not list((tmp_path / INCOMING).iterdir()), "a failed write left its folder"
    with cache.put("flagging", "ab" * 32, {"block": "b"}) as folder:
        (Path(folder) / "flags.npz").write_bytes(b"whole")
        assert cache.get("flagging", "ab" * 32) is None, "visible before its commit"
    found = cache.get("flagging", "ab" * 32)
    assert found is not None and (Path(found) / "flags.npz").read_bytes() == b"whole"


def test_writers_of_one_entry_at_once_leave_one_whole_entry(tmp_path: Path):
    """Two runs that miss the same entry compute it twice, safely: the first rename wins,
    and a Refresh replaces it."""
    cache = StageCache(tmp_path)
    key = "cd" * 32
    inside = threading.Barrier(2)

    def write(content: bytes) -> None:
        with cache.put("calibration", key) as folder:
            (Path(folder) / "gains.npz").write_bytes(content)
            inside.wait(10)  # both are mid-write here

    threads = [threading.Thread(target=write, args=(c,)) for c in (b"one", b"two")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    found = Path(cache.get("calibration", key) or "")
    assert (found / "gains.npz").read_bytes() in (b"one", b"two")
    assert sorted(p.name for p in found.iterdir()) == [ENTRY_FILE, "gains.npz"]
    with cache.put("calibration", key, replace=True) as folder:
        (Path(folder) / "gains.npz").write_bytes(b"new")
    assert (found / "gains.npz").read_bytes() == b"new"


def test_policies_read_and_write_by_mode_and_from_stage(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("RADPS_CACHE_DIR", str(tmp_path / "cache"))
    use = CachePolicy.of_run("Use")
    assert use.root == str(tmp_path / "cache") and (tmp_path / "cache").is_dir()
    assert use.reads("conversion") and use.writes("flagging")
    refresh = CachePolicy.of_run("Refresh")
    assert not refresh.reads("conversion") and refresh.writes("conversion")
    rerun = CachePolicy.of_run("Use", from_stage="calibration")
    assert rerun.reads("conversion") and rerun.reads("flagging")
    assert not rerun.reads("calibration") and rerun.writes("calibration")
    assert rerun.using().reads("calibration")
    off = CachePolicy.of_run("Off")
    assert off.root is None and not off.reads("flagging") and not off.writes("flagging")
    with pytest.raises(ValueError, match="cache: 'Sometimes'"):
        CachePolicy.of_run("Sometimes")
    monkeypatch.delenv("RADPS_CACHE_DIR")
    unset = CachePolicy.of_run("Use")
    assert unset.root is None and "RADPS_CACHE_DIR" in (unset.unavailable or "")


def test_an_unwritable_cache_folder_turns_the_cache_off_with_the_reason(
    tmp_path: Path, monkeypatch
):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("RADPS_CACHE_DIR", str(tmp_path / "file" / "cache"))
    policy = CachePolicy.of_run("Use")
    assert policy.root is None
    assert f"cannot use the stage cache {tmp_path / 'file' / 'cache'}" in (policy.unavailable or "")


def _entry(cache: StageCache, stage: str, key: str, size: int, used: float) -> None:
    with cache.put(stage, key) as folder:
        (Path(folder) / "data").write_bytes(b"x" * size)
    os.utime(Path(cache.location(stage, key)) / ENTRY_FILE, (used, used))


def test_eviction_by_age_then_least_recently_used_and_remnants(tmp_path: Path):
    cache = StageCache(tmp_path)
    now = 1_000_000.0
    hour = 3600.0
    _entry(cache, "flagging", "aa" * 32, 1000, now - 10 * 86400)  # too old
    _entry(cache, "flagging", "bb" * 32, 1000, now - 5 * hour)  # least recently used of the rest
    _entry(cache, "calibration", "cc" * 32, 1000, now - 4 * hour)
    _entry(cache, "conversion", "dd" * 32, 1000, now - 3 * hour)
    remnant = tmp_path / INCOMING / "killed.1234"
    remnant.mkdir()
    os.utime(remnant, (now - INCOMING_GRACE_SECONDS - 1,) * 2)
    live = tmp_path / INCOMING / "writing.5678"
    live.mkdir()
    os.utime(live, (now - 60,) * 2)
    removed = cache.evict(max_bytes=2500, max_age_seconds=7 * 86400, now=now)
    assert sorted(e.key[:2] for e in removed) == ["aa", "bb"]
    assert sorted(e.key[:2] for e in cache.entries()) == ["cc", "dd"]
    assert not remnant.exists() and live.exists()


def test_an_entry_a_run_may_still_be_reading_is_never_evicted(tmp_path: Path):
    cache = StageCache(tmp_path)
    now = 1_000_000.0
    _entry(cache, "conversion", "aa" * 32, 1000, now - 2 * IN_USE_SECONDS)
    _entry(cache, "conversion", "bb" * 32, 1000, now - 60)  # read a minute ago
    removed = cache.evict(max_bytes=0, max_age_seconds=0, now=now)
    assert [e.key[:2] for e in removed] == ["aa"]
    assert [e.key[:2] for e in cache.entries()] == ["bb"]


def test_a_blocks_flags_and_gains_round_trip_through_the_cache(tmp_path: Path):
    policy = CachePolicy(str(tmp_path), "Use")
    block = _block()
    memo = block_cache.BlockMemo(policy, block)
    key = memo.flags_key(block_cache.flag_parameters("base", 5.0, "mad"))
    assert memo.flags(key) is None and memo.outcomes == {"flagging": "miss"}
    flags = np.random.default_rng(1).random((4, 3, 5, 2)) > 0.7
    memo.keep_flags(key, flags)
    gains = xr.Dataset(
        {"GAIN": (("time", "antenna_name"), np.array([[1 + 1j, 2 - 1j]]))},
        coords={"time": [0.5], "antenna_name": ["ea01", "ea02"]},
        attrs={"refant": "ea01", "minsnr": 3.0},
    )
    gains_key = memo.gains_key({"refant": "ea01"})
    memo.keep_gains(gains_key, gains)

    again = block_cache.BlockMemo(policy, block.copy(deep=True))
    assert again.flags_key(block_cache.flag_parameters("base", 5.0, "mad")) == key
    np.testing.assert_array_equal(again.flags(key), flags)
    assert again.gains_key({"refant": "ea01"}) == gains_key
    xr.testing.assert_identical(again.gains(gains_key), gains)
    assert again.outcomes == {"flagging": "hit", "calibration": "hit"}
    other = block_cache.BlockMemo(policy, block)
    other.flags_key(block_cache.flag_parameters("base", 4.0, "mad"))
    assert other.gains_key({"refant": "ea01"}) != gains_key, "gains follow their flags"
