"""The report: range statistics per metric type, as tables for people and as JSON for scripts.

The numbers come from the rollup's query API (:mod:`dramatiq_opmetrics.query`): daily rows merged with the
raw rows of days not rolled up yet (so "today" is never missing), and range percentiles from the mergeable
histograms, never from averaged daily percentiles.

Each metric type is grouped by the labels that matter for it (:data:`GROUP_BY`): ``processing_time`` by
actor and queue with the share of attempts that raised, ``error`` by actor, queue, exception class and
outcome, ``queue_depth`` by queue and state, token counts by model, ``confidence`` by bucket.

JSON shape (``dramatiq-opmetrics report --json``; stable: keys are only ever added)::

    {
      "since": "2026-11-21",            # first UTC day of the range, inclusive
      "until": "2026-11-27",            # last UTC day of the range, inclusive
      "filters": {"actor": null, "queue": null, "model": null},
      "metrics": {                      # only the metric types that have data, in MetricType order
        "processing_time": {
          "unit": "ms",
          "group_by": ["actor", "queue"],
          "rows": [                     # ordered by count, largest first
            {"labels": {"actor": "send_email", "queue": "emails"},
             "count": 1204, "sum": 183020.5, "min": 3.1, "max": 950.2, "avg": 152.0,
             "p50": 140.2, "p95": 301.0, "p99": 420.9,
             "error_rate": 0.02}        # processing_time only: error samples / processed messages
          ]
        },
        ...
      }
    }

``min``, ``max``, ``avg`` and the percentiles are ``null`` for a row with no samples; percentiles are
within 1% relative error of the exact ones over the raw samples.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .metric_types import MetricType

#: The labels each metric type is grouped by in the report, in column order.
GROUP_BY: Mapping[MetricType, tuple[str, ...]] = {
    MetricType.PROCESSING_TIME: ("actor", "queue"),
    MetricType.WAIT_TIME: ("actor", "queue"),
    MetricType.ERROR: ("actor", "queue", "error_type", "outcome"),
    MetricType.SKIPPED: ("actor", "queue"),
    MetricType.QUEUE_DEPTH: ("queue", "state"),
    MetricType.PROMPT_TOKENS: ("model",),
    MetricType.COMPLETION_TOKENS: ("model",),
    MetricType.CONFIDENCE: ("bucket",),
    MetricType.DROPPED_SAMPLES: (),
}

#: The unit of each metric type's values, as the report names it.
UNITS: Mapping[MetricType, str] = {
    MetricType.PROCESSING_TIME: "ms",
    MetricType.WAIT_TIME: "ms",
    MetricType.ERROR: "errors",
    MetricType.SKIPPED: "messages",
    MetricType.QUEUE_DEPTH: "messages",
    MetricType.PROMPT_TOKENS: "tokens",
    MetricType.COMPLETION_TOKENS: "tokens",
    MetricType.CONFIDENCE: "score",
    MetricType.DROPPED_SAMPLES: "samples",
}

#: The labels the report can filter on (``--actor``, ``--queue``, ``--model``).
FILTER_LABELS = ("actor", "queue", "model")

#: How many days the report covers by default, today included.
DEFAULT_REPORT_DAYS = 7

#: The width the text tables fit in, in characters.
TEXT_WIDTH = 80

_TOKEN_TYPES = (MetricType.PROMPT_TOKENS, MetricType.COMPLETION_TOKENS)


@dataclass(frozen=True, slots=True)
class ReportRow:
    """Statistics of one group (one combination of its :data:`GROUP_BY` labels) over the report's range.

    Attributes:
      labels(Mapping[str, str]): the group's labels (a label missing from the samples is absent).
      count(int): number of samples.
      sum(float): sum of the values, in the metric type's unit.
      min, max, avg(float | None): in the metric type's unit; None when ``count`` is 0.
      p50, p95, p99(float | None): range percentiles (within 1% relative error); None when ``count`` is 0.
      error_rate(float | None): for ``processing_time``, error samples of the same actor and queue divided
        by ``count``; None for other metric types.
    """

    labels: Mapping[str, str]
    count: int
    sum: float
    min: float | None
    max: float | None
    avg: float | None
    p50: float | None
    p95: float | None
    p99: float | None
    error_rate: float | None = None


@dataclass(frozen=True, slots=True)
class Report:
    """A report over the UTC days ``since`` to ``until`` inclusive.

    Attributes:
      since, until(date): the range, inclusive.
      filters(Mapping[str, str | None]): the label filters applied (:data:`FILTER_LABELS`).
      metrics(Mapping[MetricType, Sequence[ReportRow]]): rows per metric type that has data, largest
        count first.
    """

    since: dt.date
    until: dt.date
    filters: Mapping[str, str | None]
    metrics: Mapping[MetricType, Sequence[ReportRow]] = field(default_factory=dict)

    @property
    def is_empty(self) -> bool:
        """Whether no metric type has a sample in the range."""
        return not any(self.metrics.values())


def report_range(
    *, days: int | None = None, since: dt.date | None = None, until: dt.date | None = None, today: dt.date | None = None
) -> tuple[dt.date, dt.date]:
    """The inclusive UTC day range of a report: the last ``days`` days (today included), or ``since`` to
    ``until`` (``until`` defaults to today), or the last :data:`DEFAULT_REPORT_DAYS` days.

    Raises:
      ValueError: if ``days`` is combined with ``since``/``until``, ``days`` is below 1, or ``since`` is
        after ``until``.
    """
    today = today or dt.datetime.now(dt.UTC).date()
    if days is not None:
        if since is not None or until is not None:
            raise ValueError("give either --days or --since/--until, not both")
        if days < 1:
            raise ValueError(f"--days must be at least 1, got {days}")
        return today - dt.timedelta(days=days - 1), today
    until = until or today
    since = since or until - dt.timedelta(days=DEFAULT_REPORT_DAYS - 1)
    if since > until:
        raise ValueError(f"--since {since} is after --until {until}")
    return since, until


def report_to_dict(report: Report) -> dict[str, Any]:
    """The report as plain JSON-ready data, in the documented shape (see the module docstring)."""
    metrics: dict[str, Any] = {}
    for metric_type, rows in report.metrics.items():
        if not rows:
            continue
        metrics[metric_type.value] = {
            "unit": UNITS[metric_type],
            "group_by": list(GROUP_BY[metric_type]),
            "rows": [_row_to_dict(metric_type, row) for row in rows],
        }
    return {
        "since": report.since.isoformat(),
        "until": report.until.isoformat(),
        "filters": {name: report.filters.get(name) for name in FILTER_LABELS},
        "metrics": metrics,
    }


def _row_to_dict(metric_type: MetricType, row: ReportRow) -> dict[str, Any]:
    data: dict[str, Any] = {
        "labels": dict(row.labels),
        "count": row.count,
        "sum": row.sum,
        "min": row.min,
        "max": row.max,
        "avg": row.avg,
        "p50": row.p50,
        "p95": row.p95,
        "p99": row.p99,
    }
    if metric_type is MetricType.PROCESSING_TIME:
        data["error_rate"] = row.error_rate
    return data


def render_json(report: Report) -> str:
    """The report as indented JSON text (see the module docstring for its shape)."""
    return json.dumps(report_to_dict(report), indent=2)


def render_text(report: Report, *, width: int = TEXT_WIDTH) -> str:
    """The report as one table per metric type, each fitting in ``width`` columns."""
    days = (report.until - report.since).days + 1
    active = ", ".join(f"{name}={value}" for name, value in report.filters.items() if value)
    heading = f"dramatiq-opmetrics report: {report.since} to {report.until} (UTC, {days} day{'s' * (days != 1)})"
    lines = [heading + (f", {active}" if active else "")]
    if report.is_empty:
        lines.append("No metrics recorded in this range.")
        return "\n".join(lines)
    for metric_type, rows in report.metrics.items():
        if not rows or metric_type in _TOKEN_TYPES:
            continue
        lines += ["", *_section(metric_type, rows, width)]
    if any(report.metrics.get(metric_type) for metric_type in _TOKEN_TYPES):
        lines += ["", *_token_section(report, width)]
    return "\n".join(lines)


_TITLES: Mapping[MetricType, str] = {
    MetricType.PROCESSING_TIME: "processing time (ms per attempt; err% = attempts that raised)",
    MetricType.WAIT_TIME: "wait time (ms from due to started)",
    MetricType.ERROR: "errors (by exception class and outcome)",
    MetricType.SKIPPED: "skipped messages",
    MetricType.QUEUE_DEPTH: "queue depth (messages per sample)",
    MetricType.CONFIDENCE: "confidence (score per recorded value)",
    MetricType.DROPPED_SAMPLES: "dropped samples (buffer full)",
}

#: Metric types whose every value is 1, so only their count tells anything.
_COUNT_ONLY = (MetricType.ERROR, MetricType.SKIPPED)


def _section(metric_type: MetricType, rows: Sequence[ReportRow], width: int) -> list[str]:
    labels = GROUP_BY[metric_type]
    if metric_type in _COUNT_ONLY:
        headers = [*labels, "count"]
        body = [[*_label_cells(labels, row), _count(row.count)] for row in rows]
        return [_TITLES[metric_type], *_table(headers, body, len(labels), width)]
    if metric_type is MetricType.DROPPED_SAMPLES:
        dropped, reports = sum(row.sum for row in rows), sum(row.count for row in rows)
        return [_TITLES[metric_type], f"{_count(dropped)} samples dropped, in {_count(reports)} reports"]
    number = _score if metric_type is MetricType.CONFIDENCE else _number
    headers = [*labels, "count"]
    if metric_type is MetricType.PROCESSING_TIME:
        headers.append("err%")
    if metric_type is MetricType.CONFIDENCE:
        headers.append("share")
    headers += ["avg", "p50", "p95", "p99"]
    total_count = sum(row.count for row in rows)
    body = []
    for row in rows:
        cells = [*_label_cells(labels, row), _count(row.count)]
        if metric_type is MetricType.PROCESSING_TIME:
            cells.append(_percent(row.error_rate))
        if metric_type is MetricType.CONFIDENCE:
            cells.append(_percent(row.count / total_count if total_count else None))
        cells += [number(row.avg), number(row.p50), number(row.p95), number(row.p99)]
        body.append(cells)
    return [_TITLES[metric_type], *_table(headers, body, len(labels), width)]


def _token_section(report: Report, width: int) -> list[str]:
    headers = ["model", "tokens", "calls", "total", "avg", "p50", "p95", "p99"]
    body = []
    grand_total = 0.0
    by_model: dict[str, list[tuple[str, ReportRow]]] = {}
    for metric_type, kind in ((MetricType.PROMPT_TOKENS, "prompt"), (MetricType.COMPLETION_TOKENS, "completion")):
        for row in report.metrics.get(metric_type, ()):
            by_model.setdefault(row.labels.get("model", "-"), []).append((kind, row))
    for model, entries in by_model.items():
        for kind, row in entries:
            grand_total += row.sum
            body.append(
                [model, kind, _count(row.count), _count(row.sum)]
                + [_number(value) for value in (row.avg, row.p50, row.p95, row.p99)]
            )
    title = f"token usage (tokens per call; {_count(grand_total)} tokens in total)"
    return [title, *_table(headers, body, 2, width)]


def _label_cells(labels: Iterable[str], row: ReportRow) -> list[str]:
    return [row.labels.get(name, "-") for name in labels]


def _table(headers: Sequence[str], body: Sequence[Sequence[str]], label_columns: int, width: int) -> list[str]:
    """Left-aligned label columns, then right-aligned numbers; label columns shrink (with "~") to fit."""
    widths = [max([len(header)] + [len(cells[i]) for cells in body]) for i, header in enumerate(headers)]
    overflow = sum(widths) + 2 * (len(widths) - 1) - width
    while overflow > 0 and label_columns:
        widest = max(range(label_columns), key=lambda i: widths[i])
        if widths[widest] <= max(len(headers[widest]), 6):
            break
        widths[widest] -= 1
        overflow -= 1

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            if i < label_columns:
                cell = cell if len(cell) <= widths[i] else cell[: widths[i] - 1] + "~"
                out.append(cell.ljust(widths[i]))
            else:
                out.append(cell.rjust(widths[i]))
        return "  ".join(out).rstrip()

    return [line(headers), *(line(cells) for cells in body)]


def _count(value: float) -> str:
    return f"{value:,.0f}"


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 10_000_000:
        return f"{value / 1_000_000:,.1f}M"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}"


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"
