"""Now (``/now``): what the fleet is doing in the last hour, 6 hours, 24 hours or 72 hours, minute by minute.

Every chart is a series of :func:`~dramatiq_opmetrics.series.query_series` (the recent tier, plus the few raw
rows it does not hold yet), in buckets of :data:`NOW_WINDOWS`: 1 minute for the last hour, 10 minutes for 6
and 24 hours, an hour for 72 hours.

- Per actor (the :data:`TOP_ACTORS` that took the most processing time in the window, or one chosen actor):
  throughput (messages per minute), error rate (failed attempts / attempts), and processing and wait time
  (one percentile per actor, or p50/p95/p99 of the chosen actor).
- Per queue (the :data:`TOP_QUEUES` deepest, or one chosen queue by state): the largest queue depth and
  oldest-message age sampled in each bucket, with the buckets in which a queue was stalled
  (:func:`~dramatiq_opmetrics.series.query_stalled`: it had ready messages and none of its messages
  finished) shaded and listed.
- Workers: processes and threads online, and utilisation (busy threads / threads). Each worker process
  records one ``worker_threads`` and one ``busy_threads`` sample per sampling interval (at wall-clock
  multiples of it), so the processes online in a bucket are its ``worker_threads`` samples divided by the
  sampling instants it holds (:attr:`~dramatiq_opmetrics.dashboard.data.DashboardData.sampling_interval_s`);
  the last :data:`WORKER_SETTLE_S` seconds are left out, since their samples may not be written yet.

The page fetches :func:`view`'s data as JSON (``/now.json``) every :data:`REFRESH_S` seconds and redraws.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from ...metric_types import MetricType
from ...series import SeriesPoint, StalledBucket, query_series, query_stalled
from ..charts import Chart, TimeBuckets, check_choice, time_chart
from ..data import DashboardData
from ..days import label_values

#: The windows the page can show: their length and bucket.
NOW_WINDOWS = {
    "1h": (dt.timedelta(hours=1), dt.timedelta(minutes=1)),
    "6h": (dt.timedelta(hours=6), dt.timedelta(minutes=10)),
    "24h": (dt.timedelta(hours=24), dt.timedelta(minutes=10)),
    "72h": (dt.timedelta(hours=72), dt.timedelta(hours=1)),
}
#: The window shown when none is chosen.
DEFAULT_NOW_WINDOW = "1h"
#: The percentiles one can chart per actor.
NOW_PERCENTILES = ("p50", "p95", "p99")
#: The percentile charted per actor when none is chosen.
DEFAULT_NOW_PERCENTILE = "p95"
#: How many actors are charted when none is chosen: those with the most processing time in the window.
TOP_ACTORS = 8
#: How many queues are charted when none is chosen: those with the most ready messages in the window.
TOP_QUEUES = 10
#: Seconds between two refreshes of the page.
REFRESH_S = 15
#: The last seconds whose worker samples are not counted (the writers may not have written them yet).
WORKER_SETTLE_S = 5.0


def view(
    data: DashboardData,
    window: str = DEFAULT_NOW_WINDOW,
    *,
    actor: str | None = None,
    queue: str | None = None,
    percentile: str = DEFAULT_NOW_PERCENTILE,
) -> dict[str, Any]:
    """The charts and tables of the last ``window`` (a key of :data:`NOW_WINDOWS`), of one ``actor`` and one
    ``queue`` if given, with ``percentile`` charted per actor.

    Every value is JSON-ready (times as epoch seconds).

    Raises:
      ValueError: ``window`` is not one of :data:`NOW_WINDOWS` or ``percentile`` not one of
        :data:`NOW_PERCENTILES`.
    """
    check_choice("window", window, list(NOW_WINDOWS))
    check_choice("percentile", percentile, NOW_PERCENTILES)
    now = data.clock()
    span, step = NOW_WINDOWS[window]
    buckets = TimeBuckets.ending(now, span, step)
    start, end = buckets.start, buckets.end
    settled = max(start, now - dt.timedelta(seconds=WORKER_SETTLE_S))
    actor_labels = {"actor": actor} if actor else None
    queue_labels = {"queue": queue} if queue else None
    by_actor = ("actor",)
    with data.engine.connect() as connection:

        def series(
            metric_type: MetricType, labels: dict[str, str] | None, group_by: Sequence[str]
        ) -> list[SeriesPoint]:
            return query_series(
                connection, start, end, step=step, metric_type=metric_type, labels=labels, group_by=group_by
            )

        processing = series(MetricType.PROCESSING_TIME, actor_labels, by_actor)
        waits = series(MetricType.WAIT_TIME, actor_labels, by_actor)
        depths = series(MetricType.QUEUE_DEPTH, queue_labels, ("queue", "state"))
        ages = series(MetricType.OLDEST_MESSAGE_AGE, queue_labels, ("queue",))
        workers = [
            point
            for metric_type in (MetricType.WORKER_THREADS, MetricType.BUSY_THREADS)
            for point in query_series(connection, start, settled, step=step, metric_type=metric_type, group_by=())
        ]
        stalled = query_stalled(connection, start, end, step=step, queue=queue)
        actors = label_values(connection, "actor")
        queues = label_values(connection, "queue", alongside="state")

    actor_rows = _actor_rows(processing, span)
    charted_actors = [actor] if actor else [row["actor"] for row in actor_rows[:TOP_ACTORS]]
    stalled_runs = _runs(stalled, step)
    queue_rows = _queue_rows(depths, ages, stalled, buckets)
    charted_queues = [row["queue"] for row in queue_rows[:TOP_QUEUES]]
    bands = [{"start": run["start"], "end": run["end"], "label": run["queue"]} for run in stalled_runs]

    def actor_name(point: SeriesPoint) -> str | None:
        return point.labels.get("actor")

    charts: dict[str, Chart] = {
        "throughput": time_chart(
            buckets, processing, actor_name, lambda point: point.count / _minutes(point), "per minute", charted_actors
        ),
        "error_rate": time_chart(
            buckets, processing, actor_name, lambda point: point.error_rate, "ratio", charted_actors
        ),
        "processing_time": _percentile_chart(buckets, processing, actor, charted_actors, percentile),
        "wait_time": _percentile_chart(buckets, waits, actor, charted_actors, percentile),
    }
    if queue:
        depth_chart = time_chart(buckets, depths, lambda point: point.labels.get("state"), _max, "messages")
    else:
        ready = [point for point in depths if point.labels.get("state") == "ready"]
        depth_chart = time_chart(buckets, ready, _queue_name, _max, "messages", charted_queues)
    age_chart = time_chart(buckets, ages, _queue_name, _max, "s", [queue] if queue else charted_queues)
    depth_chart.bands = age_chart.bands = bands
    charts["queue_depth"], charts["oldest_message_age"] = depth_chart, age_chart
    worker_chart, utilisation_chart = _worker_charts(buckets, workers, data.sampling_interval_s)
    charts["workers"], charts["utilisation"] = worker_chart, utilisation_chart
    messages = sum(row["messages"] for row in actor_rows)
    errors = sum(row["errors"] for row in actor_rows)
    return {
        "window": window,
        "windows": list(NOW_WINDOWS),
        "step_minutes": step // dt.timedelta(minutes=1),
        "actor": actor,
        "queue": queue,
        "percentile": percentile,
        "percentiles": list(NOW_PERCENTILES),
        "actors": actors,
        "queues": queues,
        "generated_at": now.timestamp(),
        "refresh_s": REFRESH_S,
        "top_actors": TOP_ACTORS,
        "summary": {
            "messages": messages,
            "error_rate": errors / messages if messages else None,
            "workers": _latest(worker_chart, "processes"),
            "utilisation": _latest(utilisation_chart, "utilisation"),
            "stalled_queues": len({run["queue"] for run in stalled_runs}),
        },
        "actor_rows": [row for row in actor_rows if row["actor"] in charted_actors],
        "queue_rows": queue_rows,
        "stalled": stalled_runs,
        "charts": {name: chart.to_json() for name, chart in charts.items()},
    }


def _minutes(point: SeriesPoint) -> float:
    return (point.end - point.start).total_seconds() / 60


def _max(point: SeriesPoint) -> float:
    return point.max


def _queue_name(point: SeriesPoint) -> str | None:
    return point.labels.get("queue")


def _actor_rows(processing: Iterable[SeriesPoint], span: dt.timedelta) -> list[dict[str, Any]]:
    """Per actor over the window: messages, errors, total processing time; most processing time first."""
    totals: dict[str, dict[str, float]] = defaultdict(lambda: {"messages": 0, "errors": 0.0, "processing_ms": 0.0})
    for point in processing:
        name = point.labels.get("actor")
        if name is None:
            continue
        found = totals[name]
        found["messages"] += point.count
        found["errors"] += round((point.error_rate or 0.0) * point.count)
        found["processing_ms"] += point.sum
    fleet_ms = sum(found["processing_ms"] for found in totals.values())
    rows: list[dict[str, Any]] = [
        {
            "actor": name,
            "messages": int(found["messages"]),
            "per_minute": found["messages"] / (span.total_seconds() / 60),
            "errors": int(found["errors"]),
            "error_rate": found["errors"] / found["messages"] if found["messages"] else None,
            "processing_ms_total": found["processing_ms"],
            "processing_share": found["processing_ms"] / fleet_ms if fleet_ms else None,
        }
        for name, found in totals.items()
    ]
    rows.sort(key=lambda row: (-row["processing_ms_total"], row["actor"]))
    return rows


def _percentile_chart(
    buckets: TimeBuckets,
    points: list[SeriesPoint],
    actor: str | None,
    charted: list[str],
    percentile: str,
) -> Chart:
    """p50/p95/p99 of one chosen actor, else ``percentile`` of each charted actor."""
    if actor:
        chart = Chart(buckets.x_values(), unit="ms")
        for name in NOW_PERCENTILES:
            values: list[float | None] = [None] * buckets.buckets
            for point in points:
                index = buckets.index(point.start)
                if 0 <= index < len(values):
                    values[index] = getattr(point, name)
            chart.add(name, values)
        return chart
    return time_chart(
        buckets,
        points,
        lambda point: point.labels.get("actor"),
        lambda point: getattr(point, percentile),
        "ms",
        charted,
    )


def _queue_rows(
    depths: Iterable[SeriesPoint], ages: Iterable[SeriesPoint], stalled: Iterable[StalledBucket], buckets: TimeBuckets
) -> list[dict[str, Any]]:
    """Per queue: ready messages and oldest-message age in the latest bucket sampled, the most ready in the
    window, its stalled buckets, and whether it is stalled now; deepest first."""
    rows: dict[str, dict[str, Any]] = {}

    def row(name: str) -> dict[str, Any]:
        found = rows.get(name)
        if found is None:
            found = rows[name] = {
                "queue": name,
                "ready": None,
                "max_ready": None,
                "oldest_age_s": None,
                "stalled_buckets": 0,
                "stalled_now": False,
                "_ready_at": None,
                "_age_at": None,
            }
        return found

    for point in depths:
        name = point.labels.get("queue")
        if name is None or point.labels.get("state") != "ready":
            continue
        found = row(name)
        found["max_ready"] = max(found["max_ready"] or 0.0, point.max)
        if found["_ready_at"] is None or point.start > found["_ready_at"]:
            found["ready"], found["_ready_at"] = point.max, point.start
    for point in ages:
        name = point.labels.get("queue")
        if name is None:
            continue
        found = row(name)
        if found["_age_at"] is None or point.start > found["_age_at"]:
            found["oldest_age_s"], found["_age_at"] = point.max, point.start
    # Whether a queue is stalled now: in the latest bucket that has ended (the current one may not have
    # finished a message yet only because it has just begun).
    latest_complete = (buckets.end - buckets.first) // buckets.step - 1
    for bucket in stalled:
        found = row(bucket.queue)
        found["stalled_buckets"] += 1
        if buckets.index(bucket.start) == latest_complete:
            found["stalled_now"] = True
    for found in rows.values():
        del found["_ready_at"], found["_age_at"]
    return sorted(rows.values(), key=lambda found: (-(found["max_ready"] or 0.0), found["queue"]))


def _runs(stalled: Iterable[StalledBucket], step: dt.timedelta) -> list[dict[str, Any]]:
    """Consecutive stalled buckets of a queue as one run: queue, start, end (epoch seconds), most ready."""
    runs: list[dict[str, Any]] = []
    for bucket in sorted(stalled, key=lambda found: (found.queue, found.start)):
        last = runs[-1] if runs else None
        if last is not None and last["queue"] == bucket.queue and last["end"] >= bucket.start.timestamp():
            last["end"] = bucket.end.timestamp()
            last["ready"] = max(last["ready"], bucket.ready)
            last["buckets"] += 1
            continue
        runs.append(
            {
                "queue": bucket.queue,
                "start": bucket.start.timestamp(),
                "end": bucket.end.timestamp(),
                "ready": bucket.ready,
                "buckets": 1,
            }
        )
    return runs


def _worker_charts(buckets: TimeBuckets, points: Iterable[SeriesPoint], interval_s: float) -> tuple[Chart, Chart]:
    """Processes and threads online, busy threads, and utilisation, per bucket."""
    size = buckets.buckets
    processes: list[float | None] = [None] * size
    threads: list[float | None] = [None] * size
    busy: list[float | None] = [None] * size
    thread_sums: list[float | None] = [None] * size
    busy_sums: list[float | None] = [None] * size
    for point in points:
        index = buckets.index(point.start)
        instants = _sampling_instants(point.start, point.end, interval_s)
        if not 0 <= index < size or instants == 0:
            continue
        if point.metric_type is MetricType.WORKER_THREADS:
            processes[index] = point.count / instants
            threads[index] = point.sum / instants
            thread_sums[index] = point.sum
        else:
            busy[index] = point.sum / instants
            busy_sums[index] = point.sum
    utilisation = [
        None if total is None or used is None or total == 0 else used / total
        for total, used in zip(thread_sums, busy_sums, strict=True)
    ]
    workers = Chart(buckets.x_values(), unit="count")
    workers.add("processes", processes)
    workers.add("threads", threads)
    workers.add("busy threads", busy)
    chart = Chart(buckets.x_values(), unit="ratio")
    chart.add("utilisation", utilisation)
    return workers, chart


def _sampling_instants(start: dt.datetime, end: dt.datetime, interval_s: float) -> int:
    """How many wall-clock multiples of ``interval_s`` fall in ``[start, end)``."""
    return max(0, math.ceil(end.timestamp() / interval_s) - math.ceil(start.timestamp() / interval_s))


def _latest(chart: Chart, label: str) -> float | None:
    """The latest value of the series ``label``."""
    for series in chart.series:
        if series["label"] == label:
            return next((value for value in reversed(series["values"]) if value is not None), None)
    return None
