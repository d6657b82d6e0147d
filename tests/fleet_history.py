"""A synthetic fleet's history for dashboard tests and benchmarks: daily rows for past days, raw samples today.

:func:`populate` writes, into a migrated database, what a fleet running for ``days`` days would leave:
daily aggregates (``operational_metrics_daily``) for every day before today (UTC), and raw samples
(``operational_metrics``) for today so far, for every metric type the dashboard shows. Each actor's
processing and wait times follow a lognormal distribution whose daily rows carry its exact percentiles,
so the numbers are realistic and reproducible (a fixed seed). It is test data, not a rollup: the daily
rows are written directly.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import Engine, insert

from dramatiq_opmetrics.label_sets import resolve_label_set_ids
from dramatiq_opmetrics.labels import make_label_set
from dramatiq_opmetrics.metric_types import MetricType
from dramatiq_opmetrics.models import OperationalMetric, OperationalMetricDaily
from dramatiq_opmetrics.samples import confidence_bucket
from dramatiq_opmetrics.sketch import KEY_MULTIPLIER, LN_2, MAPPING_NAME, RELATIVE_ACCURACY

#: Width of a histogram bucket in natural-log units: bucket ``k`` holds ``(exp((k-1)*w), exp(k*w)]``.
_BUCKET_LOG_WIDTH = LN_2 / KEY_MULTIPLIER
#: How many positions within a bucket the histogram templates are made for.
_TEMPLATE_STEPS = 8
_TEMPLATE_CACHE: dict[tuple[float, int], tuple[int, np.ndarray]] = {}
#: z-scores of the percentiles a daily row carries.
_Z = {"p50": 0.0, "p95": 1.6448536269514722, "p99": 2.3263478740408408}
ERROR_TYPES = ("TimeoutError", "ConnectionError", "ValueError")
QUEUE_STATES = ("ready", "delayed", "dead")
MODELS = ("gpt-4o-mini", "claude-haiku")
#: A label value containing HTML: the dashboard must show it as text.
HOSTILE_ACTOR = "<script>alert(1)</script>"


@dataclass(frozen=True)
class Actor:
    """One actor on one queue, with the lognormal parameters of its processing and wait times (ms)."""

    name: str
    queue: str
    messages_per_day: int
    processing_mu: float
    processing_sigma: float
    wait_mu: float
    error_rate: float


@dataclass
class FleetHistory:
    """What :func:`populate` wrote, for tests to check against."""

    today: dt.date
    first_day: dt.date
    actors: list[Actor]
    queues: list[str]
    daily_rows: int = 0
    raw_rows: int = 0
    raw_values: dict[tuple[str, str], list[float]] = field(default_factory=dict)


def make_actors(count: int, seed: int = 7, *, hostile: bool = True, queues: int = 4) -> list[Actor]:
    """``count`` actors over ``queues`` queues; the last one, if ``hostile``, has an HTML-like name."""
    rng = random.Random(seed)
    actors = []
    for index in range(count):
        name = HOSTILE_ACTOR if hostile and index == count - 1 else f"actor_{index:03d}"
        actors.append(
            Actor(
                name=name,
                queue=f"queue_{index % queues}",
                messages_per_day=rng.randint(200, 5000),
                processing_mu=math.log(rng.uniform(20, 800)),
                processing_sigma=rng.uniform(0.3, 0.9),
                wait_mu=math.log(rng.uniform(5, 300)),
                error_rate=rng.choice((0.0, 0.002, 0.01, 0.05, 0.2)),
            )
        )
    return actors


def populate(
    engine: Engine,
    *,
    days: int = 40,
    actors: list[Actor] | None = None,
    now: dt.datetime | None = None,
    raw_samples_per_actor: int = 60,
    depth_interval_s: float = 300.0,
    seed: int = 11,
) -> FleetHistory:
    """Write ``days`` days of a fleet's history (daily rows before today, raw samples today) into ``engine``."""
    now = now or dt.datetime.now(dt.UTC)
    today = now.date()
    actors = actors if actors is not None else make_actors(8)
    queues = sorted({actor.queue for actor in actors})
    history = FleetHistory(today, today - dt.timedelta(days=days - 1), actors, queues)
    rng = random.Random(seed)
    label_sets = {labels_key: labels for labels_key, labels in _all_label_sets(actors, queues)}
    with engine.begin() as connection:
        ids = resolve_label_set_ids(connection, (make_label_set(labels) for labels in label_sets.values()))
        daily = list(_daily_rows(history, rng, now))
        # Stored in time order, as a fleet writes them (the raw table's BRIN index relies on it).
        raw = sorted(
            _raw_rows(history, rng, now, raw_samples_per_actor, depth_interval_s, ids), key=lambda r: r["recorded_at"]
        )
        if connection.dialect.name == "postgresql":
            _copy_rows(connection, daily, raw)
        else:
            for start in range(0, len(daily), 5000):
                connection.execute(insert(OperationalMetricDaily), daily[start : start + 5000])
            for start in range(0, len(raw), 5000):
                connection.execute(insert(OperationalMetric), raw[start : start + 5000])
        history.daily_rows = len(daily)
        history.raw_rows = len(raw)
    return history


def _copy_rows(connection: Any, daily: list[dict[str, Any]], raw: list[dict[str, Any]]) -> None:
    """Write the rows with COPY (PostgreSQL): a year of daily rows takes seconds instead of minutes."""
    cursor = connection.connection.driver_connection.cursor()
    columns = ["metric_type", "date", "labels_key", "labels", "sample_count", "sum", "min", "max", "avg"]
    columns += ["p50", "p95", "p99", "histogram", "rolled_up_at"]
    with cursor.copy(f"COPY operational_metrics_daily ({', '.join(columns)}) FROM STDIN") as copy:
        for row in daily:
            copy.write_row(
                [
                    json.dumps(row[name])
                    if name in ("labels", "histogram") and row[name] is not None
                    else (row[name].value if name == "metric_type" else row[name])
                    for name in columns
                ]
            )
    with cursor.copy("COPY operational_metrics (metric_type, value, label_set_id, recorded_at) FROM STDIN") as copy:
        for row in raw:
            copy.write_row([row["metric_type"].value, row["value"], row["label_set_id"], row["recorded_at"]])


def _key(labels: dict[str, str]) -> str:
    return make_label_set(labels).labels_key


def _all_label_sets(actors: list[Actor], queues: list[str]) -> Iterator[tuple[str, dict[str, str]]]:
    for actor in actors:
        labels = {"actor": actor.name, "queue": actor.queue}
        yield _key(labels), labels
        for error_type in ERROR_TYPES:
            labels = {"actor": actor.name, "queue": actor.queue, "error_type": error_type}
            yield _key(labels), labels
    for queue in queues:
        for state in QUEUE_STATES:
            labels = {"queue": queue, "state": state}
            yield _key(labels), labels
    for model in MODELS:
        labels = {"model": model, "actor": actors[0].name}
        yield _key(labels), labels
    for tenth in range(10):
        labels = {"bucket": confidence_bucket(tenth / 10), "actor": actors[0].name}
        yield _key(labels), labels


def _template(sigma: float, step: int) -> tuple[int, np.ndarray]:
    """Bucket probabilities of lognormal(mu, sigma) for mu at ``step`` eighths into bucket 0: (first key, p)."""
    cached = _TEMPLATE_CACHE.get((sigma, step))
    if cached is None:
        from math import erf, sqrt

        mu = (step + 0.5) / _TEMPLATE_STEPS * _BUCKET_LOG_WIDTH
        span = int(4.5 * sigma / _BUCKET_LOG_WIDTH) + 2
        keys = np.arange(-span, span + 1)
        cdf = np.array(
            [0.5 * (1 + erf((k * _BUCKET_LOG_WIDTH - mu) / (sigma * sqrt(2)))) for k in range(-span - 1, span + 1)]
        )
        cached = _TEMPLATE_CACHE[(sigma, step)] = (int(keys[0]), np.diff(cdf))
    return cached


def lognormal_histogram(count: int, mu: float, sigma: float) -> dict[str, Any]:
    """The stored histogram of ``count`` values spread as lognormal(mu, sigma) (counts rounded, summing to count)."""
    shift, position = divmod(mu / _BUCKET_LOG_WIDTH, 1.0)
    first_key, probabilities = _template(round(sigma, 3), min(int(position * _TEMPLATE_STEPS), _TEMPLATE_STEPS - 1))
    expected = probabilities * count
    counts = np.floor(expected).astype(np.int64)
    short = count - int(counts.sum())
    if short > 0:
        counts[np.argsort(expected - counts)[-short:]] += 1
    keys = np.nonzero(counts)[0]
    offset = first_key + int(shift)
    return {
        "mapping": MAPPING_NAME,
        "relative_accuracy": RELATIVE_ACCURACY,
        "bins": {str(int(index) + offset): int(counts[index]) for index in keys},
        "zero_count": 0,
    }


def _stats_row(
    metric_type: MetricType, day: dt.date, labels: dict[str, str], count: int, mu: float, sigma: float, now: Any
) -> dict[str, Any]:
    """A daily row of ``count`` lognormal(mu, sigma) values, with the distribution's own statistics."""
    mean = math.exp(mu + sigma * sigma / 2)
    percentiles = {name: math.exp(mu + z * sigma) for name, z in _Z.items()}
    return {
        "metric_type": metric_type,
        "date": day,
        "labels_key": _key(labels),
        "labels": labels,
        "sample_count": count,
        "sum": mean * count,
        "min": math.exp(mu - 3 * sigma),
        "max": math.exp(mu + 3.5 * sigma),
        "avg": mean,
        **percentiles,
        "histogram": lognormal_histogram(count, mu, sigma),
        "rolled_up_at": now,
    }


def _count_row(metric_type: MetricType, day: dt.date, labels: dict[str, str], count: int, now: Any) -> dict[str, Any]:
    """A daily row of ``count`` samples of value 1 (errors)."""
    return {
        "metric_type": metric_type,
        "date": day,
        "labels_key": _key(labels),
        "labels": labels,
        "sample_count": count,
        "sum": float(count),
        "min": 1.0,
        "max": 1.0,
        "avg": 1.0,
        "p50": 1.0,
        "p95": 1.0,
        "p99": 1.0,
        "histogram": {
            "mapping": MAPPING_NAME,
            "relative_accuracy": RELATIVE_ACCURACY,
            "bins": {"0": count},
            "zero_count": 0,
        },
        "rolled_up_at": now,
    }


def _daily_rows(history: FleetHistory, rng: random.Random, now: dt.datetime) -> Iterator[dict[str, Any]]:
    day = history.first_day
    while day < history.today:
        # A slow drift over the year and a weekly rhythm, so trend charts have something to show.
        age = (history.today - day).days
        load = 1.0 + 0.3 * math.sin(age / 9.0) + (0.4 if day.weekday() < 5 else -0.3)
        for actor in history.actors:
            labels = {"actor": actor.name, "queue": actor.queue}
            count = max(1, int(actor.messages_per_day * load * rng.uniform(0.8, 1.2)))
            jitter = rng.gauss(0, 0.05) + 0.1 * math.sin(age / 20.0)
            yield _stats_row(
                MetricType.PROCESSING_TIME,
                day,
                labels,
                count,
                actor.processing_mu + jitter,
                actor.processing_sigma,
                now,
            )
            yield _stats_row(MetricType.WAIT_TIME, day, labels, count, actor.wait_mu + 2 * jitter, 1.0, now)
            errors = int(count * actor.error_rate * rng.uniform(0.5, 1.5))
            for index, error_type in enumerate(ERROR_TYPES):
                share = errors // (2**index + 1)
                if share:
                    yield _count_row(MetricType.ERROR, day, {**labels, "error_type": error_type}, share, now)
        for queue_index, queue in enumerate(history.queues):
            for state_index, state in enumerate(QUEUE_STATES):
                mu = math.log(50 + 100 * queue_index) - state_index + 0.3 * math.sin(age / 5.0)
                yield _stats_row(MetricType.QUEUE_DEPTH, day, {"queue": queue, "state": state}, 5760, mu, 0.6, now)
        for model_index, model in enumerate(MODELS):
            labels = {"model": model, "actor": history.actors[0].name}
            calls = int(800 * load * (model_index + 1))
            yield _stats_row(MetricType.PROMPT_TOKENS, day, labels, calls, math.log(900), 0.4, now)
            yield _stats_row(MetricType.COMPLETION_TOKENS, day, labels, calls, math.log(160), 0.4, now)
        for tenth in range(10):
            labels = {"bucket": confidence_bucket(tenth / 10), "actor": history.actors[0].name}
            count = int(30 * (tenth + 1) ** 1.5 * load)
            yield _stats_row(MetricType.CONFIDENCE, day, labels, count, math.log(tenth / 10 + 0.05), 0.01, now)
        day += dt.timedelta(days=1)


def _raw_rows(
    history: FleetHistory,
    rng: random.Random,
    now: dt.datetime,
    per_actor: int,
    depth_interval_s: float,
    ids: dict[str, int],
) -> Iterator[dict[str, Any]]:
    """Today's raw samples, spread evenly from midnight (UTC) to ``now``."""
    midnight = dt.datetime.combine(history.today, dt.time(), tzinfo=dt.UTC)
    span_s = max((now - midnight).total_seconds(), 1.0)

    def at(index: int, count: int) -> dt.datetime:
        return midnight + dt.timedelta(seconds=span_s * (index + 0.5) / count)

    def row(metric_type: MetricType, value: float, labels: dict[str, str], when: dt.datetime) -> dict[str, Any]:
        history.raw_values.setdefault((metric_type.value, _key(labels)), []).append(value)
        return {
            "metric_type": metric_type,
            "value": value,
            "label_set_id": ids[_key(labels)],
            "recorded_at": when,
        }

    for actor in history.actors:
        labels = {"actor": actor.name, "queue": actor.queue}
        for index in range(per_actor):
            when = at(index, per_actor)
            duration_ms = rng.lognormvariate(actor.processing_mu, actor.processing_sigma)
            yield row(MetricType.PROCESSING_TIME, duration_ms, labels, when)
            yield row(MetricType.WAIT_TIME, rng.lognormvariate(actor.wait_mu, 1.0), labels, when)
            if rng.random() < max(actor.error_rate, 0.05 if actor.error_rate else 0.0):
                yield row(MetricType.ERROR, 1.0, {**labels, "error_type": rng.choice(ERROR_TYPES)}, when)
    depth_samples = max(1, int(span_s // depth_interval_s))
    for queue_index, queue in enumerate(history.queues):
        for state_index, state in enumerate(QUEUE_STATES):
            for index in range(depth_samples):
                depth = float(int(rng.lognormvariate(math.log(50 + 100 * queue_index) - state_index, 0.6)))
                yield row(MetricType.QUEUE_DEPTH, depth, {"queue": queue, "state": state}, at(index, depth_samples))
    for model in MODELS:
        labels = {"model": model, "actor": history.actors[0].name}
        for index in range(per_actor):
            when = at(index, per_actor)
            yield row(MetricType.PROMPT_TOKENS, float(int(rng.lognormvariate(math.log(900), 0.4))), labels, when)
            yield row(MetricType.COMPLETION_TOKENS, float(int(rng.lognormvariate(math.log(160), 0.4))), labels, when)
    for index in range(per_actor):
        score = min(1.0, max(0.0, rng.betavariate(5, 1.5)))
        labels = {"bucket": confidence_bucket(score), "actor": history.actors[0].name}
        yield row(MetricType.CONFIDENCE, score, labels, at(index, per_actor))
