"""The recent tier: each raw row folded exactly once (re-runs, late samples, concurrent folders, writers still in
their transactions), retention, and the nightly rollup untouched."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import psycopg
import pytest
from conftest import libpq_conninfo
from raw_samples import insert_many_rows, insert_samples
from series_samples import fleet_samples
from sqlalchemy import Engine, select, text
from sqlalchemy.engine import URL

from dramatiq_opmetrics.aggregate import PERCENTILES, aggregate_raw
from dramatiq_opmetrics.database import make_engine
from dramatiq_opmetrics.interval_claims import DatabaseIntervalClaim
from dramatiq_opmetrics.label_sets import resolve_label_set_ids
from dramatiq_opmetrics.labels import make_label_set
from dramatiq_opmetrics.metric_types import MetricType
from dramatiq_opmetrics.migrate import downgrade
from dramatiq_opmetrics.models import OperationalMetric, RecentAggregate, RecentDay, RecentHour, RecentState
from dramatiq_opmetrics.packed_histograms import sum_of_packed, unpack
from dramatiq_opmetrics.partitions import day_bounds, partition_name
from dramatiq_opmetrics.recent_tier import (
    WIDTHS_MINUTES,
    FoldResult,
    RecentTierFolder,
    bucket_floor,
    day_aggregates,
    days_floor,
    fold,
    quantiles_of_keys,
    read_state,
)
from dramatiq_opmetrics.rollup import daily_totals, rollup
from dramatiq_opmetrics.series import query_series
from dramatiq_opmetrics.sketch import Histogram, histogram_of_keys, signed_bucket_key

NOW = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)


def tier_rows(
    engine: Engine, width: int
) -> dict[tuple[dt.datetime, str, int], tuple[int, float, float, float, Counter]]:
    t = RecentAggregate
    with engine.connect() as connection:
        rows = connection.execute(
            select(t.bucket_start, t.metric_type, t.label_set_id, t.count, t.sum, t.min, t.max, t.keys).where(
                t.width_minutes == width
            )
        ).all()
    return {(r[0], MetricType(r[1]).value, r[2]): (r[3], r[4], r[5], r[6], Counter(r[7])) for r in rows}


def expected_rows(
    engine: Engine, width: int
) -> dict[tuple[dt.datetime, str, int], tuple[int, float, float, float, Counter]]:
    """What numpy says the tier must hold, from the raw rows themselves: those of whole minutes from its floor
    to its cutoff in 1-minute buckets, those of the wider buckets built so far in those."""
    raw = OperationalMetric.__table__
    with engine.connect() as connection:
        state = read_state(connection)
        rows = connection.execute(select(raw.c.recorded_at, raw.c.metric_type, raw.c.label_set_id, raw.c.value)).all()
    assert state is not None
    groups: dict[tuple[dt.datetime, str, int], list[float]] = {}
    for recorded_at, metric_type, label_set_id, value in rows:
        start = bucket_floor(recorded_at, width)
        if not (
            state.floor <= recorded_at < state.cutoff and start + dt.timedelta(minutes=width) <= state.until(width)
        ):
            continue
        key = (start, MetricType(metric_type).value, label_set_id)
        groups.setdefault(key, []).append(value)
    return {
        key: (
            len(values),
            float(np.sum(values)),
            float(np.min(values)),
            float(np.max(values)),
            Counter(signed_bucket_key(value) for value in values),
        )
        for key, values in groups.items()
    }


def day_rows(engine: Engine) -> dict[tuple[dt.date, str, int], tuple[int, float, float, float, Histogram]]:
    return period_rows(engine, RecentDay)


def period_rows(engine: Engine, table: type[RecentDay] | type[RecentHour]) -> dict[tuple[Any, str, int], tuple]:
    """The day rows or the hour rows, by (day or UTC hour, metric type, label set)."""
    period = RecentDay.day if table is RecentDay else RecentHour.hour
    with engine.connect() as connection:
        rows = connection.execute(
            select(period, table.metric_type, table.label_set_id, table.count, table.sum, table.min, table.max,
                   table.histogram_packed)
        ).all()  # fmt: skip
    return {(r[0], MetricType(r[1]).value, r[2]): (r[3], r[4], r[5], r[6], unpack(r[7])) for r in rows}


def expected_day_rows(engine: Engine) -> dict[tuple[Any, str, int], tuple]:
    return expected_period_rows(engine, lambda at: at.date())


def expected_period_rows(engine: Engine, period_of: Callable[[dt.datetime], Any]) -> dict[tuple[Any, str, int], tuple]:
    """What the day rows (or, with ``period_of`` the hour, the hour rows) must hold, from the raw rows: those of
    each day (hour) from the tier's first whole day on, recorded before where the day rows stop."""
    raw = OperationalMetric.__table__
    with engine.connect() as connection:
        state = read_state(connection)
        rows = connection.execute(select(raw.c.recorded_at, raw.c.metric_type, raw.c.label_set_id, raw.c.value)).all()
    assert state is not None and state.days_until is not None
    groups: dict[tuple[Any, str, int], list[float]] = {}
    for recorded_at, metric_type, label_set_id, value in rows:
        if days_floor(state.floor) <= recorded_at < state.days_until:
            groups.setdefault((period_of(recorded_at), MetricType(metric_type).value, label_set_id), []).append(value)
    return {
        key: (len(values), float(np.sum(values)), min(values), max(values), Histogram.of(values))
        for key, values in groups.items()
    }


def assert_tier_is_exact(engine: Engine) -> None:
    for width in WIDTHS_MINUTES:
        assert tier_rows(engine, width) == expected_rows(engine, width)
    assert day_rows(engine) == expected_day_rows(engine)
    hour_of = lambda at: at.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)  # noqa: E731
    assert period_rows(engine, RecentHour) == expected_period_rows(engine, hour_of)


def test_each_raw_row_is_folded_once_and_a_rerun_adds_nothing(engine: Engine) -> None:
    samples = fleet_samples(NOW - dt.timedelta(hours=2), 100)
    insert_samples(engine, samples)
    first = fold(engine, now=NOW)
    assert first.rows == len(samples)
    assert_tier_is_exact(engine)
    again = fold(engine, now=NOW)
    assert (again.rows, again.folded_id) == (0, first.folded_id)
    assert_tier_is_exact(engine)


def test_rows_of_the_minute_in_progress_wait_for_a_later_fold_and_are_found_by_id(engine: Engine) -> None:
    labels = {"actor": "a", "queue": "q"}
    minute = NOW - dt.timedelta(minutes=3)
    # Rows of the minute in progress at each fold, rows of a clock ahead (recorded minutes later than written),
    # and rows of the minutes before.
    insert_samples(
        engine,
        [
            (MetricType.PROCESSING_TIME, labels, 1.0, minute - dt.timedelta(seconds=30)),
            (MetricType.PROCESSING_TIME, labels, 2.0, minute + dt.timedelta(seconds=2)),
            (MetricType.PROCESSING_TIME, labels, 4.0, minute + dt.timedelta(minutes=2, seconds=10)),
        ],
    )
    first = fold(engine, now=minute + dt.timedelta(seconds=5))
    assert (first.rows, first.cutoff) == (1, minute)
    assert_tier_is_exact(engine)
    insert_samples(engine, [(MetricType.PROCESSING_TIME, labels, 8.0, minute + dt.timedelta(seconds=40))])
    second = fold(engine, now=minute + dt.timedelta(minutes=1, seconds=5))
    assert second.rows == 2  # the two rows of that minute, one of them written before the first fold
    assert_tier_is_exact(engine)
    with engine.connect() as connection:
        state = read_state(connection)
    assert state is not None and state.skipped_id is not None  # the row of the clock ahead is still to come
    assert fold(engine, now=minute + dt.timedelta(minutes=2, seconds=5)).rows == 0
    assert fold(engine, now=minute + dt.timedelta(minutes=3, seconds=5)).rows == 1
    assert_tier_is_exact(engine)
    with engine.connect() as connection:
        state = read_state(connection)
    assert state is not None and state.skipped_id is None
    points = query_series(engine, minute - dt.timedelta(minutes=1), NOW, step=dt.timedelta(minutes=1))
    assert [(point.start, point.sum) for point in points] == [
        (minute - dt.timedelta(minutes=1), 1.0),
        (minute, 10.0),
        (minute + dt.timedelta(minutes=2), 4.0),
    ]


def test_a_late_sample_is_folded_into_its_own_older_bucket(engine: Engine) -> None:
    insert_samples(engine, fleet_samples(NOW - dt.timedelta(hours=1), 50, per_minute=10))
    fold(engine, now=NOW)
    late_at = NOW - dt.timedelta(minutes=55, seconds=30)
    insert_samples(
        engine,
        [
            (MetricType.PROCESSING_TIME, {"actor": "late", "queue": "q"}, 12.5, late_at),
            (MetricType.PROCESSING_TIME, {"actor": "send_email", "queue": "mail"}, 0.0, late_at),
            (MetricType.PROCESSING_TIME, {"actor": "send_email", "queue": "mail"}, -3.0, NOW - dt.timedelta(hours=2)),
        ],
    )
    assert fold(engine, now=NOW).rows == 3
    assert_tier_is_exact(engine)
    [point] = query_series(
        engine, late_at, late_at + dt.timedelta(seconds=1), step=dt.timedelta(minutes=1), labels={"actor": "late"}
    )
    assert (point.count, point.sum, point.p50) == (1, 12.5, 12.5)


def test_two_folders_at_once_never_double_count_while_rows_arrive(engine: Engine) -> None:
    batches = [fleet_samples(NOW - dt.timedelta(minutes=90 - 10 * n), 10, seed=n, per_minute=8) for n in range(8)]
    stop = threading.Event()
    errors: list[BaseException] = []

    def keep_folding() -> None:
        try:
            while not stop.is_set():
                fold(engine, now=NOW, horizon_wait_s=0.05)
        except BaseException as error:  # reported by the test below
            errors.append(error)

    folders = [threading.Thread(target=keep_folding) for _ in range(2)]
    for folder in folders:
        folder.start()
    try:
        for batch in batches:
            insert_samples(engine, batch)
    finally:
        stop.set()
        for folder in folders:
            folder.join(60)
    assert errors == []
    fold(engine, now=NOW)
    assert_tier_is_exact(engine)


@pytest.mark.postgres
def test_rows_of_a_writer_still_in_its_transaction_are_folded_once_it_commits(postgres_engine: Engine) -> None:
    engine = postgres_engine
    labels = make_label_set({"actor": "a", "queue": "q"})
    with engine.begin() as connection:
        label_set_id = resolve_label_set_ids(connection, [labels])[labels.labels_key]
    row = {
        "metric_type": MetricType.PROCESSING_TIME,
        "label_set_id": label_set_id,
        "recorded_at": NOW - dt.timedelta(seconds=30),
    }

    def slow_and_fast_writers() -> FoldResult:
        with engine.connect() as slow:
            slow_transaction = slow.begin()
            slow.execute(OperationalMetric.__table__.insert(), [{**row, "value": 1.0}, {**row, "value": 2.0}])
            # A faster writer commits rows with larger ids meanwhile.
            with engine.begin() as connection:
                connection.execute(OperationalMetric.__table__.insert(), [{**row, "value": 4.0}])
            try:
                return fold(engine, now=NOW, horizon_wait_s=0.2)
            finally:
                slow_transaction.commit()

    # Folding up to the fast writer's id would skip the slow writer's smaller ids forever: on the first fold
    # (which then does not start the tier yet), and on a later one (which keeps the id as a candidate).
    first = slow_and_fast_writers()
    assert first.rows == 0 and first.folded_id == 0
    assert fold(engine, now=NOW).rows == 3
    later = slow_and_fast_writers()
    assert later.rows == 0 and later.pending_id is not None
    assert fold(engine, now=NOW).rows == 3
    assert_tier_is_exact(engine)
    # A writer that commits while the fold waits for it is folded by that same fold.
    with engine.connect() as waiting:
        waiting_transaction = waiting.begin()
        waiting.execute(OperationalMetric.__table__.insert(), [{**row, "value": 8.0}])
        with engine.begin() as connection:
            connection.execute(OperationalMetric.__table__.insert(), [{**row, "value": 16.0}])
        timer = threading.Timer(0.3, waiting_transaction.commit)
        timer.start()
        try:
            assert fold(engine, now=NOW, horizon_wait_s=10).rows == 2
        finally:
            timer.join()
    assert_tier_is_exact(engine)


def test_buckets_older_than_the_retention_go_and_older_ranges_are_read_from_raw_rows(engine: Engine) -> None:
    old_at = NOW - dt.timedelta(days=3, hours=2)
    insert_samples(
        engine,
        [
            (MetricType.WAIT_TIME, {"actor": "a", "queue": "q"}, 5.0, old_at),
            (MetricType.WAIT_TIME, {"actor": "a", "queue": "q"}, 7.0, NOW - dt.timedelta(hours=3)),
        ],
    )
    fold(engine, now=NOW - dt.timedelta(hours=2, minutes=30))  # the old row is inside the retention then
    assert sum(count for count, *_ in tier_rows(engine, 1).values()) == 2
    assert_tier_is_exact(engine)
    result = fold(engine, now=NOW)
    assert result.pruned_buckets == 3  # its 1-minute, 10-minute and hourly buckets
    assert result.floor == bucket_floor(NOW - dt.timedelta(days=3), 60)
    assert [key[0] for key in tier_rows(engine, 1)] == [bucket_floor(NOW - dt.timedelta(hours=3), 1)]
    assert_tier_is_exact(engine)
    points = query_series(engine, old_at - dt.timedelta(hours=1), NOW, step=dt.timedelta(hours=1))
    assert [(point.start, point.sum) for point in points] == [
        (bucket_floor(old_at, 60), 5.0),
        (bucket_floor(NOW - dt.timedelta(hours=3), 60), 7.0),
    ]


def test_the_nightly_rollup_counts_every_raw_row_whatever_the_tier_holds(engine: Engine) -> None:
    yesterday = NOW - dt.timedelta(days=1)
    samples = fleet_samples(yesterday, 30, per_minute=5)
    insert_samples(engine, samples)
    fold(engine, now=NOW)
    rollup(engine, now=NOW)
    with engine.connect() as connection:
        assert daily_totals(connection) == {yesterday.date(): len(samples)}
    assert_tier_is_exact(engine)


def test_one_folder_of_the_fleet_folds_each_interval(engine: Engine) -> None:
    insert_samples(engine, fleet_samples(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10), 5, per_minute=4))
    folders = [RecentTierFolder(engine, claim=DatabaseIntervalClaim(engine)) for _ in range(3)]
    at = dt.datetime.now(dt.UTC)
    results = [folder.fold_once(at) for folder in folders]
    assert sum(result is not None for result in results) == 1
    assert_tier_is_exact(engine)
    with pytest.raises(ValueError, match="interval_s"):
        RecentTierFolder(engine, interval_s=0)


def test_a_schema_without_the_tier_tables_says_so(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE opmetrics_recent_state"))
    with pytest.raises(Exception, match="opmetrics_recent_state"):
        fold(engine, now=NOW)


def test_stored_percentiles_are_those_of_the_buckets_histogram(engine: Engine) -> None:
    rng = np.random.default_rng(8)
    values = np.concatenate([rng.lognormal(2, 2, 3000), np.zeros(40), -rng.lognormal(1, 1, 60), [1e-300, 2**52]])
    rng.shuffle(values)
    start = NOW - dt.timedelta(minutes=40)
    insert_samples(
        engine,
        [
            (MetricType.CONFIDENCE, {"actor": f"a{index % 3}"}, float(value), start + dt.timedelta(seconds=index * 0.7))
            for index, value in enumerate(values)
        ],
    )
    fold(engine, now=NOW)
    t = RecentAggregate
    with engine.connect() as connection:
        rows = connection.execute(select(t.keys, t.min, t.max, t.p50, t.p95, t.p99)).all()
    assert len(rows) > 100
    for keys, low, high, *stored in rows:
        histogram = histogram_of_keys(keys)
        expected = [min(max(value, low), high) for value in histogram.quantiles(PERCENTILES)]
        assert stored == expected
        assert list(quantiles_of_keys(keys, low, high)) == expected


def assert_day_is_read_exactly(engine: Engine, day: dt.date) -> None:
    """The day's aggregates read through the tier's day rows equal those of its raw rows: counts, sums,
    extremes and histograms."""
    with engine.connect() as connection:
        expected = {
            (a.metric_type, a.label_set_id): (a.count, a.sum, a.min, a.max, a.histogram)
            for a in aggregate_raw(connection, *day_bounds(day), exact_percentiles=False)
        }
        parts: dict[tuple[MetricType, int], list] = {}
        for aggregate in day_aggregates(connection, day):
            parts.setdefault((aggregate.metric_type, aggregate.label_set_id), []).append(aggregate)
    read = {}
    for key, found in parts.items():
        histogram = sum_of_packed(a.histogram for a in found if isinstance(a.histogram, bytes)).histogram()
        for aggregate in found:
            if isinstance(aggregate.histogram, Histogram):
                histogram += aggregate.histogram
        read[key] = (
            sum(a.count for a in found),
            sum(a.sum for a in found),
            min(a.min for a in found),
            max(a.max for a in found),
            histogram,
        )
    assert read == expected


def test_day_rows_hold_the_hours_merged_across_midnight_with_late_rows_once_and_reads_add_what_they_lack(
    engine: Engine,
) -> None:
    midnight = dt.datetime.combine(NOW.date(), dt.time(), tzinfo=dt.UTC)
    samples = fleet_samples(midnight - dt.timedelta(hours=2), 240, per_minute=6)
    insert_samples(engine, samples)
    for minutes in (10, 70, 125, 150, 185, 241):  # folds across the hours and the midnight
        now = midnight - dt.timedelta(hours=2) + dt.timedelta(minutes=minutes, seconds=5)
        fold(engine, now=now)
        assert_tier_is_exact(engine)
        for day in (midnight.date() - dt.timedelta(days=1), midnight.date()):
            assert_day_is_read_exactly(engine, day)
    with engine.connect() as connection:
        state = read_state(connection)
    assert state is not None and state.days_until == midnight + dt.timedelta(hours=2)
    assert {key[0] for key in day_rows(engine)} == {midnight.date() - dt.timedelta(days=1), midnight.date()}
    # Late rows of hours already merged (and of the hour in progress), then rows not folded yet: each read once.
    late = [
        (MetricType.PROCESSING_TIME, {"actor": "late", "queue": "q"}, 12.5, midnight - dt.timedelta(minutes=30)),
        (MetricType.PROCESSING_TIME, {"actor": "send_email", "queue": "mail"}, 0.0, midnight + dt.timedelta(hours=1)),
        (
            MetricType.WAIT_TIME,
            {"actor": "bill", "queue": "billing"},
            -3.0,
            midnight + dt.timedelta(hours=2, minutes=1),
        ),
    ]
    insert_samples(engine, late)
    assert_day_is_read_exactly(engine, midnight.date())
    assert_day_is_read_exactly(engine, midnight.date() - dt.timedelta(days=1))
    later = midnight + dt.timedelta(hours=2, minutes=2, seconds=5)
    assert fold(engine, now=later).rows == 3
    assert_tier_is_exact(engine)
    before = day_rows(engine)
    assert fold(engine, now=later).rows == 0  # a re-run changes nothing
    assert day_rows(engine) == before
    assert_day_is_read_exactly(engine, midnight.date())
    # The first fold after migration 0013 (no day or hour rows yet) merges the 10-minute buckets already built.
    hours_before = period_rows(engine, RecentHour)
    with engine.begin() as connection:
        connection.execute(RecentDay.__table__.delete())
        connection.execute(RecentHour.__table__.delete())
        connection.execute(RecentState.__table__.update().values(built_days_until=None))
    assert day_rows(engine) == {}
    assert_day_is_read_exactly(engine, midnight.date())
    fold(engine, now=later)
    assert day_rows(engine) == before
    assert period_rows(engine, RecentHour) == hours_before
    # Retention: the day rows of a day no longer whole in the tier go with its buckets.
    fold(engine, now=midnight + dt.timedelta(days=2, hours=1))
    assert {key[0] for key in day_rows(engine)} == {midnight.date()}
    assert_tier_is_exact(engine)


def test_a_database_not_migrated_to_the_day_rows_yet_is_read_without_them_and_its_fold_says_so(
    migrated_url: URL,
) -> None:
    midnight = dt.datetime.combine(NOW.date(), dt.time(), tzinfo=dt.UTC)
    engine = make_engine(migrated_url)
    try:
        insert_samples(engine, fleet_samples(midnight, 180, per_minute=4))
        fold(engine, now=midnight + dt.timedelta(hours=3, seconds=5))
        with engine.connect() as connection:
            assert day_aggregates(connection, midnight.date())  # read through the day rows
    finally:
        engine.dispose()
    downgrade(migrated_url, "0010")  # the day rows' table and watermark go; the tier's buckets stay
    engine = make_engine(migrated_url)
    try:
        with engine.connect() as connection:
            state = read_state(connection)
            assert state is not None and state.days_until is None
        assert_day_is_read_exactly(engine, midnight.date())
        points = query_series(
            engine, midnight, midnight + dt.timedelta(hours=3), step=dt.timedelta(hours=1), metric_type="wait_time"
        )
        assert sum(point.count for point in points) == sum(
            1 for sample in fleet_samples(midnight, 180, per_minute=4) if sample[0] is MetricType.WAIT_TIME
        )
        with pytest.raises(Exception, match="built_days_until"):
            fold(engine, now=midnight + dt.timedelta(hours=3, minutes=1, seconds=5))
    finally:
        engine.dispose()


def unsummarised_ranges(engine: Engine, table: str) -> int:
    """The complete page ranges of ``table``'s time index not summarised yet (summarising them, to count)."""
    with engine.begin() as connection:
        return int(
            connection.execute(
                text(f"SELECT brin_summarize_new_values(to_regclass('{table}_recorded_at_idx'))")
            ).scalar_one()
        )


def a_now_of_one_day() -> dt.datetime:
    """Now, or half past midnight in the first minutes of a day: the minutes before it are of the same day."""
    now = dt.datetime.now(dt.UTC)
    return bucket_floor(now, 60) + dt.timedelta(minutes=30) if now.time() < dt.time(0, 5) else now


def test_the_fold_summarises_the_time_index_of_the_partition_being_written(postgres_engine: Engine) -> None:
    now = a_now_of_one_day()
    minute = bucket_floor(now, 1) - dt.timedelta(minutes=1)
    insert_many_rows(postgres_engine, minute, 50_000)
    fold(postgres_engine, now=now)
    table = partition_name(minute.date())
    # Left for the fold, they would be several complete ranges (the second half of this test shows it).
    assert unsummarised_ranges(postgres_engine, table) == 0
    insert_many_rows(postgres_engine, minute + dt.timedelta(seconds=50), 50_000)
    assert unsummarised_ranges(postgres_engine, table) >= 2


def test_a_fold_by_a_role_that_does_not_own_the_tables_folds_and_warns_once_that_it_cannot_summarise(
    postgres_url: URL, postgres_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    schema = str(postgres_url.query["options"]).removeprefix("-csearch_path=")
    role = f"{schema}_folder"
    admin = psycopg.connect(libpq_conninfo(postgres_url), autocommit=True)
    try:
        admin.execute(f"CREATE ROLE {role} LOGIN")
        admin.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
        admin.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}")
        admin.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {role}")
        now = a_now_of_one_day()
        minute = bucket_floor(now, 1) - dt.timedelta(minutes=2)
        insert_many_rows(postgres_engine, minute, 30_000)
        folder = make_engine(postgres_url.set(username=role))
        try:
            with caplog.at_level(logging.WARNING, logger="dramatiq_opmetrics.recent_tier"):
                first = fold(folder, now=now)
                insert_many_rows(postgres_engine, minute + dt.timedelta(minutes=1), 30_000)
                second = fold(folder, now=now + dt.timedelta(minutes=1))
        finally:
            folder.dispose()
        assert first.rows == 30_001 and second.rows == 30_001
        warnings = [record for record in caplog.records if "cannot summarise" in record.getMessage()]
        assert len(warnings) == 1
        assert "only its owner may" in warnings[0].getMessage()
        assert_tier_is_exact(postgres_engine)
    finally:
        admin.execute(f"DROP OWNED BY {role}")
        admin.execute(f"DROP ROLE IF EXISTS {role}")
        admin.close()
