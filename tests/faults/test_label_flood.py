"""A day with 100,000 label sets (an actor labelling each call with a document or user id) goes through
everything downstream of the writer: it is written, rolled up, reported, shown by every dashboard page
(before and after its rollup) and pruned.

Every query that takes a list of label-set ids or labels keys binds it as one parameter
(:mod:`dramatiq_opmetrics.value_lists`); before, 100,000 label sets broke them with "number of parameters
must be between 0 and 65535" (PostgreSQL) or "too many SQL variables" (SQLite).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.engine import URL
from werkzeug.test import Client

from dramatiq_opmetrics.cardinality import OVERFLOW_LABEL_SET
from dramatiq_opmetrics.dashboard import DashboardApp
from dramatiq_opmetrics.dashboard.data import DashboardData
from dramatiq_opmetrics.database import make_engine
from dramatiq_opmetrics.labels import make_label_set
from dramatiq_opmetrics.metric_types import MetricType
from dramatiq_opmetrics.migrate import upgrade
from dramatiq_opmetrics.models import LabelSet, OperationalMetric, OperationalMetricDaily
from dramatiq_opmetrics.report import build_report
from dramatiq_opmetrics.retention import prune
from dramatiq_opmetrics.rollup import rollup
from dramatiq_opmetrics.samples import Sample
from dramatiq_opmetrics.writer import write_samples

#: The flooded day, and "now" for the dashboard (the day after it, so the day is in every page's range).
DAY = dt.date(2026, 3, 9)
NOW = dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.UTC)
#: Over SQLite's 32,766 host parameters and PostgreSQL's 65,535: one parameter per label set broke both.
LABEL_SETS = {"postgresql": 100_000, "sqlite": 40_000}
#: The dashboard's pages, the actor page on the flooded actor (its label filter matches most label sets).
PAGES = ["/", "/?days=30", "/actor?actor=flood&queue=default", "/queues?hours=24", "/tokens", "/confidence"]


def flood(label_sets: int) -> list[Sample]:
    """Samples of one day with ``label_sets`` distinct label sets across the dashboard's metric types, one
    sample each (a tenth of the messages also has a wait time), plus samples under the overflow label set
    (``LabelSetCap``'s, which has no actor, queue or model)."""
    at = dt.datetime.combine(DAY, dt.time(12), tzinfo=dt.UTC)
    share = label_sets // 10
    found = []
    for i in range(label_sets):
        if i < 5 * share:  # a message per document
            labels = make_label_set({"actor": "flood", "queue": "default", "document_id": f"doc-{i}"})
            found.append(Sample(MetricType.PROCESSING_TIME, 10.0 + i % 7, labels, at))
            if i % 10 == 0:
                found.append(Sample(MetricType.WAIT_TIME, 1.0 + i % 3, labels, at))
        elif i < 6 * share:
            labels = make_label_set(
                {"actor": "flood", "queue": "default", "error_type": "KeyError", "outcome": "final", "doc": str(i)}
            )
            found.append(Sample(MetricType.ERROR, 1.0, labels, at))
        elif i < 8 * share:  # a language-model call per user
            labels = make_label_set({"actor": "flood", "model": "gpt-4o-mini", "user_id": f"user-{i}"})
            found.append(Sample(MetricType.PROMPT_TOKENS if i % 2 else MetricType.COMPLETION_TOKENS, 100.0, labels, at))
        elif i < 9 * share:
            labels = make_label_set({"queue": f"tenant-{i}", "state": "ready"})
            found.append(Sample(MetricType.QUEUE_DEPTH, float(i % 50), labels, at))
        else:
            labels = make_label_set({"actor": "flood", "queue": "default", "bucket": "0.9-1.0", "doc": str(i)})
            found.append(Sample(MetricType.CONFIDENCE, 0.95, labels, at))
    for metric_type in MetricType:
        found.append(Sample(metric_type, 1.0, OVERFLOW_LABEL_SET, at))
    return found


@pytest.fixture
def flood_engine(database_url: URL) -> Iterator[Engine]:
    upgrade(database_url)
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def counts(engine: Engine) -> tuple[int, int, int]:
    """Raw rows, daily samples and label sets stored."""
    with engine.connect() as connection:
        raw = connection.execute(select(func.count()).select_from(OperationalMetric)).scalar_one()
        daily = connection.execute(select(func.coalesce(func.sum(OperationalMetricDaily.sample_count), 0))).scalar()
        label_sets = connection.execute(select(func.count()).select_from(LabelSet)).scalar_one()
    return raw, int(daily or 0), label_sets


def every_page_answers(engine: Engine) -> None:
    client = Client(DashboardApp(DashboardData(engine, clock=lambda: NOW)))  # type: ignore[arg-type]
    for page in PAGES:
        response = client.get(page)
        assert response.status_code == 200, (page, response.get_data(as_text=True)[-2000:])


@pytest.mark.slow
def test_a_day_with_100000_label_sets_is_written_rolled_up_reported_shown_and_pruned(
    flood_engine: Engine, database_url: URL
) -> None:
    label_sets = LABEL_SETS[database_url.get_backend_name()]
    samples = flood(label_sets)
    stored_label_sets = label_sets + 1  # and the overflow label set
    started = time.perf_counter()
    with flood_engine.begin() as connection:
        assert write_samples(connection, samples) == len(samples)
    assert counts(flood_engine) == (len(samples), 0, stored_label_sets)

    if database_url.get_backend_name() == "sqlite":
        # The day read from its raw rows. On PostgreSQL this pass alone takes half a minute of Python per
        # label set (the dashboard aggregates raw days per label set), so it runs on SQLite only, and
        # tests/test_value_lists.py covers its queries with 100,000 values on PostgreSQL.
        every_page_answers(flood_engine)

    [rolled_up] = rollup(flood_engine, now=NOW)
    assert (rolled_up.day, rolled_up.rows, rolled_up.label_sets) == (DAY, len(samples), stored_label_sets)
    assert counts(flood_engine) == (len(samples), len(samples), stored_label_sets)

    with flood_engine.connect() as connection:
        report = build_report(connection, DAY, DAY)
    share = label_sets // 10
    processing = {tuple(row.stats.labels.items()): row for row in report.metrics[MetricType.PROCESSING_TIME]}
    flooded = processing[(("actor", "flood"), ("queue", "default"))]
    assert (flooded.stats.count, flooded.error_rate) == (5 * share, pytest.approx(1 / 5))
    assert processing[()].stats.count == 1  # the overflow label set's sample
    tokens = {tuple(row.stats.labels.items()): row.stats.sum for row in report.metrics[MetricType.PROMPT_TOKENS]}
    assert tokens == {(("model", "gpt-4o-mini"),): 100.0 * share, (): 1.0}
    assert len(report.metrics[MetricType.QUEUE_DEPTH]) == share + 1

    every_page_answers(flood_engine)  # the day read from its daily rows

    pruned = prune(flood_engine, retention_days=1, now=NOW + dt.timedelta(days=1))
    assert [(day.day, day.rows) for day in pruned.pruned] == [(DAY, len(samples))]
    assert counts(flood_engine) == (0, len(samples), stored_label_sets)
    print(f"{database_url.get_backend_name()}: {label_sets} label sets in {time.perf_counter() - started:.1f} s")
