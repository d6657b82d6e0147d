from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from alembic import command
from dramatiq_opmetrics import MetricsCollector, samples
from dramatiq_opmetrics.database import make_engine
from dramatiq_opmetrics.labels import make_label_set
from dramatiq_opmetrics.metric_types import MetricType
from dramatiq_opmetrics.migrate import (
    VERSION_TABLE,
    alembic_config,
    current_revision,
    downgrade,
    script_location,
    upgrade,
)
from dramatiq_opmetrics.partitions import ensure_partitions
from dramatiq_opmetrics.recent_tier import fold
from dramatiq_opmetrics.rollup import rollup
from dramatiq_opmetrics.samples import Sample
from dramatiq_opmetrics.writer import write_samples

OUR_TABLES = {
    "opmetrics_label_sets",
    "operational_metrics",
    "operational_metrics_daily",
    "opmetrics_interval_claims",
    "opmetrics_recent_aggregates",
    "opmetrics_recent_state",
    "operational_metrics_monthly",
    "opmetrics_alert_states",
    "opmetrics_alert_transitions",
    "opmetrics_alert_silences",
    "opmetrics_alert_deliveries",
    "opmetrics_recent_days",
    "opmetrics_recent_hours",
    VERSION_TABLE,
}
#: The newest revision.
HEAD = "0014"
#: The tables of the recent tier (migration 0005).
RECENT_TABLES = {"opmetrics_recent_aggregates", "opmetrics_recent_state"}
#: The tables of the recent tier's day rows (migration 0011) and hour rows (migration 0013).
DAY_ROW_TABLES = {"opmetrics_recent_days", "opmetrics_recent_hours"}
#: The table of the monthly rows (migration 0007).
MONTHLY_TABLES = {"operational_metrics_monthly"}
#: The tables of alerting (migration 0008).
ALERT_TABLES = {
    "opmetrics_alert_states",
    "opmetrics_alert_transitions",
    "opmetrics_alert_silences",
    "opmetrics_alert_deliveries",
}


def table_names(url: URL) -> set[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            names = set(inspect(connection).get_table_names())
    finally:
        engine.dispose()
    # Partitions (PostgreSQL): of the raw table by day, of the recent tier by width.
    partitions = ("operational_metrics_", "opmetrics_recent_aggregates_")
    return {name for name in names if not name.startswith(partitions) or name in OUR_TABLES}


def test_upgrade_creates_every_table_and_records_our_version_table(database_url: URL) -> None:
    upgrade(database_url)
    assert table_names(database_url) == OUR_TABLES
    head = ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()
    assert current_revision(database_url) == head


def test_downgrade_to_base_removes_every_table(database_url: URL) -> None:
    upgrade(database_url)
    downgrade(database_url, "base")
    assert table_names(database_url) == {VERSION_TABLE}
    assert current_revision(database_url) is None
    upgrade(database_url)
    assert current_revision(database_url) is not None


def test_downgrading_0002_removes_only_the_interval_claims_table(database_url: URL) -> None:
    upgrade(database_url)
    downgrade(database_url, "0001")
    removed = {"opmetrics_interval_claims"} | RECENT_TABLES | MONTHLY_TABLES | ALERT_TABLES | DAY_ROW_TABLES
    assert table_names(database_url) == OUR_TABLES - removed
    assert current_revision(database_url) == "0001"
    upgrade(database_url)
    assert table_names(database_url) == OUR_TABLES


def test_downgrading_0005_removes_only_the_recent_tier_tables(database_url: URL) -> None:
    upgrade(database_url)
    downgrade(database_url, "0003")
    assert table_names(database_url) == OUR_TABLES - RECENT_TABLES - MONTHLY_TABLES - ALERT_TABLES - DAY_ROW_TABLES
    upgrade(database_url)
    assert table_names(database_url) == OUR_TABLES


def test_downgrading_0006_empties_the_recent_tier_and_upgrading_again_refolds_it(database_url: URL) -> None:
    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        at = dt.datetime(2026, 11, 20, 8, tzinfo=dt.UTC)
        with engine.begin() as connection:
            write_samples(connection, samples.processing_time("a", 5.0, recorded_at=at))
        now = at + dt.timedelta(hours=2)
        assert fold(engine, now=now).rows == 1
        downgrade(database_url, "0005")
        with engine.connect() as connection:
            for table in RECENT_TABLES:
                assert connection.execute(text(f"SELECT count(*) FROM {table}")).scalar() == 0
        upgrade(database_url)
        assert current_revision(database_url) == HEAD
        assert fold(engine, now=now).rows == 1
        with engine.connect() as connection:
            widths = connection.execute(text("SELECT width_minutes FROM opmetrics_recent_aggregates")).scalars()
            assert sorted(widths) == [1, 10, 60]
    finally:
        engine.dispose()


def test_the_seed_queries_work_unchanged(engine: Engine) -> None:
    at = dt.datetime(2026, 11, 20, 8, tzinfo=dt.UTC)
    with Session(engine) as session, session.begin():
        collector = MetricsCollector(session)
        collector.record_processing_time("a", 10, recorded_at=at)
        collector.record_processing_time("a", 20, recorded_at=at)
        collector.record_queue_depth("default", 3, recorded_at=at)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO operational_metrics_daily (metric_type, date, labels_key, labels, sample_count,"
                " sum, min, max, avg, rolled_up_at) VALUES ('processing_time', :d, 'actor:a', :labels,"
                " 2, 30, 10, 20, 15, :at)"
            ),
            {"d": at.date(), "labels": '{"actor": "a"}', "at": at},
        )
    with engine.connect() as connection:
        counts = connection.execute(
            text("SELECT metric_type, COUNT(*) FROM operational_metrics GROUP BY metric_type;")
        ).all()
        daily = connection.execute(
            text(
                "SELECT metric_type, date, labels_key, sample_count FROM operational_metrics_daily"
                " ORDER BY date DESC LIMIT 10;"
            )
        ).all()
    assert sorted((str(t), n) for t, n in counts) == [("processing_time", 2), ("queue_depth", 1)]
    assert [(str(t), str(d), k, n) for t, d, k, n in daily] == [("processing_time", "2026-11-20", "actor:a", 2)]


def test_our_migrations_live_beside_an_applications_own_alembic_history(sqlite_url: URL, tmp_path: Path) -> None:
    app_scripts = tmp_path / "app_migrations"
    app_config = Config(str(tmp_path / "alembic.ini"))
    app_config.set_main_option("script_location", str(app_scripts))
    app_config.set_main_option("sqlalchemy.url", sqlite_url.render_as_string(hide_password=False))
    command.init(app_config, str(app_scripts))
    app_config = Config(str(tmp_path / "alembic.ini"))
    app_config.set_main_option("sqlalchemy.url", sqlite_url.render_as_string(hide_password=False))
    command.revision(app_config, message="app tables", rev_id="app1")
    command.upgrade(app_config, "head")

    upgrade(sqlite_url)

    engine = create_engine(sqlite_url)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == "app1"
        assert connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar() == HEAD
    engine.dispose()


def test_migrations_can_run_on_an_applications_connection(sqlite_url: URL) -> None:
    engine = create_engine(sqlite_url)
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection=connection), "head")
    engine.dispose()
    assert "operational_metrics" in table_names(sqlite_url)


def test_migration_scripts_are_found_in_the_checkout() -> None:
    assert (script_location() / "versions").is_dir()


def test_downgrading_0003_deletes_only_the_rows_of_its_metric_types_and_upgrading_again_works(
    database_url: URL,
) -> None:
    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        at = dt.datetime(2026, 11, 20, 8, tzinfo=dt.UTC)
        with engine.begin() as connection:
            write_samples(
                connection,
                [
                    *samples.rejected_samples(3, metric_type="error", reason="DataError", recorded_at=at),
                    *samples.processing_time("a", 5.0, recorded_at=at),
                ],
            )
        downgrade(database_url, "0002")
        with engine.connect() as connection:
            kinds = connection.execute(text("SELECT CAST(metric_type AS TEXT) FROM operational_metrics")).scalars()
            assert list(kinds) == ["processing_time"]
        upgrade(database_url)
        assert current_revision(database_url) == HEAD
        with engine.begin() as connection:
            write_samples(connection, samples.rejected_samples(1, metric_type="error", reason="DataError"))
    finally:
        engine.dispose()


def test_every_metric_type_is_stored_raw_and_daily_and_downgrading_0004_deletes_only_its_three(
    database_url: URL,
) -> None:
    new_types = {MetricType.OLDEST_MESSAGE_AGE, MetricType.WORKER_THREADS, MetricType.BUSY_THREADS}
    upgrade(database_url)
    two_days_ago = dt.datetime.now(dt.UTC).replace(hour=12, minute=0, second=0, microsecond=0) - dt.timedelta(days=2)
    label_set = make_label_set({"queue": "q"})
    engine = make_engine(database_url)

    def stored_types(table: str) -> set[str]:
        with engine.connect() as connection:
            return set(connection.execute(text(f"SELECT DISTINCT CAST(metric_type AS TEXT) FROM {table}")).scalars())

    try:
        with engine.begin() as connection:
            write_samples(connection, [Sample(kind, 1.0, label_set, two_days_ago) for kind in MetricType])
        rollup(engine)
        everything = {kind.value for kind in MetricType}
        assert stored_types("operational_metrics") == stored_types("operational_metrics_daily") == everything

        downgrade(database_url, "0003")
        remaining = everything - {kind.value for kind in new_types}
        assert stored_types("operational_metrics") == stored_types("operational_metrics_daily") == remaining
        upgrade(database_url)
        with engine.begin() as connection:
            write_samples(connection, [Sample(kind, 2.0, label_set, two_days_ago) for kind in new_types])
    finally:
        engine.dispose()


def test_downgrading_0007_removes_the_monthly_rows_and_packed_histograms_and_a_rollup_restores_them(
    database_url: URL,
) -> None:
    upgrade(database_url)
    engine = make_engine(database_url)
    two_days_ago = dt.datetime.now(dt.UTC).replace(hour=12, minute=0, second=0, microsecond=0) - dt.timedelta(days=2)
    try:
        with engine.begin() as connection:
            write_samples(connection, [*samples.processing_time("a", 5.0, recorded_at=two_days_ago)])
        rollup(engine)
        downgrade(database_url, "0006")
        assert table_names(database_url) == OUR_TABLES - MONTHLY_TABLES - ALERT_TABLES - DAY_ROW_TABLES
        with engine.connect() as connection:
            columns = {column["name"] for column in inspect(connection).get_columns("operational_metrics_daily")}
            daily = connection.execute(text("SELECT sample_count, histogram FROM operational_metrics_daily")).all()
        assert "histogram_packed" not in columns
        assert [row[0] for row in daily] == [1]
        upgrade(database_url)
        assert table_names(database_url) == OUR_TABLES
        rollup(engine)
        with engine.connect() as connection:
            packed = connection.execute(text("SELECT histogram_packed FROM operational_metrics_daily")).scalars().all()
            monthly = (
                connection.execute(text("SELECT sample_count FROM operational_metrics_monthly WHERE part = 0"))
                .scalars()
                .all()
            )
        assert len(packed) == 1 and packed[0] is not None
        assert monthly == [1]
    finally:
        engine.dispose()


def test_downgrading_0008_removes_only_the_alert_tables(database_url: URL) -> None:
    upgrade(database_url)
    downgrade(database_url, "0007")
    assert table_names(database_url) == OUR_TABLES - ALERT_TABLES - DAY_ROW_TABLES
    upgrade(database_url)
    assert table_names(database_url) == OUR_TABLES


@pytest.mark.postgres
def test_0009_gives_the_tier_and_the_daily_rows_indexes_for_their_small_reads_and_downgrading_drops_them(
    postgres_url: URL,
) -> None:
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    try:
        with engine.connect() as connection:
            [definition] = connection.execute(
                text(
                    "SELECT indexdef FROM pg_indexes WHERE indexname = 'opmetrics_recent_aggregates_read_idx'"
                    " AND schemaname = current_schema()"
                )
            ).scalars()
            options = connection.execute(
                text("SELECT reloptions FROM pg_class WHERE oid = 'opmetrics_recent_aggregates_1m'::regclass")
            ).scalar_one()
        assert "INCLUDE (count, sum, min, max, p50, p95, p99)" in definition
        with engine.connect() as connection:
            [daily] = connection.execute(
                text(
                    "SELECT indexdef FROM pg_indexes WHERE indexname = 'operational_metrics_daily_read_idx'"
                    " AND schemaname = current_schema()"
                )
            ).scalars()
        assert "(date, metric_type) INCLUDE (labels_key, sample_count, sum, p95, rolled_up_at)" in daily
        assert "autovacuum_vacuum_insert_scale_factor=0.005" in options
        downgrade(postgres_url, "0008")
        with engine.connect() as connection:
            indexes = connection.execute(
                text(
                    "SELECT count(*) FROM pg_indexes WHERE schemaname = current_schema() AND indexname IN"
                    " ('opmetrics_recent_aggregates_read_idx', 'operational_metrics_daily_read_idx')"
                )
            ).scalar_one()
            options = connection.execute(
                text("SELECT reloptions FROM pg_class WHERE oid = 'opmetrics_recent_aggregates_1m'::regclass")
            ).scalar_one()
        assert (indexes, options) == (0, ["toast_tuple_target=512"])  # 0006's own setting stays
    finally:
        engine.dispose()


def index_definitions(url: URL, name: str) -> list[str]:
    """The definitions of the indexes called ``name`` in the URL's schema (none if it has none)."""
    engine = make_engine(url)
    query = text("SELECT indexdef FROM pg_indexes WHERE indexname = :name AND schemaname = current_schema()")
    try:
        with engine.connect() as connection:
            return list(connection.execute(query, {"name": name}).scalars())
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_0010_gives_the_monthly_rows_the_exporters_fingerprint_index_and_downgrading_drops_it(
    postgres_url: URL,
) -> None:
    upgrade(postgres_url)
    [definition] = index_definitions(postgres_url, "operational_metrics_monthly_fingerprint_idx")
    assert "(month) INCLUDE (daily_rows, sample_count, source_rolled_up_at, merged_at) WHERE (part = 0)" in definition
    downgrade(postgres_url, "0009")
    assert index_definitions(postgres_url, "operational_metrics_monthly_fingerprint_idx") == []


@pytest.mark.postgres
def test_0012_orders_the_tiers_read_index_by_metric_type_first_and_downgrading_restores_0009s_order(
    postgres_url: URL,
) -> None:
    included = " INCLUDE (count, sum, min, max, p50, p95, p99)"
    upgrade(postgres_url)
    [definition] = index_definitions(postgres_url, "opmetrics_recent_aggregates_read_idx")
    assert definition.endswith(f"(width_minutes, metric_type, bucket_start, label_set_id){included}")
    downgrade(postgres_url, "0011")
    [definition] = index_definitions(postgres_url, "opmetrics_recent_aggregates_read_idx")
    assert definition.endswith(f"(width_minutes, bucket_start, metric_type, label_set_id){included}")
    upgrade(postgres_url)
    assert current_revision(postgres_url) == HEAD


def test_downgrading_0011_drops_the_day_rows_and_upgrading_again_rebuilds_them_from_the_hourly_buckets(
    database_url: URL,
) -> None:
    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        at = dt.datetime(2026, 11, 20, 8, tzinfo=dt.UTC)
        with engine.begin() as connection:
            write_samples(connection, samples.processing_time("a", 5.0, recorded_at=at))
        now = at + dt.timedelta(hours=2)
        assert fold(engine, now=now).rows == 1
        query = text("SELECT day, count, sum FROM opmetrics_recent_days")
        with engine.connect() as connection:
            before = connection.execute(query).all()
        assert [(str(day), count, total) for day, count, total in before] == [("2026-11-20", 1, 5.0)]
        downgrade(database_url, "0010")
        assert table_names(database_url) == OUR_TABLES - DAY_ROW_TABLES
        with engine.connect() as connection:
            columns = {column["name"] for column in inspect(connection).get_columns("opmetrics_recent_state")}
        assert "built_days_until" not in columns
        upgrade(database_url)
        assert current_revision(database_url) == HEAD
        assert fold(engine, now=now).rows == 0  # the first fold merges the hourly buckets already built
        with engine.connect() as connection:
            assert connection.execute(query).all() == before
    finally:
        engine.dispose()


def test_0013_adds_hour_rows_and_the_next_fold_merges_day_and_hour_rows_anew_after_an_upgrade_or_downgrade(
    database_url: URL,
) -> None:
    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        at = dt.datetime(2026, 11, 20, 8, 5, tzinfo=dt.UTC)
        with engine.begin() as connection:
            write_samples(connection, samples.processing_time("a", 5.0, recorded_at=at))
            write_samples(connection, samples.processing_time("a", 7.0, recorded_at=at + dt.timedelta(hours=1)))
        now = at + dt.timedelta(hours=3)
        assert fold(engine, now=now).rows == 2
        days = text("SELECT day, count, sum FROM opmetrics_recent_days")
        hours = text("SELECT hour, count, sum FROM opmetrics_recent_hours ORDER BY hour")
        with engine.connect() as connection:
            days_before = connection.execute(days).all()
            hours_before = [(str(hour)[:13], count, total) for hour, count, total in connection.execute(hours)]
        assert [(str(day), count, total) for day, count, total in days_before] == [("2026-11-20", 2, 12.0)]
        assert hours_before == [("2026-11-20 08", 1, 5.0), ("2026-11-20 09", 1, 7.0)]
        downgrade(database_url, "0012")
        assert table_names(database_url) == OUR_TABLES - {"opmetrics_recent_hours"}
        with engine.connect() as connection:
            assert connection.execute(days).all() == []  # merged anew by the next fold
        upgrade(database_url)
        assert current_revision(database_url) == HEAD
        with engine.connect() as connection:
            assert connection.execute(days).all() == []
            assert connection.execute(hours).all() == []
        assert fold(engine, now=now).rows == 0  # the first fold merges the 10-minute buckets already built
        with engine.connect() as connection:
            assert connection.execute(days).all() == days_before
            assert [(str(hour)[:13], count, total) for hour, count, total in connection.execute(hours)] == hours_before
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_0014_gives_the_default_partition_a_btree_time_index_of_its_own_and_downgrading_drops_it(
    postgres_url: URL,
) -> None:
    upgrade(postgres_url)
    [definition] = index_definitions(postgres_url, "ix_operational_metrics_default_recorded_at")
    assert definition.endswith(".operational_metrics_default USING btree (recorded_at)"), definition
    engine = make_engine(postgres_url)
    try:
        with engine.begin() as connection:  # a day partition made after it does not get it
            ensure_partitions(connection, dt.date(2030, 1, 1), dt.date(2030, 1, 1))
            btrees = connection.execute(
                text(
                    "SELECT count(*) FROM pg_indexes WHERE tablename LIKE 'operational_metrics_p%'"
                    " AND schemaname = current_schema() AND indexdef LIKE '%btree (recorded_at)%'"
                )
            ).scalar_one()
        assert btrees == 0
    finally:
        engine.dispose()
    downgrade(postgres_url, "0013")
    assert index_definitions(postgres_url, "ix_operational_metrics_default_recorded_at") == []
    upgrade(postgres_url)
    assert current_revision(postgres_url) == HEAD
