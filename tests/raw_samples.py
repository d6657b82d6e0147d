"""Test helper: write raw samples straight into the raw table (as the writer would), fast, and count them."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Mapping

from sqlalchemy import Engine, insert, select, text
from sqlalchemy.orm import InstrumentedAttribute, Session

from dramatiq_opmetrics.label_sets import resolve_label_set_ids
from dramatiq_opmetrics.labels import make_label_set
from dramatiq_opmetrics.metric_types import MetricType
from dramatiq_opmetrics.models import LabelSet, OperationalMetric

#: One raw sample: metric type, labels, value, recorded_at.
RawSample = tuple[MetricType, Mapping[str, str], float, dt.datetime]


def insert_samples(engine: Engine, samples: Iterable[RawSample]) -> int:
    """Insert ``samples`` in one transaction; return how many."""
    samples = list(samples)
    label_sets = {make_label_set(labels).labels_key: make_label_set(labels) for _, labels, _, _ in samples}
    with engine.begin() as connection:
        ids = resolve_label_set_ids(connection, label_sets.values())
        rows = [
            {
                "metric_type": metric_type,
                "value": value,
                "label_set_id": ids[make_label_set(labels).labels_key],
                "recorded_at": recorded_at,
            }
            for metric_type, labels, value, recorded_at in samples
        ]
        if rows:
            connection.execute(insert(OperationalMetric.__table__), rows)
    return len(samples)


def insert_many_rows(engine: Engine, first_at: dt.datetime, rows: int) -> int:
    """One processing time sample of ``{"actor": "a", "queue": "q"}`` at ``first_at``, then ``rows`` more of it
    a millisecond apart, written by PostgreSQL in one statement (hundreds of pages at tens of thousands of
    rows); return how many rows in all."""
    labels = {"actor": "a", "queue": "q"}
    insert_samples(engine, [(MetricType.PROCESSING_TIME, labels, 1.0, first_at)])
    with engine.begin() as connection:
        [label_set_id] = resolve_label_set_ids(connection, [make_label_set(labels)]).values()
        connection.execute(
            text(
                "INSERT INTO operational_metrics (recorded_at, value, label_set_id, metric_type)"
                " SELECT :first_at + i * interval '1 millisecond', i, :label_set_id, 'processing_time'"
                " FROM generate_series(1, :rows) AS i"
            ),
            {"first_at": first_at, "rows": rows, "label_set_id": label_set_id},
        )
    return rows + 1


def at(day: dt.date, seconds: float = 0.0) -> dt.datetime:
    """The UTC instant ``seconds`` after the start of ``day``."""
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC) + dt.timedelta(seconds=seconds)


def raw_counts(engine: Engine) -> Counter[tuple[str, str]]:
    """How many raw rows per (metric_type, labels_key)."""
    with engine.connect() as connection:
        result = connection.execute(
            text(
                "SELECT CAST(m.metric_type AS TEXT), l.labels_key, count(*) FROM operational_metrics m"
                " JOIN opmetrics_label_sets l ON l.id = m.label_set_id GROUP BY 1, 2"
            )
        )
        return Counter({(metric_type, key): n for metric_type, key, n in result})


def stored_samples(
    engine: Engine, order_by: InstrumentedAttribute[object] = OperationalMetric.id
) -> list[tuple[str, float, str, dt.datetime]]:
    """Every raw row as (metric_type, value, labels_key, recorded_at), ordered by ``order_by``."""
    with engine.connect() as connection:
        rows = connection.execute(
            select(
                OperationalMetric.metric_type,
                OperationalMetric.value,
                LabelSet.labels_key,
                OperationalMetric.recorded_at,
            )
            .join(LabelSet, LabelSet.id == OperationalMetric.label_set_id)
            .order_by(order_by)
        )
        return [(metric_type.value, value, key, at) for metric_type, value, key, at in rows]


def stored_queue_depths(engine: Engine) -> list[tuple[str, str, float, dt.datetime]]:
    """Every stored queue_depth sample as (queue, state, value, recorded_at)."""
    with Session(engine) as session:
        rows = session.scalars(
            select(OperationalMetric).where(OperationalMetric.metric_type == MetricType.QUEUE_DEPTH)
        ).all()
        return [(r.labels["queue"], r.labels["state"], r.value, r.recorded_at) for r in rows]


def stored_oldest_ages(engine: Engine) -> list[tuple[str, float, dt.datetime]]:
    """Every stored oldest_message_age sample as (queue, value, recorded_at), oldest first."""
    with Session(engine) as session:
        rows = session.scalars(
            select(OperationalMetric)
            .where(OperationalMetric.metric_type == MetricType.OLDEST_MESSAGE_AGE)
            .order_by(OperationalMetric.recorded_at)
        ).all()
        return [(r.labels["queue"], r.value, r.recorded_at) for r in rows]


def stored_worker_samples(engine: Engine) -> list[tuple[str, str, str, float, dt.datetime]]:
    """Every stored worker_threads and busy_threads sample as (metric type, host, queues, value, recorded_at)."""
    kinds = (MetricType.WORKER_THREADS, MetricType.BUSY_THREADS)
    with Session(engine) as session:
        rows = session.scalars(
            select(OperationalMetric)
            .where(OperationalMetric.metric_type.in_(kinds))
            .order_by(OperationalMetric.recorded_at)
        ).all()
        return [(r.metric_type.value, r.labels["host"], r.labels["queues"], r.value, r.recorded_at) for r in rows]
