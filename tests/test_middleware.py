"""The OpMetrics middleware on real brokers and real ``dramatiq.Worker`` threads, writing to PostgreSQL."""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import dramatiq
import pytest
import redis
from conftest import RABBITMQ_URL, REDIS_URL
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import AgeLimit, Retries
from notification_servers import JsonHttpServer
from raw_samples import raw_counts
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL
from tcp_proxy import TcpProxy, free_port
from tier_counts import folded_raw_counts, tier_counts
from waiting import wait_until

from dramatiq_opmetrics import ConfigurationError, OpMetrics
from dramatiq_opmetrics.alert_rules import RuleFileError
from dramatiq_opmetrics.database import make_engine
from dramatiq_opmetrics.locks import advisory_xact_lock
from dramatiq_opmetrics.middleware import MAX_RECENT_RETENTION_DAYS
from dramatiq_opmetrics.migrate import upgrade
from dramatiq_opmetrics.recent_tier import FOLD_LOCK, read_state

pytestmark = pytest.mark.postgres


def values(engine: Engine, metric_type: str, labels_key: str) -> list[float]:
    with engine.connect() as connection:
        result = connection.execute(
            text(
                "SELECT m.value FROM operational_metrics m JOIN opmetrics_label_sets l ON l.id = m.label_set_id"
                " WHERE m.metric_type::text = :type AND l.labels_key = :key ORDER BY m.id"
            ),
            {"type": metric_type, "key": labels_key},
        )
        return [value for (value,) in result]


def make_stub_broker(opmetrics: OpMetrics, *, before: type[dramatiq.Middleware] | None = None) -> StubBroker:
    broker = StubBroker()
    broker.add_middleware(opmetrics, before=before)
    for middleware in broker.middleware:
        if isinstance(middleware, Retries):
            middleware.min_backoff, middleware.max_backoff = 10, 20
    broker.emit_after("process_boot")
    return broker


def run_worker(broker: dramatiq.Broker, *queues: str) -> None:
    """Process everything on ``queues`` with a real Worker, then stop it (which flushes the metrics)."""
    worker = dramatiq.Worker(broker, worker_timeout=20, worker_threads=2)
    worker.start()
    try:
        for queue in queues:
            broker.join(queue, fail_fast=False)  # type: ignore[attr-defined]
        worker.join()
    finally:
        worker.stop()


@pytest.fixture
def opmetrics(postgres_engine: Engine, postgres_url: URL) -> OpMetrics:
    return OpMetrics(postgres_url, flush_interval_s=3600)


MESSAGE_LABELS = "actor:{actor}|queue:{queue}"


def test_every_processed_message_gets_a_processing_time_and_a_wait_time(
    opmetrics: OpMetrics, postgres_engine: Engine
) -> None:
    broker = make_stub_broker(opmetrics)

    @dramatiq.actor(broker=broker, queue_name="emails")
    def send_email(duration_s: float) -> None:
        time.sleep(duration_s)

    for _ in range(5):
        send_email.send(0.0)
    send_email.send(0.05)
    run_worker(broker, "emails")
    key = "actor:send_email|queue:emails"
    assert raw_counts(postgres_engine) == Counter({("processing_time", key): 6, ("wait_time", key): 6})
    durations = values(postgres_engine, "processing_time", key)
    assert max(durations) >= 50.0
    assert all(0.0 <= d < 50.0 for d in sorted(durations)[:5])
    assert all(w >= 0.0 for w in values(postgres_engine, "wait_time", key))


@pytest.mark.parametrize("placement", ["after Retries (appended)", "before Retries"])
def test_errors_are_retried_once_per_retry_and_final_when_dead_lettered_wherever_the_middleware_is(
    postgres_engine: Engine, postgres_url: URL, placement: str
) -> None:
    opmetrics = OpMetrics(postgres_url, flush_interval_s=3600)
    broker = make_stub_broker(opmetrics, before=Retries if placement == "before Retries" else None)

    @dramatiq.actor(broker=broker, max_retries=2)
    def doomed() -> None:
        raise KeyError("nope")

    @dramatiq.actor(broker=broker, throws=(ValueError,))
    def refuses() -> None:
        raise ValueError("expected")

    doomed.send()
    refuses.send()
    run_worker(broker, "default")
    assert raw_counts(postgres_engine) == Counter(
        {
            ("processing_time", "actor:doomed|queue:default"): 3,
            ("wait_time", "actor:doomed|queue:default"): 3,
            ("error", "actor:doomed|error_type:KeyError|outcome:retried|queue:default"): 2,
            ("error", "actor:doomed|error_type:KeyError|outcome:final|queue:default"): 1,
            ("processing_time", "actor:refuses|queue:default"): 1,
            ("wait_time", "actor:refuses|queue:default"): 1,
            ("error", "actor:refuses|error_type:ValueError|outcome:final|queue:default"): 1,
        }
    )
    assert len(broker.dead_letters) == 2


def test_without_the_retries_middleware_an_error_is_final(opmetrics: OpMetrics, postgres_engine: Engine) -> None:
    broker = StubBroker(middleware=[opmetrics])
    broker.emit_after("process_boot")

    @dramatiq.actor(broker=broker)
    def fails() -> None:
        raise RuntimeError("once")

    fails.send()
    run_worker(broker, "default")
    final_error = ("error", "actor:fails|error_type:RuntimeError|outcome:final|queue:default")
    assert raw_counts(postgres_engine)[final_error] == 1


def test_an_actor_that_succeeds_after_a_retry_has_one_retried_error(
    opmetrics: OpMetrics, postgres_engine: Engine
) -> None:
    broker = make_stub_broker(opmetrics)
    attempts = Counter[str]()

    @dramatiq.actor(broker=broker)
    def flaky() -> None:
        attempts["flaky"] += 1
        if attempts["flaky"] == 1:
            raise ConnectionError("first attempt")

    flaky.send()
    run_worker(broker, "default")
    assert raw_counts(postgres_engine) == Counter(
        {
            ("processing_time", "actor:flaky|queue:default"): 2,
            ("wait_time", "actor:flaky|queue:default"): 2,
            ("error", "actor:flaky|error_type:ConnectionError|outcome:retried|queue:default"): 1,
        }
    )


@pytest.mark.parametrize("placement", ["after AgeLimit (appended)", "before AgeLimit"])
def test_a_skipped_message_is_counted_as_skipped_and_gets_no_processing_time(
    postgres_engine: Engine, postgres_url: URL, placement: str
) -> None:
    opmetrics = OpMetrics(postgres_url, flush_interval_s=3600)
    broker = make_stub_broker(opmetrics, before=AgeLimit if placement == "before AgeLimit" else None)
    ran = []

    @dramatiq.actor(broker=broker)
    def too_late() -> None:
        ran.append(1)

    too_late.send_with_options(max_age=1)
    time.sleep(0.01)
    run_worker(broker, "default")
    assert ran == []
    assert raw_counts(postgres_engine) == Counter({("skipped", "actor:too_late|queue:default"): 1})


def test_a_message_failed_by_a_middleware_before_its_actor_ran_is_skipped(
    opmetrics: OpMetrics, postgres_engine: Engine
) -> None:
    class Reject(dramatiq.Middleware):
        def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
            message.fail()

    broker = make_stub_broker(opmetrics)
    broker.add_middleware(Reject())
    ran = []

    @dramatiq.actor(broker=broker)
    def rejected() -> None:
        ran.append(1)

    rejected.send()
    run_worker(broker, "default")
    assert ran == []
    assert raw_counts(postgres_engine) == Counter({("skipped", "actor:rejected|queue:default"): 1})


def test_wait_time_counts_from_when_a_delayed_message_became_due_and_queues_are_canonical(
    opmetrics: OpMetrics, postgres_engine: Engine
) -> None:
    broker = make_stub_broker(opmetrics)

    @dramatiq.actor(broker=broker, queue_name="reports")
    def report() -> None:
        pass

    report.send_with_options(delay=1_500)
    report.send()
    time.sleep(0.5)  # the immediate message waits for the worker to start
    run_worker(broker, "reports")
    key = "actor:report|queue:reports"
    assert set(raw_counts(postgres_engine)) == {("processing_time", key), ("wait_time", key)}
    waits = sorted(values(postgres_engine, "wait_time", key))
    assert len(waits) == 2
    assert waits[1] >= 500.0  # waited in the queue for the worker
    assert waits[0] < 1_000.0  # due after 1.5 s, started soon after: the delay is not waiting


def test_stopping_the_worker_writes_everything_and_a_worker_can_start_again(
    opmetrics: OpMetrics, postgres_engine: Engine
) -> None:
    broker = make_stub_broker(opmetrics)

    @dramatiq.actor(broker=broker)
    def noop() -> None:
        pass

    for _ in range(10):
        noop.send()
    run_worker(broker, "default")
    assert not opmetrics.writer.running
    assert sum(raw_counts(postgres_engine).values()) == 20
    noop.send()
    run_worker(broker, "default")
    assert sum(raw_counts(postgres_engine).values()) == 22


def test_a_process_that_only_sends_messages_starts_no_thread_and_opens_no_connection() -> None:
    unreachable = f"postgresql+psycopg://app:s3cret@127.0.0.1:{free_port()}/app"
    opmetrics = OpMetrics(unreachable, queue_depth_interval_s=15, recent_fold_interval_s=60)
    broker = make_stub_broker(opmetrics)

    @dramatiq.actor(broker=broker)
    def task(n: int) -> None:
        pass

    threads_before = {t.name for t in threading.enumerate()}
    for n in range(100):
        task.send(n)
    task.send_with_options(args=(1,), delay=10_000)
    assert broker.queues["default"].qsize() == 100
    assert not opmetrics.writer.running
    assert opmetrics.writer._engine is None
    assert opmetrics.queue_depth_sampler is None and opmetrics.recent_tier_folder is None
    assert {t.name for t in threading.enumerate()} - threads_before == set()
    assert len(opmetrics.buffer) == 0


def test_the_repr_never_shows_the_password() -> None:
    opmetrics = OpMetrics("postgresql://app:s3cret@db.example/app")
    assert "s3cret" not in repr(opmetrics)
    assert "app:***@db.example" in repr(opmetrics)


def test_settings_fall_back_to_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPMETRICS_DATABASE_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL", "postgresql://app@db.example/app")
    monkeypatch.setenv("OPMETRICS_FLUSH_INTERVAL_S", "2.5")
    monkeypatch.setenv("OPMETRICS_BATCH_SIZE", "700")
    monkeypatch.setenv("OPMETRICS_BUFFER_CAPACITY", "9000")
    opmetrics = OpMetrics()
    assert opmetrics.writer.database_url.render_as_string() == "postgresql+psycopg://app@db.example/app"
    assert opmetrics.writer.flush_interval_s == 2.5
    assert (opmetrics.buffer.batch_size, opmetrics.buffer.capacity) == (700, 9000)
    explicit = OpMetrics("sqlite:///x.sqlite3", flush_interval_s=0.5, batch_size=10, buffer_capacity=20)
    assert (explicit.writer.flush_interval_s, explicit.buffer.batch_size, explicit.buffer.capacity) == (0.5, 10, 20)


def test_a_bad_setting_is_refused_with_a_message_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPMETRICS_DATABASE_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with pytest.raises(ConfigurationError, match="OPMETRICS_DATABASE_URL"):
        OpMetrics()
    monkeypatch.setenv("OPMETRICS_BATCH_SIZE", "many")
    with pytest.raises(ConfigurationError, match="OPMETRICS_BATCH_SIZE must be a number"):
        OpMetrics("sqlite:///x.sqlite3")
    monkeypatch.delenv("OPMETRICS_BATCH_SIZE")
    with pytest.raises(ValueError, match="capacity must be a positive integer"):
        OpMetrics("sqlite:///x.sqlite3", buffer_capacity=0)


# The database goes away while messages flow (Done when: "every message still succeeds and every sample lands").


@pytest.mark.slow
def test_messages_keep_flowing_while_the_database_is_unreachable_and_every_sample_lands_when_it_is_back(
    postgres_url: URL, postgres_engine: Engine, redis_namespace: str
) -> None:
    proxy = TcpProxy(5432)
    proxy.start()
    opmetrics = OpMetrics(
        postgres_url.set(port=proxy.port), flush_interval_s=0.1, max_retry_backoff_s=0.3, buffer_capacity=10_000
    )
    broker = RedisBroker(url=REDIS_URL, namespace=redis_namespace)
    broker.add_middleware(opmetrics)
    broker.emit_after("process_boot")
    done = threading.Semaphore(0)

    @dramatiq.actor(broker=broker, max_retries=0)
    def work(n: int) -> None:
        done.release()

    def send_and_wait(count: int, timeout_s: float = 30.0) -> float:
        started = time.monotonic()
        for n in range(count):
            work.send(n)
        for _ in range(count):
            assert done.acquire(timeout=timeout_s), "a message was not processed in time"
        return time.monotonic() - started

    worker = dramatiq.Worker(broker, worker_timeout=20, worker_threads=4)
    worker.start()
    try:
        send_and_wait(50)
        proxy.stop()  # PostgreSQL is unreachable for the writer from now on
        send_and_wait(300)
        time.sleep(1.0)  # several failed flushes
        assert len(opmetrics.buffer) >= 300  # one entry per message: its wait and processing time
        assert raw_counts(postgres_engine)[("processing_time", "actor:work|queue:default")] < 350
        proxy.start()
        send_and_wait(50)
        assert opmetrics.writer.flush(timeout_s=30)
    finally:
        worker.stop()
        broker.close()
        proxy.stop()
    assert raw_counts(postgres_engine) == Counter(
        {("processing_time", "actor:work|queue:default"): 400, ("wait_time", "actor:work|queue:default"): 400}
    )
    assert opmetrics.buffer.dropped_total == 0
    # Every message succeeded: no error samples above, and none was dead-lettered.
    assert redis.Redis.from_url(REDIS_URL).zcard(f"{redis_namespace}:default.XQ") == 0


def test_on_rabbitmq_retries_and_delayed_messages_are_measured_the_same_way(
    opmetrics: OpMetrics, postgres_engine: Engine
) -> None:
    broker = RabbitmqBroker(url=RABBITMQ_URL)
    broker.add_middleware(opmetrics)
    queue = f"opmetrics_test_{uuid.uuid4().hex[:10]}"
    attempts: list[int] = []
    done = threading.Semaphore(0)

    @dramatiq.actor(broker=broker, queue_name=queue, min_backoff=10, max_backoff=20)
    def flaky() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("first attempt")
        done.release()

    @dramatiq.actor(broker=broker, queue_name=queue)
    def later() -> None:
        done.release()

    worker = dramatiq.Worker(broker, worker_timeout=100, worker_threads=2)
    try:
        flaky.send()
        later.send_with_options(delay=1_500)
        worker.start()
        assert done.acquire(timeout=30) and done.acquire(timeout=30)
    finally:
        worker.stop()
        for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
            broker.channel.queue_delete(name)
        broker.close()
    flaky_key, later_key = f"actor:flaky|queue:{queue}", f"actor:later|queue:{queue}"
    assert raw_counts(postgres_engine) == Counter(
        {
            ("processing_time", flaky_key): 2,
            ("wait_time", flaky_key): 2,
            ("error", f"actor:flaky|error_type:RuntimeError|outcome:retried|queue:{queue}"): 1,
            ("processing_time", later_key): 1,
            ("wait_time", later_key): 1,
        }
    )
    assert values(postgres_engine, "wait_time", later_key)[0] < 1_000.0


def test_the_middleware_works_on_a_sqlite_database(sqlite_url: URL) -> None:
    upgrade(sqlite_url)
    opmetrics = OpMetrics(sqlite_url, flush_interval_s=3600)
    broker = make_stub_broker(opmetrics)

    @dramatiq.actor(broker=broker)
    def noop() -> None:
        pass

    noop.send()
    run_worker(broker, "default")
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM operational_metrics")).scalar_one() == 2
    finally:
        engine.dispose()


# The recent tier, kept current by the workers themselves.

FOLD_THREAD = "opmetrics-recent-fold"


def fold_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == FOLD_THREAD]


def test_a_worker_keeps_the_recent_tier_current_and_stops_folding_when_it_stops(migrated_url: URL) -> None:
    opmetrics = OpMetrics(migrated_url, flush_interval_s=0.1, recent_fold_interval_s=0.2, recent_retention_days=2)
    broker = make_stub_broker(opmetrics)

    @dramatiq.actor(broker=broker)
    def noop() -> None:
        pass

    for _ in range(20):
        noop.send()
    engine = make_engine(migrated_url)
    worker = dramatiq.Worker(broker, worker_timeout=20, worker_threads=2)
    worker.start()
    try:
        folder = opmetrics.recent_tier_folder
        assert folder is not None
        assert (folder.interval_s, folder.retention_days) == (0.2, 2)
        broker.join("default")
        # Nobody calls fold: the worker's own folder puts the rows into the tier once their minute is over.
        wait_until(lambda: tier_counts(engine)["processing_time"] == 20, timeout_s=75, what="the worker's fold")
    finally:
        worker.stop()
    assert opmetrics.recent_tier_folder is None
    wait_until(lambda: not fold_threads(), timeout_s=5, what="the fold thread to end")
    try:
        assert tier_counts(engine) == folded_raw_counts(engine)
    finally:
        engine.dispose()


def test_a_recent_fold_interval_of_0_starts_no_folder(sqlite_url: URL) -> None:
    upgrade(sqlite_url)
    opmetrics = OpMetrics(sqlite_url, queue_depth_interval_s=0, recent_fold_interval_s=0)
    broker = make_stub_broker(opmetrics)
    worker = dramatiq.Worker(broker, worker_timeout=20, worker_threads=1)
    worker.start()
    try:
        assert opmetrics.recent_tier_folder is None
        assert opmetrics._background_engine is None  # neither sampler nor folder: no engine of theirs
        assert not fold_threads()
    finally:
        worker.stop()


def test_the_recent_tier_settings_fall_back_to_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPMETRICS_RECENT_FOLD_INTERVAL_S", "30")
    monkeypatch.setenv("OPMETRICS_RECENT_RETENTION_DAYS", "7")
    opmetrics = OpMetrics("sqlite:///x.sqlite3")
    assert (opmetrics.recent_fold_interval_s, opmetrics.recent_retention_days) == (30.0, 7)
    explicit = OpMetrics("sqlite:///x.sqlite3", recent_fold_interval_s=0, recent_retention_days=1)
    assert (explicit.recent_fold_interval_s, explicit.recent_retention_days) == (0.0, 1)
    monkeypatch.delenv("OPMETRICS_RECENT_FOLD_INTERVAL_S")
    monkeypatch.delenv("OPMETRICS_RECENT_RETENTION_DAYS")
    defaults = OpMetrics("sqlite:///x.sqlite3")
    assert (defaults.recent_fold_interval_s, defaults.recent_retention_days) == (60.0, 3)


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"recent_fold_interval_s": 0.01}, r"recent_fold_interval_s \(0 turns folding off\): interval_s must be from"),
        ({"recent_fold_interval_s": -5}, "recent_fold_interval_s"),
        ({"recent_fold_interval_s": "60"}, "recent_fold_interval_s"),
        ({"recent_retention_days": 0}, f"whole number of days from 1 to {MAX_RECENT_RETENTION_DAYS}, got 0"),
        ({"recent_retention_days": 2.5}, "recent_retention_days must be a whole number of days"),
        ({"recent_retention_days": True}, "recent_retention_days must be a whole number of days"),
        ({"recent_retention_days": MAX_RECENT_RETENTION_DAYS + 1}, "recent_retention_days"),
    ],
)  # fmt: skip
def test_a_bad_recent_tier_setting_is_refused_naming_it(options: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        OpMetrics("sqlite:///x.sqlite3", **options)  # type: ignore[arg-type]


def test_a_bad_recent_tier_environment_variable_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPMETRICS_RECENT_RETENTION_DAYS", "a week")
    with pytest.raises(ConfigurationError, match="OPMETRICS_RECENT_RETENTION_DAYS must be a number"):
        OpMetrics("sqlite:///x.sqlite3")
    monkeypatch.delenv("OPMETRICS_RECENT_RETENTION_DAYS")
    monkeypatch.setenv("OPMETRICS_RECENT_FOLD_INTERVAL_S", "0.05")
    with pytest.raises(ValueError, match=r"OPMETRICS_RECENT_FOLD_INTERVAL_S \(0 turns folding off\)"):
        OpMetrics("sqlite:///x.sqlite3")


def test_a_failing_fold_is_logged_once_per_interval_and_never_stops_the_worker(
    sqlite_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    upgrade(sqlite_url, revision="0004")  # the recent tier's tables come with 0005: every fold fails
    caplog.set_level(logging.WARNING, "dramatiq_opmetrics.recent_tier")
    opmetrics = OpMetrics(sqlite_url, flush_interval_s=0.1, recent_fold_interval_s=0.2)
    broker = make_stub_broker(opmetrics)

    @dramatiq.actor(broker=broker)
    def noop() -> None:
        pass

    def skipped() -> list[str]:
        messages = [record.getMessage() for record in caplog.records if record.name == "dramatiq_opmetrics.recent_tier"]
        return [
            match.group(1)
            for match in map(re.compile(r"skipped the interval starting (\S+): ").search, messages)
            if match
        ]

    worker = dramatiq.Worker(broker, worker_timeout=20, worker_threads=2)
    worker.start()
    try:
        wait_until(lambda: len(skipped()) >= 3, timeout_s=15, what="three failed folds")
        for _ in range(10):
            noop.send()
        broker.join("default")
        worker.join()
    finally:
        worker.stop()
    starts = skipped()
    assert len(starts) == len(set(starts))  # one warning per interval
    assert all(
        "opmetrics_recent_state" in record.getMessage() for record in caplog.records if "skipped" in record.getMessage()
    )
    engine = make_engine(sqlite_url)
    try:
        assert raw_counts(engine)[("processing_time", "actor:noop|queue:default")] == 10
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_a_stopping_worker_does_not_wait_for_a_fold_blocked_on_the_database(
    postgres_engine: Engine, postgres_url: URL
) -> None:
    shutdown_timeout_s = 2.0
    opmetrics = OpMetrics(
        postgres_url, flush_interval_s=0.1, recent_fold_interval_s=0.2, shutdown_timeout_s=shutdown_timeout_s
    )
    broker = make_stub_broker(opmetrics)

    @dramatiq.actor(broker=broker)
    def noop() -> None:
        pass

    for _ in range(5):
        noop.send()
    with postgres_engine.connect() as blocker:
        blocker.begin()
        advisory_xact_lock(blocker, FOLD_LOCK)  # as if another process's fold held the lock for long
        blocker_pid = blocker.execute(text("SELECT pg_backend_pid()")).scalar_one()
        worker = dramatiq.Worker(broker, worker_timeout=20, worker_threads=2)
        worker.start()
        try:
            broker.join("default")

            def fold_is_blocked() -> bool:
                with postgres_engine.connect() as connection:
                    waiting = connection.execute(
                        text("SELECT count(*) FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))"),
                        {"pid": blocker_pid},
                    ).scalar_one()
                return bool(waiting)

            wait_until(fold_is_blocked, timeout_s=10, what="the worker's fold to wait for the lock")
        finally:
            started = time.monotonic()
            worker.stop()
            stop_s = time.monotonic() - started
        assert stop_s < shutdown_timeout_s + 0.5  # the documented bound; the fold would wait for 30 s
        assert fold_threads(), "the blocked fold is left to its daemon thread"
        assert tier_counts(postgres_engine) == Counter()
        blocker.commit()
    # Once the lock is free, the fold left behind finishes and commits everything written, once.
    wait_until(lambda: not fold_threads(), timeout_s=10, what="the fold left behind to end")
    assert tier_counts(postgres_engine) == folded_raw_counts(postgres_engine)
    with postgres_engine.connect() as connection:
        assert read_state(connection) is not None  # it committed (the minute in progress waits for a later fold)


ALERT_RULES = """
[settings]
evaluation_interval = "1s"

[notifiers.ops]
urls = ["{url}"]

[[rules]]
name = "no-workers"
metric = "worker_threads"
statistic = "count"
below = 1
window = "1m"
no_data = "alert"
notify = ["ops"]
"""


def test_a_worker_given_alert_rules_evaluates_them_delivers_and_stops_its_alert_threads(
    postgres_engine: Engine, postgres_url: URL, tmp_path: Path, json_server: JsonHttpServer
) -> None:
    rules = tmp_path / "alerts.toml"
    rules.write_text(ALERT_RULES.format(url=json_server.apprise_url()))
    opmetrics = OpMetrics(postgres_url, flush_interval_s=3600, queue_depth_interval_s=0, alert_rules=rules)
    broker = make_stub_broker(opmetrics)
    worker = dramatiq.Worker(broker, worker_timeout=20, worker_threads=1)
    worker.start()
    try:
        [(_, body)] = json_server.wait_for_bodies(1, timeout_s=15)
        assert body["title"].startswith("[FIRING] no-workers")
        assert opmetrics.alert_evaluator is not None
    finally:
        worker.stop()
    assert opmetrics.alert_evaluator is None
    assert not {t.name for t in threading.enumerate()} & {"opmetrics-alert-evaluation", "opmetrics-alert-delivery"}
    assert len(json_server.bodies) == 1


def test_a_bad_alert_rule_file_is_refused_when_the_middleware_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rules = tmp_path / "alerts.toml"
    rules.write_text('[[rules]]\nname = "x"\nmetric = "nope"\n')
    with pytest.raises(RuleFileError, match=r"alerts\.toml"):
        OpMetrics("sqlite:///x.sqlite3", alert_rules=rules)
    monkeypatch.setenv("OPMETRICS_ALERT_RULES", str(tmp_path / "missing.toml"))
    with pytest.raises(RuleFileError, match=r"missing\.toml: no such file"):
        OpMetrics("sqlite:///x.sqlite3")
