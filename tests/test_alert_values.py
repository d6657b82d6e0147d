"""Rule values read through the shared queries, checked against each rule's own query (PostgreSQL and SQLite)."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import Engine
from test_alert_evaluator import MINUTE, T0, rule, write

from dramatiq_opmetrics import samples
from dramatiq_opmetrics.alert_values import rule_values
from dramatiq_opmetrics.samples import Sample
from dramatiq_opmetrics.series import query_totals


def test_values_read_through_the_shared_queries_equal_those_of_each_rules_own_query(engine: Engine) -> None:
    for index, actor in enumerate(("a", "b", "c")):
        found: list[Sample] = []
        for second in range(-600, 0, 7 + index):
            at = T0 + dt.timedelta(seconds=second)
            found += samples.processing_time(actor, 5.0 + second % 13 + index, queue="q", recorded_at=at)
            if second % 3 == 0:
                found += samples.error(actor, "KeyError", queue="q", recorded_at=at, outcome="retried")
        write(engine, found)
    checked = [
        rule(name="rate", labels={"queue": "q"}, group_by=("queue",)),
        rule(name="rate-a", labels={"actor": "a"}, window=7 * MINUTE),
        *(
            rule(name=statistic, metric="processing_time", statistic=statistic, labels={}, group_by=("queue",))
            for statistic in ("count", "sum", "avg", "min", "max", "p50", "p95", "p99")
        ),
    ]
    for now in (T0, T0 + dt.timedelta(seconds=30)):  # whole minutes share a per-minute series; others not
        with engine.connect() as connection:
            for checked_rule in checked:
                [point] = query_totals(
                    connection,
                    now - checked_rule.window,
                    now,
                    metric_type="processing_time",
                    labels=checked_rule.labels,
                    group_by=checked_rule.group_by,
                )
                expected = (
                    point.error_rate if checked_rule.metric == "error_rate" else point._asdict()[checked_rule.statistic]
                )
                [(_, value)] = rule_values(connection, checked_rule, now).items()
                assert value == pytest.approx(expected, rel=1e-12), (checked_rule.name, now)
