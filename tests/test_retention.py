"""Retention: raw rows of rolled-up days past the retention go; nothing that is not rolled up ever does."""

from __future__ import annotations

import datetime as dt
import logging

import pytest
from lock_waits import TimedWrites, long_read
from raw_samples import at, insert_samples
from sqlalchemy import Engine, func, select, text
from sqlalchemy.engine import URL

from dramatiq_opmetrics import retention
from dramatiq_opmetrics.aggregate import raw_counts_by_day
from dramatiq_opmetrics.metric_types import MetricType
from dramatiq_opmetrics.models import OperationalMetricDaily
from dramatiq_opmetrics.partitions import (
    ensure_partitions,
    list_detached_partitions,
    list_partitions,
    partition_name,
)
from dramatiq_opmetrics.retention import DEFAULT_RETENTION_DAYS, KeptDay, PrunedDay, prune
from dramatiq_opmetrics.rollup import rollup

TODAY = dt.date(2026, 11, 20)
NOW = dt.datetime(2026, 11, 20, 1, 30, tzinfo=dt.UTC)


def days_ago(n: int) -> dt.date:
    return TODAY - dt.timedelta(days=n)


def record(engine: Engine, day: dt.date, count: int = 20, actor: str = "a") -> None:
    insert_samples(
        engine,
        [(MetricType.PROCESSING_TIME, {"actor": actor}, float(i + 1), at(day, i * 60)) for i in range(count)],
    )


def raw_days(engine: Engine) -> dict[dt.date, int]:
    with engine.connect() as connection:
        return raw_counts_by_day(connection)


def daily_count(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.sum(OperationalMetricDaily.sample_count))).scalar() or 0)


def test_the_default_retention_is_30_days() -> None:
    assert DEFAULT_RETENTION_DAYS == 30


def test_prune_never_removes_a_day_that_is_not_rolled_up(engine: Engine) -> None:
    record(engine, days_ago(45))
    result = prune(engine, now=NOW)
    assert result.pruned == []
    assert result.kept == [KeptDay(days_ago(45), 20, "not rolled up")]
    assert raw_days(engine) == {days_ago(45): 20}


def test_prune_removes_rolled_up_days_older_than_the_retention_and_keeps_daily_rows(engine: Engine) -> None:
    for n in (40, 31, 30, 10):
        record(engine, days_ago(n))
    rollup(engine, now=NOW)
    result = prune(engine, now=NOW)
    assert [(d.day, d.rows) for d in result.pruned] == [(days_ago(40), 20), (days_ago(31), 20)]
    assert raw_days(engine) == {days_ago(30): 20, days_ago(10): 20}
    assert daily_count(engine) == 80
    assert prune(engine, now=NOW).pruned == []


def test_prune_keeps_a_day_whose_late_samples_are_not_rolled_up_yet(engine: Engine) -> None:
    record(engine, days_ago(35))
    rollup(engine, now=NOW)
    record(engine, days_ago(35), count=3, actor="late")
    result = prune(engine, now=NOW)
    assert result.kept == [KeptDay(days_ago(35), 23, "3 samples not rolled up yet")]
    assert raw_days(engine) == {days_ago(35): 23}
    rollup(engine, now=NOW)
    assert [d.day for d in prune(engine, now=NOW).pruned] == [days_ago(35)]
    assert daily_count(engine) == 23


def test_a_dry_run_reports_and_removes_nothing(engine: Engine) -> None:
    record(engine, days_ago(40))
    rollup(engine, now=NOW)
    result = prune(engine, now=NOW, dry_run=True)
    assert result.dry_run
    assert [(d.day, d.rows) for d in result.pruned] == [(days_ago(40), 20)]
    assert raw_days(engine) == {days_ago(40): 20}


def test_the_retention_is_configurable_and_checked(engine: Engine) -> None:
    record(engine, days_ago(3))
    rollup(engine, now=NOW)
    assert prune(engine, now=NOW, retention_days=7).pruned == []
    assert [d.day for d in prune(engine, now=NOW, retention_days=2).pruned] == [days_ago(3)]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="retention_days must be a whole number of days"):
            prune(engine, now=NOW, retention_days=bad)  # type: ignore[arg-type]


def test_each_prune_is_logged_with_what_was_removed(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    record(engine, days_ago(40))
    rollup(engine, now=NOW)
    with caplog.at_level(logging.INFO, logger="dramatiq_opmetrics.retention"):
        [pruned] = prune(engine, now=NOW).pruned
    [log] = [r for r in caplog.records if getattr(r, "event", None) == "prune_day"]
    assert log.getMessage() == f"Removed raw rows of day {days_ago(40)}: rows=20 method={pruned.method}"


@pytest.mark.postgres
def test_postgres_drops_the_day_partition_and_the_days_rows_in_the_default_partition(postgres_engine: Engine) -> None:
    with postgres_engine.begin() as connection:
        ensure_partitions(connection, days_ago(40), days_ago(40))
    record(postgres_engine, days_ago(40))
    record(postgres_engine, days_ago(39))  # no partition: lands in the default partition
    record(postgres_engine, days_ago(2))
    rollup(postgres_engine, now=NOW)
    result = prune(postgres_engine, now=NOW)
    assert result.pruned == [
        PrunedDay(days_ago(40), 20, "partition"),
        PrunedDay(days_ago(39), 20, "delete"),
    ]
    with postgres_engine.connect() as connection:
        assert days_ago(40) not in list_partitions(connection)
        assert connection.execute(text("SELECT count(*) FROM operational_metrics_default")).scalar_one() == 20
    assert raw_days(postgres_engine) == {days_ago(2): 20}


@pytest.mark.postgres
def test_postgres_drops_old_empty_partitions(postgres_engine: Engine) -> None:
    with postgres_engine.begin() as connection:
        ensure_partitions(connection, days_ago(33), days_ago(31))
    result = prune(postgres_engine, now=NOW)
    assert [(d.day, d.rows) for d in result.pruned] == [(days_ago(n), 0) for n in (33, 32, 31)]
    with postgres_engine.connect() as connection:
        assert not [day for day in list_partitions(connection) if day < days_ago(30)]


def test_the_lock_timeout_and_attempts_are_checked(engine: Engine) -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="lock_timeout_ms must be a whole number of milliseconds"):
            prune(engine, now=NOW, lock_timeout_ms=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="lock_attempts must be a whole number"):
            prune(engine, now=NOW, lock_attempts=bad)  # type: ignore[arg-type]


#: The longest a write may wait while a prune runs behind a long reader (issue 14's bound).
MAX_WRITE_WAIT_S = 0.2


@pytest.mark.postgres
def test_a_prune_behind_a_long_reader_never_makes_a_write_wait_and_completes_once_the_reader_is_done(
    postgres_url: URL, postgres_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    with postgres_engine.begin() as connection:
        ensure_partitions(connection, days_ago(40), days_ago(38))
    record(postgres_engine, days_ago(40))
    record(postgres_engine, days_ago(39))
    rollup(postgres_engine, now=NOW)
    record(postgres_engine, days_ago(38))  # not rolled up: must survive
    with (
        caplog.at_level(logging.INFO, logger="dramatiq_opmetrics.retention"),
        TimedWrites(postgres_url) as writes,
        long_read(postgres_url, 3.0),
    ):
        result = prune(postgres_engine, now=NOW)
    assert result.pruned == [PrunedDay(days_ago(40), 20, "partition"), PrunedDay(days_ago(39), 20, "partition")]
    assert result.kept == [KeptDay(days_ago(38), 20, "not rolled up")]
    assert len(writes.latencies_s) > 100  # writes went on all along the 3 s
    assert max(writes.latencies_s) < MAX_WRITE_WAIT_S, sorted(writes.latencies_s)[-5:]
    busy = [r for r in caplog.records if getattr(r, "event", None) == "prune_day_busy"]
    assert busy and {r.day for r in busy} == {days_ago(40).isoformat()}  # the reader was in the prune's way
    assert raw_days(postgres_engine) == {days_ago(38): 20, dt.datetime.now(dt.UTC).date(): len(writes.latencies_s) + 1}


@pytest.mark.postgres
def test_a_day_whose_partition_stays_busy_is_kept_and_removed_by_the_next_prune(
    postgres_url: URL, postgres_engine: Engine
) -> None:
    with postgres_engine.begin() as connection:
        ensure_partitions(connection, days_ago(40), days_ago(40))
    record(postgres_engine, days_ago(40))
    rollup(postgres_engine, now=NOW)
    with TimedWrites(postgres_url) as writes, long_read(postgres_url, 1.0):
        result = prune(postgres_engine, now=NOW, lock_attempts=1)
    reason = "raw table busy: its lock was not granted within 50 ms, 1 times; the next run tries again"
    assert (result.pruned, result.kept) == ([], [KeptDay(days_ago(40), 20, reason)])
    assert max(writes.latencies_s) < MAX_WRITE_WAIT_S, sorted(writes.latencies_s)[-5:]
    assert raw_days(postgres_engine)[days_ago(40)] == 20
    assert prune(postgres_engine, now=NOW).pruned == [PrunedDay(days_ago(40), 20, "partition")]
    assert days_ago(40) not in raw_days(postgres_engine)


@pytest.mark.postgres
def test_a_partition_left_detached_by_an_interrupted_prune_is_dropped_by_the_next_one_once_rolled_up(
    postgres_engine: Engine,
) -> None:
    with postgres_engine.begin() as connection:
        ensure_partitions(connection, days_ago(40), days_ago(39))
    record(postgres_engine, days_ago(40))
    rollup(postgres_engine, now=NOW)
    record(postgres_engine, days_ago(39))  # not rolled up
    with postgres_engine.begin() as connection:  # as a prune that died between its detach and its drop would
        for day in (days_ago(40), days_ago(39)):
            connection.execute(text(f"ALTER TABLE operational_metrics DETACH PARTITION {partition_name(day)}"))
    result = prune(postgres_engine, now=NOW)
    assert result.pruned == [PrunedDay(days_ago(40), 20, "partition")]
    assert result.kept == [KeptDay(days_ago(39), 20, "not rolled up")]
    with postgres_engine.connect() as connection:
        assert list(list_detached_partitions(connection)) == [days_ago(39)]
        assert connection.execute(text(f"SELECT count(*) FROM {partition_name(days_ago(39))}")).scalar_one() == 20


def test_sqlite_deletes_in_batches_and_resumes_an_interrupted_prune(
    sqlite_url: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dramatiq_opmetrics.database import make_engine
    from dramatiq_opmetrics.migrate import upgrade

    upgrade(sqlite_url)  # type: ignore[arg-type]
    engine = make_engine(sqlite_url)  # type: ignore[arg-type]
    try:
        record(engine, days_ago(40), count=50)
        rollup(engine, now=NOW)
        with engine.begin() as connection:  # as if a prune was interrupted after a batch
            connection.execute(
                text("DELETE FROM operational_metrics WHERE id IN (SELECT id FROM operational_metrics LIMIT 7)")
            )
        monkeypatch.setattr(retention, "PRUNE_BATCH_ROWS", 6)
        assert [(d.day, d.rows, d.method) for d in prune(engine, now=NOW).pruned] == [(days_ago(40), 43, "delete")]
        assert raw_days(engine) == {}
    finally:
        engine.dispose()
