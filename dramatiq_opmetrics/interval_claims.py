"""Fleet-wide claims: exactly one process, on any host, does a periodic job for a given interval.

Every process computes the same interval start (a wall-clock multiple of the interval) and tries to claim
``(job, interval_start)``; the first one wins and every later attempt for that interval fails, however late
it comes. That is what a lock cannot give: a lock held while the winner works does not stop a second
process from taking it again just after the winner released it.

- :class:`RedisIntervalClaim`: ``SET key NX PX`` on the broker's Redis, one round trip; the key expires by
  itself after :data:`REDIS_CLAIM_TTL_INTERVALS` intervals.
- :class:`DatabaseIntervalClaim`: an ``INSERT ... ON CONFLICT DO NOTHING`` into ``opmetrics_interval_claims``
  (PostgreSQL or SQLite); claims older than :data:`DATABASE_CLAIM_RETENTION` are pruned by the winner.
- :class:`LocalIntervalClaim`: no coordination, for a single process.
"""

from __future__ import annotations

import datetime as dt
import math
import threading
from collections.abc import Callable
from typing import Any, Protocol

from sqlalchemy import Engine, delete
from sqlalchemy.dialects import postgresql, sqlite

from .models import IntervalClaim as IntervalClaimRow

#: How many intervals a Redis claim key lives before it expires by itself.
REDIS_CLAIM_TTL_INTERVALS = 2
#: How long a Redis claim key lives at least, in milliseconds (covers clock skew between hosts).
REDIS_CLAIM_MIN_TTL_MS = 60_000
#: How long database claims are kept before the next winner deletes them.
DATABASE_CLAIM_RETENTION = dt.timedelta(hours=1)


def interval_start(at: dt.datetime, interval_s: float) -> dt.datetime:
    """The start of the interval holding ``at``: the latest wall-clock multiple of ``interval_s`` (UTC)."""
    timestamp_ms = round(at.timestamp() * 1000)
    interval_ms = round(interval_s * 1000)
    return dt.datetime.fromtimestamp((timestamp_ms // interval_ms) * interval_ms / 1000, dt.UTC)


def run_at_interval_starts(
    stop: threading.Event, interval_s: float, run: Callable[[dt.datetime], object], *, offset_s: float = 0.0
) -> None:
    """Call ``run(start)`` at each wall-clock interval start from the next one on (``offset_s`` seconds after
    it), until ``stop`` is set.

    Every process calling it with the same ``interval_s`` runs at the same moments. After a long pause (a
    suspended host) it runs for the current interval, not for each missed one.
    """
    offset = dt.timedelta(seconds=offset_s)
    next_start = interval_start(dt.datetime.now(dt.UTC) - offset, interval_s) + dt.timedelta(seconds=interval_s)
    while not stop.wait(max((next_start + offset - dt.datetime.now(dt.UTC)).total_seconds(), 0.0)):
        at = max(next_start, interval_start(dt.datetime.now(dt.UTC) - offset, interval_s))
        run(at)
        next_start = at + dt.timedelta(seconds=interval_s)


class IntervalThread:
    """Calls ``run(start)`` at each wall-clock interval start (:func:`run_at_interval_starts`) in a daemon thread.

    The thread of the periodic jobs every process runs the same way (worker sampling, the recent tier's
    fold): :meth:`start` makes it once, :meth:`stop` ends it, waiting at most ``timeout_s`` for a run in
    progress.
    """

    def __init__(
        self, name: str, interval_s: float, run: Callable[[dt.datetime], object], *, offset_s: float = 0.0
    ) -> None:
        self.name = name
        self.interval_s = interval_s
        self.offset_s = offset_s
        self.run = run
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """Whether the thread has been started and not stopped."""
        return self._thread is not None

    def start(self) -> None:
        """Start the thread, unless it runs already."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=run_at_interval_starts,
            args=(self._stop, self.interval_s, self.run),
            kwargs={"offset_s": self.offset_s},
            name=self.name,
            daemon=True,
        )
        self._thread.start()

    def stop(self, timeout_s: float) -> None:
        """Stop the thread, waiting at most ``timeout_s`` seconds for a run in progress to end."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout_s)


class IntervalClaim(Protocol):
    """Claims ``(job, interval_start)`` for the calling process; at most one claim succeeds fleet-wide."""

    def claim(self, job: str, start: dt.datetime, interval_s: float) -> bool:
        """Return True if this call claimed the interval, False if another process already had."""


class RedisIntervalClaim:
    """Claims intervals with ``SET {namespace}:__opmetrics_claims__.{job}.{start_ms} 1 NX PX ttl``.

    Parameters:
      client(redis.Redis): a Redis client (the broker's ``broker.client``).
      namespace(str): the key prefix (the broker's ``broker.namespace``), so fleets sharing one Redis but
        using different namespaces never claim each other's intervals.
    """

    def __init__(self, client: Any, namespace: str) -> None:
        self.client = client
        self.namespace = namespace

    def key(self, job: str, start: dt.datetime) -> str:
        """The Redis key of the claim of ``job`` for the interval starting at ``start``."""
        return f"{self.namespace}:__opmetrics_claims__.{job}.{round(start.timestamp() * 1000)}"

    def claim(self, job: str, start: dt.datetime, interval_s: float) -> bool:
        """Claim the interval with one ``SET NX PX`` round trip."""
        ttl_ms = max(math.ceil(interval_s * 1000 * REDIS_CLAIM_TTL_INTERVALS), REDIS_CLAIM_MIN_TTL_MS)
        return bool(self.client.set(self.key(job, start), b"1", nx=True, px=ttl_ms))


class DatabaseIntervalClaim:
    """Claims intervals by inserting a row keyed by ``(job, interval_start)`` into ``opmetrics_interval_claims``.

    Needs the metrics database migrated to revision 0002 or later. Works on PostgreSQL and SQLite.

    Parameters:
      engine(Engine): an engine on the metrics database.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def claim(self, job: str, start: dt.datetime, interval_s: float) -> bool:
        """Claim the interval in one short transaction; the winner also prunes old claims of ``job``."""
        insert = postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert
        now = dt.datetime.now(dt.UTC)
        statement = (
            insert(IntervalClaimRow)
            .values(job=job, interval_start=start, claimed_at=now)
            .on_conflict_do_nothing(index_elements=["job", "interval_start"])
            .returning(IntervalClaimRow.job)
        )
        with self.engine.begin() as connection:
            claimed = connection.execute(statement).first() is not None
            if claimed:
                connection.execute(
                    delete(IntervalClaimRow).where(
                        IntervalClaimRow.job == job,
                        IntervalClaimRow.interval_start < start - DATABASE_CLAIM_RETENTION,
                    )
                )
        return claimed


class LocalIntervalClaim:
    """Claims every interval once per process: no fleet coordination (a single process, or tests)."""

    def __init__(self) -> None:
        self._latest: dict[str, dt.datetime] = {}

    def claim(self, job: str, start: dt.datetime, interval_s: float) -> bool:
        """Return True if ``start`` is later than every interval this process claimed for ``job``."""
        if job in self._latest and start <= self._latest[job]:
            return False
        self._latest[job] = start
        return True
