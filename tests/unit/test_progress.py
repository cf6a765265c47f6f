"""Progress labels never hold the flow run up on a slow Prefect server, except the last
report of a run, which lands before the flow returns."""

from __future__ import annotations

import http.server
import json
import threading
import time

from radps_flows.progress import OVERTAKE_AFTER_SECONDS, ProgressSender


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


class FirstWriteHangsFake:
    """Injects what a local SQLite Prefect server did now and then: one label write answered
    only after ~2 s (with a 503), while the writes after it were answered at once."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.calls = 0
        self.sent: list[tuple[str, int, int]] = []
        self.hanging = threading.Event()

    def __call__(self, flow_run_id: str, completed: int, total: int) -> None:
        self.calls += 1
        if self.calls == 1:
            self.hanging.set()
            time.sleep(self.seconds)
        self.sent.append((flow_run_id, completed, total))


def test_the_last_report_overtakes_an_earlier_write_the_server_holds_up():
    server = FirstWriteHangsFake(2.0)
    sender = ProgressSender(server)
    sender.report("run-d", 2, 3)
    assert server.hanging.wait(5)
    t0 = time.monotonic()
    sender.report("run-d", 3, 3)
    waited = time.monotonic() - t0
    assert server.sent == [("run-d", 3, 3)]  # landed, ahead of the held-up write
    assert OVERTAKE_AFTER_SECONDS <= waited < 1.5
    assert sender.flush(5)  # the held-up write ends on its own
    assert server.sent[-1] == ("run-d", 2, 3)


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


class HeldUpLabelWriteServerFake(http.server.BaseHTTPRequestHandler):
    """Injects what a local SQLite Prefect server did now and then: the first label write held
    for a while, then refused as busy (503); the next ones answered at once."""

    patches: list[tuple[float, bytes]] = []

    def do_PATCH(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.patches.append((time.monotonic(), body))
        if len(self.patches) == 1:
            time.sleep(2.0)
            self.send_response(503)
        else:
            self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):  # the client asks for a CSRF token: "no such route" (an old server)
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_label_write_the_server_holds_up_is_tried_again_without_waiting_for_it():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from radps_flows.progress import FIRST_ATTEMPT_TIMEOUT_SECONDS, _update_labels

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HeldUpLabelWriteServerFake)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/api"
        with temporary_settings({PREFECT_API_URL: url}):
            t0 = time.monotonic()
            _update_labels("8c3b6a3e-0000-4000-8000-000000000001", 3, 3)
            took = time.monotonic() - t0
    finally:
        server.shutdown()
    patches = HeldUpLabelWriteServerFake.patches
    assert len(patches) == 2
    assert json.loads(patches[1][1])["radps.io/progress-completed"] == "3"
    assert FIRST_ATTEMPT_TIMEOUT_SECONDS <= took < 1.5  # not the 2 s the first one was held
