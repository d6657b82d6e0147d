from __future__ import annotations

import datetime as dt
import itertools
import socket
import threading
from collections.abc import Iterator, Sequence

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from raw_samples import stored_worker_samples
from sqlalchemy.engine import URL
from waiting import wait_until

from dramatiq_opmetrics import OpMetrics
from dramatiq_opmetrics.database import make_engine
from dramatiq_opmetrics.interval_claims import interval_start
from dramatiq_opmetrics.labels import MAX_VALUE_LENGTH, make_label_set
from dramatiq_opmetrics.metric_types import MetricType
from dramatiq_opmetrics.migrate import upgrade
from dramatiq_opmetrics.samples import Sample
from dramatiq_opmetrics.worker_sampler import NO_QUEUES, WorkerSampler, queues_label


class Collect:
    """A sink that keeps every pass it is given."""

    def __init__(self) -> None:
        self.passes: list[list[Sample]] = []

    def __call__(self, new_samples: Sequence[Sample]) -> None:
        self.passes.append(list(new_samples))

    def values(self, index: int = -1) -> dict[MetricType, float]:
        return {sample.metric_type: sample.value for sample in self.passes[index]}


@pytest.fixture
def blocking_worker() -> Iterator[tuple[dramatiq.Worker, dramatiq.Actor[[], None], threading.Event]]:
    """A real 3-thread Worker on a StubBroker whose actor ``hold`` blocks until the event is set."""
    broker = StubBroker()
    release = threading.Event()

    @dramatiq.actor(broker=broker, queue_name="holding", max_retries=0)
    def hold() -> None:
        release.wait(10)

    broker.declare_queue("other.DQ")
    worker = dramatiq.Worker(broker, worker_threads=3, worker_timeout=20)
    worker.start()
    try:
        yield worker, hold, release
    finally:
        release.set()
        worker.stop()
        broker.close()


def test_a_pass_records_the_worker_threads_and_the_ones_processing_a_message(
    blocking_worker: tuple[dramatiq.Worker, dramatiq.Actor[[], None], threading.Event],
) -> None:
    worker, hold, release = blocking_worker
    sink = Collect()
    sampler = WorkerSampler(worker, sink, host="web-1")

    made = sampler.sample()
    assert sink.values() == {MetricType.WORKER_THREADS: 3, MetricType.BUSY_THREADS: 0}
    assert {sample.label_set.labels_key for sample in made} == {"host:web-1|queues:holding,other"}

    hold.send()
    hold.send()
    wait_until(lambda: sampler.sample()[1].value == 2, what="two busy threads")
    assert sink.values() == {MetricType.WORKER_THREADS: 3, MetricType.BUSY_THREADS: 2}

    release.set()
    wait_until(lambda: sampler.sample()[1].value == 0, what="no busy thread")


def test_the_host_label_is_the_machines_name_by_default(
    blocking_worker: tuple[dramatiq.Worker, dramatiq.Actor[[], None], threading.Event],
) -> None:
    worker, _, _ = blocking_worker
    made = WorkerSampler(worker, Collect()).sample()
    assert made[0].label_set.labels["host"] == socket.gethostname()


def test_the_queues_label_is_the_sorted_canonical_names() -> None:
    assert queues_label(["reports", "emails.DQ", "emails", "default.XQ"]) == "default,emails,reports"
    assert queues_label([]) == NO_QUEUES


def test_a_long_queues_label_is_cut_to_a_label_value_and_stays_distinct() -> None:
    many = [f"queue-number-{i:03}" for i in range(40)]
    first, second = queues_label(many), queues_label([*many, "one-more"])

    assert len(first) <= MAX_VALUE_LENGTH and len(second) <= MAX_VALUE_LENGTH
    assert first.startswith("queue-number-000,queue-number-001,")
    assert first != second
    kept = first.split(",+")[0].split(",")
    assert first.endswith(f",+{40 - len(kept)} more #{first[-8:]}")
    make_label_set({"queues": first})  # storable


def test_the_thread_samples_once_at_each_wall_clock_interval(
    blocking_worker: tuple[dramatiq.Worker, dramatiq.Actor[[], None], threading.Event],
) -> None:
    worker, _, _ = blocking_worker
    sink = Collect()
    sampler = WorkerSampler(worker, sink, interval_s=0.2)
    sampler.start()
    try:
        wait_until(lambda: len(sink.passes) >= 4)
    finally:
        sampler.stop()
    passes = len(sink.passes)
    starts = [interval_start(samples[0].recorded_at, 0.2) for samples in sink.passes]
    assert len(set(starts)) == len(starts)
    assert all(later > earlier for earlier, later in itertools.pairwise(starts))
    assert all(len(samples) == 2 for samples in sink.passes)
    threading.Event().wait(0.5)
    assert len(sink.passes) == passes  # stopped: no more samples


def test_a_bad_interval_is_refused() -> None:
    with pytest.raises(ValueError, match=r"interval_s must be from 0\.1 to 86400 s"):
        WorkerSampler(object(), Collect(), interval_s=0.01)


def test_the_middleware_records_worker_threads_every_interval_until_the_worker_stops(sqlite_url: URL) -> None:
    upgrade(sqlite_url)
    broker = StubBroker()
    broker.add_middleware(OpMetrics(database_url=sqlite_url, flush_interval_s=0.1, queue_depth_interval_s=0.2))

    @dramatiq.actor(broker=broker, queue_name="emails")
    def noop() -> None:
        pass

    engine = make_engine(sqlite_url)
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=20)
    worker.start()
    try:
        wait_until(lambda: len(stored_worker_samples(engine)) >= 6, what="three intervals of worker samples")
    finally:
        worker.stop()
        stopped_at = dt.datetime.now(dt.UTC)
        broker.close()
    try:
        stored = stored_worker_samples(engine)
    finally:
        engine.dispose()
    assert {(kind, queues, value) for kind, _, queues, value, _ in stored} == {
        ("worker_threads", "emails", 2),
        ("busy_threads", "emails", 0),
    }
    assert all(recorded_at <= stopped_at for *_, recorded_at in stored)
    per_interval = {interval_start(recorded_at, 0.2) for *_, recorded_at in stored}
    assert len(stored) == 2 * len(per_interval)  # one of each per interval


def test_the_middleware_records_no_worker_threads_when_sampling_is_off(sqlite_url: URL) -> None:
    upgrade(sqlite_url)
    broker = StubBroker()
    opmetrics = OpMetrics(database_url=sqlite_url, flush_interval_s=0.1, queue_depth_interval_s=0)
    broker.add_middleware(opmetrics)
    broker.declare_queue("emails")
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=20)
    worker.start()
    try:
        assert opmetrics.worker_sampler is None
    finally:
        worker.stop()
        broker.close()
