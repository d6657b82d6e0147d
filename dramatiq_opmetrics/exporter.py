"""One Prometheus endpoint for the whole fleet, a drop-in for Dramatiq's Prometheus middleware.

Dramatiq's ``Prometheus`` middleware keeps its counters in each worker process and merges them through files
in a shared directory, with an HTTP server per host. This exporter serves the same metrics, under the same
names and labels, from the metrics database: one scrape target for the whole fleet, whatever runs where,
with totals that survive every restart. Existing dashboards and alert rules keep working unchanged.

Served, in the Prometheus text exposition format (OpenMetrics when Prometheus asks for it), made with
``prometheus_client`` from a custom collector (:class:`FleetCollector`; the app has the encoder write again
only the series that changed since the last scrape, :mod:`~dramatiq_opmetrics.exposition`):

- Dramatiq's names, labelled ``queue_name`` and ``actor_name`` as in ``dramatiq/middleware/prometheus.py``:
  ``dramatiq_messages_total`` (messages whose processing ended: attempts, failed or not, and skipped
  messages, as Dramatiq counts them), ``dramatiq_message_errors_total`` (failed attempts),
  ``dramatiq_message_retries_total`` (failed attempts retried), ``dramatiq_message_rejects_total`` (failed
  attempts not retried: dead-lettered), and ``dramatiq_message_duration_milliseconds``, a histogram of
  processing times with Dramatiq's bucket bounds (:data:`DURATION_BUCKETS_MS`).
- Ours, under ``dramatiq_opmetrics_``: the wait time histogram, skipped messages, errors by ``error_type``
  and ``outcome``, clock skew, token usage by model, the confidence histogram, dropped and rejected samples
  (counters), and the gauges queue depth by state, oldest-message age, workers online, their threads and
  busy threads (over the last two sampling intervals), alert states, and how many days are read from raw
  rows because the rollup has not reached them.

Counters and histograms are totals over the whole history (:mod:`~dramatiq_opmetrics.fleet_totals`): they
never decrease, across the nightly rollup, the prune, and restarts of the exporter or of any worker, and
every exporter on the same database serves the same values (so several can run for availability); the one
known exception, a row committed while the nightly rollup aggregates its day, is in
:mod:`~dramatiq_opmetrics.fleet_totals`.

How close the histograms are: the stored histograms (:mod:`~dramatiq_opmetrics.sketch`) keep each value's
bucket of 1% relative width, not the value. A bucket ``le="B"`` counts the values whose bucket's
representative value is at most ``B``: every value up to ``B / 1.01`` and none above ``B / 0.99``; only
values within 1% of a bound may be counted on the wrong side of it. ``_sum`` is the sum of the values'
representative values (each within 1% of its value; the sum is too): a float sum of the values themselves
would differ in its last bits between the daily rows and the recent tier, and a counter that goes down by
one bit is a reset to Prometheus.

Example (beside your WSGI application, or ``dramatiq-opmetrics exporter``)::

    from dramatiq_opmetrics.exporter import create_exporter_app
    app = create_exporter_app("postgresql+psycopg://app@db-host/app")   # serves /metrics
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import logging
import math
import operator
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import Metric
from prometheus_client.utils import floatToGoString
from sqlalchemy import Engine
from sqlalchemy.engine import URL
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.wrappers import Request, Response

from .alert_status import alert_statuses
from .config import resolve_setting
from .database import collection_paused, make_engine
from .exposition import ExpositionCache, Family, SampleValues, Series
from .fleet_totals import FleetTotals, FleetTotalsReader, Total, utc_now
from .http_serving import Credentials, make_http_server
from .metric_types import MetricType
from .middleware import OUTCOME_FINAL, OUTCOME_RETRIED, QUEUE_DEPTH_INTERVAL_ENV_VAR
from .packed_histograms import HistogramSum
from .queue_depth_sampler import DEFAULT_QUEUE_DEPTH_INTERVAL_S, check_interval_s
from .series import SeriesPoint, query_totals
from .sketch import bucket_key, bucket_value

#: The interface the exporter binds when none is given.
DEFAULT_HOST = "127.0.0.1"
#: The TCP port the exporter listens on when none is given (Dramatiq's middleware's).
DEFAULT_PORT = 9191
#: Worker threads answering requests.
DEFAULT_THREADS = 4
#: The bucket bounds of ``dramatiq_message_duration_milliseconds`` (Dramatiq's) and of the wait time
#: histogram, in milliseconds (``+Inf`` is added).
DURATION_BUCKETS_MS: tuple[float, ...] = (
    5, 10, 25, 50, 75, 100, 250, 500, 750, 1000, 2500, 5000, 7500, 10000, 30000, 60000, 600000, 900000,
)  # fmt: skip
#: The bucket bounds of the confidence histogram.
CONFIDENCE_BUCKETS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
#: The states an alert may be in, each a series of ``dramatiq_opmetrics_alert_state``.
ALERT_STATES = ("ok", "pending", "firing")
#: The sampled metric types served as gauges.
GAUGE_TYPES = (
    MetricType.QUEUE_DEPTH,
    MetricType.OLDEST_MESSAGE_AGE,
    MetricType.WORKER_THREADS,
    MetricType.BUSY_THREADS,
)
#: Our labels renamed to Dramatiq's.
LABEL_NAMES = {"actor": "actor_name", "queue": "queue_name"}
#: Dramatiq's labels, in its order.
DRAMATIQ_LABELS = ("queue_name", "actor_name")

logger = logging.getLogger(__name__)

_INVALID_LABEL_CHARACTERS = re.compile(r"[^a-zA-Z0-9_]")


@functools.lru_cache(maxsize=4096)
def prometheus_label_name(key: str) -> str:
    """The Prometheus label name of one of our label keys: ``actor`` and ``queue`` as Dramatiq names them,
    others with every character Prometheus does not allow made ``_`` (names starting with ``__`` are
    Prometheus' own: one ``_`` is dropped)."""
    renamed = LABEL_NAMES.get(key)
    if renamed is not None:
        return renamed
    name = _INVALID_LABEL_CHARACTERS.sub("_", key)
    if name[:1].isdigit():
        name = "_" + name
    while name.startswith("__"):
        name = name[1:]
    return name or "_"


def _bound_keys(bounds: Sequence[float]) -> list[int]:
    """For each bound, the largest sketch key whose representative value is at most the bound."""
    keys = []
    for bound in bounds:
        key = bucket_key(bound)
        while bucket_value(key) > bound:
            key -= 1
        while bucket_value(key + 1) <= bound:
            key += 1
        keys.append(key)
    return keys


@dataclass(frozen=True)
class HistogramCounts:
    """A histogram as Prometheus sees it: the cumulative count at each bound, ``+Inf`` last, and the sum."""

    cumulative: tuple[int, ...]
    sum: float


def histogram_counts(histogram: HistogramSum, bounds: Sequence[float]) -> HistogramCounts:
    """The cumulative counts of ``histogram`` at ``bounds`` (ascending, positive) and ``+Inf``: each counts the
    values whose bucket's representative value is at most the bound (see the module documentation), and
    the sum of the values' representative values (correctly rounded, so a function of the counts alone)."""
    offset, counts = histogram.positive.trimmed()
    negative_offset, negative = histogram.negative.trimmed()
    below = histogram.zero_count + sum(negative)
    running = list(itertools.accumulate(counts))
    cumulative = []
    for key in _bound_keys_cached(tuple(bounds)):
        index = key - offset
        cumulative.append(below + (running[min(index, len(running) - 1)] if running and index >= 0 else 0))
    cumulative.append(below + (running[-1] if running else 0))
    positive_sum = math.fsum(map(operator.mul, counts, _bucket_values(offset, len(counts))))
    negative_sum = math.fsum(map(operator.mul, negative, _bucket_values(negative_offset, len(negative))))
    return HistogramCounts(tuple(cumulative), math.fsum((positive_sum, -negative_sum)))


#: The representative values of a run of keys, from the first (one tuple, replaced whole: thread-safe).
_VALUES: tuple[int, list[float]] = (0, [])


def _bucket_values(first: int, count: int) -> list[float]:
    """:func:`~dramatiq_opmetrics.sketch.bucket_value` of ``count`` keys from ``first``: a slice of a run kept
    for the keys seen so far (a scrape sums hundreds of keys per changed histogram)."""
    global _VALUES
    if not count:
        return []
    start, values = _VALUES
    if first < start or first + count > start + len(values):
        low, high = min(first, start) if values else first, max(first + count, start + len(values))
        values = [bucket_value(key) for key in range(low, high)]
        start, _VALUES = low, (low, values)
    return values[first - start : first - start + count]


_BOUND_KEYS: dict[tuple[float, ...], list[int]] = {}


def _bound_keys_cached(bounds: tuple[float, ...]) -> list[int]:
    found = _BOUND_KEYS.get(bounds)
    if found is None:
        found = _BOUND_KEYS[bounds] = _bound_keys(bounds)
    return found


#: A series' Prometheus labels, sorted.
_Key = tuple[tuple[str, str], ...]


class _Totals:
    """The totals of one metric family being built: its series, merged by their Prometheus labels."""

    def __init__(self, name: str, documentation: str, kind: str) -> None:
        self.name, self.documentation, self.kind = name, documentation, kind
        self.series: dict[tuple[tuple[str, str], ...], Total] = {}

    def add(self, key: _Key, total: Total) -> None:
        """Add ``total`` to the series of the sorted Prometheus labels ``key``."""
        found = self.series.get(key)
        if found is None:
            self.series[key] = total
        else:
            self.series[key] = found.plus(total)


class FleetCollector:
    """A ``prometheus_client`` collector of the fleet's metrics, read from the metrics database at each
    collection (see the module documentation for what it serves).

    Register it in a registry of your own (``registry.register(FleetCollector(engine))``), or serve it with
    :func:`create_exporter_app`. A collection raises what the database raises (the exporter's app answers
    503 then).

    Parameters:
      engine(Engine): the metrics database.
      clock(Callable[[], datetime]): the current time, timezone-aware UTC; default the real clock.
      sampling_interval_s(float | None): seconds between two samples of queue depth and worker threads (the
        workers' ``queue_depth_interval_s``): the gauges are read over the last two intervals; default
        ``$OPMETRICS_QUEUE_DEPTH_INTERVAL_S``, else 15, as the middleware reads it.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Callable[[], dt.datetime] = utc_now,
        sampling_interval_s: float | None = None,
    ) -> None:
        self.engine = engine
        self.clock = clock
        #: What the collector reads the totals with (it keeps rolled-up months and tier buckets).
        self.reader = FleetTotalsReader(engine, clock=clock)
        interval_s = resolve_setting(
            sampling_interval_s, QUEUE_DEPTH_INTERVAL_ENV_VAR, DEFAULT_QUEUE_DEPTH_INTERVAL_S, float
        )
        self.sampling_interval_s = check_interval_s(interval_s) if interval_s else DEFAULT_QUEUE_DEPTH_INTERVAL_S
        self._histograms: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[object, HistogramCounts]] = {}
        self._kept_histograms = self._histograms
        self._lock = threading.Lock()
        self._texts = ExpositionCache()
        self._keys: dict[tuple[str, str], _Key] = {}

    def collect(self) -> Iterator[Metric]:
        """The metric families, read now."""
        for family in self.families():
            yield family.metric()

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The metric families, read now, in the format a request's ``Accept`` header asks for (as
        ``prometheus_client`` negotiates it: OpenMetrics, else the text format), and its content type: the
        text ``prometheus_client``'s encoder writes for :meth:`collect`'s families, each series written
        again only when it changed since the last scrape (:mod:`~dramatiq_opmetrics.exposition`)."""
        with collection_paused():
            return self._texts.exposition(self.families(), accept)

    def families(self) -> list[Family]:
        """The metric families, read now, described series by series (:mod:`~dramatiq_opmetrics.exposition`)."""
        with collection_paused():
            totals = self.reader.read()
            now = self.clock()
            window_start = now - dt.timedelta(seconds=2 * self.sampling_interval_s)
            gauges = query_totals(self.engine, window_start, now, percentiles=False, metric_types=GAUGE_TYPES)
            alerts = alert_statuses(self.engine)
            with self._lock:
                families = [*self._counters(totals), *self._gauges(gauges)]
            families += _alert_families(alerts)
            days = Family(
                "dramatiq_opmetrics_days_not_rolled_up",
                "Days read from raw rows because they have no daily rows yet (today, and yesterday before the rollup).",
                "gauge",
            )
            days.add_sample("dramatiq_opmetrics_days_not_rolled_up", {}, float(len(totals.not_rolled_up)))
            families.append(days)
            return families

    # -- counters and histograms ----------------------------------------------------------------------------

    def _counters(self, totals: FleetTotals) -> Iterator[Family]:
        # The histograms' counts of the last read, kept for the series that did not change.
        self._kept_histograms, self._histograms = self._histograms, {}
        messages = _Totals("dramatiq_messages", "The total number of messages processed.", "counter")
        errors = _Totals("dramatiq_message_errors", "The total number of errored messages.", "counter")
        retries = _Totals("dramatiq_message_retries", "The total number of retried messages.", "counter")
        rejects = _Totals("dramatiq_message_rejects", "The total number of dead-lettered messages.", "counter")
        durations = _Totals(
            "dramatiq_message_duration_milliseconds", "The time spent processing messages.", "histogram"
        )
        waits = _Totals(
            "dramatiq_opmetrics_wait_time_milliseconds",
            "Time messages waited between becoming due and a worker starting them.",
            "histogram",
        )
        skipped = _Totals(
            "dramatiq_opmetrics_skipped_messages", "Messages skipped by a middleware (SkipMessage).", "counter"
        )
        by_type = _Totals(
            "dramatiq_opmetrics_errors", "Failed attempts by exception class and outcome (retried, final).", "counter"
        )
        skew = _Totals(
            "dramatiq_opmetrics_clock_skew_messages",
            "Messages whose due time was not a plausible time (no wait time recorded).",
            "counter",
        )
        tokens = _Totals("dramatiq_opmetrics_tokens", "Language-model tokens, by model and kind.", "counter")
        confidence = _Totals("dramatiq_opmetrics_confidence", "Confidence scores recorded by actors.", "histogram")
        dropped = _Totals(
            "dramatiq_opmetrics_dropped_samples", "Samples dropped because a process's buffer was full.", "counter"
        )
        rejected = _Totals(
            "dramatiq_opmetrics_rejected_samples", "Samples the database refused, by metric type and reason.", "counter"
        )
        key = self._prometheus_key
        for (metric_type, labels_key), total in totals.totals.items():
            labels = totals.labels.get(labels_key)
            if labels is None:
                continue
            dramatiq = key(labels_key, labels, "dramatiq")
            if metric_type is MetricType.PROCESSING_TIME:
                messages.add(dramatiq, Total(total.count))
                durations.add(dramatiq, total)
            elif metric_type is MetricType.SKIPPED:
                messages.add(dramatiq, Total(total.count))
                skipped.add(dramatiq, Total(total.count))
            elif metric_type is MetricType.ERROR:
                errors.add(dramatiq, Total(total.count))
                outcome = labels.get("outcome")
                if outcome == OUTCOME_RETRIED:
                    retries.add(dramatiq, Total(total.count))
                elif outcome == OUTCOME_FINAL:
                    rejects.add(dramatiq, Total(total.count))
                by_type.add(key(labels_key, labels, "all"), Total(total.count))
            elif metric_type is MetricType.WAIT_TIME:
                waits.add(dramatiq, total)
            elif metric_type is MetricType.CLOCK_SKEW:
                skew.add(dramatiq, Total(total.count))
            elif metric_type in (MetricType.PROMPT_TOKENS, MetricType.COMPLETION_TOKENS):
                kind = "prompt" if metric_type is MetricType.PROMPT_TOKENS else "completion"
                tokens.add(key(labels_key, labels, kind), Total(total.count, total.value_sum))
            elif metric_type is MetricType.CONFIDENCE:
                confidence.add(key(labels_key, labels, "confidence"), total)
            elif metric_type is MetricType.DROPPED_SAMPLES:
                dropped.add(key(labels_key, labels, "all"), Total(total.count, total.value_sum))
            elif metric_type is MetricType.REJECTED_SAMPLES:
                rejected.add(key(labels_key, labels, "all"), Total(total.count, total.value_sum))
        for family in (messages, errors, retries, rejects, skipped, by_type, skew):
            yield _counter(family, lambda total: float(total.count))
        for family in (tokens, dropped, rejected):
            yield _counter(family, lambda total: total.value_sum)
        yield self._histogram(durations, DURATION_BUCKETS_MS)
        yield self._histogram(waits, DURATION_BUCKETS_MS)
        yield self._histogram(confidence, CONFIDENCE_BUCKETS)

    def _prometheus_key(self, labels_key: str, labels: Mapping[str, str], variant: str) -> _Key:
        """The Prometheus labels of a label set, sorted, as a family of ``variant`` labels it: ``dramatiq``
        (queue and actor), ``all``, ``confidence`` (all but the bucket), ``prompt`` and ``completion`` (all,
        and the kind of tokens); kept per label set (a label set's labels never change)."""
        found = self._keys.get((labels_key, variant))
        if found is None:
            if variant == "dramatiq":
                named = _dramatiq_labels(labels)
            elif variant == "confidence":
                named = _labels(labels, drop=("bucket",))
            elif variant in ("prompt", "completion"):
                named = {**_labels(labels), "kind": variant}
            else:
                named = _labels(labels)
            found = self._keys[(labels_key, variant)] = tuple(sorted(named.items()))
        return found

    def _histogram(self, family: _Totals, bounds: Sequence[float]) -> Family:
        histogram = Family(family.name, family.documentation, "histogram")
        les = [floatToGoString(bound) for bound in [*bounds, math.inf]]  # type: ignore[no-untyped-call]
        for key, total in sorted(family.series.items()):
            # A series' samples only ever grow: its count and sum tell whether it changed.
            version = (total.count, total.value_sum)
            found = self._kept_histograms.get((family.name, key))
            if found is None or found[0] != version:
                found = (version, histogram_counts(total.histogram or HistogramSum(), bounds))
            self._histograms[(family.name, key)] = found
            samples = functools.partial(_histogram_samples, family.name, key, les, total.count, found[1])
            histogram.series.append(Series(key, version, samples))
        return histogram

    # -- gauges ---------------------------------------------------------------------------------------------

    def _gauges(self, points: Iterable[SeriesPoint]) -> Iterator[Family]:
        depth = Family(
            "dramatiq_opmetrics_queue_depth_messages",
            "Messages in each queue by state, the most sampled over the last two sampling intervals.",
            "gauge",
        )
        age = Family(
            "dramatiq_opmetrics_oldest_message_age_seconds",
            "Seconds since the oldest ready message of each queue became due, the most sampled over the last two"
            " sampling intervals.",
            "gauge",
        )
        workers = Family(
            "dramatiq_opmetrics_workers",
            "Worker processes online, per host (over the last two sampling intervals).",
            "gauge",
        )
        threads = Family("dramatiq_opmetrics_worker_threads", "Worker threads online, per host.", "gauge")
        busy = Family("dramatiq_opmetrics_busy_threads", "Worker threads processing a message, per host.", "gauge")
        per_host: dict[str, list[float]] = {}
        depths: dict[tuple[tuple[str, str], ...], float] = {}
        ages: dict[tuple[tuple[str, str], ...], float] = {}
        for point in points:
            if point.metric_type is MetricType.QUEUE_DEPTH:
                _keep_largest(depths, _labels(point.labels), point.max)
            elif point.metric_type is MetricType.OLDEST_MESSAGE_AGE:
                _keep_largest(ages, _labels(point.labels), point.max)
            elif point.metric_type in (MetricType.WORKER_THREADS, MetricType.BUSY_THREADS):
                sums = per_host.setdefault(point.labels.get("host", ""), [0.0, 0.0, 0.0])
                if point.metric_type is MetricType.WORKER_THREADS:
                    sums[0] += point.count
                    sums[1] += point.sum
                else:
                    sums[2] += point.sum
        for key, largest in depths.items():
            depth.add_sample(depth.name, dict(key), largest)
        for key, largest in ages.items():
            age.add_sample(age.name, dict(key), largest)
        # Each worker process records one sample per interval: two intervals hold two of each.
        for host, (processes, online, working) in sorted(per_host.items()):
            workers.add_sample(workers.name, {"host": host}, processes / 2)
            threads.add_sample(threads.name, {"host": host}, online / 2)
            busy.add_sample(busy.name, {"host": host}, working / 2)
        yield from (depth, age, workers, threads, busy)


def _histogram_samples(
    name: str, key: tuple[tuple[str, str], ...], les: Sequence[str], count: int, counts: HistogramCounts
) -> list[SampleValues]:
    labels = dict(key)
    samples: list[SampleValues] = [
        (f"{name}_bucket", {**labels, "le": le}, float(cumulative))
        for le, cumulative in zip(les, counts.cumulative, strict=True)
    ]
    samples.append((f"{name}_count", labels, float(count)))
    samples.append((f"{name}_sum", labels, counts.sum))
    return samples


def _keep_largest(largest: dict[tuple[tuple[str, str], ...], float], labels: Mapping[str, str], value: float) -> None:
    """Keep the largest value of samples whose Prometheus labels are the same (label keys that differ only in
    characters Prometheus does not allow)."""
    key = tuple(sorted(labels.items()))
    if key not in largest or value > largest[key]:
        largest[key] = value


def _dramatiq_labels(labels: Mapping[str, str]) -> dict[str, str]:
    return {"queue_name": labels.get("queue", ""), "actor_name": labels.get("actor", "")}


def _labels(labels: Mapping[str, str], drop: Sequence[str] = ()) -> dict[str, str]:
    return {prometheus_label_name(key): value for key, value in sorted(labels.items()) if key not in drop}


def _counter(family: _Totals, value: Callable[[Total], float]) -> Family:
    counter = Family(family.name, family.documentation, "counter")
    for key, total in sorted(family.series.items()):
        counter.add_sample(f"{family.name}_total", dict(key), value(total), key=key)
    return counter


def _alert_families(statuses: Iterable[Any]) -> list[Family]:
    state = Family(
        "dramatiq_opmetrics_alert_state",
        "1 for the state each alert is in (ok, pending, firing), 0 for the others; group is its group key.",
        "gauge",
    )
    value = Family("dramatiq_opmetrics_alert_value", "The value each alert's rule last computed.", "gauge")
    for status in statuses:
        labels = {"rule": status.rule, "group": status.group}
        for name in ALERT_STATES:
            state.add_sample(state.name, {**labels, "state": name}, 1.0 if status.state == name else 0.0)
        if status.value is not None:
            value.add_sample(value.name, labels, float(status.value))
    return [state, value]


class ExporterApp:
    """The exporter as a WSGI application: ``/metrics`` serves :class:`FleetCollector`'s metrics; mount it
    beside your web application, or serve it with ``dramatiq-opmetrics exporter``. Create it with
    :func:`create_exporter_app`.

    Parameters:
      collector(FleetCollector): what ``/metrics`` serves.
      credentials(Credentials | None): what requests must send (see :mod:`~dramatiq_opmetrics.http_serving`);
        default: nothing.
    """

    def __init__(self, collector: FleetCollector, *, credentials: Credentials | None = None) -> None:
        self.collector = collector
        self.credentials = credentials or Credentials()

    @property
    def requires_auth(self) -> bool:
        """Whether requests must authenticate."""
        return self.credentials.requires_auth

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = Request(environ)
        try:
            self.credentials.authenticate(request)
            if request.path.rstrip("/") not in ("", "/metrics"):
                raise NotFound("the exporter serves /metrics")
            if request.method not in ("GET", "HEAD"):
                raise MethodNotAllowed(valid_methods=["GET", "HEAD"])
            response = (
                metrics_response(self.collector, request)
                if request.path.rstrip("/")
                else Response("dramatiq-opmetrics exporter: see /metrics\n", mimetype="text/plain")
            )
        except HTTPException as error:
            response = error.get_response(environ)
        return response(environ, start_response)


def metrics_response(collector: FleetCollector, request: Request) -> Response:
    """The response to a scrape of ``collector``: its metrics in the format the request accepts (OpenMetrics,
    or the text format), or 503 with the reason in one line when the database cannot be read."""
    try:
        body, content_type = collector.exposition(request.headers.get("Accept", ""))
    except Exception as error:  # the database down, not migrated, ...: Prometheus marks the target down
        logger.warning("Could not read the fleet's metrics for a scrape: %s", error, exc_info=True)
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        response = Response(f"cannot read the metrics database: {reason}\n", status=503, mimetype="text/plain")
    else:
        response = Response(body, content_type=content_type)
    response.headers["Cache-Control"] = "no-store"
    return response


def create_exporter_app(
    database_url: str | URL | None = None,
    *,
    engine: Engine | None = None,
    bearer_token: str | None = None,
    basic_auth: tuple[str, str] | None = None,
    sampling_interval_s: float | None = None,
) -> ExporterApp:
    """Create the exporter's WSGI application on the metrics database.

    Parameters:
      database_url(str | URL | None): the metrics database; default ``$OPMETRICS_DATABASE_URL``, then
        ``$DATABASE_URL``. Ignored when ``engine`` is given.
      engine(Engine | None): an engine to use instead (for example your application's own).
      bearer_token(str | None): require ``Authorization: Bearer <token>``.
      basic_auth(tuple[str, str] | None): require (or also accept) these basic-auth credentials.
      sampling_interval_s(float | None): see :class:`FleetCollector`.

    Raises:
      ConfigurationError: no database URL is given or set, or it cannot be used.
    """
    if engine is None:
        engine = make_engine(database_url)
    collector = FleetCollector(engine, sampling_interval_s=sampling_interval_s)
    return ExporterApp(collector, credentials=Credentials(bearer_token, basic_auth))


def make_exporter_server(
    app: ExporterApp,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    allow_remote: bool = False,
    threads: int = DEFAULT_THREADS,
) -> Any:
    """A Waitress server for ``app`` on ``host:port`` (port 0: any free port): loopback only unless
    ``allow_remote`` and ``app`` requires authentication (:func:`~dramatiq_opmetrics.http_serving.check_binding`).

    Call its ``run()`` to serve and ``close()`` to stop; ``effective_port`` is the port it listens on.

    Raises:
      ConfigurationError: a port out of range, or the binding is refused.
      OSError: the port cannot be bound (for example, it is in use).
    """
    return make_http_server(app, host, port, allow_remote=allow_remote, threads=threads, what="the exporter")


def serve_exporter(
    app: ExporterApp,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    allow_remote: bool = False,
    threads: int = DEFAULT_THREADS,
) -> None:
    """Serve ``app`` on ``host:port`` until interrupted (see :func:`make_exporter_server`)."""
    server = make_exporter_server(app, host, port, allow_remote=allow_remote, threads=threads)
    logger.info("Exporter listening on http://%s:%s/metrics", host, server.effective_port)
    print(
        f"dramatiq-opmetrics exporter on http://{host}:{server.effective_port}/metrics (pid {os.getpid()};"
        " Ctrl-C stops it)",
        flush=True,
    )
    try:
        server.run()
    finally:
        server.close()
