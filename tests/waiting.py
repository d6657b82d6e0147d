"""Test helper: wait for something another thread or process does, with a deadline."""

from __future__ import annotations

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
