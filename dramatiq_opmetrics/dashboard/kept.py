"""Results computed from rolled-up days, kept between requests.

Rolled-up days change only when the rollup runs: nightly for the day before, or again for a day that got
late samples. Reading a year of daily rows (with their histograms) on every page view would take most of a
second; instead the dashboard keeps what it computed from them. A kept result is reused without any query
for :data:`DEFAULT_RECHECK_S` seconds; after that a fingerprint of the daily rows it came from (their count,
sample total and latest ``rolled_up_at``) is read, and the result is computed again only if that changed.
When the rollup reaches a new day, the views' spans of rolled-up days change, and so do the keys.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar

#: Seconds a kept result is used before its daily rows are checked for changes.
DEFAULT_RECHECK_S = 300.0
#: How many results are kept; the least recently used goes first.
DEFAULT_MAX_ENTRIES = 64

T = TypeVar("T")


@dataclass
class _Entry:
    fingerprint: object
    checked_at: float
    value: Any


class KeptResults:
    """Keeps results computed from rolled-up days, checking their source every ``recheck_s`` seconds.

    Thread-safe; one instance serves every request of a dashboard.

    Parameters:
      recheck_s(float): seconds a result is reused before its fingerprint is read again (default
        :data:`DEFAULT_RECHECK_S`).
      max_entries(int): how many results are kept (default :data:`DEFAULT_MAX_ENTRIES`).
      clock(Callable[[], float]): monotonic seconds; default :func:`time.monotonic`.
    """

    def __init__(
        self,
        recheck_s: float = DEFAULT_RECHECK_S,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.recheck_s = recheck_s
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, fingerprint: Callable[[], object], compute: Callable[[], T]) -> T:
        """The result kept under ``key``, or ``compute()`` when there is none or ``fingerprint()`` changed."""
        now = self.clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                if now - entry.checked_at < self.recheck_s:
                    return entry.value  # type: ignore[no-any-return]
        current = fingerprint()
        if entry is not None and entry.fingerprint == current:
            entry.checked_at = now
            return entry.value  # type: ignore[no-any-return]
        value = compute()
        with self._lock:
            self._entries[key] = _Entry(current, now, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return value
