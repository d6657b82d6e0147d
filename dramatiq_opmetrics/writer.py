"""The writer: raw samples into the metrics database, in batches, from one background thread per process.

:func:`write_samples` is the low-level batch write (binary COPY on PostgreSQL, one batched INSERT elsewhere)
inside the caller's transaction; anything that has samples to store can call it.
:class:`BackgroundWriter` drains a :class:`~dramatiq_opmetrics.buffer.SampleBuffer` with it from a
background thread: every flush interval or when a batch fills, with retries and backoff while the database
is down, and a last flush when it stops.

Which errors are retried: the writer tells an outage from a refusal. An outage (the connection fails or
drops, a timeout, the statement timeout's cancellation included, a server shutting down, a lock or
serialisation conflict, a schema not migrated yet: anything that would fail every row alike) keeps the
batch and retries it with backoff. A refusal of the rows themselves (PostgreSQL's SQLSTATE classes 22 data
exception, 23 integrity constraint violation and 54 program limit exceeded; a driver's DataError or
IntegrityError; a TypeError, ValueError or OverflowError while building or sending rows) never blocks the
rest: the batch is split in halves, each written in its own transaction, recursively, until only the
refused samples are left. Those are dropped, counted as a ``rejected_samples`` sample (labelled with their
``metric_type`` and the ``reason``, the exception class) and reported by one warning per
``warning_interval_s``. A label set the database refuses rejects only the samples that use it. Samples
built by :mod:`~dramatiq_opmetrics.samples` are never refused; the isolation is for what slips through.

A database can stop answering without closing the connection (a frozen server whose kernel still
acknowledges every packet): no server-side timeout and no TCP keepalive notices that. The writer's
watchdog thread does: a write without an answer for longer than a flush interval plus the statement
timeout is logged and its connection cut (:func:`~dramatiq_opmetrics.database.abort_connection`), so the
write fails and is retried on a new connection; :meth:`BackgroundWriter.stop` cuts it at its deadline. A
write cut by the watchdog or by ``stop`` is an outage, whatever the driver raises, and a thread that
``stop`` gave up on writes nothing more.

Nothing is written twice. Raw rows are written in transactions of two kinds: a span of the pending batch
(the whole batch, unless it is being split) and each bookkeeping sample (``dropped_samples``, and one
``rejected_samples`` per metric type and reason). Each settles something once committed: a span moves the
settled prefix of the batch past its end (splitting goes left to right, so what is written or rejected is
always a prefix, and a retry resumes after it), a bookkeeping sample marks its drops or rejections
recorded. That is applied when the COMMIT is answered; after an outage the retry writes again whatever was
not, which is right only if it did not commit, and a write cut after its COMMIT was sent may have. So each
of these transactions notes its transaction id (``txid_current()``) when it begins, and after a failure,
before anything is written again, ``txid_status`` tells: committed, what it settles is applied now (the
span is not written again, the drops are not recorded again); aborted, it is written again; still in
progress (the server has not noticed the cut connection yet), nothing is written until it ends. Label sets
are inserted in transactions of their own, which need no such check: the insert is idempotent (``ON
CONFLICT DO NOTHING``), only the cache of their ids is filled once answered. A refusal means a rollback,
so a refused span has nothing to settle. SQLite is a local file: a commit there is always answered.

Clock sanity: a message's due time comes from the producer (``message_timestamp``, or the
``opmetrics_due_ms`` option of a delayed or retried message). One that is not a number, not finite, more
than :data:`CLOCK_SKEW_TOLERANCE_MS` after the worker started the message, or more than
:data:`MAX_PLAUSIBLE_WAIT_MS` before it, records no ``wait_time`` but one ``clock_skew`` sample (labelled
with the message's actor and queue), with one warning per ``warning_interval_s``; its processing time is
recorded as usual.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, NamedTuple

import psycopg
from sqlalchemy import Connection, Engine, event, exc, insert, text
from sqlalchemy.engine import URL

from . import samples as sample_builders
from .buffer import DEFAULT_WARNING_INTERVAL_S, Entry, MessageEntry, SampleBuffer, SampleEntry, sample_count
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
#: The longest plausible wait of a message, in milliseconds (30 days): a due time further in the past (an
#: epoch-0 or garbage timestamp) records ``clock_skew`` instead of a wait time.
MAX_PLAUSIBLE_WAIT_MS = 30 * 24 * 3600 * 1000.0
#: How far, in milliseconds, a due time may lie after the worker started the message and still count as a
#: wait of 0 (hosts synchronised by NTP differ by a few milliseconds); beyond it, ``clock_skew``.
CLOCK_SKEW_TOLERANCE_MS = 1000.0
#: PostgreSQL SQLSTATE classes of errors caused by the rows written, not by the server or the connection:
#: 22 data exception, 23 integrity constraint violation, 54 program limit exceeded (an index row too big).
REFUSAL_SQLSTATE_CLASSES = frozenset({"22", "23", "54"})

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
_CLOCK_SKEW = MetricType.CLOCK_SKEW.value
#: Samples the writer makes about itself: never counted as rejected (that could loop), only logged.
_BOOKKEEPING_TYPES = frozenset({MetricType.DROPPED_SAMPLES.value, MetricType.REJECTED_SAMPLES.value})

#: A raw row as written: recorded_at (microseconds since 2000-01-01 UTC), value, label_set_id, metric_type
#: (a :class:`MetricType` value).
Row = tuple[int, float, int, str]

logger = logging.getLogger(__name__)


def write_samples(connection: Connection, samples: Iterable[Sample]) -> int:
    """Write ``samples`` as raw rows inside the caller's transaction on ``connection``; return how many.

    Uses a binary COPY on PostgreSQL and one batched INSERT elsewhere. Label sets not stored yet are inserted
    first (:func:`~dramatiq_opmetrics.label_sets.resolve_label_set_ids`). Neither commits nor rolls back.
    Every sample is checked first (:func:`~dramatiq_opmetrics.samples.check_sample`), so a sample built by
    hand that the database would refuse raises :class:`ValueError` before anything is written.

    Example::

        with engine.begin() as connection:
            write_samples(connection, samples.queue_depth("default", 12, state="ready"))
    """
    batch = list(samples)
    checked: set[str] = set()
    values = []
    for sample in batch:
        # A label set is checked once per call: batches share few of them.
        values.append(sample_builders.check_sample(sample, check_labels=sample.label_set.labels_key not in checked))
        checked.add(sample.label_set.labels_key)
    ids = resolve_label_set_ids(connection, (sample.label_set for sample in batch))
    rows = [
        ((s.recorded_at - _PG_EPOCH) // _MICROSECOND, value, ids[s.label_set.labels_key], s.metric_type.value)
        for s, value in zip(batch, values, strict=True)
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

    Samples the database refuses (not an outage: see the module documentation) are found by splitting the
    batch, dropped, recorded as ``rejected_samples`` and reported by one warning per ``warning_interval_s``;
    the rest of the batch is written. Messages with an implausible due time get a ``clock_skew`` sample
    instead of a wait time, also with one warning per interval.

    A write that gets no answer for ``flush_interval_s + statement_timeout_s`` (the database stopped
    answering) is logged by a watchdog thread, which cuts its connection: the write fails and is retried
    on a new connection, and a transaction whose commit went unanswered is written once (see the module
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
      warning_interval_s(float): at most one drop, rejection or clock skew warning per this many seconds
        (sets the buffer's); default :data:`~dramatiq_opmetrics.buffer.DEFAULT_WARNING_INTERVAL_S` (30).
      shutdown_timeout_s(float): how long :meth:`stop` keeps trying to write; default
        :data:`DEFAULT_SHUTDOWN_TIMEOUT_S` (10).
      connect_timeout_s(float | None): seconds a connection attempt may take; default
        ``$OPMETRICS_CONNECT_TIMEOUT_S``, else 5 (see :func:`~dramatiq_opmetrics.database.make_engine`).
      statement_timeout_s(float | None): seconds a statement may run on the server (0: the server's own
        setting, the watchdog then allows 30 s); default ``$OPMETRICS_STATEMENT_TIMEOUT_S``, else 30.
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
        #: Seconds a statement may run on the server (0: the server's own setting).
        self.statement_timeout_s = resolve_statement_timeout_s(statement_timeout_s)
        #: Seconds a write may go without an answer before the watchdog cuts its connection.
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
        #: How many leading entries of the buffer's pending batch are written or rejected already.
        self._settled = 0
        #: Rejected samples not recorded yet, per (metric type, reason).
        self._rejected: dict[tuple[str, str], int] = {}
        self._rejection_warnings = _IntervalWarnings()
        self._clock_skew_warnings = _IntervalWarnings()
        #: The last raw-row transaction begun, until its COMMIT is answered or it is known to have rolled back.
        self._unanswered: _Unanswered | None = None
        self._watchdog: threading.Thread | None = None
        #: The DBAPI connection of the writer's engine (a pool of one), for the watchdog to cut.
        self._connection: Any = None
        #: When the pass in progress started or last got an answer (monotonic), None between passes.
        self._busy_since: float | None = None
        self._stall_reported = False
        #: Set when the watchdog or :meth:`stop` cut the connection during this pass: every error is an outage.
        self._cut = False
        #: Set when :meth:`stop` gave up on a thread blocked past its deadline: it must write nothing more.
        self._abandoned = False
        self._gave_up = False
        #: Set from a failed pass or a stall the watchdog saw until the next pass that writes.
        self._unanswering = False

    def reset_after_fork(self) -> None:
        """In a freshly forked child: forget the parent's thread, engine and buffered samples."""
        if self._engine is not None:
            self._engine.dispose(close=False)
        self.buffer.reset_after_fork()
        self._reset_process_state()

    @property
    def database_unanswering(self) -> bool:
        """Whether the database is failing this writer now: its last pass failed, or the pass in progress has
        gone unanswered past ``stall_timeout_s`` (a stopping worker then gives its last write no extra time)."""
        return self._unanswering

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
            self._abandoned = self._cut = True
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
            self._cut = self._abandoned
            self._busy_since = time.monotonic()
            try:
                written = self._settle_unanswered() and self._drain()
            finally:
                self._busy_since = None
                self._stall_reported = False
            now = time.monotonic()
            self._unanswering = not written
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
        while thread.is_alive():
            time.sleep(WATCHDOG_INTERVAL_S)
            self.buffer.warn_about_drops()
            busy_since = self._busy_since
            if busy_since is None:
                continue
            # Every answer moves busy_since on: a pass of many transactions (a batch being split) is slow,
            # not stuck.
            silent_s = time.monotonic() - busy_since
            if silent_s > self.stall_timeout_s and not self._stall_reported:
                self._stall_reported = self._cut = self._unanswering = True
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

    def _answered(self) -> None:
        """The database answered a transaction of this pass: tell the watchdog."""
        if self._busy_since is not None:
            self._busy_since = time.monotonic()

    def _is_refusal(self, error: BaseException) -> bool:
        """:func:`is_refusal`, except that every error after the connection was cut is an outage (the driver
        may raise anything from a socket shut down under it)."""
        return not self._cut and is_refusal(error)

    def _settle_unanswered(self) -> bool:
        """Before writing anything after a failure: settle the transaction whose COMMIT went unanswered;
        return whether writing may go on.

        The server's ``txid_status`` of that transaction tells. Committed: what it settles is applied now
        (it is not written again). Aborted (or never begun): forgotten, so it is written again. Still in
        progress (the server has not noticed the cut connection yet): write nothing, ask again at the next
        attempt. Unknown to the server (``transaction ID ... is in the future``: a failover to a standby
        that never saw it): it did not commit there, so it is written again.
        """
        unanswered = self._unanswered
        if unanswered is None:
            return True
        try:
            self._check_not_abandoned()
            with self._get_engine().connect() as connection:
                status = connection.execute(text("SELECT txid_status(:xid)"), {"xid": unanswered.xid}).scalar_one()
        except Exception as error:
            if not self._is_refusal(error):
                self._report_failure(sample_count(self.buffer.take_batch()[self._settled :]) or 1, error)
                return False
            logger.info(
                "The transaction of an unanswered commit of %d metric samples is unknown to %s (%s): writing them"
                " again.",
                unanswered.samples,
                redact_url(self.database_url),
                _scrub(_first_line(error), self.database_url),
            )
            status = None
        if status == "in progress":
            logger.debug("The transaction of the unanswered commit (%d) is still in progress.", unanswered.xid)
            return False
        self._unanswered = None
        if status == "committed":
            unanswered.settle()
            logger.info(
                "The commit of %d metric samples went unanswered but was committed: not written again.",
                unanswered.samples,
            )
        return True

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

    def _check_not_abandoned(self) -> None:
        if self._abandoned:
            raise _Abandoned("the writer was stopped: writing nothing more")

    def _backoff_s(self, failures: int) -> float:
        backoff: float = min(self.max_retry_backoff_s, self.flush_interval_s * 2 ** min(failures - 1, 16))
        return backoff * random.uniform(0.5, 1.0)

    def _drain(self) -> bool:
        """Write what the buffer holds now, batch by batch; return False if a write failed (an outage).

        Entries added meanwhile wait for the next pass, so a pass ends (and drops get reported) even when
        samples arrive faster than they are written.
        """
        remaining = len(self.buffer)
        while True:
            batch = self.buffer.take_batch()
            dropped = self.buffer.unrecorded_drops()
            if not batch and not dropped and not self._rejected:
                return True
            unwritten = batch
            try:
                if batch:
                    self._write_entries(batch)
                    self.buffer.commit_batch()
                    self._settled = 0
                    unwritten = []
                self._write_bookkeeping(dropped)
            except Exception as error:
                self._report_failure(sample_count(unwritten[self._settled :]) or 1, error)
                return False
            finally:
                self._warn_once_per_interval()
            if self._failing:
                self._failing = False
                logger.info("The metrics database %s is reachable again.", redact_url(self.database_url))
            remaining -= len(batch)
            if remaining <= 0 or not batch:
                return True

    def _write_entries(self, entries: Sequence[Entry]) -> None:
        """Write the buffer's pending batch, isolating what the database refuses; raise only for an outage.

        Goes left to right from the first entry not settled yet, splitting a refused span in halves, so
        what is settled is always a prefix of the batch (:attr:`_settled`): a retry after an outage
        resumes there and writes nothing twice.
        """
        if self._settled >= len(entries):
            return  # its last span committed without an answer (see _settle_unanswered)
        engine = self._get_engine()
        ids, refused = self._store_label_sets(engine, entries[self._settled :])
        spans = [(self._settled, len(entries))]
        while spans:
            start, end = spans.pop()
            try:
                self._write_span(engine, entries[start:end], ids, refused, partial(self._settle_prefix, end))
            except Exception as error:
                if not self._is_refusal(error):
                    raise
                if end - start > 1:
                    middle = (start + end) // 2
                    spans += [(middle, end), (start, middle)]
                    continue
                self._reject(entries[start], _reason(error), _first_line(error))
                self._settle_prefix(end)

    def _settle_prefix(self, end: int) -> None:
        self._settled = end

    def _write_span(
        self,
        engine: Engine,
        entries: Sequence[Entry],
        ids: dict[str, int],
        refused: dict[str, tuple[str, str]],
        settle: Callable[[], None],
    ) -> None:
        """Write ``entries`` in one transaction, less those whose label set was refused (rejected once
        written), then ``settle`` them (:meth:`_transact`)."""
        kept = [entry for entry in entries if _labels_key(entry) not in refused] if refused else entries
        skewed: list[MessageEntry] = []
        rows = _rows(kept, ids, skewed)

        def written() -> None:
            self.written_total += len(rows)
            if len(kept) < len(entries):
                for entry in entries:
                    if _labels_key(entry) in refused:
                        self._reject(entry, *refused[_labels_key(entry)])
            if skewed:
                self._clock_skew_warnings.add(len(skewed), self._describe_clock_skew(skewed[0]))
            settle()

        self._transact(engine, rows, written)

    def _transact(self, engine: Engine, rows: Sequence[Row], written: Callable[[], None]) -> None:
        """Write ``rows`` in one transaction, then call ``written``, which applies what they settle: once.

        On PostgreSQL the transaction id is noted first, and ``written`` kept with it until the COMMIT is
        answered: if the answer never comes, :meth:`_settle_unanswered` calls ``written`` once the server
        says the transaction committed, and otherwise lets it be written again.
        """
        if rows:
            self._check_not_abandoned()
            try:
                with engine.begin() as connection:
                    if connection.dialect.name == "postgresql":
                        xid = connection.execute(text("SELECT txid_current()")).scalar_one()
                        self._unanswered = _Unanswered(int(xid), len(rows), written)
                    _write_rows(connection, rows)
            except Exception as error:
                if self._is_refusal(error):
                    # Refused before or by the COMMIT: rolled back, nothing to settle.
                    self._unanswered = None
                    self._answered()
                raise
            self._unanswered = None
            self._answered()
        written()

    def _store_label_sets(
        self, engine: Engine, entries: Sequence[Entry]
    ) -> tuple[dict[str, int], dict[str, tuple[str, str]]]:
        """Look up (and insert) the label sets of ``entries`` not cached yet.

        Returns the ids of the label sets of ``entries`` (a dict of this batch's own, whatever the cache
        keeps meanwhile) and ``{labels_key: (reason, detail)}`` of those that can never be stored: not
        registered with the buffer, or refused by the database (found by splitting, like rows). Inserting
        a label set is idempotent, so an unanswered commit here needs no settling: the retry finds it.
        """
        cache = self._label_set_ids
        wanted = {_labels_key(entry) for entry in entries}
        ids = {key: cache[key] for key in wanted if key in cache}
        missing = wanted - ids.keys()
        if not missing:
            return ids, {}
        label_sets = self.buffer.label_sets
        refused = {key: _UNREGISTERED for key in missing if key not in label_sets}
        parts = [sorted(missing - refused.keys())]
        while parts:
            part = parts.pop()
            if not part:
                continue
            self._check_not_abandoned()
            try:
                # Committed on its own, so a cached id always refers to a stored label set.
                with engine.begin() as connection:
                    found = resolve_label_set_ids(connection, [label_sets[key] for key in part])
                self._answered()
                ids.update(found)
                cache.update(found)
            except Exception as error:
                if not self._is_refusal(error):
                    raise
                self._answered()
                if len(part) > 1:
                    middle = len(part) // 2
                    parts += [part[middle:], part[:middle]]
                    continue
                refused[part[0]] = (_reason(error), _first_line(error))
        return ids, refused

    def _write_bookkeeping(self, dropped: int) -> None:
        """Record ``dropped`` drops and the rejections not recorded yet, each sample in its own transaction.

        One transaction each, because each is marked recorded as soon as it is committed (or, when its
        commit went unanswered, once the server says it committed): an outage in between never records one
        twice. One the database refuses is logged and given up (counting it would loop).
        """
        bookkeeping: list[tuple[Sample, tuple[str, str] | None, int]] = []
        if dropped:
            bookkeeping.append((sample_builders.dropped_samples(dropped)[0], None, dropped))
        for key, count in self._rejected.items():
            metric_type, reason = key
            rejected = sample_builders.rejected_samples(count, metric_type=metric_type, reason=reason)[0]
            bookkeeping.append((rejected, key, count))
        for sample, rejected_key, count in bookkeeping:
            labels_key = self.buffer.register_label_set(sample.label_set)
            entry: SampleEntry = (sample.metric_type.value, sample.value, labels_key, time.time())
            engine = self._get_engine()
            recorded = partial(self._mark_recorded, rejected_key, count)
            try:
                self._write_span(engine, [entry], *self._store_label_sets(engine, [entry]), recorded)
            except Exception as error:
                if not self._is_refusal(error):
                    raise
                self._reject(entry, _reason(error), _first_line(error))
                recorded()

    def _mark_recorded(self, rejected_key: tuple[str, str] | None, count: int) -> None:
        """``count`` drops (``rejected_key`` None) or rejections of ``rejected_key`` are recorded."""
        if rejected_key is None:
            self.buffer.mark_drops_recorded(count)
            return
        left = self._rejected[rejected_key] - count
        if left:
            self._rejected[rejected_key] = left
        else:
            del self._rejected[rejected_key]

    def _reject(self, entry: Entry, reason: str, detail: str) -> None:
        """Count the samples of ``entry`` as rejected (for ``rejected_samples`` and the next warning)."""
        metric_types = (_PROCESSING, _WAIT_TIME) if entry[0] is None else (entry[0],)
        labels_key = _labels_key(entry)
        label_set = self.buffer.label_sets.get(labels_key)
        labels = dict(label_set.labels) if label_set is not None else labels_key
        example = f"{reason}: {detail}; for example a {metric_types[0]} sample labelled {_shorten(repr(labels))}"
        if metric_types[0] in _BOOKKEEPING_TYPES:
            logger.error("The metrics database refuses the writer's own samples (%s); not recorded.", example)
            return
        for metric_type in metric_types:
            key = (metric_type, reason)
            self._rejected[key] = self._rejected.get(key, 0) + 1
        self._rejection_warnings.add(len(metric_types), example)

    def _describe_clock_skew(self, entry: MessageEntry) -> str:
        label_set = self.buffer.label_sets.get(entry[1])
        labels = dict(label_set.labels) if label_set is not None else entry[1]
        return f"labelled {_shorten(repr(labels))}, due {sample_builders.describe_value(entry[2])}"

    def _warn_once_per_interval(self) -> None:
        now = time.monotonic()
        rejected = self._rejection_warnings.take(now, self.warning_interval_s)
        if rejected is not None:
            logger.warning(
                "Rejected %d metric samples that the metrics database refuses (%s); dropped them, counted them"
                " as rejected_samples and wrote the others.",
                *rejected,
            )
        skewed = self._clock_skew_warnings.take(now, self.warning_interval_s)
        if skewed is not None:
            logger.warning(
                "Recorded clock_skew instead of the wait time of %d messages whose due time (message_timestamp or"
                " the %s option, set by the producer) is not a plausible time, for example one %s: check the"
                " clocks of the producers.",
                skewed[0],
                _DUE_OPTION,
                skewed[1],
            )

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
        """Report an outage (never a refusal: those are isolated): the batch is kept and retried."""
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


class _Unanswered(NamedTuple):
    """A raw-row transaction begun and not known to have committed or rolled back."""

    #: Its transaction id (``txid_current()``, 64 bits: never wraps around).
    xid: int
    #: How many samples it writes.
    samples: int
    #: Applies what it settles once it committed (advances the settled prefix, marks drops recorded...).
    settle: Callable[[], None]


class _Abandoned(Exception):
    """Raised in a writer thread that :meth:`BackgroundWriter.stop` gave up on: an outage, never a refusal."""


class _IntervalWarnings:
    """Counts events of one kind and hands out one warning's worth per interval, naming the first one."""

    def __init__(self) -> None:
        self.count = 0
        self.example = ""
        self.next_at = 0.0

    def add(self, count: int, example: str) -> None:
        if not self.count:
            self.example = example
        self.count += count

    def take(self, now: float, interval_s: float) -> tuple[int, str] | None:
        """The count and example to warn about now, or None (nothing new, or warned less than an interval ago)."""
        if not self.count or now < self.next_at:
            return None
        taken = (self.count, self.example)
        self.count = 0
        self.next_at = now + interval_s
        return taken


#: The reason of samples whose labels key was never registered with the buffer.
_UNREGISTERED = ("UnregisteredLabelSet", "labels key not registered with the buffer (register_label_set)")
_DUE_OPTION = "opmetrics_due_ms"


def is_refusal(error: BaseException) -> bool:
    """Whether ``error`` is the database (or its driver) refusing the rows written, rather than an outage.

    Refusals: a PostgreSQL error of an SQLSTATE class in :data:`REFUSAL_SQLSTATE_CLASSES`; a driver's
    DataError, IntegrityError or ProgrammingError raised without a server error (while converting a value);
    a TypeError, ValueError (UnicodeEncodeError included) or ArithmeticError (OverflowError) while building
    or sending rows. Everything else (connection errors, timeouts, a server shutting down, lock conflicts,
    a table missing because the database is not migrated) fails every row alike, so it is retried.
    """
    original = error.orig if isinstance(error, exc.StatementError) and error.orig is not None else error
    if isinstance(original, psycopg.Error):
        if original.sqlstate:
            return original.sqlstate[:2] in REFUSAL_SQLSTATE_CLASSES
        return isinstance(original, psycopg.DataError | psycopg.IntegrityError | psycopg.ProgrammingError)
    if isinstance(error, exc.DBAPIError):
        return isinstance(error, exc.DataError | exc.IntegrityError | exc.ProgrammingError)
    return isinstance(original, TypeError | ValueError | ArithmeticError)


def _reason(error: BaseException) -> str:
    """The short reason of a refusal: the class of the original exception (``NumericValueOutOfRange``)."""
    original = error.orig if isinstance(error, exc.StatementError) and error.orig is not None else error
    return type(original).__name__


def _shorten(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _labels_key(entry: Entry) -> str:
    return entry[1] if entry[0] is None else entry[2]


def _rows(entries: Sequence[Entry], ids: dict[str, int], skewed: list[MessageEntry] | None = None) -> list[Row]:
    """Raw rows of buffered entries; a message entry's perf_counter readings become wall-clock times now.

    A message whose due time is not plausible gets a ``clock_skew`` row instead of its ``wait_time`` row and
    is appended to ``skewed``.
    """
    # perf_counter() + offset = seconds since 2000-01-01 UTC.
    offset_s = time.time() - time.perf_counter() - _PG_EPOCH_S
    rows: list[Row] = []
    append = rows.append
    for entry in entries:
        if entry[0] is None:
            _, key, due_ms, started_s, ended_s = entry
            id_ = ids[key]
            started_at_s = started_s + offset_s
            started_ms = (started_at_s + _PG_EPOCH_S) * 1000.0
            kind = type(due_ms)
            # Comparisons first: they are exact for any int (10**400 too) and false for NaN.
            if (kind is float or kind is int) and (
                started_ms - MAX_PLAUSIBLE_WAIT_MS <= due_ms <= started_ms + CLOCK_SKEW_TOLERANCE_MS
            ):
                wait_ms = started_ms - due_ms
                append((round(started_at_s * 1e6), wait_ms if wait_ms > 0.0 else 0.0, id_, _WAIT_TIME))
            else:
                append((round(started_at_s * 1e6), 1.0, id_, _CLOCK_SKEW))
                if skewed is not None:
                    skewed.append(entry)
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
