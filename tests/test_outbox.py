"""The tracking outbox: calls arrive in order through an outage, rejected calls surface in the caller,
a store that never comes back ends in one error that counts what was not sent."""

from __future__ import annotations

import re
import socket
import threading

import pytest
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cnet.errors import TrackingStoreError
from cnet.outbox import MAX_CONFLICT_RETRIES, Outbox, OutboxTimeout, is_conflict, is_transient
from cnet.tracking import Tracker


class FlakyStore:
    """Records calls; the first ``outage`` tries fail the way an unreachable server does."""

    def __init__(self, outage: int) -> None:
        self.outage = outage
        self.tries = 0
        self.received: list[int] = []
        self.lock = threading.Lock()

    def send(self, item: int) -> None:
        with self.lock:
            self.tries += 1
            if self.tries <= self.outage:
                raise MlflowException("API request to http://h:5000/api/2.0/mlflow/runs/log-batch: Max retries")
            self.received.append(item)


def test_calls_queued_during_an_outage_arrive_in_order_when_it_ends():
    store = FlakyStore(outage=4)
    box = Outbox("test", min_backoff_s=0.01, max_backoff_s=0.02)
    for i in range(50):
        box.put(store.send, i)
    box.close(timeout_s=30)
    assert store.received == list(range(50)) and store.tries == 54 and box.pending == 0


def test_a_rejected_call_is_raised_in_the_caller_and_the_rest_still_go():
    received: list[int] = []

    def send(item: int) -> None:
        if item == 1:
            raise ValueError("bad value 1")
        received.append(item)

    box = Outbox("test", min_backoff_s=0.01)
    box.put(send, 0)
    box.put(send, 1)
    with pytest.raises(ValueError, match="bad value 1"):
        box.flush(timeout_s=10)
    box.put(send, 2)
    box.close(timeout_s=10)
    assert received == [0, 2]


def test_a_store_that_never_returns_ends_in_one_error_counting_the_unsent_calls():
    store = FlakyStore(outage=10**9)
    box = Outbox("http://gone:5000", min_backoff_s=0.01, max_backoff_s=0.05)
    for i in range(3):
        box.put(store.send, i)
    with pytest.raises(OutboxTimeout, match=r"http://gone:5000 stayed unreachable .* 3 tracking calls") as err:
        box.close(timeout_s=0.3)
    assert err.value.pending == 3 and store.received == []


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_mlflows_errors_for_a_down_server_are_transient_and_a_rejection_is_not(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(MlflowException) as down:
        MlflowClient(f"http://127.0.0.1:{_closed_port()}").get_run("0" * 32)
    assert is_transient(down.value)
    assert is_transient(MlflowException("(sqlite3.OperationalError) database is locked"))
    rejected = MlflowException("Invalid value 'x' for parameter 'step'", error_code="INVALID_PARAMETER_VALUE")
    assert not is_transient(rejected)
    assert not is_transient(FileNotFoundError("no such file: results.json"))


def test_tracker_buffers_through_an_outage_and_the_run_ends_complete(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with Tracker(uri, "exp", run_name="r") as tracker:
        client = tracker._client
        real, fails = client.log_batch, {"n": 0}

        def log_batch(*args, **kwargs):  # the server is down for the first 3 tries
            fails["n"] += 1
            if fails["n"] <= 3:
                raise MlflowException("HTTPConnectionPool(host='h', port=5000): Max retries exceeded")
            return real(*args, **kwargs)

        monkeypatch.setattr(client, "log_batch", log_batch)
        tracker._outbox.min_backoff_s = tracker._outbox.max_backoff_s = 0.01
        for epoch in range(5):
            tracker.log_metrics({"train_total": 10.0 - epoch}, step=epoch)  # returns at once
        tracker.set_tags({"note": "done"})
    run = MlflowClient(uri).get_run(tracker.run_id)
    history = MlflowClient(uri).get_metric_history(tracker.run_id, "train_total")
    assert run.info.status == "FINISHED" and run.data.tags["note"] == "done"
    assert [(m.step, m.value) for m in history] == [(e, 10.0 - e) for e in range(5)]


def test_tracker_finish_gives_up_with_one_line_and_the_run_stays_running(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri, "exp", run_name="r", flush_timeout_s=0.3)

    def down(*args, **kwargs):
        raise MlflowException("Max retries exceeded with url: /api/2.0/mlflow/runs/update")

    monkeypatch.setattr(tracker._client, "log_batch", down)
    monkeypatch.setattr(tracker._client, "set_terminated", down)
    tracker._outbox.min_backoff_s = 0.01
    tracker.log_metrics({"bbox_AP": 0.5}, step=0)
    lost = r"not ended FINISHED: .* 2 tracking calls were not sent; .*launch the same"
    with pytest.raises(TrackingStoreError, match=lost):
        tracker.finish()
    assert MlflowClient(uri).get_run(tracker.run_id).info.status == "RUNNING"


def _read_request(conn: socket.socket) -> None:
    """Read one HTTP request: the headers, then Content-Length bytes of body."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
    while len(body) < (int(length.group(1)) if length else 0):
        body += conn.recv(65536)


class CutAnswerServer:
    """A loopback HTTP server that promises a body and hangs up after its first byte (a server
    killed while it answers)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                _read_request(conn)  # all of it: unread bytes at close would reset the connection instead
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 64\r\n\r\n{")
                conn.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()


def test_a_connection_cut_mid_answer_is_transient(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    server = CutAnswerServer()
    try:
        with pytest.raises(MlflowException) as cut:
            MlflowClient(server.url).log_batch("0" * 32, metrics=[Metric("loss", 1.0, 0, 0)])
    finally:
        server.close()
    assert "IncompleteRead" in str(cut.value)  # what the client says, so the test is about this error
    assert is_transient(cut.value) and not is_conflict(cut.value)


def test_a_write_clash_with_a_parallel_run_is_retried_and_a_lasting_one_is_raised():
    clash = MlflowException(
        'BAD_REQUEST: (psycopg.errors.UniqueViolation) duplicate key value violates unique constraint "dataset_pk"'
    )
    assert is_conflict(clash) and not is_transient(clash)
    assert is_conflict(MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id"))
    tries = {"once": 0, "always": 0}

    def send(kind: str) -> None:
        tries[kind] += 1
        if kind == "always" or tries[kind] == 1:
            raise clash

    box = Outbox("test", min_backoff_s=0.001)
    box.put(send, "once")
    box.flush(timeout_s=10)
    assert tries["once"] == 2
    box.put(send, "always")
    with pytest.raises(MlflowException, match="UniqueViolation"):
        box.flush(timeout_s=10)
    assert tries["always"] == MAX_CONFLICT_RETRIES + 1
    box.close(timeout_s=10)
