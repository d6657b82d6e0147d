"""The writer: raw samples into the metrics database, in batches, from one background thread per process.

:func:`write_samples` is the low-level batch write (binary COPY on PostgreSQL, one batched INSERT elsewhere)
inside the caller's transaction; anything that has samples to store can call it.
:class:`BackgroundWriter` drains a :class:`~dramatiq_opmetrics.buffer.SampleBuffer` with it from a
background thread: every flush interval or when a batch fills, with retries and backoff while the database
is down, and a last flush when it stops.

A database can stop answering without closing the connection (a frozen server whose kernel still
acknowledges every packet): no server-side timeout and no TCP keepalive notices that. The writer's
watchdog thread does: a write without progress for longer than a flush interval plus the statement
timeout is logged and its connection cut (:func:`~dramatiq_opmetrics.database.abort_connection`), so the
write fails and is retried on a new connection; :meth:`BackgroundWriter.stop` cuts it at its deadline.
A write cut after its COMMIT was sent may still have committed: each batch's transaction id is read when
its transaction starts, and before a batch that failed is written again, ``txid_status`` says whether it
was committed after all (it is then taken out of the buffer, never written twice).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, event, insert, text
from sqlalchemy.engine import URL

from . import samples as sample_builders
from .buffer import DEFAULT_WARNING_INTERVAL_S, Entry, SampleBuffer, sample_count
from .config import redact_url, resolve_database_url
from .database import (
    DEFAULT_STATEMENT_TIMEOUT_S,
    abort_connection,
    make_engine,
    resolve_connect_timeout_s,
    resolve_statement_timeout_s,
)
from .label_sets import resolve_label_set_ids
from .metric_types import MetricType
from .models import RAW_TABLE, OperationalMetric
from .samples import Sample

#: Seconds between two flushes of the buffer (a full batch is written at once).
DEFAULT_FLUSH_INTERVAL_S = 1.0
#: The longest wait, in seconds, between two attempts to write while the database is unreachable.
DEFAULT_MAX_RETRY_BACKOFF_S = 30.0
#: Seconds :meth:`BackgroundWriter.stop` keeps trying to write what is buffered before giving up.
DEFAULT_SHUTDOWN_TIMEOUT_S = 10.0
#: Seconds between two looks of the watchdog at the writer (a few attribute reads each).
WATCHDOG_INTERVAL_S = 0.1
#: Seconds :meth:`BackgroundWriter.stop` waits for the thread after cutting its connection at the deadline.
STOP_GRACE_S = 0.5

_DROPPED = MetricType.DROPPED_SAMPLES.value

# Binary COPY costs about a tenth of the client CPU per row of text COPY. In the binary format a timestamptz
# is an int8 of microseconds since 2000-01-01 UTC and an enum is its label, so rows carry those directly:
# no datetime object is made per sample.
_COPY_SQL = f"COPY {RAW_TABLE} (recorded_at, value, label_set_id, metric_type) FROM STDIN (FORMAT BINARY)"
_COPY_TYPES = ["int8", "float8", "int4", "text"]
#: The epoch of PostgreSQL timestamps.
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_PG_EPOCH_S = _PG_EPOCH.timestamp()
_MICROSECOND = timedelta(microseconds=1)

_WAIT_TIME = MetricType.WAIT_TIME.value
_PROCESSING = MetricType.PROCESSING_TIME.value

#: A raw row as written: recorded_at (microseconds since 2000-01-01 UTC), value, label_set_id, metric_type
#: (a :class:`MetricType` value).
Row = tuple[int, float, int, str]

logger = logging.getLogger(__name__)


def write_samples(connection: Connection, samples: Iterable[Sample]) -> int:
    """Write ``samples`` as raw rows inside the caller's transaction on ``connection``; return how many.

    Uses a binary COPY on PostgreSQL and one batched INSERT elsewhere. Label sets not stored yet are inserted
    first (:func:`~dramatiq_opmetrics.label_sets.resolve_label_set_ids`). Neither commits nor rolls back.

    Example::

        with engine.begin() as connection:
            write_samples(connection, samples.queue_depth("default", 12, state="ready"))
    """
    batch = list(samples)
    ids = resolve_label_set_ids(connection, (sample.label_set for sample in batch))
    rows = [
        ((s.recorded_at - _PG_EPOCH) // _MICROSECOND, s.value, ids[s.label_set.labels_key], s.metric_type.value)
        for s in batch
    ]
    return _write_rows(connection, rows)


def _write_rows(connection: Connection, rows: Sequence[Row]) -> int:
    if not rows:
        return 0
    if connection.dialect.name == "postgresql":
        driver_connection = connection.connection.driver_connection
        assert driver_connection is not None
        with driver_connection.cursor() as cursor, cursor.copy(_COPY_SQL) as copy:
            copy.set_types(_COPY_TYPES)
            for row in rows:
                copy.write_row(row)
    else:
        connection.execute(
            insert(OperationalMetric),
            [
                {
                    "recorded_at": _PG_EPOCH + at_us * _MICROSECOND,
                    "value": value,
                    "label_set_id": id_,
                    "metric_type": mt,
                }
                for at_us, value, id_, mt in rows
            ],
        )
    return len(rows)


class BackgroundWriter:
    """Writes the samples of a :class:`~dramatiq_opmetrics.buffer.SampleBuffer` from a background thread.

    The thread (one per process, started by :meth:`start`) writes a batch whenever one fills and
    everything buffered every ``flush_interval_s``. A failed write keeps its batch in the buffer and is
    retried with exponential backoff (up to ``max_retry_backoff_s``) until the database is back; meanwhile
    the buffer fills and then drops new samples, which are counted, reported by one warning per
    ``warning_interval_s`` (logged by the thread that drops, see
    :class:`~dramatiq_opmetrics.buffer.SampleBuffer`) and recorded as a ``dropped_samples`` sample once
    writing works again. :meth:`stop` writes everything buffered before it returns (trying for
    ``shutdown_timeout_s``), and returns by then whatever the database does.

    A write that makes no progress for ``flush_interval_s + statement_timeout_s`` (the database stopped
    answering) is logged by a watchdog thread, which cuts its connection: the write fails and is retried
    on a new connection, and a batch whose commit went unanswered is written once (see the module
    documentation).

    Nothing is shared across a fork: in a forked child the thread, the engine and the buffered samples
    (which the parent writes) are forgotten, and :meth:`start` makes new ones. The engine and its
    connection are made by the thread on its first write.

    Parameters:
      database_url(str | URL | None): the metrics database; default ``$OPMETRICS_DATABASE_URL``, then
        ``$DATABASE_URL``.
      buffer(SampleBuffer): the samples to write.
      flush_interval_s(float): seconds between flushes; default :data:`DEFAULT_FLUSH_INTERVAL_S` (1).
      max_retry_backoff_s(float): longest wait between write attempts while the database is down; default
        :data:`DEFAULT_MAX_RETRY_BACKOFF_S` (30).
      warning_interval_s(float): at most one drop warning per this many seconds (sets the buffer's);
        default :data:`~dramatiq_opmetrics.buffer.DEFAULT_WARNING_INTERVAL_S` (30).
      shutdown_timeout_s(float): how long :meth:`stop` keeps trying to write; default
        :data:`DEFAULT_SHUTDOWN_TIMEOUT_S` (10).
      connect_timeout_s(float | None): seconds a connection attempt may take; default
        ``$OPMETRICS_CONNECT_TIMEOUT_S``, else 5 (see :func:`~dramatiq_opmetrics.database.make_engine`).
      statement_timeout_s(float | None): seconds a statement may run on the server (0: no limit, the
        watchdog then allows 30 s); default ``$OPMETRICS_STATEMENT_TIMEOUT_S``, else 30.
      stall_timeout_s(float | None): seconds a write may go without an answer before the watchdog cuts
        its connection; default ``flush_interval_s`` plus the statement timeout (or plus 30 s without one).

    Raises:
      ConfigurationError: if no database URL is given or set.
      ValueError: if a duration is not a positive number.
    """

    def __init__(
        self,
        database_url: str | URL | None,
        buffer: SampleBuffer,
        *,
        flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
        max_retry_backoff_s: float = DEFAULT_MAX_RETRY_BACKOFF_S,
        warning_interval_s: float = DEFAULT_WARNING_INTERVAL_S,
        shutdown_timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S,
        connect_timeout_s: float | None = None,
        statement_timeout_s: float | None = None,
        stall_timeout_s: float | None = None,
    ) -> None:
        self.database_url = resolve_database_url(database_url)
        self.buffer = buffer
        self.flush_interval_s = _positive("flush_interval_s", flush_interval_s)
        self.max_retry_backoff_s = _positive("max_retry_backoff_s", max_retry_backoff_s)
        self.warning_interval_s = buffer.warning_interval_s = _positive("warning_interval_s", warning_interval_s)
        self.shutdown_timeout_s = _positive("shutdown_timeout_s", shutdown_timeout_s)
        #: Seconds a connection attempt may take (whole seconds, as libpq takes them).
        self.connect_timeout_s = resolve_connect_timeout_s(connect_timeout_s)
        #: Seconds a statement may run on the server (0: no limit).
        self.statement_timeout_s = resolve_statement_timeout_s(statement_timeout_s)
        #: Seconds a write may go without progress before the watchdog cuts its connection.
        self.stall_timeout_s = (
            _positive("stall_timeout_s", stall_timeout_s)
            if stall_timeout_s is not None
            else self.flush_interval_s + (self.statement_timeout_s or DEFAULT_STATEMENT_TIMEOUT_S)
        )
        #: Samples written by this process.
        self.written_total = 0
        self._label_set_ids: dict[str, int] = {}
        self._reset_process_state()
        _forget_after_fork.add(self)

    def __repr__(self) -> str:
        return f"<BackgroundWriter {redact_url(self.database_url)} flush_interval_s={self.flush_interval_s}>"

    def _reset_process_state(self) -> None:
        self._engine: Engine | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._passes = threading.Condition()
        self._passes_started = 0
        self._passes_done = 0
        self._failing = False
        self._stop_deadline = 0.0
        self._watchdog: threading.Thread | None = None
        #: The DBAPI connection of the writer's engine (a pool of one), for the watchdog to cut.
        self._connection: Any = None
        #: When the write in progress started or last progressed (monotonic), None between writes.
        self._busy_since: float | None = None
        self._stall_reported = False
        #: Set when :meth:`stop` gave up on a thread blocked past its deadline: it must write nothing more.
        self._abandoned = False
        self._gave_up = False
        #: (transaction id, buffer batch generation, drops recorded) of the last batch transaction begun.
        self._batch_xid: tuple[int, int, int] | None = None

    def reset_after_fork(self) -> None:
        """In a freshly forked child: forget the parent's thread, engine and buffered samples."""
        if self._engine is not None:
            self._engine.dispose(close=False)
        self.buffer.reset_after_fork()
        self._reset_process_state()

    @property
    def running(self) -> bool:
        """Whether the background thread runs in this process."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the background thread of this process, unless it runs already."""
        if self.running:
            return
        self._stopping.clear()
        self._abandoned = self._gave_up = False
        self._thread = threading.Thread(target=self._run, name="opmetrics-writer", daemon=True)
        self._thread.start()
        self._watchdog = threading.Thread(
            target=self._watch, args=(self._thread,), name="opmetrics-writer-watchdog", daemon=True
        )
        self._watchdog.start()

    def flush(self, timeout_s: float | None = None) -> bool:
        """Write everything buffered now; return whether it was written within ``timeout_s`` seconds."""
        self.start()
        with self._passes:
            target = self._passes_started + 1
            self.buffer.batch_ready.set()
        with self._passes:
            return self._passes.wait_for(lambda: self._passes_done >= target, timeout_s)

    def stop(self, timeout_s: float | None = None) -> bool:
        """Write everything buffered and stop the thread; return whether everything was written.

        Keeps trying for ``timeout_s`` seconds (default ``shutdown_timeout_s``), then logs how many samples
        are given up. Returns within ``timeout_s`` plus :data:`STOP_GRACE_S` even when the thread is blocked
        on a database that does not answer: at the deadline its connection is cut, and if it still does not
        return (a connection attempt in progress) it is left behind, writing nothing more.
        """
        thread = self._thread
        if thread is None:
            return len(self.buffer) == 0
        timeout = self.shutdown_timeout_s if timeout_s is None else timeout_s
        self._stop_deadline = time.monotonic() + timeout
        self._stopping.set()
        self.buffer.batch_ready.set()
        thread.join(timeout)
        if thread.is_alive():
            # Blocked in a database call at the deadline: cut the connection so that the call returns now.
            self._abandoned = True
            abort_connection(self._connection)
            thread.join(STOP_GRACE_S)
        if thread.is_alive():
            self._give_up()
            return False
        self._thread = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        return len(self.buffer) == 0 and self.buffer.unrecorded_drops() == 0

    def _run(self) -> None:
        failures = 0
        while True:
            stopping = self._stopping.is_set()
            if not stopping:
                if failures:
                    self._stopping.wait(self._backoff_s(failures))
                else:
                    self.buffer.batch_ready.wait(self.flush_interval_s)
                stopping = self._stopping.is_set()
            elif failures:
                # Stopping while the database is down: keep retrying with backoff until the deadline.
                time.sleep(min(self._backoff_s(failures), max(0.0, self._stop_deadline - time.monotonic())))
            with self._passes:
                # Cleared before the pass: whatever sets it from now on asks for another pass.
                self.buffer.batch_ready.clear()
                self._passes_started += 1
                this_pass = self._passes_started
            self._busy_since = time.monotonic()
            try:
                written = (failures == 0 or self._settle_unanswered_batch()) and self._drain()
            finally:
                self._busy_since = None
                self._stall_reported = False
            now = time.monotonic()
            if written:
                failures = 0
                with self._passes:
                    self._passes_done = this_pass
                    self._passes.notify_all()
            else:
                failures += 1
            finished = written and len(self.buffer) == 0 and self.buffer.unrecorded_drops() == 0
            if self._abandoned or (stopping and (finished or now >= self._stop_deadline)):
                if not finished:
                    self._give_up()
                return

    def _give_up(self) -> None:
        if self._gave_up:
            return
        self._gave_up = True
        logger.error(
            "Gave up writing %d buffered metric samples to %s at shutdown.",
            self.buffer.sample_count(),
            redact_url(self.database_url),
        )

    def _watch(self, thread: threading.Thread) -> None:
        """The watchdog: logs the drops left unwarned, and cuts the connection of a write that hangs."""
        seen_written = self.written_total
        progress_at = 0.0
        while thread.is_alive():
            time.sleep(WATCHDOG_INTERVAL_S)
            self.buffer.warn_about_drops()
            now = time.monotonic()
            if self.written_total != seen_written:
                # A batch was written: a long pass is slow, not stuck.
                seen_written = self.written_total
                progress_at = now
            busy_since = self._busy_since
            if busy_since is None:
                continue
            silent_s = now - max(busy_since, progress_at)
            if silent_s > self.stall_timeout_s and not self._stall_reported:
                self._stall_reported = True
                cut = abort_connection(self._connection)
                logger.warning(
                    "The metrics database %s has not answered for %.1f s (statement timeout %g s): %s; %d samples"
                    " are buffered.",
                    redact_url(self.database_url),
                    silent_s,
                    self.statement_timeout_s,
                    "cut the connection to retry on a new one"
                    if cut
                    else f"still connecting (connect timeout {self.connect_timeout_s} s)",
                    self.buffer.sample_count(),
                )

    def _settle_unanswered_batch(self) -> bool:
        """Before writing again a batch whose write failed: whether it may be written (it was not committed).

        The failed write may have been cut after its COMMIT was sent: the server's ``txid_status`` of the
        batch's transaction tells. Committed: the batch is written, so it leaves the buffer; aborted (or
        never begun): write it again; still in progress (the server has not noticed the cut connection
        yet): not yet, ask again at the next attempt.
        """
        record = self._batch_xid
        if record is None or record[1] != self.buffer.batch_generation:
            return True
        xid, _, drops = record
        try:
            with self._get_engine().connect() as connection:
                status = connection.execute(text("SELECT txid_status(:xid)"), {"xid": xid}).scalar_one()
        except Exception as error:
            self._report_failure(sample_count(self.buffer.take_batch()), error)
            return False
        if status == "in progress":
            logger.debug("The transaction of the unanswered batch (%d) is still in progress.", xid)
            return False
        self._batch_xid = None
        if status == "committed":
            written = sample_count(self.buffer.take_batch()) + (1 if drops else 0)
            self.buffer.commit_batch()
            if drops:
                self.buffer.mark_drops_recorded(drops)
            self.written_total += written
            logger.info("A batch of %d metric samples whose commit went unanswered was committed: kept once.", written)
        return True

    def _note_batch_transaction(self, connection: Connection, entries: Sequence[Entry]) -> None:
        """Remember the transaction id of the batch written on ``connection`` (see
        :meth:`_settle_unanswered_batch`); on PostgreSQL only."""
        if connection.dialect.name != "postgresql":
            return
        xid = connection.execute(text("SELECT txid_current()")).scalar_one()
        drops = sum(int(entry[1]) for entry in entries if entry[0] == _DROPPED)
        self._batch_xid = (int(xid), self.buffer.batch_generation, drops)

    def _get_engine(self) -> Engine:
        engine = self._engine
        if engine is None:
            engine = self._engine = self._make_engine()
        return engine

    def _on_connect(self, dbapi_connection: Any, _record: Any) -> None:
        self._connection = dbapi_connection
        if self._abandoned:
            # stop() gave up on this thread while it was connecting: nothing more may be written.
            abort_connection(dbapi_connection)

    def _backoff_s(self, failures: int) -> float:
        backoff: float = min(self.max_retry_backoff_s, self.flush_interval_s * 2 ** min(failures - 1, 16))
        return backoff * random.uniform(0.5, 1.0)

    def _drain(self) -> bool:
        """Write what the buffer holds now, batch by batch; return False if a write failed.

        Entries added meanwhile wait for the next pass, so a pass ends (and drops get reported) even when
        samples arrive faster than they are written.
        """
        remaining = len(self.buffer)
        while True:
            batch = self.buffer.take_batch()
            dropped = self.buffer.unrecorded_drops()
            if dropped:
                drop_sample = sample_builders.dropped_samples(dropped)[0]
                labels_key = self.buffer.register_label_set(drop_sample.label_set)
                batch.append((drop_sample.metric_type.value, drop_sample.value, labels_key, time.time()))
            if not batch:
                return True
            try:
                written = self._write_entries(batch)
            except Exception as error:
                self._report_failure(sample_count(batch), error)
                return False
            if self._failing:
                self._failing = False
                logger.info("The metrics database %s is reachable again.", redact_url(self.database_url))
            self.buffer.commit_batch()
            if dropped:
                self.buffer.mark_drops_recorded(dropped)
            self.written_total += written
            remaining -= len(batch)
            if remaining <= 0:
                return True

    def _write_entries(self, entries: Sequence[Entry]) -> int:
        engine = self._get_engine()
        ids = self._label_set_ids
        missing = {entry[1] if entry[0] is None else entry[2] for entry in entries} - ids.keys()
        if missing:
            label_sets = self.buffer.label_sets
            unknown = missing - label_sets.keys()
            if unknown:
                # Entries added without registering their label set: they can never be written.
                logger.error("Discarding metric samples with unregistered labels keys %s.", sorted(unknown))
                entries = [entry for entry in entries if _labels_key(entry) not in unknown]
                missing -= unknown
            # Committed on its own, so a cached id always refers to a stored label set.
            with engine.begin() as connection:
                ids.update(resolve_label_set_ids(connection, [label_sets[key] for key in missing]))
        rows = _rows(entries, ids)
        with engine.begin() as connection:
            self._note_batch_transaction(connection, entries)
            return _write_rows(connection, rows)

    def _make_engine(self) -> Engine:
        engine = make_engine(
            self.database_url,
            connect_timeout_s=self.connect_timeout_s,
            statement_timeout_s=self.statement_timeout_s,
            pool_size=1,
            max_overflow=0,
        )
        event.listen(engine, "connect", self._on_connect)
        return engine

    def _report_failure(self, count: int, error: Exception) -> None:
        reason = _scrub(_first_line(error), self.database_url)
        if not self._failing:
            self._failing = True
            logger.warning(
                "Could not write %d metric samples to %s (%s); keeping them and retrying with backoff.",
                count,
                redact_url(self.database_url),
                reason,
            )
        else:
            logger.debug("Still cannot write metric samples to %s (%s).", redact_url(self.database_url), reason)


def _labels_key(entry: Entry) -> str:
    return entry[1] if entry[0] is None else entry[2]


def _rows(entries: Sequence[Entry], ids: dict[str, int]) -> list[Row]:
    """Raw rows of buffered entries; a message entry's perf_counter readings become wall-clock times now."""
    # perf_counter() + offset = seconds since 2000-01-01 UTC.
    offset_s = time.time() - time.perf_counter() - _PG_EPOCH_S
    rows: list[Row] = []
    append = rows.append
    for entry in entries:
        if entry[0] is None:
            _, key, due_ms, started_s, ended_s = entry
            id_ = ids[key]
            started_at_s = started_s + offset_s
            wait_ms = (started_at_s + _PG_EPOCH_S) * 1000.0 - due_ms
            append((round(started_at_s * 1e6), wait_ms if wait_ms > 0.0 else 0.0, id_, _WAIT_TIME))
            append((round((ended_s + offset_s) * 1e6), (ended_s - started_s) * 1000.0, id_, _PROCESSING))
        else:
            metric_type, value, key, at_s = entry
            append((round((at_s - _PG_EPOCH_S) * 1e6), value, ids[key], metric_type))
    return rows


def _positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0 or value == float("inf"):
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def _first_line(error: BaseException) -> str:
    original = getattr(error, "orig", None) or error
    return (str(original).strip().splitlines() or [type(original).__name__])[0]


def _scrub(text: str, url: URL) -> str:
    return text.replace(url.password, "***") if url.password else text


_forget_after_fork: weakref.WeakSet[BackgroundWriter] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for writer in list(_forget_after_fork):
        writer.reset_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
