"""Test helper: write raw samples straight into the raw table (as the writer would), fast."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping

from sqlalchemy import Engine, insert

from dramatiq_opmetrics.label_sets import resolve_label_set_ids
from dramatiq_opmetrics.labels import make_label_set
from dramatiq_opmetrics.metric_types import MetricType
from dramatiq_opmetrics.models import OperationalMetric

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


def at(day: dt.date, seconds: float = 0.0) -> dt.datetime:
    """The UTC instant ``seconds`` after the start of ``day``."""
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC) + dt.timedelta(seconds=seconds)
