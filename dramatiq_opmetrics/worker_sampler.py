"""``WorkerSampler``: each worker process records its worker threads and busy threads once per interval.

Unlike queue depth, these samples are not claimed once for the fleet: every worker process records its own
``worker_threads`` and ``busy_threads`` at each wall-clock multiple of the interval (the queue depth
interval, so both signals share their intervals). A process that stops (SIGTERM: sampling stops when the
worker's shutdown begins) or dies (SIGKILL) simply records no more, so it drops out of the series within
one interval, and in any interval:

- the number of ``worker_threads`` samples is the number of worker processes online;
- their sum is the number of threads online (filter by the ``queues`` label for the threads of a queue);
- the sum of ``busy_threads`` over the sum of ``worker_threads`` is the utilisation.

Busy threads are read from the :class:`dramatiq.Worker`'s work queue rather than counted in the message
hooks, so the hot path pays nothing: a worker thread takes a message off ``worker.work_queue`` and marks it
done (``task_done``) when it has processed it, so the messages taken and not done yet
(``unfinished_tasks`` minus the messages still queued, read together under the queue's lock) are the
threads processing one at this moment.

Labels: ``host`` (:func:`socket.gethostname`) and ``queues``, the canonical names of the queues the process
consumes, sorted and joined by ``,`` (:func:`queues_label`). A fleet has a few hosts and a few queue
combinations, so the label sets stay few; the process id is deliberately not a label (it would make a new
label set at each restart).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import socket
from collections.abc import Iterable
from typing import Any

from dramatiq.common import q_name

from . import samples
from .interval_claims import IntervalThread, interval_start
from .labels import MAX_VALUE_LENGTH
from .queue_depth_sampler import (
    DEFAULT_QUEUE_DEPTH_INTERVAL_S,
    STOP_TIMEOUT_S,
    Sink,
    check_interval_s,
    describe_error,
)

#: The ``queues`` label of a process that consumes no queue.
NO_QUEUES = "(none)"
#: The ``host`` label when the host has no name.
UNKNOWN_HOST = "unknown"

logger = logging.getLogger(__name__)


def queues_label(queues: Iterable[str], max_length: int = MAX_VALUE_LENGTH) -> str:
    """The ``queues`` label of a process consuming ``queues``: canonical names, sorted, joined by ``,``.

    Longer than ``max_length`` characters (default the longest label value, 200), it keeps the first names
    that fit and ends with ``,+N more #digest`` (8 hex digits of the full list's SHA-1), so two different
    long lists still get different labels.
    """
    names = sorted({q_name(name) for name in queues})
    joined = ",".join(names)
    if not names:
        return NO_QUEUES
    if len(joined) <= max_length:
        return joined
    digest = hashlib.sha1(joined.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    kept: list[str] = []
    for name in names:
        suffix = f",+{len(names) - len(kept) - 1} more #{digest}"
        if len(",".join([*kept, name])) + len(suffix) > max_length:
            break
        kept.append(name)
    return ",".join(kept) + f",+{len(names) - len(kept)} more #{digest}"


def host_label(host: str | None = None) -> str:
    """The ``host`` label: ``host`` or this machine's name, cut to the longest label value."""
    name = (host if host is not None else socket.gethostname()).strip()
    return name[:MAX_VALUE_LENGTH] if name else UNKNOWN_HOST


def worker_thread_count(worker: Any) -> int:
    """The worker threads of ``worker`` that are running (its configured number if it does not list them)."""
    threads = getattr(worker, "workers", None)
    if isinstance(threads, list):
        return sum(1 for thread in threads if thread.is_alive())
    return int(worker.worker_threads)


def busy_thread_count(worker: Any) -> int | None:
    """How many of ``worker``'s threads are processing a message now, or None if it has no work queue."""
    work_queue = getattr(worker, "work_queue", None)
    if work_queue is None or not hasattr(work_queue, "unfinished_tasks"):
        return None
    with work_queue.mutex:  # the two numbers of one moment: a thread may take or finish a message meanwhile
        return max(int(work_queue.unfinished_tasks) - len(work_queue.queue), 0)


def consumed_queues(worker: Any) -> list[str]:
    """The canonical names of the queues ``worker`` consumes: its consumers', else the declared ones."""
    consumers = getattr(worker, "consumers", None)
    if consumers:
        return sorted({q_name(name) for name in consumers})
    whitelist = getattr(worker, "consumer_whitelist", None)
    if whitelist:
        return sorted({q_name(name) for name in whitelist})
    return sorted({q_name(name) for name in worker.broker.get_declared_queues()})


class WorkerSampler:
    """Records one ``worker_threads`` and one ``busy_threads`` sample of this worker process per interval.

    The :class:`~dramatiq_opmetrics.OpMetrics` middleware runs one in every worker process, with its queue
    depth interval (``queue_depth_interval_s=0`` turns both off): it starts when the worker has booted and
    stops when the worker's shutdown begins. See the module docstring for what the samples tell.

    Example::

        sampler = WorkerSampler(worker, buffer.add_many, interval_s=15)
        sampler.start()
        ...
        sampler.stop()

    Parameters:
      worker(dramatiq.Worker): this process's worker.
      sink(callable): called with the two samples of each interval, from the sampling thread.
      interval_s(float): seconds between samples, aligned to wall-clock multiples; default
        :data:`~dramatiq_opmetrics.queue_depth_sampler.DEFAULT_QUEUE_DEPTH_INTERVAL_S` (15).
      host(str | None): the ``host`` label; default :func:`socket.gethostname`.

    Raises:
      ValueError: if ``interval_s`` is not a number of at least
        :data:`~dramatiq_opmetrics.queue_depth_sampler.MIN_QUEUE_DEPTH_INTERVAL_S`.
    """

    def __init__(
        self,
        worker: Any,
        sink: Sink,
        *,
        interval_s: float = DEFAULT_QUEUE_DEPTH_INTERVAL_S,
        host: str | None = None,
    ) -> None:
        self.worker = worker
        self.sink = sink
        self.interval_s = check_interval_s(interval_s)
        self.host = host_label(host)
        self._thread = IntervalThread("opmetrics-worker-sampler", self.interval_s, self.sample_logging_errors)

    def sample(self) -> list[samples.Sample]:
        """Read the threads and busy threads now and pass their two samples to the sink; return them.

        A worker without a work queue to read records ``busy_threads`` as 0.
        """
        threads = worker_thread_count(self.worker)
        busy = min(busy_thread_count(self.worker) or 0, threads)
        label = queues_label(consumed_queues(self.worker))
        new_samples = samples.worker_threads(threads, busy, host=self.host, queues=label)
        self.sink(new_samples)
        return new_samples

    def sample_logging_errors(self, at: dt.datetime | None = None) -> list[samples.Sample] | None:
        """Like :meth:`sample`, but an error is logged (one warning) and the interval skipped."""
        try:
            return self.sample()
        except Exception as error:
            start = interval_start(at or dt.datetime.now(dt.UTC), self.interval_s)
            logger.warning(
                "Worker sampling skipped the interval starting %s: %s", start.isoformat(), describe_error(error)
            )
            logger.debug("Worker sampling failed.", exc_info=True)
            return None

    def start(self) -> None:
        """Start sampling in a daemon thread (once), from the next interval start on."""
        self._thread.start()

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop the sampling thread: this process records no more samples."""
        self._thread.stop(timeout_s)
