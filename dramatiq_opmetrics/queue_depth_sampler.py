"""``QueueDepthSampler``: fleet-wide queue depth (one sample per queue and state) and oldest-message age (one
per queue) per interval."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Iterable, Sequence

import dramatiq
from sqlalchemy import Engine

from . import samples
from .interval_claims import (
    DatabaseIntervalClaim,
    IntervalClaim,
    LocalIntervalClaim,
    RedisIntervalClaim,
    interval_start,
    run_at_interval_starts,
)
from .queue_depth import (
    broker_identity,
    canonical_queue_names,
    check_queue_names,
    depth_reader_for,
    depth_samples,
    oldest_age_samples,
)

#: Seconds between two queue depth samples of the fleet.
DEFAULT_QUEUE_DEPTH_INTERVAL_S = 15.0
#: The shortest interval accepted, in seconds.
MIN_QUEUE_DEPTH_INTERVAL_S = 0.1
#: The longest interval accepted, in seconds (a day).
MAX_QUEUE_DEPTH_INTERVAL_S = 86_400.0
#: Seconds :meth:`QueueDepthSampler.stop` waits for the sampling thread to finish.
STOP_TIMEOUT_S = 5.0

#: Receives the samples of one sampling pass (a buffer's ``add_many``, or a function writing to the database).
Sink = Callable[[Sequence[samples.Sample]], object]

logger = logging.getLogger(__name__)


def check_interval_s(interval_s: object) -> float:
    """Return ``interval_s`` as a float if it is a number from :data:`MIN_QUEUE_DEPTH_INTERVAL_S` to
    :data:`MAX_QUEUE_DEPTH_INTERVAL_S`.

    Raises:
      ValueError: naming the problem otherwise.
    """
    if isinstance(interval_s, bool) or not isinstance(interval_s, int | float):
        raise ValueError(f"interval_s must be a number of seconds, got {interval_s!r}")
    if not MIN_QUEUE_DEPTH_INTERVAL_S <= interval_s <= MAX_QUEUE_DEPTH_INTERVAL_S:
        raise ValueError(
            f"interval_s must be from {MIN_QUEUE_DEPTH_INTERVAL_S} to {MAX_QUEUE_DEPTH_INTERVAL_S:g} s,"
            f" got {interval_s!r}"
        )
    return float(interval_s)


def describe_error(error: BaseException) -> str:
    """``ClassName: first line of the message``, for one-line logs and command line errors."""
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"


def fleet_claim(broker: dramatiq.Broker, engine: Engine | None) -> IntervalClaim | None:
    """How the processes of ``broker``'s fleet claim an interval: a ``SET NX PX`` key on the broker's Redis
    for a Redis broker (one round trip, no database connection), else a row in the metrics database
    ``engine``; None without either."""
    from dramatiq.brokers.redis import RedisBroker

    if isinstance(broker, RedisBroker):
        return RedisIntervalClaim(broker.client, broker.namespace)
    if engine is not None:
        return DatabaseIntervalClaim(engine)
    return None


class QueueDepthSampler:
    """Samples the depth of a broker's queues for the whole fleet, in a background thread.

    Every process of the fleet may run a sampler: at each wall-clock multiple of ``interval_s`` (so every
    host agrees on the intervals) each one tries to claim the interval, and only the one that claims it
    reads the depths and hands ``queue_depth`` samples (labels ``queue`` and ``state``: ``ready``,
    ``delayed``, ``dead`` and, where the broker can tell, ``in_flight``) to ``sink``, with one
    ``oldest_message_age`` sample per queue (seconds since its oldest ready message became due, 0 when it
    has none; Redis and StubBroker only, see :mod:`dramatiq_opmetrics.queue_depth`) read in the same round
    trip. Fifty workers still write one sample per queue and state per interval.

    The claim is a ``SET NX PX`` key in the broker's namespace on a Redis broker, else a row in the metrics
    database's ``opmetrics_interval_claims`` table when ``engine`` is given; without either, every process
    samples on its own (logged once). Reading never changes the broker: see
    :mod:`dramatiq_opmetrics.queue_depth`. A broker whose depth cannot be read is logged once at info level
    and never sampled. A broker or database outage (or a failing ``sink``) is logged once for the interval,
    which is skipped; sampling goes on at the next interval.

    The :class:`~dramatiq_opmetrics.OpMetrics` middleware runs one in every worker process; use the class
    directly to sample elsewhere. Samples are stamped with the time of the read.

    Example::

        sampler = QueueDepthSampler(broker, buffer.add_many, queues=["reports"], engine=engine)
        sampler.start()
        ...
        sampler.stop()

    Parameters:
      broker(dramatiq.Broker): the broker whose queues are sampled.
      sink(callable): called with the list of samples of each pass, from the sampling thread.
      interval_s(float): seconds between samples; default :data:`DEFAULT_QUEUE_DEPTH_INTERVAL_S` (15).
      queues(iterable of str): queues to sample besides the broker's declared ones (a process may not have
        imported every actor module); ``.DQ``/``.XQ`` names count as their canonical queue.
      engine(Engine | None): the metrics database, for the fleet-wide claim on brokers other than Redis.
      claim(IntervalClaim | None): overrides how intervals are claimed.

    Raises:
      ValueError: if ``interval_s`` is not a number from :data:`MIN_QUEUE_DEPTH_INTERVAL_S` to
        :data:`MAX_QUEUE_DEPTH_INTERVAL_S`, or a queue name is not a non-empty string.
    """

    def __init__(
        self,
        broker: dramatiq.Broker,
        sink: Sink,
        *,
        interval_s: float = DEFAULT_QUEUE_DEPTH_INTERVAL_S,
        queues: Iterable[str] = (),
        engine: Engine | None = None,
        claim: IntervalClaim | None = None,
    ) -> None:
        self.broker = broker
        self.sink = sink
        self.interval_s = check_interval_s(interval_s)
        self.extra_queues = check_queue_names(queues)
        self.reader = depth_reader_for(broker)
        self.job = f"queue_depth:{broker_identity(broker)}"
        self.engine = engine
        self.claimer = claim if claim is not None else self._default_claim(engine)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _default_claim(self, engine: Engine | None) -> IntervalClaim:
        claim = fleet_claim(self.broker, engine)
        if claim is not None:
            return claim
        if self.reader is not None:
            logger.info("No metrics database given to the queue depth sampler: every process samples on its own.")
        return LocalIntervalClaim()

    @property
    def supported(self) -> bool:
        """Whether depth can be read from this broker."""
        return self.reader is not None

    def queues(self) -> list[str]:
        """The canonical names of the queues sampled now: the broker's declared queues and the extra ones."""
        return canonical_queue_names(self.broker, self.extra_queues)

    def sample(self, at: dt.datetime | None = None) -> list[samples.Sample] | None:
        """Claim the interval holding ``at`` (default now) and, if claimed, sample it and pass it to the sink.

        Returns the samples given to the sink, or None if another process had claimed the interval or the
        broker is not supported. Broker, database and sink errors propagate.
        """
        if self.reader is None:
            return None
        now = at or dt.datetime.now(dt.UTC)
        if not self.claimer.claim(self.job, interval_start(now, self.interval_s), self.interval_s):
            return None
        snapshot = self.reader.snapshot(self.queues())
        read_at = dt.datetime.now(dt.UTC)  # the ages are measured at the moment the samples are stamped with
        new_samples = depth_samples(snapshot.depths, read_at) + oldest_age_samples(snapshot.oldest_due_ms, read_at)
        if new_samples:
            self.sink(new_samples)
        return new_samples

    def sample_logging_errors(self, at: dt.datetime | None = None) -> list[samples.Sample] | None:
        """Like :meth:`sample`, but an error is logged (one warning) and the interval skipped."""
        at = at or dt.datetime.now(dt.UTC)
        try:
            return self.sample(at)
        except Exception as error:
            logger.warning(
                "Queue depth sampling skipped the interval starting %s: %s",
                interval_start(at, self.interval_s).isoformat(),
                describe_error(error),
            )
            logger.debug("Queue depth sampling failed.", exc_info=True)
            return None

    def start(self) -> None:
        """Start sampling in a daemon thread (once); an unsupported broker is logged once and not sampled."""
        if self.reader is None:
            logger.info("Queue depth is not supported for %s: it will not be sampled.", type(self.broker).__name__)
            return
        if self._thread is not None:
            return
        # An event per thread: a thread that stop() left blocked never sees a later start() as its own.
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(self._stop,), name="opmetrics-queue-depth", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop the sampling thread and close the reader's own connections.

        Waits at most ``timeout_s`` seconds for a pass in progress. A thread still blocked then (on a
        broker or database that does not answer) is left to end on its own: it is a daemon and samples no
        more. The sampling thread closes the reader itself when it ends (readers are not shared across
        threads).
        """
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is None:
            if self.reader is not None:
                self.reader.close()
            return
        thread.join(timeout_s)
        if thread.is_alive():
            logger.info("The queue depth sampler is still in a pass after %g s; leaving it to end.", timeout_s)

    def _run(self, stop: threading.Event) -> None:
        try:
            run_at_interval_starts(stop, self.interval_s, self.sample_logging_errors)
        finally:
            if self.reader is not None:
                self.reader.close()
