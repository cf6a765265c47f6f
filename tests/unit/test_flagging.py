"""Median/MAD flagging against the synthesizer's RFI truth mask."""

from __future__ import annotations

import numpy as np
import pytest

from radps_flows.core.flagging import aoflagger_available, aoflagger_flags, flag_dataset, mad_flags
from radps_flows.core.io import open_processing_set
from radps_flows.core.synth import SynthesisSpec, synthesize_processing_set


@pytest.fixture(scope="module")
def rfi_set(tmp_path_factory: pytest.TempPathFactory):
    spec = SynthesisSpec(
        n_antennas=10,
        n_times=40,
        n_channels=32,
        noise_jy=0.5,
        gain_amplitude_rms=0.1,
        gain_phase_rms_deg=30,
        rfi_fraction=0.05,
        rfi_amplitude_jy=10.0,
        seed=11,
    )
    result = synthesize_processing_set(tmp_path_factory.mktemp("rfi") / "rfi", spec)
    (ds,) = open_processing_set(result.path)
    return result, ds


def test_rfi_found_with_few_false_positives(rfi_set):
    result, ds = rfi_set
    flags = flag_dataset(ds).compute()
    assert flags.dims == ds["FLAG"].dims and flags.dtype == bool
    truth = np.broadcast_to(result.rfi_mask[:, None, :, None], flags.shape)
    got = flags.values
    tpr = (got & truth).sum() / truth.sum()
    fpr = (got & ~truth).sum() / (~truth).sum()
    print(f"TPR {tpr:.4f}, FPR {fpr:.5f}")
    assert tpr >= 0.95
    assert fpr <= 0.01


def test_nan_always_flagged_and_existing_flags_kept():
    rng = np.random.default_rng(0)
    vis = (1 + 0.1 * rng.normal(size=(20, 3, 16, 2))).astype(np.complex64)
    vis[4, 1, 5, 0] = np.nan
    vis[7, 2, 3, 1] = 100.0
    old = np.zeros(vis.shape, dtype=bool)
    old[0, 0, 0, 0] = True
    out = mad_flags(vis, old)
    assert out[4, 1, 5].all()  # NaN in one correlation: the sample in all correlations
    assert out[7, 2, 3].all()
    assert out[0, 0, 0].all()
    assert out.sum() == 3 * 2


def test_noise_free_data_not_flagged():
    vis = np.full((10, 4, 8, 2), 1 + 1j, dtype=np.complex64)
    assert not mad_flags(vis).any()


def test_aoflagger_is_optional():
    if aoflagger_available():  # pragma: no cover - not installed in CI
        return
    with pytest.raises(ImportError):
        aoflagger_flags(np.zeros((2, 1, 2, 1), dtype=complex))
