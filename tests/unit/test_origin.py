"""radps_flows.origin's decision (the real API server path: tests/integration/
test_flow_run_origin.py): a PipelineRun must record the flow run, and an API that cannot be
read refuses rather than lets it through."""

from __future__ import annotations

import pytest

from radps_flows.origin import NotOurFlowRun, find_owner


def run(name: str, flow_run_id: str | None) -> dict:
    status = {"prefect": {"flowRunId": flow_run_id}} if flow_run_id else {}
    return {"metadata": {"name": name}, "status": status}


def test_the_run_that_records_the_flow_run_owns_it():
    runs = [run("other", "f-2"), run("pending", None), run("mine", "f-1")]
    assert find_owner(lambda: runs, "f-1", "astro", timeout=0) == "mine"


def test_a_record_that_arrives_while_waiting_counts():
    answers = iter([[run("mine", None)], [run("mine", "f-1")]])
    assert find_owner(lambda: next(answers), "f-1", "astro", timeout=5, poll=0.01) == "mine"


def test_unrecorded_or_unreadable_is_refused():
    with pytest.raises(
        NotOurFlowRun, match="not the flow run of any PipelineRun in namespace astro"
    ):
        find_owner(lambda: [run("other", "f-2")], "f-1", "astro", timeout=0)

    def forbidden() -> list:
        raise PermissionError("403 Forbidden")

    with pytest.raises(NotOurFlowRun, match="could not be read: 403 Forbidden"):
        find_owner(forbidden, "f-1", "astro", timeout=0.05, poll=0.01)
