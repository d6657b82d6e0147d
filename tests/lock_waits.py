"""Test helper: a long reader of the raw table, and a writer whose every write's wait is measured."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from conftest import libpq_conninfo
from sqlalchemy.engine import URL

from dramatiq_opmetrics import samples
from dramatiq_opmetrics.database import make_engine
from dramatiq_opmetrics.models import RAW_TABLE
from dramatiq_opmetrics.writer import write_samples

#: Seconds between two writes of :class:`TimedWrites`.
WRITE_INTERVAL_S = 0.01
#: The most writes :class:`TimedWrites` makes (a bound on its loop: 60 s at one per 10 ms).
MAX_WRITES = 6000


@contextmanager
def long_read(url: URL, seconds: float) -> Iterator[None]:
    """A reader of the raw table's parent whose transaction lasts ``seconds`` (as a Grafana panel's would):
    once inside, it holds an ACCESS SHARE lock on the parent and on every partition; on leaving, it has ended.
    """
    locked = threading.Event()
    failure: list[BaseException] = []

    def read() -> None:
        try:
            with psycopg.connect(libpq_conninfo(url)) as connection:
                connection.execute(f"SELECT 1 FROM {RAW_TABLE} LIMIT 1").fetchall()
                locked.set()
                connection.execute("SELECT pg_sleep(%s)", (seconds,))
        except BaseException as error:  # reported by the test's thread
            failure.append(error)
        finally:
            locked.set()

    reader = threading.Thread(target=read, name="long-reader")
    reader.start()
    try:
        assert locked.wait(10), "the reader did not start"
        assert not failure, failure
        yield
    finally:
        reader.join(seconds + 10)
    assert not reader.is_alive()
    assert not failure, failure


class TimedWrites:
    """Writes one ``queue_depth`` sample of now every 10 ms through the real write path
    (:func:`~dramatiq_opmetrics.writer.write_samples`: label sets, then a binary COPY, then the commit), each
    in its own transaction, on its own engine, and keeps how long each write took, in seconds.

    Its engine commits without waiting for the WAL to reach the disk (``synchronous_commit=off``): the tests
    measure waits for locks, and on a machine whose disk other test suites share, a commit's flush alone
    sometimes takes longer than the whole bound.
    """

    def __init__(self, url: URL) -> None:
        options = f"{url.query.get('options', '')} -csynchronous_commit=off".strip()
        self.engine = make_engine(url.update_query_dict({"options": options}))
        self.latencies_s: list[float] = []
        self._stop = threading.Event()
        self._failure: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name="timed-writes")

    def __enter__(self) -> TimedWrites:
        self._write()  # connects and registers the label set before anything is measured
        self.latencies_s.clear()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.engine.dispose()
        assert not self._thread.is_alive()
        assert not self._failure, self._failure

    def _write(self) -> None:
        started = time.perf_counter()
        with self.engine.begin() as connection:
            write_samples(connection, samples.queue_depth("timed", len(self.latencies_s), state="ready"))
        self.latencies_s.append(time.perf_counter() - started)

    def _run(self) -> None:
        try:
            while not self._stop.is_set() and len(self.latencies_s) < MAX_WRITES:
                self._write()
                self._stop.wait(WRITE_INTERVAL_S)
        except BaseException as error:  # reported by the test's thread
            self._failure.append(error)
