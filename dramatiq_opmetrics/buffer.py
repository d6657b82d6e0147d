"""``SampleBuffer``: the bounded in-process buffer between the hot path and the writer.

Worker threads append entries without taking a lock (a :class:`collections.deque` append is atomic); a
single writer thread takes batches out. A batch handed to the writer stays in the buffer (and counts
toward its capacity) until the writer reports it written, so a failed write never loses it. When the
buffer is full, new entries are dropped and their samples counted: memory stays bounded whatever the
database does. Drops are logged by the thread that drops (at most one warning per
``warning_interval_s``, a clock read on the drop path only), so a writer blocked on a silent database
cannot hide them.

Entries are plain tuples of strings and numbers, much cheaper to make than a
:class:`~dramatiq_opmetrics.samples.Sample` and, holding no container, untracked by Python's garbage
collector, so a full buffer costs no collection time. There are two kinds:

- a sample entry ``(metric_type, value, labels_key, recorded_at_s)``, one sample, with ``recorded_at_s`` in
  seconds since the epoch (``time.time()``);
- a message entry ``(None, labels_key, due_ms, started_s, ended_s)``, the ``wait_time`` and
  ``processing_time`` samples of one processed message: ``due_ms`` is when it became due (milliseconds
  since the epoch), ``started_s`` and ``ended_s`` are :func:`time.perf_counter` readings; the writer turns
  them into wall-clock times and durations when it writes, which keeps the clocks off the hot path.

The buffer keeps the :class:`~dramatiq_opmetrics.labels.LabelSet` of every ``labels_key`` added in
:attr:`SampleBuffer.label_sets`, for the writer. Its :class:`~dramatiq_opmetrics.cardinality.LabelSetCap`
bounds them: beyond so many label sets per metric type, samples are added under the overflow label set.
:meth:`SampleBuffer.add_many` takes ``Sample`` objects.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence

from .cardinality import LabelSetCap
from .labels import LabelSet
from .samples import Sample

#: How many entries a buffer holds before it drops new ones (at most about 170 bytes each).
DEFAULT_BUFFER_CAPACITY = 100_000
#: How many entries make a batch: the writer is woken when this many are waiting.
DEFAULT_BATCH_SIZE = 5_000
#: At most one warning about dropped samples per this many seconds.
DEFAULT_WARNING_INTERVAL_S = 30.0

#: One sample: metric type (its value), value, labels key, time in seconds since the epoch.
SampleEntry = tuple[str, float, str, float]
#: One processed message's wait and processing time: None, labels key, due_ms, started_s, ended_s.
MessageEntry = tuple[None, str, float, float, float]
#: A buffered entry.
Entry = SampleEntry | MessageEntry

logger = logging.getLogger(__name__)


def sample_count(entries: Iterable[Entry]) -> int:
    """How many samples ``entries`` hold (a message entry holds two)."""
    return sum(2 if entry[0] is None else 1 for entry in entries)


class SampleBuffer:
    """A bounded, thread-safe buffer of samples waiting to be written.

    Appending is cheap and never blocks. When the buffer holds ``capacity`` entries, new ones are dropped
    and their samples counted in :attr:`dropped_total`; the dropping thread logs one warning per
    ``warning_interval_s`` (:meth:`warn_about_drops` logs what is left), and the writer records the drops
    as a ``dropped_samples`` sample.

    Example::

        buffer = SampleBuffer(capacity=10_000)
        buffer.add_many(samples.queue_depth("default", 12))  # a sink for background samplers

    Parameters:
      capacity(int): the most entries held, including a batch being written; default
        :data:`DEFAULT_BUFFER_CAPACITY`.
      batch_size(int): the most entries written at once; when this many are waiting, :attr:`batch_ready`
        is set to wake the writer; default :data:`DEFAULT_BATCH_SIZE`.
      warning_interval_s(float): at most one warning about dropped samples per this many seconds; default
        :data:`DEFAULT_WARNING_INTERVAL_S` (30; a :class:`~dramatiq_opmetrics.writer.BackgroundWriter` sets
        it to its own).
      label_set_cap(LabelSetCap | None): how many label sets per metric type are kept; default
        ``LabelSetCap()`` (:data:`~dramatiq_opmetrics.cardinality.DEFAULT_MAX_LABEL_SETS_PER_METRIC`).

    Raises:
      ValueError: if ``capacity`` or ``batch_size`` is not a positive integer.
    """

    def __init__(
        self,
        capacity: int = DEFAULT_BUFFER_CAPACITY,
        batch_size: int = DEFAULT_BATCH_SIZE,
        warning_interval_s: float = DEFAULT_WARNING_INTERVAL_S,
        *,
        label_set_cap: LabelSetCap | None = None,
    ) -> None:
        for name, value in (("capacity", capacity), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.capacity = capacity
        self.batch_size = batch_size
        #: At most one drop warning per this many seconds.
        self.warning_interval_s = warning_interval_s
        self._queue: deque[Entry] = deque()
        #: The label set of every labels key added, for the writer (bounded by :attr:`label_set_cap`).
        self.label_sets: dict[str, LabelSet] = {}
        #: Folds the label sets beyond its cap per metric type into the overflow label set.
        self.label_set_cap = LabelSetCap() if label_set_cap is None else label_set_cap
        self._reset_state()

    def _reset_state(self) -> None:
        self._queue.clear()
        #: The batch taken by the writer and not yet written.
        self._pending: list[Entry] = []
        #: Entries that may still be queued: the capacity less the pending batch.
        self._room = self.capacity
        self._lock = threading.Lock()
        #: Set when a batch is waiting (or a flush is asked for); the writer waits on it and clears it.
        self.batch_ready = threading.Event()
        #: Samples dropped since this buffer was made because it was full.
        self.dropped_total = 0
        self._dropped_unrecorded = 0
        self._dropped_unwarned = 0
        self._next_warning_at = 0.0
        #: How many batches :meth:`commit_batch` removed: tells one pending batch from the next.
        self.batch_generation = 0

    def reset_after_fork(self) -> None:
        """Forget everything in a freshly forked child: the parent writes its own samples."""
        self._reset_state()

    def __len__(self) -> int:
        """Entries held, including a batch being written."""
        return len(self._queue) + len(self._pending)

    def sample_count(self) -> int:
        """Samples held, including a batch being written (walks the buffer: not for the hot path)."""
        return sample_count([*self._pending, *self._queue])

    def append(self, entry: SampleEntry) -> None:
        """Add one sample entry, or drop and count it when the buffer is full. Never blocks."""
        queue = self._queue
        if len(queue) >= self._room:
            self._count_drops(1)
            return
        queue.append(entry)
        if len(queue) >= self.batch_size and not self.batch_ready.is_set():
            self.batch_ready.set()

    def append_message(self, entry: MessageEntry) -> None:
        """Add one message entry (two samples), or drop and count both when the buffer is full."""
        queue = self._queue
        if len(queue) >= self._room:
            self._count_drops(2)
            return
        queue.append(entry)
        if len(queue) >= self.batch_size and not self.batch_ready.is_set():
            self.batch_ready.set()

    def extend(self, entries: Sequence[SampleEntry]) -> None:
        """Add several sample entries at once; those that do not fit are dropped and counted."""
        queue = self._queue
        room = self._room - len(queue)
        if room >= len(entries):
            queue.extend(entries)
        else:
            if room > 0:
                queue.extend(entries[:room])
            self._count_drops(len(entries) - max(room, 0))
        if len(queue) >= self.batch_size and not self.batch_ready.is_set():
            self.batch_ready.set()

    def add_many(self, samples: Iterable[Sample]) -> None:
        """Add :class:`~dramatiq_opmetrics.samples.Sample` objects (a sink for background samplers); those
        with a label set beyond the cap of their metric type go under the overflow label set."""
        entries: list[SampleEntry] = []
        admit = self.label_set_cap.admit
        label_sets = self.label_sets
        for sample in samples:
            metric_type = sample.metric_type.value
            label_set = admit(metric_type, sample.label_set)
            label_sets[label_set.labels_key] = label_set
            entries.append((metric_type, sample.value, label_set.labels_key, sample.recorded_at.timestamp()))
        self.extend(entries)

    def register_label_set(self, label_set: LabelSet, metric_type: str | None = None, samples: int = 1) -> str:
        """Remember ``label_set`` for the writer and return the ``labels_key`` to add entries with directly.

        With ``metric_type`` (a :class:`~dramatiq_opmetrics.metric_types.MetricType` value), a label set beyond
        that type's cap is folded: the overflow label set's key is returned and ``samples`` are counted as
        folded. Without, ``label_set`` is kept uncapped (for the package's own few label sets).
        """
        if metric_type is not None:
            label_set = self.label_set_cap.admit(metric_type, label_set, samples)
        self.label_sets[label_set.labels_key] = label_set
        return label_set.labels_key

    def _count_drops(self, count: int) -> None:
        with self._lock:
            self.dropped_total += count
            self._dropped_unrecorded += count
            self._dropped_unwarned += count
        self.warn_about_drops()

    def warn_about_drops(self) -> None:
        """Log the samples dropped since the last warning, unless one was logged in the last interval.

        Called on every drop and by the writer's watchdog (for the drops after the last warning).
        """
        if not self._dropped_unwarned:
            return
        now = time.monotonic()
        with self._lock:
            if now < self._next_warning_at or not self._dropped_unwarned:
                return
            dropped, self._dropped_unwarned = self._dropped_unwarned, 0
            self._next_warning_at = now + self.warning_interval_s
        logger.warning(
            "Dropped %d metric samples because the buffer was full (capacity %d): the metrics database is"
            " unreachable or slower than the samples arrive.",
            dropped,
            self.capacity,
        )

    def take_batch(self) -> list[Entry]:
        """The next batch to write (at most :attr:`batch_size` entries), for the single writer thread.

        The batch stays in the buffer until :meth:`commit_batch`; until then every call returns the same
        batch, so a write that failed is retried with exactly the same samples.
        """
        with self._lock:
            if not self._pending:
                queue = self._queue
                pending = self._pending
                for _ in range(min(self.batch_size, len(queue))):
                    pending.append(queue.popleft())
                self._room = self.capacity - len(pending)
            return list(self._pending)

    def commit_batch(self) -> None:
        """Remove the batch returned by :meth:`take_batch`: it has been written."""
        with self._lock:
            self._pending = []
            self._room = self.capacity
            self.batch_generation += 1

    def unrecorded_drops(self) -> int:
        """Samples dropped and not yet recorded as a ``dropped_samples`` sample."""
        return self._dropped_unrecorded

    def mark_drops_recorded(self, count: int) -> None:
        """``count`` drops have been written as a ``dropped_samples`` sample."""
        with self._lock:
            self._dropped_unrecorded -= count

    def unwarned_drops(self) -> int:
        """Samples dropped since the last warning."""
        return self._dropped_unwarned
