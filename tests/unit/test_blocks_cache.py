"""A processing set is opened once per process, and again when it is written anew: `radps run`
may image a set, overwrite it with `synthesize` and image it again, all in one process."""

from __future__ import annotations

from radps_flows.core import blocks as blk
from radps_flows.core.synth import SynthesisSpec, synthesize_processing_set


def test_a_rewritten_store_is_opened_again(tmp_path):
    store = str(synthesize_processing_set(tmp_path / "sky", SynthesisSpec(n_times=4)).path)
    (first,) = blk.open_datasets(store)
    assert blk.open_datasets(store)[0] is first  # cached
    synthesize_processing_set(store, SynthesisSpec(n_times=6), overwrite=True)
    (again,) = blk.open_datasets(store)
    assert again.sizes["time"] == 6
    assert blk.open_partition(store, again.attrs["partition_name"]) is again
