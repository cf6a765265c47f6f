"""Progress labels never hold the flow run up on a slow Prefect server, except the last
report of a run, which lands before the flow returns."""

from __future__ import annotations

import time

from radps_flows.progress import ProgressSender


class SlowServerFake:
    """Injects what a real server does only under load: a label write that takes a while."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.sent: list[tuple[str, int, int]] = []

    def __call__(self, flow_run_id: str, completed: int, total: int) -> None:
        time.sleep(self.seconds)
        self.sent.append((flow_run_id, completed, total))


def test_reports_do_not_wait_but_the_last_one_lands_before_it_returns():
    server = SlowServerFake(0.3)
    sender = ProgressSender(server)
    t0 = time.monotonic()
    for completed in range(3):
        sender.report("run-a", completed, 3)
    assert time.monotonic() - t0 < 0.2  # none of the reports waited for the server
    sender.report("run-a", 3, 3)
    assert server.sent[-1] == ("run-a", 3, 3)  # landed before the flow goes on to finish
    # newer reports replaced unsent older ones: fewer writes than reports, in order
    assert len(server.sent) < 4
    assert [c for _, c, _ in server.sent] == sorted(c for _, c, _ in server.sent)


def test_flush_gives_up_after_its_timeout():
    sender = ProgressSender(SlowServerFake(1.0))
    sender.report("run-c", 1, 2)
    assert not sender.flush(timeout=0.1)


def test_a_failing_server_is_logged_not_raised(caplog):
    def refusing_server_fake(flow_run_id, completed, total):
        raise ConnectionError("server gone")

    sent = ProgressSender(refusing_server_fake).report("run-b", 1, 1)
    assert sent.wait(5)
    assert "could not record progress 1/1: server gone" in caplog.text
