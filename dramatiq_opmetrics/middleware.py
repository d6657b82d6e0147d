"""``OpMetrics``: the Dramatiq middleware that measures every message a worker processes."""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import Sequence
from time import monotonic, perf_counter, time
from typing import Any, Final

import dramatiq
from dramatiq.common import q_name
from dramatiq.middleware import Middleware, Retries
from sqlalchemy import Engine
from sqlalchemy.engine import URL

from . import samples
from .alert_evaluator import DEFAULT_ALERT_STATEMENT_TIMEOUT_S, AlertEvaluator
from .alert_rules import RuleSet, load_rules
from .buffer import DEFAULT_BATCH_SIZE, DEFAULT_BUFFER_CAPACITY, DEFAULT_WARNING_INTERVAL_S, SampleBuffer
from .cardinality import DEFAULT_MAX_LABEL_SETS_PER_METRIC, MAX_LABEL_SETS_ENV_VAR, LabelSetCap
from .config import redact_url, resolve_setting
from .database import make_engine
from .metric_types import MetricType
from .queue_depth import check_queue_names
from .queue_depth_sampler import DEFAULT_QUEUE_DEPTH_INTERVAL_S, QueueDepthSampler, check_interval_s, fleet_claim
from .recent_tier import DEFAULT_FOLD_INTERVAL_S, DEFAULT_RECENT_RETENTION_DAYS, RecentTierFolder
from .recording import current_actor, set_default_target
from .worker_sampler import WorkerSampler
from .writer import (
    DEFAULT_FLUSH_INTERVAL_S,
    DEFAULT_MAX_RETRY_BACKOFF_S,
    DEFAULT_SHUTDOWN_TIMEOUT_S,
    BackgroundWriter,
)

#: Environment variable for ``flush_interval_s``.
FLUSH_INTERVAL_ENV_VAR = "OPMETRICS_FLUSH_INTERVAL_S"
#: Environment variable for ``batch_size``.
BATCH_SIZE_ENV_VAR = "OPMETRICS_BATCH_SIZE"
#: Environment variable for ``buffer_capacity``.
BUFFER_CAPACITY_ENV_VAR = "OPMETRICS_BUFFER_CAPACITY"
#: Environment variable for ``queue_depth_interval_s``.
QUEUE_DEPTH_INTERVAL_ENV_VAR = "OPMETRICS_QUEUE_DEPTH_INTERVAL_S"
#: Environment variable for ``recent_fold_interval_s``.
RECENT_FOLD_INTERVAL_ENV_VAR = "OPMETRICS_RECENT_FOLD_INTERVAL_S"
#: Environment variable for ``recent_retention_days``.
RECENT_RETENTION_DAYS_ENV_VAR = "OPMETRICS_RECENT_RETENTION_DAYS"
#: Environment variable for ``alert_rules``.
ALERT_RULES_ENV_VAR = "OPMETRICS_ALERT_RULES"
#: The most days of buckets the recent tier keeps (it serves the last hours and days; the daily rows are the
#: permanent record).
MAX_RECENT_RETENTION_DAYS = 366
#: Seconds a stopping worker waits, in all, for its queue depth sampler's pass and its recent tier fold in
#: progress (either may be blocked on the broker or the database; their threads are daemons, and a fold
#: left behind commits whole or not at all), taken from the writer's ``shutdown_timeout_s``.
SAMPLER_STOP_TIMEOUT_S = 0.5
#: Seconds the last write of a stopping worker gets at least, however long its threads took to finish (none
#: when the database has already stopped answering the writer: waiting longer would only delay the stop).
MIN_FINAL_WRITE_S = 1.0
#: The message option in which the worker notes when a delayed message became due (ms since the epoch).
DUE_OPTION = "opmetrics_due_ms"
#: ``outcome`` label of an error after which the message will run again.
OUTCOME_RETRIED = "retried"
#: ``outcome`` label of an error after which the message will not run again (dead-lettered, or no retries).
OUTCOME_FINAL = "final"

_SKIPPED = MetricType.SKIPPED.value
_PROCESSING = MetricType.PROCESSING_TIME.value

logger = logging.getLogger(__name__)


def recent_tier_settings(interval_s: float | None = None, retention_days: int | None = None) -> tuple[float, int]:
    """The recent tier's fold interval in seconds (0: no folding) and its retention in days: the arguments
    if given, else ``$OPMETRICS_RECENT_FOLD_INTERVAL_S`` and ``$OPMETRICS_RECENT_RETENTION_DAYS``, else
    :data:`~dramatiq_opmetrics.recent_tier.DEFAULT_FOLD_INTERVAL_S` (60 s) and
    :data:`~dramatiq_opmetrics.recent_tier.DEFAULT_RECENT_RETENTION_DAYS` (3). The worker middleware and the
    ``sample-queues`` sidecar read them the same way, so a fleet configured once agrees on its intervals.

    Raises:
      ConfigurationError: if one of the environment variables is not a number.
      ValueError: if the interval is neither 0 nor a number of seconds from
        :data:`~dramatiq_opmetrics.queue_depth_sampler.MIN_QUEUE_DEPTH_INTERVAL_S` to
        :data:`~dramatiq_opmetrics.queue_depth_sampler.MAX_QUEUE_DEPTH_INTERVAL_S`, or the retention is not
        a whole number of days from 1 to :data:`MAX_RECENT_RETENTION_DAYS`.
    """
    interval = resolve_setting(interval_s, RECENT_FOLD_INTERVAL_ENV_VAR, DEFAULT_FOLD_INTERVAL_S, float)
    if interval != 0:
        try:
            interval = check_interval_s(interval)
        except ValueError as error:
            name = "recent_fold_interval_s" if interval_s is not None else RECENT_FOLD_INTERVAL_ENV_VAR
            raise ValueError(f"{name} (0 turns folding off): {error}") from None
    days = resolve_setting(retention_days, RECENT_RETENTION_DAYS_ENV_VAR, DEFAULT_RECENT_RETENTION_DAYS, int)
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_RECENT_RETENTION_DAYS:
        name = "recent_retention_days" if retention_days is not None else RECENT_RETENTION_DAYS_ENV_VAR
        raise ValueError(f"{name} must be a whole number of days from 1 to {MAX_RECENT_RETENTION_DAYS}, got {days!r}")
    return float(interval), days


#: What the hooks remember about the message a worker thread is processing, a tuple because one is made per
#: message: (target, actor, queue, message proxy, labels key, due_ms, started_s). Its first three items are
#: what :mod:`~dramatiq_opmetrics.recording` reads.
_InFlight = tuple[Any, str, str, Any, str, float, float]
_MESSAGE: Final = 3
_LABELS_KEY: Final = 4
_DUE_MS: Final = 5
_STARTED_S: Final = 6
#: The cached labels of one (actor, queue): labels key (registered with the buffer), actor, canonical queue.
_Labels = tuple[str, str, str]


class _Failure:
    """A failed attempt whose outcome (retried or final) is known only when the message is acked or nacked."""

    __slots__ = ("error_type", "in_flight", "requeued")

    def __init__(self, in_flight: _InFlight) -> None:
        self.in_flight = in_flight
        self.error_type: str | None = None
        self.requeued = False


class OpMetrics(Middleware):
    """Measures every message a worker processes and stores the samples in the metrics database.

    Add it to the broker in every process, web processes and workers alike::

        from dramatiq_opmetrics import OpMetrics
        broker.add_middleware(OpMetrics(database_url="postgresql+psycopg://app@db-host/app"))

    For each message, labelled with ``actor`` and canonical ``queue`` (``default``, never ``default.DQ``):

    - ``processing_time``: milliseconds the actor ran (monotonic clock), success or failure;
    - ``wait_time``: milliseconds from when the message became due (sent, or for a delayed or retried
      message the end of its delay) to a worker starting it;
    - ``error``: one per failed attempt, labelled ``error_type`` (the exception class) and ``outcome``:
      ``retried`` (it will run again) or ``final`` (dead-lettered, or not retried without ``Retries``);
    - ``skipped``: one per message skipped by a middleware (``SkipMessage``, e.g. ``AgeLimit``, or a
      message failed before its actor could run), which gets no processing or wait time;
    - ``clock_skew``: one per message whose due time (set by its producer: ``message_timestamp`` or the
      ``opmetrics_due_ms`` option) is not a plausible time, instead of its wait time (see
      :mod:`~dramatiq_opmetrics.writer`; the hooks only carry the value, the writer judges it).

    Placement does not matter: when ``Retries`` sees a failure after this middleware (the usual case,
    ``add_middleware`` appends, and ``emit_after`` runs middleware in reverse order), the error is recorded
    once ``Retries`` has decided: when it enqueues the message again (``retried``) or the message is
    rejected (``final``). Each failed attempt is counted once. Inside actors,
    :func:`~dramatiq_opmetrics.record_token_usage` and :func:`~dramatiq_opmetrics.record_confidence` add
    samples labelled with the current actor and queue.

    The hooks never touch the database: samples go into a bounded in-memory buffer
    (:attr:`buffer`) that a background thread per worker process writes in batches (COPY on PostgreSQL).
    The thread and its connection are made when a worker boots (``dramatiq`` command or a ``Worker``
    started from code), so a process that only sends messages starts no thread and opens no connection.
    Stopping the worker (SIGTERM, SIGINT, ``Worker.stop()``) writes everything buffered, and ends within
    ``shutdown_timeout_s`` (plus half a second) whatever the database does, logging how many samples it gave
    up. While the database is down, batches are kept and retried with backoff; a full buffer drops new
    samples, counts them, warns once per ``warning_interval_s`` (from the worker thread that drops) and
    records the count as ``dropped_samples`` once the database is back. A database that stops answering
    is noticed by the connect and statement timeouts, TCP keepalives and the writer's own watchdog (see
    :class:`~dramatiq_opmetrics.writer.BackgroundWriter`). Samples the database refuses are dropped alone,
    counted as ``rejected_samples`` and logged once per ``warning_interval_s``; the rest is written.
    Background samplers can add their samples with ``buffer.add_many``.

    Parameters:
      database_url(str | URL | None): the metrics database (SQLAlchemy URL; ``postgresql://`` uses psycopg
        3); default ``$OPMETRICS_DATABASE_URL``, then ``$DATABASE_URL``. Its password never appears in
        logs or reprs.
      flush_interval_s(float | None): seconds between writes; default ``$OPMETRICS_FLUSH_INTERVAL_S``, else
        :data:`~dramatiq_opmetrics.writer.DEFAULT_FLUSH_INTERVAL_S` (1 s).
      batch_size(int | None): buffer entries per write (a processed message is one entry: its wait and
        processing time); a full batch is written at once; default ``$OPMETRICS_BATCH_SIZE``, else
        :data:`~dramatiq_opmetrics.buffer.DEFAULT_BATCH_SIZE` (5,000).
      buffer_capacity(int | None): most entries held per process (at most about 170 bytes each) before new
        samples are dropped; default ``$OPMETRICS_BUFFER_CAPACITY``, else
        :data:`~dramatiq_opmetrics.buffer.DEFAULT_BUFFER_CAPACITY` (100,000).
      max_retry_backoff_s(float): longest wait between write attempts while the database is down; default
        30 s.
      warning_interval_s(float): at most one warning about dropped samples per this many seconds; default
        30 s.
      shutdown_timeout_s(float): how long a stopping worker keeps trying to write what is buffered;
        default 10 s.
      connect_timeout_s(float | None): seconds a connection attempt to the metrics database may take, for
        the writer, the queue depth sampler and the recent tier's fold; default ``$OPMETRICS_CONNECT_TIMEOUT_S``, else
        :data:`~dramatiq_opmetrics.database.DEFAULT_CONNECT_TIMEOUT_S` (5 s).
      statement_timeout_s(float | None): seconds a statement of theirs may run (0: the server's setting); a write
        without an answer for ``flush_interval_s`` plus this long is cut and retried; default
        ``$OPMETRICS_STATEMENT_TIMEOUT_S``, else
        :data:`~dramatiq_opmetrics.database.DEFAULT_STATEMENT_TIMEOUT_S` (30 s).
      queue_depth_interval_s(float | None): seconds between queue depth and oldest-message age samples,
        taken by one worker process of the whole fleet per interval
        (:class:`~dramatiq_opmetrics.QueueDepthSampler`), and between the ``worker_threads`` and
        ``busy_threads`` samples that every worker process records (:class:`~dramatiq_opmetrics.WorkerSampler`);
        0 turns both off; default ``$OPMETRICS_QUEUE_DEPTH_INTERVAL_S``, else
        :data:`~dramatiq_opmetrics.queue_depth_sampler.DEFAULT_QUEUE_DEPTH_INTERVAL_S` (15 s).
      queues(sequence of str): queues whose depth is sampled besides the broker's declared ones.
      max_label_sets_per_metric(int | None): distinct label sets per metric type this process records;
        beyond, new label sets' samples are written under the overflow label set
        ``{"opmetrics_overflow": "true"}`` with a warning per ``warning_interval_s``
        (:class:`~dramatiq_opmetrics.cardinality.LabelSetCap`); default
        ``$OPMETRICS_MAX_LABEL_SETS_PER_METRIC``, else
        :data:`~dramatiq_opmetrics.cardinality.DEFAULT_MAX_LABEL_SETS_PER_METRIC` (10,000).
      recent_fold_interval_s(float | None): seconds between two folds of the recent tier
        (``opmetrics_recent_aggregates``, read by :func:`~dramatiq_opmetrics.series.query_series`, the report
        and the dashboard): every worker process runs a
        :class:`~dramatiq_opmetrics.recent_tier.RecentTierFolder`, and one process of the whole fleet folds
        per interval (claimed on the broker's Redis like queue depth, else in the metrics database), so the
        tier stays current however many workers run; 0 turns it off (fold from a scheduler or the
        ``sample-queues`` sidecar instead); default ``$OPMETRICS_RECENT_FOLD_INTERVAL_S``, else
        :data:`~dramatiq_opmetrics.recent_tier.DEFAULT_FOLD_INTERVAL_S` (60 s). A failed fold (the database
        down, not migrated to 0005 yet) is logged once for its interval, which the next fold catches up; it
        never affects the worker.
      recent_retention_days(int | None): days of 1- and 10-minute buckets the fold keeps in the recent tier
        (older ranges are read from the raw rows); default ``$OPMETRICS_RECENT_RETENTION_DAYS``, else
        :data:`~dramatiq_opmetrics.recent_tier.DEFAULT_RECENT_RETENTION_DAYS` (3, enough for a 72-hour
        view), at most :data:`MAX_RECENT_RETENTION_DAYS`.

      alert_rules(str | os.PathLike | None): an alert rule file (TOML, see the README's "Alerting"): every
        worker process then runs an :class:`~dramatiq_opmetrics.alert_evaluator.AlertEvaluator`, and one
        process of the whole fleet evaluates the rules per evaluation interval (claimed like queue depth) and
        delivers their notifications; default ``$OPMETRICS_ALERT_RULES``, else no alerting. The file is read
        and checked here: a bad file raises :class:`~dramatiq_opmetrics.alert_rules.RuleFileError` at once.
        Evaluation runs in threads of its own with its own engine, whose statements time out after
        :data:`~dramatiq_opmetrics.alert_evaluator.DEFAULT_ALERT_STATEMENT_TIMEOUT_S` (10 s); a failing
        evaluation or notifier is logged and retried, never raised into the worker.

    The queue depth sampler and the folder share one engine of their own (a connection is opened when one
    of them needs it); a stopping worker waits at most :data:`SAMPLER_STOP_TIMEOUT_S` for both together.

    Raises:
      ConfigurationError: if no database URL is given or set, or an environment variable is not a number.
      ValueError: if a setting is out of range (not positive), naming it.
      RuleFileError: if the alert rule file cannot be read or is not valid (one line per problem).
    """

    def __init__(
        self,
        database_url: str | URL | None = None,
        *,
        flush_interval_s: float | None = None,
        batch_size: int | None = None,
        buffer_capacity: int | None = None,
        max_retry_backoff_s: float = DEFAULT_MAX_RETRY_BACKOFF_S,
        warning_interval_s: float = DEFAULT_WARNING_INTERVAL_S,
        shutdown_timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S,
        connect_timeout_s: float | None = None,
        statement_timeout_s: float | None = None,
        queue_depth_interval_s: float | None = None,
        queues: Sequence[str] = (),
        max_label_sets_per_metric: int | None = None,
        recent_fold_interval_s: float | None = None,
        recent_retention_days: int | None = None,
        alert_rules: str | os.PathLike[str] | None = None,
    ) -> None:
        label_set_cap = LabelSetCap(
            resolve_setting(max_label_sets_per_metric, MAX_LABEL_SETS_ENV_VAR, DEFAULT_MAX_LABEL_SETS_PER_METRIC, int),
            warning_interval_s=warning_interval_s,
        )
        #: The in-process buffer of samples waiting to be written (``buffer.add_many`` takes samples).
        self.buffer = SampleBuffer(
            capacity=resolve_setting(buffer_capacity, BUFFER_CAPACITY_ENV_VAR, DEFAULT_BUFFER_CAPACITY, int),
            batch_size=resolve_setting(batch_size, BATCH_SIZE_ENV_VAR, DEFAULT_BATCH_SIZE, int),
            label_set_cap=label_set_cap,
        )
        #: The writer that drains :attr:`buffer` from a background thread.
        self.writer = BackgroundWriter(
            database_url,
            self.buffer,
            flush_interval_s=resolve_setting(flush_interval_s, FLUSH_INTERVAL_ENV_VAR, DEFAULT_FLUSH_INTERVAL_S, float),
            max_retry_backoff_s=max_retry_backoff_s,
            warning_interval_s=warning_interval_s,
            shutdown_timeout_s=shutdown_timeout_s,
            connect_timeout_s=connect_timeout_s,
            statement_timeout_s=statement_timeout_s,
        )
        #: Per actor and queue name, the labels of its messages (None: not measured); at most as many
        #: entries as the cap keeps label sets, so junk actor names cannot grow it.
        self._label_sets: dict[str, dict[str, _Labels | None]] = {}
        self._label_sets_cached = 0
        self._append_message = self.buffer.append_message
        self._exit_flush_pid = 0
        self._shutdown_started_s = 0.0
        interval_s = resolve_setting(
            queue_depth_interval_s, QUEUE_DEPTH_INTERVAL_ENV_VAR, DEFAULT_QUEUE_DEPTH_INTERVAL_S, float
        )
        #: Seconds between queue depth samples (0: not sampled).
        self.queue_depth_interval_s = 0.0 if interval_s == 0 else check_interval_s(interval_s)
        #: Queues sampled besides the broker's declared ones.
        self.queues = check_queue_names(queues)
        #: Seconds between two folds of the recent tier by the fleet (0: not folded by the workers), and the
        #: days of buckets kept.
        self.recent_fold_interval_s, self.recent_retention_days = recent_tier_settings(
            recent_fold_interval_s, recent_retention_days
        )
        #: This worker process's queue depth sampler, made when the worker boots.
        self.queue_depth_sampler: QueueDepthSampler | None = None
        #: This worker process's folder of the recent tier, made when the worker boots.
        self.recent_tier_folder: RecentTierFolder | None = None
        #: The engine the sampler and the folder share, made when the worker boots.
        self._background_engine: Engine | None = None
        #: This worker process's sampler of its threads, made when the worker has booted.
        self.worker_sampler: WorkerSampler | None = None
        rules_path = alert_rules if alert_rules is not None else os.environ.get(ALERT_RULES_ENV_VAR) or None
        #: The alert rules evaluated by the fleet (None: no alerting).
        self.alert_rules: RuleSet | None = None if rules_path is None else load_rules(rules_path)
        #: This worker process's alert evaluator, made when the worker boots.
        self.alert_evaluator: AlertEvaluator | None = None
        self._alert_engine: Engine | None = None
        set_default_target(self)

    def __repr__(self) -> str:
        return (
            f"OpMetrics(database_url={redact_url(self.writer.database_url)!r},"
            f" flush_interval_s={self.writer.flush_interval_s!r}, batch_size={self.buffer.batch_size!r},"
            f" buffer_capacity={self.buffer.capacity!r})"
        )

    def add_samples(self, new_samples: Sequence[samples.Sample]) -> None:
        """Buffer ``new_samples`` for writing, starting the writer in a process that is not a worker."""
        self.buffer.add_many(new_samples)
        if not self.writer.running:
            self._start_outside_worker()

    def _start_outside_worker(self) -> None:
        self.writer.start()
        if self._exit_flush_pid != os.getpid():
            self._exit_flush_pid = os.getpid()
            atexit.register(self.writer.stop)

    # Worker lifecycle: one writer thread per worker process, made after any fork.

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        """Start this process's writer thread, queue depth sampler, recent tier folder and alert evaluator."""
        self.writer.start()
        if self.alert_rules is not None:
            self._start_alert_evaluator(broker)
        if not (self.queue_depth_interval_s or self.recent_fold_interval_s):
            return
        # Claims intervals on brokers other than Redis, and folds.
        engine = self._background_engine = make_engine(
            self.writer.database_url,
            connect_timeout_s=self.writer.connect_timeout_s,
            statement_timeout_s=self.writer.statement_timeout_s,
        )
        if self.queue_depth_interval_s:
            self.queue_depth_sampler = QueueDepthSampler(
                broker, self.buffer.add_many, interval_s=self.queue_depth_interval_s, queues=self.queues, engine=engine
            )
            self.queue_depth_sampler.start()
        if self.recent_fold_interval_s:
            self.recent_tier_folder = RecentTierFolder(
                engine,
                interval_s=self.recent_fold_interval_s,
                retention_days=self.recent_retention_days,
                claim=fleet_claim(broker, engine),
            )
            self.recent_tier_folder.start()

    def _start_alert_evaluator(self, broker: dramatiq.Broker) -> None:
        assert self.alert_rules is not None
        engine = self._alert_engine = make_engine(
            self.writer.database_url,
            connect_timeout_s=self.writer.connect_timeout_s,
            statement_timeout_s=DEFAULT_ALERT_STATEMENT_TIMEOUT_S,
        )
        self.alert_evaluator = AlertEvaluator(engine, self.alert_rules, claim=fleet_claim(broker, engine))
        self.alert_evaluator.start()

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        """Start sampling this process's worker threads (they exist from now on)."""
        if self.queue_depth_interval_s:
            self.worker_sampler = WorkerSampler(worker, self.buffer.add_many, interval_s=self.queue_depth_interval_s)
            self.worker_sampler.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        """Note when the worker started to stop (the shutdown timeout counts from here) and stop sampling
        the worker threads: a stopping process drops out of the series at once."""
        self._shutdown_started_s = monotonic()
        sampler, self.worker_sampler = self.worker_sampler, None
        if sampler is not None:
            sampler.stop()

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        """Stop the queue depth sampler and the recent tier folder, write everything buffered and stop the
        writer thread.

        The writer keeps trying until ``shutdown_timeout_s`` after the worker started to stop (Dramatiq
        first waits for its threads to finish their messages), and for at least
        :data:`MIN_FINAL_WRITE_S` unless the database has already stopped answering it, then gives up: with a
        database that does not answer, ``Worker.stop()`` returns within ``shutdown_timeout_s`` plus half a
        second when its threads are done by then.
        """
        started_s = self._shutdown_started_s or monotonic()
        self._shutdown_started_s = 0.0
        self._stop_background_jobs()
        left_s = self.writer.shutdown_timeout_s - (monotonic() - started_s)
        # With a database that has stopped answering, more time than the budget's rest would only delay the stop.
        floor_s = 0.0 if self.writer.database_unanswering else min(MIN_FINAL_WRITE_S, self.writer.shutdown_timeout_s)
        self.writer.stop(timeout_s=max(left_s, floor_s))

    def _stop_background_jobs(self) -> None:
        """Stop the sampler, the folder and the alert evaluator, waiting at most :data:`SAMPLER_STOP_TIMEOUT_S`
        for them together.

        A fold still running then is left to its daemon thread: it commits whole or, if the process exits
        first, not at all, and the next fold of the fleet does its work."""
        deadline_s = monotonic() + SAMPLER_STOP_TIMEOUT_S
        sampler, self.queue_depth_sampler = self.queue_depth_sampler, None
        if sampler is not None:
            sampler.stop(timeout_s=SAMPLER_STOP_TIMEOUT_S)
        folder, self.recent_tier_folder = self.recent_tier_folder, None
        if folder is not None:
            folder.stop(timeout_s=max(deadline_s - monotonic(), 0.0))
        evaluator, self.alert_evaluator = self.alert_evaluator, None
        if evaluator is not None:
            # An evaluation left behind commits whole or not at all; the next interval's evaluator goes on.
            evaluator.stop(timeout_s=max(deadline_s - monotonic(), 0.0))
        for engine in (self._background_engine, self._alert_engine):
            if engine is not None:
                engine.dispose()
        self._background_engine = self._alert_engine = None

    # The hot path: no I/O, no locks, one cached label set per (actor, queue).

    def before_delay_message(self, broker: dramatiq.Broker, message: Any) -> None:
        """Note when a delayed (or retried) message becomes due, for its wait time."""
        inner = getattr(message, "_message", message)
        inner.options[DUE_OPTION] = inner.options.get("eta")

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        """Start the clocks of ``message`` and make its actor and queue the context of recordings."""
        try:
            inner = message._message
        except AttributeError:
            inner = message
        try:
            labels = self._label_sets[inner.actor_name][inner.queue_name]
        except KeyError:
            labels = self._labels_of(inner.actor_name, inner.queue_name)
        if labels is None:
            return
        due_ms = inner.options.get("opmetrics_due_ms") or inner.message_timestamp  # DUE_OPTION
        # (target, actor, queue, message, labels key, due_ms, started_s): see _InFlight.
        current_actor.set((self, labels[1], labels[2], message, labels[0], due_ms, perf_counter()))

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: Any,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        """Record processing and wait time; remember a failure until its outcome is known."""
        ended_s = perf_counter()
        context = current_actor.get()
        if exception is None and type(context) is tuple and context[3] is message and not message.failed:
            current_actor.set(None)
            # The writer turns these clock readings into the wait and processing times.
            self._append_message((None, context[4], context[5], context[6], ended_s))
            return
        self._after_failure(broker, message, context, exception, ended_s)

    def _after_failure(
        self, broker: dramatiq.Broker, message: Any, context: object, exception: BaseException | None, ended_s: float
    ) -> None:
        failure = None
        if type(context) is _Failure:
            failure = context
            context = failure.in_flight
        if type(context) is not tuple or context[_MESSAGE] is not message:
            # Our before hook did not run for it: a middleware failed before the actor could run.
            return
        if exception is None:
            # A middleware failed the message before the actor could run: the worker skipped it.
            current_actor.set(None)
            self.buffer.append((_SKIPPED, 1.0, context[_LABELS_KEY], time()))
            return
        self._append_message((None, context[_LABELS_KEY], context[_DUE_MS], context[_STARTED_S], ended_s))
        if failure is None:
            failure = _Failure(context)
            current_actor.set(failure)
        failure.error_type = type(exception).__name__
        if failure.requeued:
            self._record_failure(failure, OUTCOME_RETRIED)
        elif message.failed or not self._retries_still_to_run(broker):
            self._record_failure(failure, OUTCOME_FINAL)
        # Otherwise Retries decides after us: after_enqueue (retried) or before_nack (final) records it.

    def after_skip_message(self, broker: dramatiq.Broker, message: Any) -> None:
        """Count a skipped message (it gets no processing or wait time)."""
        if current_actor.get() is not None:
            current_actor.set(None)
        inner = getattr(message, "_message", message)
        try:
            labels = self._label_sets[inner.actor_name][inner.queue_name]
        except KeyError:
            labels = self._labels_of(inner.actor_name, inner.queue_name)
        if labels is not None:
            self.buffer.append((_SKIPPED, 1.0, labels[0], time()))

    def after_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int | None) -> None:
        """Record a failure as retried when ``Retries`` enqueues the message being processed again."""
        context = current_actor.get()
        if context is None:
            return
        failure = context if type(context) is _Failure else None
        in_flight = failure.in_flight if failure is not None else context
        if type(in_flight) is not tuple or in_flight[0] is not self:
            return
        if getattr(in_flight[_MESSAGE], "message_id", None) != message.message_id:
            return
        if failure is None:
            # Retries runs before our after_process_message when it comes later in the middleware list.
            failure = _Failure(in_flight)
            current_actor.set(failure)
        failure.requeued = True
        if failure.error_type is not None:
            self._record_failure(failure, OUTCOME_RETRIED)

    def before_nack(self, broker: dramatiq.Broker, message: Any) -> None:
        """Record a failure as final when its message is rejected (dead-lettered)."""
        context = current_actor.get()
        if type(context) is _Failure and context.in_flight[_MESSAGE] is message and context.error_type is not None:
            self._record_failure(context, OUTCOME_FINAL)

    def _retries_still_to_run(self, broker: dramatiq.Broker) -> bool:
        """Whether a ``Retries`` middleware sees failures after this one (it comes earlier in the list)."""
        for middleware in broker.middleware:
            if middleware is self:
                return False
            if isinstance(middleware, Retries):
                return True
        return False

    def _record_failure(self, failure: _Failure, outcome: str) -> None:
        current_actor.set(None)
        assert failure.error_type is not None
        _, actor, queue = failure.in_flight[:3]
        self.buffer.add_many(samples.error(actor, failure.error_type, queue=queue, outcome=outcome))

    def _labels_of(self, actor: str, queue_name: str) -> _Labels | None:
        """The labels of a message of ``actor`` from ``queue_name``, cached unless folded by the cap (so each
        folded message is counted) or the cache holds as many entries as the cap allows."""
        queue = q_name(queue_name)
        try:
            label_set = samples.message_labels(actor, queue=queue)
        except ValueError as error:
            logger.error("Not measuring messages of actor %r on queue %r: %s.", actor, queue_name, error)
            labels = None
        else:
            labels_key = self.buffer.register_label_set(label_set, _PROCESSING)
            labels = (labels_key, actor, queue)
            if labels_key != label_set.labels_key:
                return labels
        if self._label_sets_cached < self.buffer.label_set_cap.max_label_sets_per_metric:
            self._label_sets_cached += 1
            self._label_sets.setdefault(actor, {})[queue_name] = labels
        return labels
