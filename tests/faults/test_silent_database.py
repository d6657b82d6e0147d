"""A metrics database that stops answering (SIGSTOPped: its kernel still ACKs every packet) costs nothing else.

Messages flow at full speed, drops are logged on time by the threads that drop, the writer's watchdog cuts
the write that hangs, ``Worker.stop()`` returns within ``shutdown_timeout_s`` + 1 s and says what it gave
up, and once the database answers again every sample that was kept is written exactly once.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import dramatiq
import psycopg
import pytest
from command_line import BIN, url_text
from conftest import REDIS_URL
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL
from tcp_proxy import TcpProxy
from waiting import SchedulingLag, wait_until

from dramatiq_opmetrics import OpMetrics, samples
from dramatiq_opmetrics.buffer import SampleBuffer
from dramatiq_opmetrics.database import make_engine
from dramatiq_opmetrics.label_sets import resolve_label_set_ids
from dramatiq_opmetrics.migrate import upgrade
from dramatiq_opmetrics.writer import BackgroundWriter
from faults.pg_cluster import PgCluster

pytestmark = pytest.mark.postgres

#: The timeouts of these tests, low so that a stopped database shows within a second or two.
FLUSH_INTERVAL_S = 0.1
STATEMENT_TIMEOUT_S = 1.0
CONNECT_TIMEOUT_S = 2
WARNING_INTERVAL_S = 1.0
SHUTDOWN_TIMEOUT_S = 2.0
#: What a ``dramatiq`` process adds to ``Worker.stop()`` between SIGTERM and its exit, whatever the database
#: does: its worker process looks for the signal once a second, then closes the broker and exits.
DRAMATIQ_OVERHEAD_S = 2.0
#: What a log line may lag behind the moment it is due (two shared cores, other suites running).
SLACK_S = 0.5


@pytest.fixture
def migrated_cluster_url(cluster_url: URL) -> URL:
    upgrade(cluster_url)
    return cluster_url


@pytest.fixture
def cluster_engine(migrated_cluster_url: URL) -> Iterator[Engine]:
    engine = make_engine(migrated_cluster_url)
    yield engine
    engine.dispose()


def opmetrics_on(url: URL, **overrides: float) -> OpMetrics:
    settings: dict[str, float] = {
        "flush_interval_s": FLUSH_INTERVAL_S,
        "batch_size": 200,
        "buffer_capacity": 1_000,
        "warning_interval_s": WARNING_INTERVAL_S,
        "shutdown_timeout_s": SHUTDOWN_TIMEOUT_S,
        "connect_timeout_s": CONNECT_TIMEOUT_S,
        "statement_timeout_s": STATEMENT_TIMEOUT_S,
        "max_retry_backoff_s": 0.5,
        **overrides,
    }
    return OpMetrics(url, **settings)  # type: ignore[arg-type]


class Fleet:
    """A real Worker on a real Redis with OpMetrics, and a no-op actor that counts what it processed."""

    def __init__(self, broker: RedisBroker, opmetrics: OpMetrics, queue: str) -> None:
        broker.add_middleware(opmetrics)
        self.broker = broker
        self.opmetrics = opmetrics
        self.processed = 0
        self._lock = threading.Lock()

        def noop(i: int) -> None:
            with self._lock:
                self.processed += 1

        self.actor = dramatiq.actor(noop, actor_name="noop", queue_name=queue, broker=broker, max_retries=0)
        self.worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=50)

    def send(self, count: int) -> None:
        pipeline = self.broker.client.pipeline()
        for i in range(count):
            message = self.actor.message(i)
            pipeline.hset(f"{self.broker.namespace}:{message.queue_name}.msgs", message.message_id, message.encode())
            pipeline.rpush(f"{self.broker.namespace}:{message.queue_name}", message.message_id)
        pipeline.execute()

    def process(self, count: int, timeout_s: float = 20.0) -> float:
        """Send ``count`` messages and wait until they are processed; return the seconds it took."""
        target = self.processed + count
        started = time.monotonic()
        self.send(count)
        wait_until(lambda: self.processed >= target, timeout_s, f"{count} messages processed", poll_s=0.005)
        return time.monotonic() - started


@pytest.fixture
def fleet(redis_broker: RedisBroker, migrated_cluster_url: URL, unique_queue: Callable[[str], str]) -> Iterator[Fleet]:
    fleet = Fleet(redis_broker, opmetrics_on(migrated_cluster_url), unique_queue("silent"))
    fleet.worker.start()
    try:
        yield fleet
    finally:
        fleet.worker.stop()


def messages(engine: Engine, metric_type: str) -> tuple[int, float]:
    """How many raw rows of ``metric_type`` there are, and their sum."""
    with engine.connect() as connection:
        row = connection.execute(
            text("SELECT count(*), coalesce(sum(value), 0) FROM operational_metrics WHERE metric_type = :m"),
            {"m": metric_type},
        ).one()
    return int(row[0]), float(row[1])


def log_lines(caplog: pytest.LogCaptureFixture, start: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.getMessage().startswith(start)]


def test_with_the_database_stopped_messages_flow_drops_are_logged_on_time_and_stop_returns_in_time(
    fleet: Fleet, pg_cluster: PgCluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dramatiq_opmetrics")
    buffer = fleet.opmetrics.buffer
    fleet.process(200)  # warm up: connections made, label sets stored
    assert fleet.opmetrics.writer.flush(timeout_s=10)
    up_s = fleet.process(3_000)
    assert fleet.opmetrics.writer.flush(timeout_s=10)

    first_drop: list[float] = []
    watching = threading.Event()

    def note_first_drop() -> None:
        while not watching.is_set() and not first_drop:
            if buffer.dropped_total:
                first_drop.append(time.time())
            time.sleep(0.002)

    watcher = threading.Thread(target=note_first_drop, daemon=True)
    watcher.start()
    with SchedulingLag() as lag:
        pg_cluster.pause()
        paused_at = time.time()
        try:
            down_s = fleet.process(3_000)  # 3,000 entries into a buffer of 1,000: drops
            time.sleep(WARNING_INTERVAL_S + SLACK_S)  # the watchdog logs the drops after the last warning
            watching.set()

            # Messages flowed at full speed while the database answered nothing.
            assert down_s < max(2 * up_s, 3.0)
            # The drop warnings: the first as the first sample was dropped, at most one per interval, every drop
            # counted, while the writer was blocked.
            assert buffer.dropped_total >= 2 * 2_000
            drops = log_lines(caplog, "Dropped")
            assert drops and first_drop
            assert drops[0].created - first_drop[0] < SLACK_S
            assert drops[0].threadName != "opmetrics-writer"
            assert all(b.created - a.created >= WARNING_INTERVAL_S - 0.05 for a, b in itertools.pairwise(drops))
            assert sum(int(record.getMessage().split()[1]) for record in drops) == buffer.dropped_total
            # The watchdog noticed the hung write within a flush plus the statement timeout.
            stalls = log_lines(caplog, "The metrics database")
            assert stalls, caplog.text
            print(
                f"database stopped: first drop {first_drop[0] - paused_at:.2f} s after, its warning"
                f" {drops[0].created - first_drop[0]:.3f} s after the drop, {len(drops)} warnings;"
                f" the watchdog's line {stalls[0].created - paused_at:.2f} s after the stop; a sleeping thread"
                f" woke up to {lag.worst_s:.2f} s late"
            )
            # Two wake-ups stand between the stop and the line (the writer's pass, the watchdog's look): each may
            # be as late as the machine made a sleeping thread of this process (measured, four suites on two cores).
            due_s = FLUSH_INTERVAL_S + STATEMENT_TIMEOUT_S + 2 * SLACK_S
            assert stalls[0].created - paused_at < due_s + 2 * lag.worst_s

            buffered = buffer.sample_count()
            started = time.monotonic()
            fleet.worker.stop()
            stop_s = time.monotonic() - started
        finally:
            pg_cluster.resume()
    print(f"Worker.stop() with the database stopped: {stop_s:.2f} s (shutdown_timeout_s {SHUTDOWN_TIMEOUT_S})")
    assert stop_s < SHUTDOWN_TIMEOUT_S + 1.0
    gave_up = log_lines(caplog, "Gave up writing")
    assert len(gave_up) == 1
    assert int(gave_up[0].getMessage().split()[3]) == buffered > 0


def test_after_a_pause_shorter_than_the_shutdown_window_every_kept_sample_is_written_once(
    fleet: Fleet, pg_cluster: PgCluster, cluster_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dramatiq_opmetrics")
    fleet.process(200)
    assert fleet.opmetrics.writer.flush(timeout_s=10)
    sending = threading.Thread(target=lambda: [fleet.process(500) for _ in range(8)], daemon=True)
    sending.start()
    time.sleep(0.3)
    pg_cluster.pause()
    time.sleep(FLUSH_INTERVAL_S + STATEMENT_TIMEOUT_S + 1.0)  # long enough for the watchdog to cut the write
    pg_cluster.resume()
    sending.join(30)
    assert not sending.is_alive()
    assert log_lines(caplog, "The metrics database"), "the watchdog should have cut the hung write"
    fleet.worker.stop()  # writes what is kept: the database answers again
    buffer = fleet.opmetrics.buffer
    assert len(buffer) == 0
    assert not log_lines(caplog, "Gave up writing")
    kept = fleet.processed - buffer.dropped_total // 2
    assert messages(cluster_engine, "processing_time")[0] == kept
    assert messages(cluster_engine, "wait_time")[0] == kept
    assert messages(cluster_engine, "dropped_samples")[1] == buffer.dropped_total


@pytest.fixture
def synchronous_cluster_url(pg_cluster: PgCluster, migrated_cluster_url: URL) -> URL:
    """:func:`migrated_cluster_url` whose sessions (those that connect from now on) commit synchronously, so
    that :func:`commits_held` holds their commits."""
    with psycopg.connect(pg_cluster.conninfo(), autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{migrated_cluster_url.database}" SET synchronous_commit = on')
    return migrated_cluster_url


@contextlib.contextmanager
def commits_held(cluster: PgCluster) -> Iterator[None]:
    """Inside: a COMMIT of a transaction that wrote, in a session of :func:`synchronous_cluster_url`, commits
    locally and then waits for a synchronous standby that does not exist: exactly a commit whose answer never
    comes (its transaction stays "in progress"). The wait ends, committed, on leaving. The writer must have no
    statement timeout, or that would end the wait."""
    with psycopg.connect(cluster.conninfo(), autocommit=True) as admin:
        admin.execute("ALTER SYSTEM SET synchronous_standby_names = 'nobody'")
        admin.execute("SELECT pg_reload_conf()")
        time.sleep(0.5)  # the checkpointer tells the backends that a synchronous standby is now named
        try:
            yield
        finally:
            admin.execute("ALTER SYSTEM RESET synchronous_standby_names")
            admin.execute("SELECT pg_reload_conf()")


def held_commit_writer(url: URL, buffer: SampleBuffer) -> BackgroundWriter:
    """A writer for :func:`commits_held`: no statement timeout, a watchdog that cuts after 1 s, fast retries."""
    return BackgroundWriter(
        url,
        buffer,
        flush_interval_s=FLUSH_INTERVAL_S,
        max_retry_backoff_s=0.2,
        warning_interval_s=3600,
        statement_timeout_s=0,
        stall_timeout_s=1.0,
    )


def test_a_batch_whose_commit_went_unanswered_but_committed_is_written_exactly_once(
    pg_cluster: PgCluster, synchronous_cluster_url: URL, cluster_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dramatiq_opmetrics")
    buffer = SampleBuffer(capacity=10_000, batch_size=1_000)
    writer = held_commit_writer(synchronous_cluster_url, buffer)
    key = buffer.register_label_set(samples.message_labels("a", queue="q"))

    def add(count: int) -> None:
        now = time.time()
        buffer.extend([("wait_time", float(i), key, now) for i in range(count)])

    add(10)
    assert writer.flush(timeout_s=10)  # the label set is stored and its id cached
    with commits_held(pg_cluster):
        add(500)
        wait_until(lambda: bool(log_lines(caplog, "The metrics database")), 10, "the watchdog cutting the commit")
        time.sleep(1.0)  # retries meanwhile find the transaction still in progress and write nothing
        assert len(buffer) == 500
    assert writer.flush(timeout_s=10)
    assert writer.stop()
    assert messages(cluster_engine, "wait_time") == (510, float(sum(range(10)) + sum(range(500))))
    assert log_lines(caplog, "The commit of 500 metric samples went unanswered but was committed")


def test_a_span_whose_commit_went_unanswered_but_committed_is_not_written_again_while_the_batch_is_split(
    pg_cluster: PgCluster, synchronous_cluster_url: URL, cluster_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """Two poison rows (past validation) make the writer split the batch; the first span it commits,
    entries 0 to 61, is held: once committed, the splitting resumes after it, and it is never rewritten."""
    caplog.set_level(logging.INFO, logger="dramatiq_opmetrics")
    buffer = SampleBuffer(capacity=10_000, batch_size=1_000)
    writer = held_commit_writer(synchronous_cluster_url, buffer)
    key = buffer.register_label_set(samples.message_labels("a", queue="q"))
    buffer.extend([("wait_time", 1.0, key, time.time())])
    assert writer.flush(timeout_s=10)  # the label set is stored and its id cached
    now = time.time()
    entries: list[Any] = [("processing_time", float(i), key, now) for i in range(1_000)]
    entries[100] = ("prompt_tokens", 10**400, key, now)  # no float8 holds it: refused
    entries[600] = ("queue_depth", 1.0, key, 1e300)  # a time past any timestamp: refused
    try:
        with commits_held(pg_cluster):
            buffer.extend(entries)
            # (0, 1000), (0, 500), (0, 250) and (0, 125) are refused; (0, 62) commits and is held.
            wait_until(lambda: bool(log_lines(caplog, "The metrics database")), 10, "the watchdog cutting the commit")
            time.sleep(1.0)  # retries meanwhile find the transaction still in progress and write nothing
            assert len(buffer) == 1_000
            assert messages(cluster_engine, "processing_time") == (0, 0.0)
        assert writer.flush(timeout_s=30)
    finally:
        assert writer.stop(timeout_s=30)
    assert log_lines(caplog, "The commit of 62 metric samples went unanswered but was committed")
    with cluster_engine.connect() as connection:
        values = connection.execute(
            text("SELECT value FROM operational_metrics WHERE metric_type = 'processing_time' ORDER BY value")
        ).scalars()
        assert list(values) == [float(i) for i in range(1_000) if i not in (100, 600)]
    assert messages(cluster_engine, "rejected_samples") == (2, 2.0)  # one per metric type, each once


def test_after_a_failover_to_a_server_that_never_saw_an_unanswered_commit_its_samples_are_written_there(
    pg_cluster: PgCluster, synchronous_cluster_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    """A batch's COMMIT is held on the old primary, then its address moves (a TCP proxy) to a new primary that
    never saw that transaction, as a standby promoted before it got it: there ``txid_status`` says the
    transaction ID is in the future, so the batch did not commit there, and it is written there, once."""
    caplog.set_level(logging.INFO, logger="dramatiq_opmetrics")
    proxy = TcpProxy(pg_cluster.port)
    proxy.start()
    with PgCluster() as promoted:
        promoted_url = promoted.create_database(synchronous_cluster_url.database)
        upgrade(promoted_url)
        promoted_engine = make_engine(promoted_url)
        buffer = SampleBuffer(capacity=10_000, batch_size=1_000)
        writer = held_commit_writer(synchronous_cluster_url.set(port=proxy.port), buffer)
        labels = samples.message_labels("a", queue="q")
        key = buffer.register_label_set(labels)
        try:
            buffer.extend([("wait_time", 1.0, key, time.time())])
            assert writer.flush(timeout_s=10)  # the label set is stored (id 1) and its id cached
            with promoted_engine.begin() as connection:
                # Replicated before the failover: the same label set, with the same id.
                assert resolve_label_set_ids(connection, [labels]) == {key: 1}
                promoted_xid = connection.execute(text("SELECT txid_current()")).scalar_one()
            with psycopg.connect(pg_cluster.conninfo(), autocommit=True) as old:
                # The old primary's transaction ids run ahead of the new one's, as after writes not replicated.
                burn = f"FOR i IN 1..{promoted_xid + 100} LOOP PERFORM txid_current(); COMMIT; END LOOP;"
                old.execute(f"DO $$ BEGIN {burn} END $$")
            with commits_held(pg_cluster):
                buffer.extend([("wait_time", float(i), key, time.time()) for i in range(500)])
                wait_until(
                    lambda: bool(log_lines(caplog, "The metrics database")), 10, "the watchdog cutting the commit"
                )
                time.sleep(0.5)  # retries meanwhile find the transaction still in progress
                assert len(buffer) == 500
                proxy.stop()
                proxy.target = ("127.0.0.1", promoted.port)
                proxy.start()
                wait_until(lambda: messages(promoted_engine, "wait_time")[0] == 500, 10, "the batch on the new primary")
            assert writer.flush(timeout_s=10)
            assert writer.stop(timeout_s=10)
            assert messages(promoted_engine, "wait_time") == (500, float(sum(range(500))))
            assert log_lines(caplog, "The transaction of an unanswered commit of 500 metric samples is unknown")
            assert not log_lines(caplog, "The commit of 500 metric samples went unanswered but was committed")
        finally:
            writer.stop(timeout_s=1)
            promoted_engine.dispose()
            proxy.stop()


@pytest.mark.parametrize("held", ["dropped_samples", "rejected_samples"])
def test_a_bookkeeping_sample_whose_commit_went_unanswered_but_committed_is_not_recorded_twice(
    held: str,
    pg_cluster: PgCluster,
    synchronous_cluster_url: URL,
    cluster_engine: Engine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A batch of poison rows only commits nothing but its bookkeeping: the first bookkeeping sample (the
    drops, if any, else the rejections) is the transaction held."""
    caplog.set_level(logging.INFO, logger="dramatiq_opmetrics")
    buffer = SampleBuffer(capacity=3, batch_size=3)
    writer = held_commit_writer(synchronous_cluster_url, buffer)
    key = buffer.register_label_set(samples.message_labels("a", queue="q"))

    def poison(count: int) -> None:
        buffer.extend([("prompt_tokens", 10**400, key, time.time()) for _ in range(count)])

    poison(5)  # 3 rejected, 2 dropped: the label sets of both bookkeeping samples are stored and cached
    assert writer.flush(timeout_s=10)
    assert messages(cluster_engine, "dropped_samples") == (1, 2.0)
    assert messages(cluster_engine, "rejected_samples") == (1, 3.0)
    try:
        with commits_held(pg_cluster):
            poison(5 if held == "dropped_samples" else 3)
            wait_until(lambda: bool(log_lines(caplog, "The metrics database")), 10, "the watchdog cutting the commit")
            time.sleep(1.0)  # retries meanwhile find the transaction still in progress and write nothing
            assert messages(cluster_engine, held)[0] == 1
        assert writer.flush(timeout_s=10)
    finally:
        assert writer.stop(timeout_s=10)
    assert log_lines(caplog, "The commit of 1 metric samples went unanswered but was committed")
    if held == "dropped_samples":
        assert messages(cluster_engine, "dropped_samples") == (2, 4.0)
        assert buffer.unrecorded_drops() == 0
    else:
        assert messages(cluster_engine, "dropped_samples") == (1, 2.0)
    assert messages(cluster_engine, "rejected_samples") == (2, 6.0)


@pytest.mark.slow
def test_sigterm_of_a_dramatiq_process_returns_within_the_shutdown_timeout_with_the_database_stopped(
    pg_cluster: PgCluster,
    migrated_cluster_url: URL,
    cluster_engine: Engine,
    redis_broker: RedisBroker,
    unique_queue: Callable[[str], str],
    tmp_path: Path,
) -> None:
    namespace, queue = redis_broker.namespace, unique_queue("sigterm")
    env = {
        **os.environ,
        "FAULT_APP_REDIS_URL": REDIS_URL,
        "FAULT_APP_NAMESPACE": namespace,
        "FAULT_APP_QUEUE": queue,
        "FAULT_APP_SHUTDOWN_TIMEOUT_S": str(SHUTDOWN_TIMEOUT_S),
        "OPMETRICS_DATABASE_URL": url_text(migrated_cluster_url),
        "OPMETRICS_FLUSH_INTERVAL_S": str(FLUSH_INTERVAL_S),
        "OPMETRICS_STATEMENT_TIMEOUT_S": str(STATEMENT_TIMEOUT_S),
        "OPMETRICS_CONNECT_TIMEOUT_S": str(CONNECT_TIMEOUT_S),
    }
    log_path = tmp_path / "dramatiq.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [str(BIN / "dramatiq"), "fault_app", "--processes", "1", "--threads", "2", "--queues", queue],
            cwd=Path(__file__).parent,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        done = f"{namespace}:done"
        actor = dramatiq.actor(lambda i: None, actor_name="noop", queue_name=queue, broker=redis_broker)
        for i in range(200):
            actor.send(i)
        wait_until(lambda: int(redis_broker.client.get(done) or 0) == 200, 20, "the first messages processed")
        wait_until(lambda: messages(cluster_engine, "processing_time")[0] == 200, 10, "their samples written")
        pg_cluster.pause()
        for i in range(200):
            actor.send(i)
        wait_until(lambda: int(redis_broker.client.get(done) or 0) == 400, 20, "messages processed while stopped")
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(SHUTDOWN_TIMEOUT_S + 10)
        stop_s = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        pg_cluster.resume()
    output = log_path.read_text()
    worker_stop_s = logged_at(output, "Worker has been shut down.") - logged_at(output, "Shutting down...")
    print(
        f"SIGTERM to exit with the database stopped: {stop_s:.2f} s, of which Worker.stop() {worker_stop_s:.2f} s"
        f" (shutdown_timeout_s {SHUTDOWN_TIMEOUT_S})"
    )
    assert worker_stop_s < SHUTDOWN_TIMEOUT_S + 1.0, output
    assert stop_s < SHUTDOWN_TIMEOUT_S + 1.0 + DRAMATIQ_OVERHEAD_S, output
    assert "Gave up writing 400 buffered metric samples" in output, output


def logged_at(output: str, message: str) -> float:
    """The time of the first line of ``dramatiq``'s log ``output`` that ends with ``message``."""
    line = next(line for line in output.splitlines() if line.endswith(message))
    return datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def test_a_worker_whose_queue_depth_sampler_is_blocked_on_the_stopped_database_stops_in_time(
    pg_cluster: PgCluster, migrated_cluster_url: URL, cluster_engine: Engine
) -> None:
    # On a StubBroker the sampler claims each interval with a row in the metrics database.
    broker = StubBroker()
    opmetrics = opmetrics_on(migrated_cluster_url, queue_depth_interval_s=0.2)
    broker.add_middleware(opmetrics)
    broker.declare_queue("default")
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=50)
    worker.start()
    try:
        wait_until(lambda: messages(cluster_engine, "queue_depth")[0] > 0, 10, "a queue depth sample written")
        pg_cluster.pause()
        time.sleep(0.5)  # the next interval's claim waits on the stopped database
        sampler = opmetrics.queue_depth_sampler
        assert sampler is not None
        started = time.monotonic()
        worker.stop()
        stop_s = time.monotonic() - started
        blocked = [thread for thread in threading.enumerate() if thread.name == "opmetrics-queue-depth"]
    finally:
        pg_cluster.resume()
    assert blocked, "the sampler should have been blocked on its claim"
    assert stop_s < SHUTDOWN_TIMEOUT_S + 1.0
