"""``SampleBuffer``: the bounded in-process buffer between the hot path and the writer.

Worker threads append entries without taking a lock (a :class:`collections.deque` append is atomic); a
single writer thread takes batches out. A batch handed to the writer stays in the buffer (and counts
toward its capacity) until the writer reports it written, so a failed write never loses it. When the
buffer is full, new entries are dropped and counted: memory stays bounded whatever the database does.

An entry is a plain tuple ``(metric_type, value, labels_key, recorded_at_s)`` of two strings and two floats,
with ``recorded_at_s`` in seconds since the epoch (``time.time()``): much cheaper to make per message than a
:class:`~dramatiq_opmetrics.samples.Sample`, and, holding no container, untracked by Python's garbage
collector, so a full buffer costs no collection time. The buffer keeps the
:class:`~dramatiq_opmetrics.labels.LabelSet` of every ``labels_key`` it has seen in :attr:`SampleBuffer.label_sets`
(label sets are few and bounded). :meth:`SampleBuffer.add_many` takes ``Sample`` objects.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable

from .labels import LabelSet
from .samples import Sample

#: How many samples a buffer holds before it drops new ones (about 120 bytes each).
DEFAULT_BUFFER_CAPACITY = 100_000
#: How many samples make a batch: the writer is woken when this many are waiting.
DEFAULT_BATCH_SIZE = 5_000

#: One buffered sample: metric type (its value), value, labels key and time in seconds since the epoch.
Entry = tuple[str, float, str, float]


class SampleBuffer:
    """A bounded, thread-safe buffer of samples waiting to be written.

    Appending is cheap and never blocks. When the buffer holds ``capacity`` samples, new ones are dropped
    and counted in :attr:`dropped_total`; the writer reports (and records) the drops.

    Example::

        buffer = SampleBuffer(capacity=10_000)
        buffer.add_many(samples.queue_depth("default", 12))  # a sink for background samplers

    Parameters:
      capacity(int): the most samples held, including a batch being written; default
        :data:`DEFAULT_BUFFER_CAPACITY`.
      batch_size(int): when this many samples are waiting, :attr:`batch_ready` is set to wake the writer;
        default :data:`DEFAULT_BATCH_SIZE`.

    Raises:
      ValueError: if ``capacity`` or ``batch_size`` is not a positive integer.
    """

    def __init__(self, capacity: int = DEFAULT_BUFFER_CAPACITY, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        for name, value in (("capacity", capacity), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.capacity = capacity
        self.batch_size = batch_size
        self._queue: deque[Entry] = deque()
        #: The label set of every labels key added, for the writer.
        self.label_sets: dict[str, LabelSet] = {}
        self._reset_state()

    def _reset_state(self) -> None:
        self._queue.clear()
        #: The batch taken by the writer and not yet written.
        self._pending: list[Entry] = []
        #: Below this many queued entries, two more fit (kept up to date with the pending batch).
        self._pair_room = self.capacity - 1
        self._lock = threading.Lock()
        #: Set when a batch is waiting (or a flush is asked for); the writer waits on it and clears it.
        self.batch_ready = threading.Event()
        #: Samples dropped since this buffer was made because it was full.
        self.dropped_total = 0
        self._dropped_unrecorded = 0
        self._dropped_unwarned = 0

    def reset_after_fork(self) -> None:
        """Forget everything in a freshly forked child: the parent writes its own samples."""
        self._reset_state()

    def __len__(self) -> int:
        """Samples held, including a batch being written."""
        return len(self._queue) + len(self._pending)

    def append(self, entry: Entry) -> None:
        """Add one entry, or drop and count it when the buffer is full. Never blocks."""
        queue = self._queue
        if len(queue) + len(self._pending) >= self.capacity:
            self._count_drops(1)
            return
        queue.append(entry)
        if len(queue) >= self.batch_size and not self.batch_ready.is_set():
            self.batch_ready.set()

    def append_pair(self, first: Entry, second: Entry) -> None:
        """Add two entries (a message's wait and processing time), or drop and count both. Never blocks."""
        queue = self._queue
        if len(queue) >= self._pair_room:
            self._count_drops(2)
            return
        queue.append(first)
        queue.append(second)
        if len(queue) >= self.batch_size and not self.batch_ready.is_set():
            self.batch_ready.set()

    def extend(self, entries: tuple[Entry, ...] | list[Entry]) -> None:
        """Add several entries at once; those that do not fit are dropped and counted."""
        queue = self._queue
        room = self.capacity - len(queue) - len(self._pending)
        if room >= len(entries):
            queue.extend(entries)
        else:
            if room > 0:
                queue.extend(entries[:room])
            self._count_drops(len(entries) - max(room, 0))
        if len(queue) >= self.batch_size and not self.batch_ready.is_set():
            self.batch_ready.set()

    def add_many(self, samples: Iterable[Sample]) -> None:
        """Add :class:`~dramatiq_opmetrics.samples.Sample` objects (a sink for background samplers)."""
        entries: list[Entry] = []
        for sample in samples:
            self.label_sets[sample.label_set.labels_key] = sample.label_set
            entries.append(
                (sample.metric_type.value, sample.value, sample.label_set.labels_key, sample.recorded_at.timestamp())
            )
        self.extend(entries)

    def register_label_set(self, label_set: LabelSet) -> str:
        """Remember ``label_set`` for the writer and return its ``labels_key`` (for entries added directly)."""
        self.label_sets[label_set.labels_key] = label_set
        return label_set.labels_key

    def _count_drops(self, count: int) -> None:
        with self._lock:
            self.dropped_total += count
            self._dropped_unrecorded += count
            self._dropped_unwarned += count

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
                self._pair_room = self.capacity - len(pending) - 1
            return list(self._pending)

    def commit_batch(self) -> None:
        """Remove the batch returned by :meth:`take_batch`: it has been written."""
        with self._lock:
            self._pending = []
            self._pair_room = self.capacity - 1

    def unrecorded_drops(self) -> int:
        """Samples dropped and not yet recorded as a ``dropped_samples`` sample."""
        return self._dropped_unrecorded

    def mark_drops_recorded(self, count: int) -> None:
        """``count`` drops have been written as a ``dropped_samples`` sample."""
        with self._lock:
            self._dropped_unrecorded -= count

    def take_unwarned_drops(self) -> int:
        """Samples dropped since the last call (for one warning per interval)."""
        with self._lock:
            count, self._dropped_unwarned = self._dropped_unwarned, 0
            return count
