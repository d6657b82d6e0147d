"""The periodic actor, through periodiq's real cron spec, scheduler code and PeriodiqMiddleware."""

from __future__ import annotations

import datetime as dt
import logging
import signal
from collections.abc import Iterator

import pendulum
import periodiq
import pytest
from dramatiq import Message, Worker
from dramatiq.brokers.stub import StubBroker
from raw_samples import at, insert_samples
from sqlalchemy import func, select
from sqlalchemy.engine import URL

from dramatiq_opmetrics.database import make_engine
from dramatiq_opmetrics.metric_types import MetricType
from dramatiq_opmetrics.migrate import upgrade
from dramatiq_opmetrics.models import OperationalMetricDaily
from dramatiq_opmetrics.periodic import DEFAULT_ROLLUP_QUEUE, ROLLUP_ACTOR_NAME, register_rollup_actor

LOCAL_0130 = pendulum.datetime(2026, 11, 27, 1, 30, tz=pendulum.local_timezone())


@pytest.fixture
def broker() -> Iterator[StubBroker]:
    broker = StubBroker()
    broker.emit_after("process_boot")
    yield broker
    broker.close()


@pytest.fixture
def metrics_url(sqlite_url: URL) -> URL:
    """A migrated SQLite database with 30 samples of yesterday (UTC), not rolled up."""
    upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    insert_samples(engine, [(MetricType.WAIT_TIME, {"queue": "q"}, float(i), at(yesterday, i)) for i in range(30)])
    engine.dispose()
    return sqlite_url


def freeze_periodiq_clock(monkeypatch: pytest.MonkeyPatch, now: pendulum.DateTime) -> None:
    monkeypatch.setattr(pendulum, "now", lambda tz=None: now)


def rolled_up_samples(url: URL) -> int:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(select(func.sum(OperationalMetricDaily.sample_count))).scalar() or 0)
    finally:
        engine.dispose()


def run_scheduler_once(broker: StubBroker) -> None:
    """periodiq's own scheduling step over the broker's periodic actors (as ``periodiq`` selects them): send
    the actors due now, then arm the alarm for the next one (disarmed here)."""
    actors = [actor for actor in broker.actors.values() if "periodic" in actor.options]
    previous = signal.getsignal(signal.SIGALRM)
    try:
        periodiq.Scheduler(actors=actors).schedule()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def process_queue(broker: StubBroker) -> None:
    worker = Worker(broker, worker_timeout=100, worker_threads=1)
    worker.start()
    try:
        broker.join(DEFAULT_ROLLUP_QUEUE, fail_fast=True, timeout=30_000)
        worker.join()
    finally:
        worker.stop()


def test_the_actor_is_registered_on_its_own_queue_for_01_30_under_periodiq(
    broker: StubBroker, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="dramatiq_opmetrics.periodic"):
        actor = register_rollup_actor(broker, "sqlite:///unused.sqlite3")
    assert broker.get_actor(ROLLUP_ACTOR_NAME) is actor
    assert actor.queue_name == DEFAULT_ROLLUP_QUEUE == "opmetrics_rollup"
    assert [type(m) for m in broker.middleware].count(periodiq.PeriodiqMiddleware) == 1
    spec = actor.options["periodic"]
    assert spec == periodiq.cron("30 1 * * *")
    assert spec.validate(LOCAL_0130)
    assert not spec.validate(LOCAL_0130.add(minutes=1))
    assert spec.next_valid_date(LOCAL_0130) == LOCAL_0130.add(days=1)
    assert spec.next_valid_date(LOCAL_0130.subtract(hours=3)) == LOCAL_0130
    assert "Registered actor opmetrics_rollup on queue opmetrics_rollup with schedule '30 1 * * *'" in caplog.text


def test_a_periodiq_middleware_already_on_the_broker_is_kept(broker: StubBroker) -> None:
    mine = periodiq.PeriodiqMiddleware(skip_delay=600)
    broker.add_middleware(mine)
    register_rollup_actor(broker, "sqlite:///unused.sqlite3", queue_name="maintenance")
    assert [m for m in broker.middleware if isinstance(m, periodiq.PeriodiqMiddleware)] == [mine]
    assert broker.get_actor(ROLLUP_ACTOR_NAME).queue_name == "maintenance"


def test_the_scheduler_sends_the_message_at_01_30_and_a_worker_rolls_up(
    broker: StubBroker, metrics_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    register_rollup_actor(broker, metrics_url)
    freeze_periodiq_clock(monkeypatch, LOCAL_0130)
    run_scheduler_once(broker)
    [data] = list(broker.queues[DEFAULT_ROLLUP_QUEUE].queue)
    message = Message.decode(data)
    assert (message.actor_name, message.options["scheduled_at"]) == (ROLLUP_ACTOR_NAME, str(LOCAL_0130))
    process_queue(broker)
    assert rolled_up_samples(metrics_url) == 30


def test_the_scheduler_sends_nothing_at_other_times(broker: StubBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    register_rollup_actor(broker, "sqlite:///unused.sqlite3")
    freeze_periodiq_clock(monkeypatch, LOCAL_0130.add(minutes=1))
    run_scheduler_once(broker)
    assert broker.queues[DEFAULT_ROLLUP_QUEUE].qsize() == 0


def test_a_message_older_than_periodiqs_skip_delay_is_skipped(
    broker: StubBroker, metrics_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    register_rollup_actor(broker, metrics_url)
    freeze_periodiq_clock(monkeypatch, LOCAL_0130)
    run_scheduler_once(broker)
    freeze_periodiq_clock(monkeypatch, LOCAL_0130.add(seconds=31))  # the queue was backed up
    process_queue(broker)
    assert rolled_up_samples(metrics_url) == 0


def test_a_bad_retention_fails_at_registration_not_at_01_30(broker: StubBroker) -> None:
    with pytest.raises(ValueError, match="retention_days must be a whole number of days"):
        register_rollup_actor(broker, "sqlite:///unused.sqlite3", retention_days=0)
    assert ROLLUP_ACTOR_NAME not in broker.actors
