"""The Grafana dashboard in examples/grafana: every panel's SQL runs on a populated PostgreSQL schema.

Recent panels read the recent tier (``opmetrics_recent_aggregates``), folded here after the history is
written, and say the same as :func:`~dramatiq_opmetrics.series.query_series` and
:func:`~dramatiq_opmetrics.series.query_stalled` over the same range; no panel reads the raw table.

Grafana rewrites a panel's SQL before it reaches PostgreSQL: first its template variables (``$actor``,
``$__interval``), then the PostgreSQL data source's macros (``$__timeFilter(col)`` ...). The small expander
below does both the way Grafana's PostgreSQL data source does, so the SQL run here is what Grafana sends.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fleet_history import HOSTILE_ACTOR, FleetHistory, make_actors, populate
from raw_samples import RawSample, insert_samples
from sqlalchemy import Engine, text

from dramatiq_opmetrics.metric_types import MetricType
from dramatiq_opmetrics.recent_tier import bucket_floor, fold, read_state
from dramatiq_opmetrics.series import query_series, query_stalled

GRAFANA = Path(__file__).parent.parent / "examples" / "grafana"
DASHBOARD = GRAFANA / "dramatiq-opmetrics.json"

_MACRO = re.compile(r"\$(__[A-Za-z0-9_]+)\(([^)]*)\)")
_INTERVAL_UNITS_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def interval_seconds(text: str) -> float:
    """Seconds in a Grafana interval such as ``30s``, ``5m`` or ``1d``."""
    match = re.fullmatch(r"(\d+)(ms|s|m|h|d|w)", text.strip().strip("'"))
    if not match:
        raise ValueError(f"not a Grafana interval: {text!r}")
    return int(match.group(1)) * _INTERVAL_UNITS_S[match.group(2)]


def _rfc3339(instant: dt.datetime) -> str:
    return instant.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _number(seconds: float) -> str:
    return f"{seconds:g}"


def expand_macros(sql: str, time_from: dt.datetime, time_to: dt.datetime) -> str:
    """Expand the PostgreSQL data source's time macros as Grafana's ``macros.go`` does."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        args = [arg.strip() for arg in match.group(2).split(",")]
        if name == "__timeFilter":
            return f"{args[0]} BETWEEN '{_rfc3339(time_from)}' AND '{_rfc3339(time_to)}'"
        if name == "__timeFrom":
            return f"'{_rfc3339(time_from)}'"
        if name == "__timeTo":
            return f"'{_rfc3339(time_to)}'"
        if name in ("__timeGroup", "__timeGroupAlias"):
            seconds = _number(interval_seconds(args[1]))
            group = f"floor(extract(epoch from {args[0]})/{seconds})*{seconds}"
            return group + (' AS "time"' if name == "__timeGroupAlias" else "")
        raise AssertionError(f"the dashboard uses macro ${name}, which this expander does not know")

    return _MACRO.sub(replace, sql)


def expand_variables(sql: str, interval: str, variables: Mapping[str, Sequence[str]]) -> str:
    """Expand ``$__interval`` and the dashboard's template variables (multi-valued: quoted, comma-joined)."""
    sql = re.sub(r"\$__interval\b", interval, sql)
    sql = re.sub(r"\$\{__interval\}", interval, sql)
    for name, values in variables.items():
        quoted = ",".join("'" + value.replace("'", "''") + "'" for value in values)
        sql = re.sub(rf"\$\{{{name}\}}|\${name}\b", lambda _match, quoted=quoted: quoted, sql)
    leftover = re.search(r"\$(?!__time)[A-Za-z_{][A-Za-z0-9_}]*", sql)
    assert leftover is None, f"unexpanded variable {leftover.group(0)} in {sql}"
    return sql


def expand(
    sql: str, *, time_from: dt.datetime, time_to: dt.datetime, interval: str, variables: Mapping[str, Sequence[str]]
) -> str:
    """A panel's SQL as Grafana sends it to PostgreSQL."""
    return expand_macros(expand_variables(sql, interval, variables), time_from, time_to)


def load_dashboard() -> dict[str, Any]:
    with DASHBOARD.open() as file:
        dashboard: dict[str, Any] = json.load(file)
    return dashboard


def query_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            yield panel


def panel_columns(panel: Mapping[str, Any]) -> list[str]:
    """The columns a table panel names (its ``organize`` transformation's order)."""
    for transformation in panel.get("transformations", []):
        if transformation["id"] == "organize":
            index = transformation["options"]["indexByName"]
            return sorted(index, key=index.__getitem__)
    return []


def variable_values(engine: Engine, dashboard: Mapping[str, Any]) -> dict[str, list[str]]:
    """Every template variable's values: a query variable's from its own query (what Grafana's "All" expands
    to), a custom one's current value."""
    values = {}
    with engine.connect() as connection:
        for variable in dashboard["templating"]["list"]:
            if variable["type"] == "custom":
                values[variable["name"]] = [variable["current"]["value"]]
                continue
            rows = connection.exec_driver_sql(variable["query"]).all()
            values[variable["name"]] = [row[0] for row in rows]
    return values


def panel(dashboard: Mapping[str, Any], title: str) -> dict[str, Any]:
    [found] = [p for p in query_panels(dashboard) if p["title"] == title]
    return found


def run_panel(engine: Engine, panel: Mapping[str, Any], **expand_args: Any) -> tuple[list[str], list[tuple[Any, ...]]]:
    [target] = panel["targets"]
    sql = expand(target["rawSql"], **expand_args)
    with engine.connect() as connection:
        result = connection.exec_driver_sql(sql)
        return list(result.keys()), [tuple(row) for row in result]


def is_number(value: object) -> bool:
    return value is None or (isinstance(value, int | float | Decimal) and not isinstance(value, bool))


#: Seconds between the worker and oldest-age samples the fixture adds (the fleet's queue depth interval).
SAMPLING_INTERVAL_S = 15
#: Worker processes online in the fixture's last hour.
WORKERS_ONLINE = 2
#: A queue with ready messages that nobody consumes: stalled in every bucket.
STUCK_QUEUE = "stuck"


def signal_samples(queues: Sequence[str], now: dt.datetime) -> list[RawSample]:
    """The last hour of two worker processes (8 threads, some busy), of each queue's oldest-message age, and
    of :data:`STUCK_QUEUE`'s depth (7 ready) and age."""
    samples: list[RawSample] = []
    first = bucket_floor(now - dt.timedelta(hours=1), 1)
    for step in range(int((now - first).total_seconds() // SAMPLING_INTERVAL_S)):
        at = first + dt.timedelta(seconds=step * SAMPLING_INTERVAL_S)
        for process in range(WORKERS_ONLINE):
            labels = {"host": f"host-{process}", "queues": ",".join(queues)}
            samples.append((MetricType.WORKER_THREADS, labels, 8.0, at))
            samples.append((MetricType.BUSY_THREADS, labels, float((step + process) % 9), at))
        for index, queue in enumerate(queues):
            samples.append((MetricType.OLDEST_MESSAGE_AGE, {"queue": queue}, float(step * index), at))
        samples.append((MetricType.QUEUE_DEPTH, {"queue": STUCK_QUEUE, "state": "ready"}, 7.0, at))
        samples.append((MetricType.OLDEST_MESSAGE_AGE, {"queue": STUCK_QUEUE}, 600.0 + step * SAMPLING_INTERVAL_S, at))
    return samples


@pytest.fixture
def fleet(postgres_engine: Engine) -> FleetHistory:
    now = dt.datetime.now(dt.UTC)
    # Samples from midnight up to now: keep "now" past midnight enough for several intervals of raw data.
    history = populate(postgres_engine, days=30, actors=make_actors(6), now=now, raw_samples_per_actor=40)
    insert_samples(postgres_engine, signal_samples(history.queues, now))
    fold(postgres_engine)  # what the fleet's workers do every minute
    return history


def test_every_panel_has_sql_for_the_opmetrics_data_source() -> None:
    dashboard = load_dashboard()
    datasource_yaml = (GRAFANA / "datasource.yaml").read_text()
    assert "type: grafana-postgresql-datasource" in datasource_yaml
    panels = list(query_panels(dashboard))
    assert len(panels) >= 10
    for panel in panels:
        assert panel["datasource"]["uid"] == "opmetrics"
        assert f"uid: {panel['datasource']['uid']}" in datasource_yaml
        [target] = panel["targets"]
        assert target["rawQuery"] and target["rawSql"].strip()
        assert target["format"] in ("time_series", "table")
    assert (GRAFANA / "dashboards.yaml").read_text().count("path:") == 1


def test_the_dashboard_covers_latency_errors_queue_depth_tokens_and_the_signals_of_now() -> None:
    sql = " ".join(panel["targets"][0]["rawSql"] for panel in query_panels(load_dashboard()))
    for metric_type in MetricType:
        if metric_type.value in ("dropped_samples", "rejected_samples", "clock_skew", "skipped"):
            continue
        assert f"'{metric_type.value}'" in sql, metric_type


def test_recent_panels_read_the_recent_tier_never_the_raw_table() -> None:
    panels = list(query_panels(load_dashboard()))
    for found in panels:
        sql = found["targets"][0]["rawSql"]
        assert re.search(r"\boperational_metrics\b(?!_daily)", sql) is None, found["title"]
    recent = [found for found in panels if "opmetrics_recent_aggregates" in found["targets"][0]["rawSql"]]
    assert len(recent) >= 9
    assert all("(recent tier)" in found["title"] or "today" in found["title"] for found in recent)


def test_the_expander_writes_what_grafana_writes() -> None:
    start = dt.datetime(2026, 11, 20, 10, 0, tzinfo=dt.UTC)
    end = dt.datetime(2026, 11, 27, 10, 0, 30, tzinfo=dt.UTC)
    sql = "SELECT $__timeGroupAlias(m.t, $__interval) WHERE $__timeFilter(m.t) AND a IN ($actor) AND b < $__timeTo()"
    assert expand(sql, time_from=start, time_to=end, interval="5m", variables={"actor": ["x", "it's"]}) == (
        'SELECT floor(extract(epoch from m.t)/300)*300 AS "time"'
        " WHERE m.t BETWEEN '2026-11-20T10:00:00.000000Z' AND '2026-11-27T10:00:30.000000Z'"
        " AND a IN ('x','it''s') AND b < '2026-11-27T10:00:30.000000Z'"
    )


@pytest.mark.postgres
@pytest.mark.parametrize("range_days, interval", [(7, "5m"), (30, "1h"), (2, "1m")])
def test_every_panel_returns_rows_of_the_shape_it_expects(
    postgres_engine: Engine, fleet: FleetHistory, range_days: int, interval: str
) -> None:
    dashboard = load_dashboard()
    now = dt.datetime.now(dt.UTC)
    expand_args = {
        "time_from": now - dt.timedelta(days=range_days),
        "time_to": now,
        "interval": interval,
        "variables": variable_values(postgres_engine, dashboard),
    }
    assert HOSTILE_ACTOR in expand_args["variables"]["actor"]
    for panel in query_panels(dashboard):
        columns, rows = run_panel(postgres_engine, panel, **expand_args)
        assert rows, f"panel {panel['title']!r} returned no rows"
        if panel["targets"][0]["format"] == "table":
            assert columns == panel_columns(panel), panel["title"]
            continue
        assert columns[0] == "time", panel["title"]
        assert len(columns) >= 2, panel["title"]
        times = [row[0] for row in rows]
        assert all(isinstance(value, int | float | Decimal | dt.datetime) for value in times), panel["title"]
        assert times == sorted(times), f"panel {panel['title']!r} is not sorted by time"
        for name, *values in zip(columns, *rows, strict=True):
            if name == "time":
                continue
            if name == "metric":
                assert all(isinstance(value, str) and value for value in values), panel["title"]
            else:
                assert all(is_number(value) for value in values), f"{panel['title']!r}: {name} is not numeric"
                assert any(value is not None for value in values), f"{panel['title']!r}: {name} is all NULL"


@pytest.mark.postgres
def test_a_variable_selection_narrows_the_panels(postgres_engine: Engine, fleet: FleetHistory) -> None:
    dashboard = load_dashboard()
    now = dt.datetime.now(dt.UTC)
    variables = variable_values(postgres_engine, dashboard)
    actor = fleet.actors[0]
    variables["actor"] = [actor.name]
    [panel] = [p for p in query_panels(dashboard) if p["title"] == "Actors over the range"]
    columns, rows = run_panel(
        postgres_engine, panel, time_from=now - dt.timedelta(days=7), time_to=now, interval="1h", variables=variables
    )
    assert [row[columns.index("actor")] for row in rows] == [actor.name]
    [panel] = [p for p in query_panels(dashboard) if p["title"] == "Daily p95 processing time per actor and queue"]
    _columns, rows = run_panel(
        postgres_engine, panel, time_from=now - dt.timedelta(days=7), time_to=now, interval="1h", variables=variables
    )
    assert {row[1] for row in rows} == {f"actor:{actor.name}|queue:{actor.queue}"}


def points(rows: Sequence[tuple[Any, ...]]) -> dict[tuple[dt.datetime, str], float | None]:
    """A time series panel's rows ``(time, metric, value)`` by (time as a UTC datetime, metric)."""
    return {
        (dt.datetime.fromtimestamp(float(time), dt.UTC), metric): None if value is None else float(value)
        for time, metric, value in rows
    }


@pytest.mark.postgres
def test_the_recent_panels_say_what_query_series_and_query_stalled_say(
    postgres_engine: Engine, fleet: FleetHistory
) -> None:
    dashboard = load_dashboard()
    end = dt.datetime.now(dt.UTC)
    start = bucket_floor(end - dt.timedelta(hours=2), 1)  # whole minutes: no bucket cut at the start
    minute = dt.timedelta(minutes=1)
    expand_args = {
        "time_from": start,
        "time_to": end,
        "interval": "1m",
        "variables": variable_values(postgres_engine, dashboard),
    }

    # The panel reads the tier, which holds the whole minutes before its cutoff; query_series adds the raw
    # rows not folded yet (the minute in progress at the fixture's fold, which has samples in the first hour
    # or so after midnight): compared up to the cutoff, both say what the tier holds.
    with postgres_engine.connect() as connection:
        state = read_state(connection)
    assert state is not None
    _, rows = run_panel(
        postgres_engine,
        panel(dashboard, "p95 processing time per actor and queue (recent tier)"),
        **{**expand_args, "time_to": state.cutoff},
    )
    shown = points(rows)
    series = {
        (point.start, "|".join(f"{key}:{value}" for key, value in sorted(point.labels.items()))): point.p95
        for point in query_series(postgres_engine, start, state.cutoff, step=minute, metric_type="processing_time")
    }
    assert shown.keys() == series.keys()
    settled = {key: value for key, value in shown.items() if value is not None}
    assert settled and len(settled) >= len(shown) - len(fleet.actors)  # only the bucket in progress has none
    assert settled == pytest.approx({key: series[key] for key in settled}, rel=1e-9)

    # A queue of the history with ready messages in a minute none of its messages finished in: found in the
    # window whatever the time of day (in the first hours after midnight the history's messages finish every
    # minute; before midnight, in the window then, it has none).
    queue = fleet.queues[0]
    with postgres_engine.connect() as connection:
        finished = connection.execute(
            text(
                "SELECT r.recorded_at FROM operational_metrics r JOIN opmetrics_label_sets l ON l.id = r.label_set_id"
                " WHERE r.metric_type = 'processing_time' AND l.labels->>'queue' = :queue AND r.recorded_at >= :start"
            ),
            {"queue": queue, "start": start},
        ).scalars()
        minutes_finished = {bucket_floor(at, 1) for at in finished}
    idle = next(at for at in (start + minute * step for step in range(1, 120)) if at not in minutes_finished)
    insert_samples(postgres_engine, [(MetricType.QUEUE_DEPTH, {"queue": queue, "state": "ready"}, 3.0, idle)])
    fold(postgres_engine)
    _, rows = run_panel(
        postgres_engine, panel(dashboard, "Stalled queues: ready messages, none finished (recent tier)"), **expand_args
    )
    stalled = {
        (bucket.start, bucket.queue): bucket.ready for bucket in query_stalled(postgres_engine, start, end, step=minute)
    }
    assert {queue for _, queue in stalled} > {STUCK_QUEUE}  # and queues of the history in some minutes
    # The panels read the tier, which holds whole minutes: the minute in progress is query_stalled's alone.
    in_progress = bucket_floor(end, 1)
    assert points(rows) == {(at, queue): ready for (at, queue), ready in stalled.items() if at < in_progress}

    _, rows = run_panel(
        postgres_engine, panel(dashboard, "Workers online and utilisation (recent tier)"), **expand_args
    )
    # The last minute the workers' samples cover whole: they stop at the fixture's "now", which may be a
    # minute before this test's end.
    with postgres_engine.connect() as connection:
        last_sample = connection.execute(
            text("SELECT max(recorded_at) FROM operational_metrics WHERE metric_type = 'worker_threads'")
        ).scalar_one()
    last_complete = min(bucket_floor(end, 1), bucket_floor(last_sample, 1)) - minute
    complete = [
        row for row in rows if start + minute <= dt.datetime.fromtimestamp(float(row[0]), dt.UTC) <= last_complete
    ]
    assert complete
    assert {float(workers) for _, workers, _ in complete} == {WORKERS_ONLINE}
    assert all(0 <= float(utilisation) <= 1 for _, _, utilisation in complete)
