"""An ordered outbox for tracking calls: training never waits on, or dies with, the tracking server.

Calls are queued and sent in order by one background thread. A transient failure (the server is
down or restarting, a busy SQLite store, a connection cut mid-answer) keeps the call at the head of
the queue and retries it with a capped backoff, so the calls queued behind it are buffered in memory
and flushed, in order, when the store answers again. A write conflict with a parallel job (two runs
inserting the same dataset row at once) is retried a few times: the retry finds the other's row.
Any other failure (a rejected value, a missing file) is a bug in the caller: it is kept and raised in
the caller's thread at its next call or at :meth:`Outbox.close`.

Retrying is safe because MLflow's writes are idempotent: a metric batch that reached the store before
the connection broke is deduplicated, params and tags are rewritten with the same values.
"""

from __future__ import annotations

import collections
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

# what MLflow's REST client and SQLAlchemy say while the store cannot be reached
_TRANSIENT = re.compile(
    r"Max retries|Connection (?:refused|reset|aborted)|Failed to establish|Remote ?Disconnected"
    r"|timed out|database is locked|Service Unavailable|Bad Gateway|Gateway Time-?out"
    r"|server closed the connection|could not connect to server|status code 50[234]"
    r"|Connection broken|IncompleteRead|ProtocolError|Broken pipe",
    re.IGNORECASE,
)
# what PostgreSQL and SQLite say when a parallel run inserted the same row first: MLflow's log_inputs
# looks the dataset up, then inserts it, so two runs starting on one dataset can both miss it
_CONFLICT = re.compile(r"UniqueViolation|duplicate key value violates unique constraint|UNIQUE constraint failed")
MAX_CONFLICT_RETRIES = 5


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` means "the store is unreachable for now" (retry) rather than a rejected call."""
    return isinstance(exc, (ConnectionError, TimeoutError)) or bool(_TRANSIENT.search(str(exc)))


def is_conflict(exc: BaseException) -> bool:
    """Whether ``exc`` is a unique-key clash with a parallel writer (retry: the row is there now)."""
    return bool(_CONFLICT.search(str(exc)))


class OutboxTimeout(RuntimeError):
    """:meth:`Outbox.close` gave up: the store stayed unreachable; ``pending`` calls were not sent."""

    def __init__(self, message: str, pending: int) -> None:
        super().__init__(message)
        self.pending = pending


class Outbox:
    """Send ``fn(*args, **kwargs)`` calls in order from a background thread, retrying transient errors.

    Args:
        name: what the calls go to (for the log lines), e.g. the tracking URI.
        min_backoff_s, max_backoff_s: first and longest wait between two tries of the head call
            (doubling in between).
    """

    def __init__(self, name: str, min_backoff_s: float = 1.0, max_backoff_s: float = 30.0) -> None:
        self.name = name
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self._queue: collections.deque[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = collections.deque()
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        self._closed = False
        self._gave_up = False  # close() timed out: the thread stops without sending the rest
        self._thread = threading.Thread(target=self._run, name=f"outbox({name})", daemon=True)
        self._thread.start()

    def put(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Queue one call; raises the first non-transient error of an earlier call, if any."""
        with self._cond:
            self._raise_error()
            if self._closed:
                raise RuntimeError(f"outbox of {self.name} is closed")
            self._queue.append((fn, args, kwargs))
            self._cond.notify_all()

    @property
    def pending(self) -> int:
        """Calls not yet sent (the head stays queued while it is tried)."""
        with self._cond:
            return len(self._queue)

    def flush(self, timeout_s: float) -> bool:
        """Wait until every queued call was sent (True) or ``timeout_s`` passed (False)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._queue:  # the head stays queued until it is sent
                if self._error is not None:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 1.0))
            self._raise_error()
        return True

    def close(self, timeout_s: float) -> None:
        """Flush, then stop the thread. Raises :class:`OutboxTimeout` when calls are still unsent."""
        sent = self.flush(timeout_s)
        with self._cond:
            self._closed = True
            self._gave_up = not sent
            self._cond.notify_all()
            left = len(self._queue)
        if not sent:
            raise OutboxTimeout(
                f"{self.name} stayed unreachable for {timeout_s:g} s; {left} tracking calls were not sent", left
            )
        self._thread.join(timeout=5)

    def _raise_error(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue or self._gave_up:
                    return
                fn, args, kwargs = self._queue[0]
            self._send(fn, args, kwargs)
            with self._cond:
                self._queue.popleft()
                self._cond.notify_all()

    def _pause(self, seconds: float) -> bool:
        """Wait before the next try; False when :meth:`close` gave up meanwhile (stop trying)."""
        with self._cond:
            if self._gave_up:
                return False
            self._cond.wait(seconds)
            return True

    def _send(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Try the head call until it goes through; an outage is logged once, with its length."""
        down_since: float | None = None
        wait = self.min_backoff_s
        conflicts = 0
        while True:
            try:
                fn(*args, **kwargs)
            except Exception as exc:
                if is_conflict(exc) and conflicts < MAX_CONFLICT_RETRIES:
                    conflicts += 1
                    log.info("tracking call clashed with a parallel run's write; retrying (%d)", conflicts)
                    if not self._pause(self.min_backoff_s * conflicts):
                        return
                    continue
                if not is_transient(exc):
                    with self._cond:
                        self._error = exc
                    return
                if down_since is None:
                    down_since = time.monotonic()
                    first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
                    log.warning("tracking store %s unreachable (%s); buffering and retrying", self.name, first)
                if not self._pause(wait):
                    return
                wait = min(2 * wait, self.max_backoff_s)
                continue
            if down_since is not None:
                log.warning(
                    "tracking store %s is back after %.0f s; sending %d buffered calls",
                    self.name,
                    time.monotonic() - down_since,
                    len(self._queue),
                )
            return
