from __future__ import annotations

import datetime as dt
import logging

import pytest
from lock_waits import TimedWrites, long_read
from raw_samples import insert_many_rows, insert_samples
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from dramatiq_opmetrics import MetricsCollector
from dramatiq_opmetrics.metric_types import MetricType
from dramatiq_opmetrics.partitions import (
    _DEFAULT_PARTITION_DAYS_SQL,
    DEFAULT_PARTITION,
    DEFAULT_PARTITION_TIME_INDEX,
    default_partition_days,
    drop_partition,
    ensure_partitions,
    list_partitions,
    partition_name,
    summarize_new_pages,
)
from dramatiq_opmetrics.query import days_that_may_hold_raw_rows

DAY = dt.date(2026, 1, 10)


def at(day: dt.date, hour: int = 12) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour), tzinfo=dt.UTC)


def count(engine: Engine, table: str) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def test_migrate_creates_partitions_from_today_for_the_week_ahead(postgres_engine: Engine) -> None:
    today = dt.datetime.now(dt.UTC).date()
    with postgres_engine.connect() as connection:
        days = list(list_partitions(connection))
    assert days[0] == today
    assert days[-1] == today + dt.timedelta(days=7)


def test_rows_land_in_their_days_partition(postgres_engine: Engine) -> None:
    with postgres_engine.begin() as connection:
        ensure_partitions(connection, DAY, DAY)
    with Session(postgres_engine) as session, session.begin():
        MetricsCollector(session).record_processing_time("a", 1, recorded_at=at(DAY))
        MetricsCollector(session).record_processing_time("a", 1, recorded_at=at(DAY, 23))
    assert count(postgres_engine, partition_name(DAY)) == 2
    assert count(postgres_engine, DEFAULT_PARTITION) == 0


def test_rows_of_a_day_without_partition_go_to_the_default_partition_and_move_when_it_is_created(
    postgres_engine: Engine,
) -> None:
    with Session(postgres_engine) as session, session.begin():
        MetricsCollector(session).record_processing_time("a", 1, recorded_at=at(DAY))
        MetricsCollector(session).record_processing_time("a", 2, recorded_at=at(DAY + dt.timedelta(days=1)))
    assert count(postgres_engine, DEFAULT_PARTITION) == 2

    with postgres_engine.begin() as connection:
        assert ensure_partitions(connection, DAY, DAY) == [DAY]

    assert count(postgres_engine, partition_name(DAY)) == 1
    assert count(postgres_engine, DEFAULT_PARTITION) == 1
    assert count(postgres_engine, "operational_metrics") == 2


def test_ensure_partitions_is_idempotent(postgres_engine: Engine) -> None:
    with postgres_engine.begin() as connection:
        assert ensure_partitions(connection, DAY, DAY + dt.timedelta(days=2)) == [
            DAY,
            DAY + dt.timedelta(days=1),
            DAY + dt.timedelta(days=2),
        ]
        assert ensure_partitions(connection, DAY, DAY + dt.timedelta(days=2)) == []


def test_creating_a_partition_behind_a_long_reader_never_makes_a_write_wait_and_a_later_call_creates_it(
    postgres_url: URL, postgres_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    with Session(postgres_engine) as session, session.begin():
        MetricsCollector(session).record_processing_time("a", 1, recorded_at=at(DAY))
    with (
        caplog.at_level(logging.WARNING, logger="dramatiq_opmetrics.partitions"),
        TimedWrites(postgres_url) as writes,
        long_read(postgres_url, 1.0),
        postgres_engine.begin() as connection,
    ):
        assert ensure_partitions(connection, DAY, DAY) == []
        assert connection.execute(text("SELECT 1")).scalar_one() == 1  # the caller's transaction goes on
        writes_meanwhile = len(writes.latencies_s)
    assert [r.day for r in caplog.records if getattr(r, "event", None) == "partition_busy"] == [DAY.isoformat()]
    assert len(writes.latencies_s) > writes_meanwhile
    assert max(writes.latencies_s) < 0.2, sorted(writes.latencies_s)[-5:]
    with postgres_engine.begin() as connection:
        assert ensure_partitions(connection, DAY, DAY) == [DAY]
    assert count(postgres_engine, partition_name(DAY)) == 1
    assert count(postgres_engine, DEFAULT_PARTITION) == 0


def test_drop_partition_removes_that_day_only(postgres_engine: Engine) -> None:
    next_day = DAY + dt.timedelta(days=1)
    with postgres_engine.begin() as connection:
        ensure_partitions(connection, DAY, next_day)
    with Session(postgres_engine) as session, session.begin():
        MetricsCollector(session).record_processing_time("a", 1, recorded_at=at(DAY))
        MetricsCollector(session).record_processing_time("a", 1, recorded_at=at(next_day))
    with postgres_engine.begin() as connection:
        assert drop_partition(connection, DAY)
        assert not drop_partition(connection, DAY)
        assert summarize_new_pages(connection, [DAY]) == 0
    assert count(postgres_engine, "operational_metrics") == 1


def test_partition_functions_do_nothing_on_sqlite(engine: Engine) -> None:
    with engine.begin() as connection:
        if connection.dialect.name != "sqlite":
            return
        assert ensure_partitions(connection, DAY, DAY) == []
        assert list_partitions(connection) == {}
        assert not drop_partition(connection, DAY)
        assert summarize_new_pages(connection, [DAY]) == 0


def heap_blocks_read(engine: Engine, table: str, before: dt.datetime) -> int:
    """Heap blocks a read of ``table``'s rows recorded before ``before`` (none) reads through its time index."""
    with engine.begin() as connection:
        connection.execute(text("SET LOCAL enable_seqscan = off"))
        [plan] = connection.execute(
            text(f"EXPLAIN (ANALYZE, FORMAT JSON) SELECT count(*) FROM {table} WHERE recorded_at < :before"),
            {"before": before},
        ).scalar_one()
    node = plan["Plan"]
    while node["Node Type"] != "Bitmap Heap Scan":
        [node] = node["Plans"]
    return int(node.get("Lossy Heap Blocks", 0)) + int(node.get("Exact Heap Blocks", 0))


def test_summarizing_new_pages_lets_a_time_range_read_skip_them_and_waits_for_no_vacuum(
    postgres_engine: Engine,
) -> None:
    today = dt.datetime.now(dt.UTC).date()
    partition = partition_name(today)
    insert_many_rows(postgres_engine, at(today), 60_000)  # over 128-page ranges: several of them
    with postgres_engine.connect() as connection:
        pages = connection.execute(text(f"SELECT pg_relation_size('{partition}') / 8192")).scalar_one()
    assert pages > 3 * 128
    # Not summarised: a read of an hour without rows reads every page written since the index was made (but
    # those of its first range, summarised from the start).
    assert heap_blocks_read(postgres_engine, partition, at(today, 1)) >= pages - 128
    with postgres_engine.begin() as connection:
        assert summarize_new_pages(connection, [today, today + dt.timedelta(days=400)]) >= 2
    with postgres_engine.begin() as connection:
        assert summarize_new_pages(connection, [today]) == 0
    # Only the range being filled (128 pages at most) is read whole now.
    assert heap_blocks_read(postgres_engine, partition, at(today, 1)) <= 128

    # Behind a vacuum's lock (SHARE UPDATE EXCLUSIVE) it gives up within the short lock timeout.
    insert_many_rows(postgres_engine, at(today), 30_000)
    with postgres_engine.connect() as vacuum_like:
        vacuum_like.execute(text(f"LOCK TABLE {partition} IN SHARE UPDATE EXCLUSIVE MODE"))
        with postgres_engine.begin() as connection:
            assert summarize_new_pages(connection, [today]) == 0
            assert connection.execute(text("SELECT 1")).scalar_one() == 1  # its transaction goes on
        vacuum_like.rollback()
    with postgres_engine.begin() as connection:
        assert summarize_new_pages(connection, [today]) > 0


def test_the_days_with_rows_in_the_default_partition_are_found_by_its_index_in_utc_whatever_the_session_zone(
    postgres_engine: Engine,
) -> None:
    later = [DAY + dt.timedelta(days=n) for n in range(7)]
    labels = {"actor": "a", "queue": "q"}
    edges = [
        at(DAY, 0) - dt.timedelta(microseconds=1),  # the last instant of the day before
        at(DAY, 0),
        at(later[2], 23) + dt.timedelta(minutes=59, seconds=59, microseconds=999_999),
        at(later[5], 0),
    ]
    insert_samples(postgres_engine, [(MetricType.PROCESSING_TIME, labels, 1.0, moment) for moment in edges])
    insert_many_rows(postgres_engine, at(later[2], 1), 20_000)  # a day of many rows costs one probe too
    with postgres_engine.begin() as connection:
        ensure_partitions(connection, later[6], later[6])  # a day with a partition has no rows here
    insert_samples(postgres_engine, [(MetricType.PROCESSING_TIME, labels, 1.0, at(later[6]))])
    with postgres_engine.connect() as connection:
        connection.execute(text("SET TimeZone = 'Pacific/Kiritimati'"))  # UTC+14: every local date differs
        connection.execute(text("ANALYZE operational_metrics_default"))
        expected = [DAY - dt.timedelta(days=1), DAY, later[2], later[5]]
        assert default_partition_days(connection) == expected
        assert default_partition_days(connection, DAY, later[5]) == expected[1:]
        assert default_partition_days(connection, later[1], later[4]) == [later[2]]
        assert default_partition_days(connection, later[3], later[4]) == []
        assert days_that_may_hold_raw_rows(connection, DAY, later[6]) == [DAY, later[2], later[5], later[6]]
        # One probe of the B-tree per day found, never a scan of the partition's rows.
        plan = "\n".join(
            connection.execute(
                text(f"EXPLAIN {_DEFAULT_PARTITION_DAYS_SQL}"),
                {"low": at(DAY), "high": at(later[6])},
            ).scalars()
        )
        assert DEFAULT_PARTITION_TIME_INDEX in plan and "Seq Scan" not in plan, plan
        # A database not migrated to 0014 yet: the same days, from its rows.
        connection.execute(text(f"DROP INDEX {DEFAULT_PARTITION_TIME_INDEX}"))
        assert default_partition_days(connection) == expected
        assert default_partition_days(connection, later[1], later[4]) == [later[2]]
