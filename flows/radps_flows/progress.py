"""Stage progress of a flow run, kept on the flow run itself as Prefect labels.

Labels are readable with one `read_flow_run`, so the operator and `radps run` learn progress
from the same place without counting task runs or keeping state of their own.
"""

from __future__ import annotations

import logging

from prefect.client.orchestration import get_client
from prefect.context import get_run_context

COMPLETED_LABEL = "radps.io/progress-completed"
TOTAL_LABEL = "radps.io/progress-total"

log = logging.getLogger(__name__)


def report_progress(completed: int, total: int) -> None:
    """Record that `completed` of `total` stages are done; never fails the run."""
    try:
        flow_run = get_run_context().flow_run  # type: ignore[union-attr]
        with get_client(sync_client=True) as client:
            client.update_flow_run_labels(
                flow_run.id, {COMPLETED_LABEL: str(completed), TOTAL_LABEL: str(total)}
            )
    except Exception as exc:  # progress is advisory: a lost update must not fail science
        log.warning("could not record progress %d/%d: %s", completed, total, exc)


def read_progress(labels: dict[str, object] | None) -> tuple[int, int] | None:
    """(completed, total) from a flow run's labels, or None before the first report."""
    if not labels or TOTAL_LABEL not in labels:
        return None
    try:
        return int(str(labels.get(COMPLETED_LABEL, 0))), int(str(labels[TOTAL_LABEL]))
    except ValueError:
        return None
