"""The bounded sample buffer: cheap appends, drops counted when full, batches kept until written."""

from __future__ import annotations

import gc
import threading
import tracemalloc
from datetime import UTC, datetime

import pytest

from dramatiq_opmetrics import samples
from dramatiq_opmetrics.buffer import SampleBuffer


def entry(i: int) -> tuple[str, float, str, float]:
    return ("processing_time", float(i), "actor:a|queue:q", 1_700_000_000.0 + i)


def message(i: int) -> tuple[None, str, float, float, float]:
    return (None, "actor:a|queue:q", 1_700_000_000_000.0 + i, 10.0 + i, 10.5 + i)


def test_buffered_entries_are_not_tracked_by_the_garbage_collector() -> None:
    buffer = SampleBuffer()
    buffer.append_message((None, "actor:a|queue:q", float(int(1e12)), 1.0 + len(buffer), 2.5))
    buffer.append(("wait_time", float(len(buffer)), "actor:a|queue:q", 1.0))
    gc.collect()
    assert not any(gc.is_tracked(e) for e in buffer.take_batch())


def test_entries_are_taken_in_batches_in_the_order_they_were_added() -> None:
    buffer = SampleBuffer(capacity=100, batch_size=4)
    buffer.extend([entry(i) for i in range(10)])
    assert [e[1] for e in buffer.take_batch()] == [0.0, 1.0, 2.0, 3.0]
    buffer.commit_batch()
    assert [e[1] for e in buffer.take_batch()] == [4.0, 5.0, 6.0, 7.0]
    buffer.commit_batch()
    assert [e[1] for e in buffer.take_batch()] == [8.0, 9.0]
    buffer.commit_batch()
    assert buffer.take_batch() == []
    assert len(buffer) == 0


def test_a_batch_not_committed_is_handed_out_again_and_still_counts_toward_capacity() -> None:
    buffer = SampleBuffer(capacity=6, batch_size=4)
    buffer.extend([entry(i) for i in range(6)])
    first = buffer.take_batch()
    assert buffer.take_batch() == first  # the write failed: the same samples are retried
    assert len(buffer) == 6
    buffer.append(entry(99))
    assert buffer.dropped_total == 1
    buffer.commit_batch()
    assert len(buffer) == 2
    buffer.append_message(message(7))
    assert len(buffer) == 3
    assert buffer.dropped_total == 1


def test_a_full_buffer_drops_new_samples_and_counts_them() -> None:
    buffer = SampleBuffer(capacity=5, batch_size=2)
    for i in range(3):
        buffer.append(entry(i))
    buffer.append_message(message(3))
    buffer.extend([entry(20), entry(21), entry(22)])  # one fits
    buffer.append_message(message(10))  # does not fit: its two samples are dropped
    assert len(buffer) == 5
    assert buffer.dropped_total == 4
    assert buffer.unrecorded_drops() == 4
    buffer.mark_drops_recorded(4)
    assert buffer.unrecorded_drops() == 0
    assert buffer.dropped_total == 4


def test_batch_ready_is_set_when_a_batch_is_waiting() -> None:
    buffer = SampleBuffer(capacity=100, batch_size=3)
    buffer.append_message(message(1))
    buffer.append(entry(2))
    assert not buffer.batch_ready.is_set()
    buffer.append(entry(3))
    assert buffer.batch_ready.is_set()


def test_add_many_takes_samples_and_remembers_their_label_sets() -> None:
    buffer = SampleBuffer()
    at = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    built = samples.queue_depth("default", 12, state="ready", recorded_at=at)
    buffer.add_many(built)
    [(metric_type, value, labels_key, recorded_at_s)] = buffer.take_batch()
    assert (metric_type, value, recorded_at_s) == ("queue_depth", 12, at.timestamp())
    assert buffer.label_sets[labels_key] == built[0].label_set


def test_concurrent_appends_lose_nothing_below_capacity() -> None:
    buffer = SampleBuffer(capacity=1_000_000, batch_size=1_000)
    taken: list[object] = []
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set() or len(buffer):
            taken.extend(buffer.take_batch())
            buffer.commit_batch()

    drainer = threading.Thread(target=drain)
    drainer.start()
    appenders = [
        threading.Thread(target=lambda: [buffer.append_message(message(i)) for i in range(20_000)]) for _ in range(4)
    ]
    for thread in appenders:
        thread.start()
    for thread in appenders:
        thread.join()
    stop.set()
    drainer.join()
    assert len(taken) == 4 * 20_000
    assert buffer.dropped_total == 0


def test_memory_stays_bounded_however_many_samples_overflow() -> None:
    buffer = SampleBuffer(capacity=10_000, batch_size=1_000)
    gc.collect()
    tracemalloc.start()
    try:
        for i in range(10_000):
            buffer.append_message(message(i))
        full = tracemalloc.get_traced_memory()[0]
        for i in range(200_000):
            buffer.append_message(message(i))
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(buffer) == 10_000
    assert buffer.dropped_total == 2 * 200_000
    assert after - full < 64 * 1024


def test_reset_after_fork_forgets_the_parents_samples() -> None:
    buffer = SampleBuffer(capacity=10, batch_size=5)
    buffer.extend([entry(i) for i in range(12)])
    buffer.take_batch()
    buffer.reset_after_fork()
    assert len(buffer) == 0
    assert buffer.dropped_total == 0
    assert buffer.take_batch() == []


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "10"])
def test_a_capacity_or_batch_size_that_is_not_a_positive_integer_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="capacity must be a positive integer"):
        SampleBuffer(capacity=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        SampleBuffer(batch_size=bad)  # type: ignore[arg-type]
