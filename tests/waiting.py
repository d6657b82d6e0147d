"""Test helper: wait for something another thread or process does, with a deadline."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def wait_until(
    condition: Callable[[], bool], timeout_s: float = 10.0, what: str = "the condition", poll_s: float = 0.02
) -> None:
    """Return as soon as ``condition()`` is true (checked every ``poll_s`` seconds); fail after ``timeout_s``
    seconds with an AssertionError naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(poll_s)


class SchedulingLag:
    """Measure how late a sleeping thread of this process wakes up, while the ``with`` block runs.

    A deadline a test checks (a watchdog's log line due 1.1 s after a stop) is the code's deadline plus what
    the machine adds: with four test processes on two shared cores and the test's own threads holding the
    GIL, a thread asleep for 0.1 s may wake up a second late. This thread sleeps ``poll_s`` at a time like
    such a thread does and keeps the worst oversleep, ``worst_s``, for the test to add to its bound (and
    print): the bound stays the code's, the machine's share is measured, not guessed.
    """

    def __init__(self, poll_s: float = 0.1) -> None:
        self.poll_s = poll_s
        self.worst_s = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="scheduling-lag", daemon=True)

    def __enter__(self) -> SchedulingLag:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._done.is_set():
            before = time.monotonic()
            time.sleep(self.poll_s)
            self.worst_s = max(self.worst_s, time.monotonic() - before - self.poll_s)
