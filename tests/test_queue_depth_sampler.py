from __future__ import annotations

import datetime as dt
import itertools
import logging
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import dramatiq
import pytest
from conftest import REDIS_URL
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from raw_samples import stored_queue_depths
from sqlalchemy import Engine
from sqlalchemy.engine import URL
from tcp_proxy import TcpProxy
from waiting import wait_until

from dramatiq_opmetrics import OpMetrics
from dramatiq_opmetrics.database import make_engine
from dramatiq_opmetrics.interval_claims import (
    DatabaseIntervalClaim,
    LocalIntervalClaim,
    RedisIntervalClaim,
    interval_start,
)
from dramatiq_opmetrics.metric_types import MetricType
from dramatiq_opmetrics.queue_depth_sampler import DEFAULT_QUEUE_DEPTH_INTERVAL_S, QueueDepthSampler
from dramatiq_opmetrics.samples import Sample

SAMPLER_LOGGER = "dramatiq_opmetrics.queue_depth_sampler"
AT = dt.datetime(2026, 11, 27, 12, 0, 7, tzinfo=dt.UTC)


class Collect:
    """A sink that keeps every pass it is given."""

    def __init__(self) -> None:
        self.passes: list[list[Sample]] = []

    def __call__(self, new_samples: Sequence[Sample]) -> None:
        self.passes.append(list(new_samples))

    def depths(self, index: int = -1) -> dict[tuple[str, str], float]:
        return {
            (s.label_set.labels["queue"], s.label_set.labels["state"]): s.value
            for s in self.passes[index]
            if s.metric_type is MetricType.QUEUE_DEPTH
        }

    def ages(self, index: int = -1) -> dict[str, float]:
        return {
            s.label_set.labels["queue"]: s.value
            for s in self.passes[index]
            if s.metric_type is MetricType.OLDEST_MESSAGE_AGE
        }


def message(queue: str) -> dramatiq.Message[object]:
    return dramatiq.Message(queue_name=queue, actor_name="noop", args=(), kwargs={}, options={})


def skipped_intervals(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The interval starts named by the sampler's 'skipped' warnings, in order."""
    found = []
    for record in caplog.records:
        if record.name == SAMPLER_LOGGER and record.levelno == logging.WARNING:
            match = re.search(r"skipped the interval starting (\S+):", record.getMessage())
            assert match, record.getMessage()
            found.append(match.group(1))
    return found


def test_a_pass_gives_the_sink_one_sample_per_queue_and_state() -> None:
    broker = StubBroker()
    broker.declare_queue("emails")
    for _ in range(3):
        broker.enqueue(message("emails"))
    sink = Collect()

    made = QueueDepthSampler(broker, sink, queues=["reports"]).sample(AT)

    assert made == sink.passes[0]
    assert sink.depths() == {
        ("emails", "ready"): 3,
        ("emails", "delayed"): 0,
        ("emails", "dead"): 0,
        ("emails", "in_flight"): 0,
        ("reports", "ready"): 0,
        ("reports", "delayed"): 0,
        ("reports", "dead"): 0,
        ("reports", "in_flight"): 0,
    }


def test_the_default_interval_is_15_seconds() -> None:
    assert DEFAULT_QUEUE_DEPTH_INTERVAL_S == 15
    assert QueueDepthSampler(StubBroker(), Collect()).interval_s == 15


def test_only_one_process_samples_an_interval_on_redis(
    redis_broker: RedisBroker, unique_queue: Callable[[str], str]
) -> None:
    queue = unique_queue("q")
    redis_broker.declare_queue(queue)
    other_process_broker = RedisBroker(url=REDIS_URL, namespace=redis_broker.namespace)
    other_process_broker.declare_queue(queue)
    first, second = Collect(), Collect()
    try:
        samplers = [QueueDepthSampler(redis_broker, first), QueueDepthSampler(other_process_broker, second)]
        assert isinstance(samplers[0].claimer, RedisIntervalClaim)
        assert samplers[0].sample(AT) is not None
        assert samplers[1].sample(AT + dt.timedelta(seconds=7)) is None
        assert samplers[1].sample(AT + dt.timedelta(seconds=8)) is not None
    finally:
        other_process_broker.client.close()
    assert len(first.passes) == len(second.passes) == 1


def test_sampling_on_redis_registers_no_heartbeat_and_adds_only_its_claim_key(
    redis_broker: RedisBroker, unique_queue: Callable[[str], str]
) -> None:
    queue = unique_queue("q")
    redis_broker.declare_queue(queue)
    for _ in range(3):
        redis_broker.enqueue(message(queue))
    consumer = redis_broker.consume(queue, prefetch=1, timeout=1000)
    assert next(consumer) is not None  # a real worker's heartbeat is there to compare against
    heartbeats = f"{redis_broker.namespace}:__heartbeats__"
    before = redis_broker.client.zrange(heartbeats, 0, -1, withscores=True)
    keys_before = set(redis_broker.client.scan_iter(match=f"{redis_broker.namespace}:*"))
    sampler = QueueDepthSampler(redis_broker, Collect(), interval_s=1)

    for second in range(3):
        assert sampler.sample(AT + dt.timedelta(seconds=second)) is not None

    assert len(before) == 1
    assert redis_broker.client.zrange(heartbeats, 0, -1, withscores=True) == before
    new_keys = set(redis_broker.client.scan_iter(match=f"{redis_broker.namespace}:*")) - keys_before
    assert {key.decode() for key in new_keys} == {
        RedisIntervalClaim(redis_broker.client, redis_broker.namespace).key(
            sampler.job, interval_start(AT + dt.timedelta(seconds=second), 1)
        )
        for second in range(3)
    }


def test_other_brokers_claim_intervals_in_the_metrics_database(engine: Engine) -> None:
    broker = StubBroker()
    broker.declare_queue("emails")
    first, second = Collect(), Collect()
    samplers = [QueueDepthSampler(broker, sink, engine=engine) for sink in (first, second)]
    assert isinstance(samplers[0].claimer, DatabaseIntervalClaim)

    for sampler in samplers:
        sampler.sample(AT)
    for sampler in reversed(samplers):
        sampler.sample(AT + dt.timedelta(seconds=15))

    assert len(first.passes) == len(second.passes) == 1


def test_without_a_database_each_process_samples_on_its_own(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, SAMPLER_LOGGER)
    sampler = QueueDepthSampler(StubBroker(), Collect())
    assert isinstance(sampler.claimer, LocalIntervalClaim)
    assert "every process samples on its own" in caplog.text


def test_the_thread_samples_once_at_each_wall_clock_interval() -> None:
    broker = StubBroker()
    broker.declare_queue("emails")
    sink = Collect()
    sampler = QueueDepthSampler(broker, sink, interval_s=0.2)
    sampler.start()
    try:
        wait_until(lambda: len(sink.passes) >= 4)
    finally:
        sampler.stop()
    starts = [interval_start(samples[0].recorded_at, 0.2) for samples in sink.passes]
    assert len(set(starts)) == len(starts)
    assert all(later > earlier for earlier, later in itertools.pairwise(starts))
    assert all(len(samples) == 4 + 1 for samples in sink.passes)  # 4 states and the oldest-message age


def test_a_broker_outage_is_logged_once_per_interval_and_sampling_resumes_after_it(
    redis_broker: RedisBroker, unique_queue: Callable[[str], str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, SAMPLER_LOGGER)
    redis_address = urlsplit(REDIS_URL)
    proxy = TcpProxy(redis_address.port or 6379, redis_address.hostname or "127.0.0.1")
    proxy.start()
    broker = RedisBroker(url=f"redis://:secret-pw@127.0.0.1:{proxy.port}/0", namespace=redis_broker.namespace)
    broker.client.connection_pool.connection_kwargs["password"] = None  # the real server has no password
    queue = unique_queue("q")
    broker.declare_queue(queue)
    sink = Collect()
    sampler = QueueDepthSampler(broker, sink, interval_s=0.25)
    sampler.start()
    try:
        wait_until(lambda: len(sink.passes) >= 1)
        proxy.stop()
        wait_until(lambda: len(skipped_intervals(caplog)) >= 3)
        passes_during_outage = len(sink.passes)
        proxy.start()
        wait_until(lambda: len(sink.passes) >= passes_during_outage + 2)
        assert sampler._thread is not None and sampler._thread.is_alive()
    finally:
        sampler.stop()
        broker.client.close()
        proxy.stop()
    skipped = skipped_intervals(caplog)
    assert len(skipped) == len(set(skipped))  # once per interval, never twice
    assert "secret-pw" not in caplog.text


def test_a_database_outage_is_logged_once_per_interval_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, SAMPLER_LOGGER)
    unreachable = make_engine("postgresql+psycopg://postgres:secret-pw@127.0.0.1:1/test", pool_pre_ping=False)
    sink = Collect()
    sampler = QueueDepthSampler(StubBroker(), sink, interval_s=0.2, engine=unreachable, queues=["q"])
    sampler.start()
    try:
        wait_until(lambda: len(skipped_intervals(caplog)) >= 3)
        assert sampler._thread is not None and sampler._thread.is_alive()
    finally:
        sampler.stop()
        unreachable.dispose()
    skipped = skipped_intervals(caplog)
    assert len(skipped) == len(set(skipped))
    assert sink.passes == []
    assert "OperationalError" in caplog.text
    assert "secret-pw" not in caplog.text


def test_a_failing_sink_skips_its_interval_and_the_next_one_is_sampled(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, SAMPLER_LOGGER)
    calls: list[int] = []

    def flaky_sink(new_samples: Sequence[Sample]) -> None:
        calls.append(len(new_samples))
        if len(calls) == 1:
            raise ConnectionError("database went away")

    sampler = QueueDepthSampler(StubBroker(), flaky_sink, queues=["q"])
    assert sampler.sample_logging_errors(AT) is None
    assert sampler.sample_logging_errors(AT + dt.timedelta(seconds=15)) is not None
    assert skipped_intervals(caplog) == [interval_start(AT, 15).isoformat()]
    assert "ConnectionError: database went away" in caplog.text


def test_an_unsupported_broker_is_logged_once_and_never_sampled(caplog: pytest.LogCaptureFixture) -> None:
    class CustomBroker(dramatiq.Broker):
        def get_declared_queues(self) -> set[str]:
            return {"q"}

    caplog.set_level(logging.INFO, SAMPLER_LOGGER)
    sink = Collect()
    sampler = QueueDepthSampler(CustomBroker(), sink, interval_s=0.1)
    sampler.start()
    assert not sampler.supported
    assert sampler._thread is None
    assert sampler.sample(AT) is None
    sampler.stop()
    messages = [record.getMessage() for record in caplog.records if record.name == SAMPLER_LOGGER]
    assert messages == ["Queue depth is not supported for CustomBroker: it will not be sampled."]
    assert sink.passes == []


def test_rabbitmq_sampling_uses_a_connection_of_its_own_and_stop_closes_it(
    rabbitmq_broker: RabbitmqBroker, unique_queue: Callable[[str], str]
) -> None:
    queue = unique_queue("q")
    rabbitmq_broker.declare_queue(queue, ensure=True)
    broker_connections = set(rabbitmq_broker.connections)
    sink = Collect()
    sampler = QueueDepthSampler(rabbitmq_broker, sink, claim=LocalIntervalClaim())
    sampler.sample(AT)
    reader_connection = sampler.reader._connection  # type: ignore[union-attr]
    assert reader_connection is not None and reader_connection.is_open
    assert reader_connection not in broker_connections
    assert set(rabbitmq_broker.connections) == broker_connections
    sampler.stop()
    assert not reader_connection.is_open
    assert sink.depths() == {(queue, "ready"): 0, (queue, "delayed"): 0, (queue, "dead"): 0}


@pytest.mark.parametrize("bad", [0, 0.05, -1, "15", True, float("nan"), float("inf"), 86_401])
def test_a_bad_interval_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="interval_s must be"):
        QueueDepthSampler(StubBroker(), Collect(), interval_s=bad)  # type: ignore[arg-type]


def test_a_bad_queue_name_is_refused_when_the_sampler_is_made() -> None:
    with pytest.raises(ValueError, match="queue names must be non-empty strings"):
        QueueDepthSampler(StubBroker(), Collect(), queues=[""])


def test_each_fleet_gets_its_own_job_name(redis_broker: RedisBroker) -> None:
    other = RedisBroker(url=REDIS_URL, namespace=f"other-{uuid.uuid4().hex[:8]}")
    try:
        assert QueueDepthSampler(redis_broker, Collect()).job != QueueDepthSampler(other, Collect()).job
    finally:
        other.client.close()


def test_the_middleware_samples_queue_depth_while_a_worker_runs_and_stops_with_it(engine: Engine) -> None:
    broker = StubBroker()
    middleware = OpMetrics(engine.url, flush_interval_s=0.1, queue_depth_interval_s=0.2, queues=["reports"])
    broker.add_middleware(middleware)
    broker.declare_queue("emails")
    for _ in range(2):
        broker.enqueue(message("emails"), delay=600_000)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        sampler = middleware.queue_depth_sampler
        assert sampler is not None and sampler.interval_s == 0.2
        wait_until(
            lambda: (
                {("emails", "delayed", 2.0), ("reports", "ready", 0.0)}
                <= {(q, s, v) for q, s, v, _ in stored_queue_depths(engine)}
            )
        )
    finally:
        worker.stop()
    assert middleware.queue_depth_sampler is None
    assert sampler._thread is None


def test_the_middleware_samples_nothing_with_an_interval_of_0(sqlite_url: URL) -> None:
    middleware = OpMetrics(sqlite_url, queue_depth_interval_s=0)
    broker = StubBroker()
    broker.add_middleware(middleware)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        assert middleware.queue_depth_sampler is None
    finally:
        worker.stop()


def test_the_middleware_reads_its_queue_depth_interval_from_the_environment(
    sqlite_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPMETRICS_QUEUE_DEPTH_INTERVAL_S", "30")
    assert OpMetrics(sqlite_url).queue_depth_interval_s == 30
    monkeypatch.delenv("OPMETRICS_QUEUE_DEPTH_INTERVAL_S")
    assert OpMetrics(sqlite_url).queue_depth_interval_s == DEFAULT_QUEUE_DEPTH_INTERVAL_S


@pytest.mark.parametrize(
    ("options", "error"), [({"queue_depth_interval_s": 0.01}, "interval_s"), ({"queues": [""]}, "queue names")]
)
def test_the_middleware_refuses_a_bad_queue_depth_setting(
    sqlite_url: URL, options: dict[str, object], error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        OpMetrics(sqlite_url, **options)  # type: ignore[arg-type]


#: Seconds between samples in the worker fleet test: short, yet long enough for a loaded machine.
FLEET_INTERVAL_S = 2.0


@pytest.mark.slow
def test_three_worker_processes_for_three_intervals_store_three_samples_per_queue_and_state_not_nine(
    postgres_engine: Engine, redis_broker: RedisBroker, unique_queue: Callable[[str], str], tmp_path: Path
) -> None:
    work, backlog = unique_queue("work"), unique_queue("backlog")
    for _ in range(3):
        redis_broker.enqueue(message(backlog))  # no actor consumes it: its depth stays known
    redis_broker.enqueue(message(backlog), delay=600_000)
    module = f"opm_fleet_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        "import dramatiq\n"
        "from dramatiq.brokers.redis import RedisBroker\n"
        "from dramatiq_opmetrics import OpMetrics\n"
        f"broker = RedisBroker(url={REDIS_URL!r}, namespace={redis_broker.namespace!r})\n"
        f"broker.add_middleware(OpMetrics({postgres_engine.url.render_as_string(hide_password=False)!r},"
        f" queue_depth_interval_s={FLEET_INTERVAL_S}, flush_interval_s=0.2, queues=[{backlog!r}]))\n"
        "dramatiq.set_broker(broker)\n"
        f"@dramatiq.actor(queue_name={work!r})\n"
        "def noop():\n"
        "    pass\n"
    )
    log = tmp_path / "workers.log"
    with log.open("w") as output:
        workers = subprocess.Popen(
            [sys.executable, "-m", "dramatiq", module, "--processes", "3", "--threads", "1", "--path", str(tmp_path)],
            cwd=tmp_path,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: log.read_text().count("Worker process is ready for action.") == 3, timeout_s=60)
        first = interval_start(dt.datetime.now(dt.UTC), FLEET_INTERVAL_S) + dt.timedelta(seconds=FLEET_INTERVAL_S)
        end = first + dt.timedelta(seconds=3 * FLEET_INTERVAL_S)
        # Stop in the middle of the interval after the third, so its sample (if any) is outside the window.
        time.sleep((end - dt.datetime.now(dt.UTC)).total_seconds() + FLEET_INTERVAL_S / 2)
    finally:
        workers.terminate()
        workers.wait(60)
    assert workers.returncode == 0, log.read_text()

    stored = stored_queue_depths(postgres_engine)
    window = [row for row in stored if first <= row[3] < end]
    states = ("ready", "delayed", "dead", "in_flight")
    assert Counter((q, s) for q, s, _, _ in window) == {(q, s): 3 for q in (work, backlog) for s in states}
    assert {(q, s, v) for q, s, v, _ in window if q == backlog} == {
        (backlog, "ready", 3),
        (backlog, "delayed", 1),
        (backlog, "dead", 0),
        (backlog, "in_flight", 0),
    }
    per_interval = Counter((q, s, interval_start(at, FLEET_INTERVAL_S)) for q, s, _, at in stored)
    assert set(per_interval.values()) == {1}


def test_a_redis_pass_records_each_queues_oldest_message_age_exactly_and_0_for_an_empty_queue(
    redis_broker: RedisBroker, unique_queue: Callable[[str], str]
) -> None:
    queue, empty = unique_queue("q"), unique_queue("empty")
    redis_broker.declare_queue(queue)
    redis_broker.declare_queue(empty)
    sent_ms = int(time.time() * 1000) - 120_000
    for offset_ms in (0, 10_000):
        redis_broker.enqueue(message(queue).copy(message_timestamp=sent_ms + offset_ms))
    sink = Collect()

    before_s = time.time()
    made = QueueDepthSampler(redis_broker, sink).sample()
    after_s = time.time()

    assert made is not None
    ages = sink.ages()
    assert ages[empty] == 0
    assert before_s - sent_ms / 1000 <= ages[queue] <= after_s - sent_ms / 1000  # exact within the sampling time
    (stamped,) = {s.recorded_at for s in made}
    assert ages[queue] == pytest.approx(stamped.timestamp() - sent_ms / 1000, abs=1e-6)


def test_a_rabbitmq_pass_records_depths_and_no_oldest_message_age(
    rabbitmq_broker: RabbitmqBroker, unique_queue: Callable[[str], str]
) -> None:
    queue = unique_queue("q")
    rabbitmq_broker.declare_queue(queue)
    rabbitmq_broker.enqueue(message(queue))
    sink = Collect()
    sampler = QueueDepthSampler(rabbitmq_broker, sink)
    try:
        made = sampler.sample(AT)
    finally:
        sampler.stop()

    assert made is not None
    assert sink.depths()[(queue, "ready")] == 1
    assert sink.ages() == {}
