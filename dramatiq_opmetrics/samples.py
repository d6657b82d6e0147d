"""Samples: one measured value with its metric type, labels and time, validated before anything is written.

Every way of recording a metric (the middleware, :func:`~dramatiq_opmetrics.record_token_usage`,
:class:`~dramatiq_opmetrics.MetricsCollector`) builds its samples with the functions here, so the rules
for values and labels live in one place. A builder either returns every sample of a call or raises
:class:`ValueError` before any is made.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from .labels import LabelSet, make_label_set
from .metric_types import MetricType

#: Width of one confidence bucket: ``0.0-0.1`` ... ``0.9-1.0``.
CONFIDENCE_BUCKET_WIDTH = 0.1
_CONFIDENCE_BUCKETS = 10


@dataclass(frozen=True, slots=True)
class Sample:
    """One raw metric sample, ready to be stored.

    Attributes:
      metric_type(MetricType): what was measured.
      value(float): the measurement, in the unit of its metric type.
      label_set(LabelSet): its canonical labels.
      recorded_at(datetime): when it was measured, timezone-aware UTC.
    """

    metric_type: MetricType
    value: float
    label_set: LabelSet
    recorded_at: datetime


def utc_timestamp(recorded_at: datetime | None) -> datetime:
    """Return ``recorded_at`` converted to UTC, or now if it is None.

    Raises:
      ValueError: if ``recorded_at`` is naive (has no time zone).
    """
    if recorded_at is None:
        return datetime.now(UTC)
    if not isinstance(recorded_at, datetime):
        raise ValueError(f"recorded_at must be a datetime, got {type(recorded_at).__name__}")
    if recorded_at.tzinfo is None or recorded_at.utcoffset() is None:
        raise ValueError("recorded_at must be timezone-aware (for example datetime.now(timezone.utc))")
    return recorded_at.astimezone(UTC)


def check_measurement(name: str, value: object) -> float:
    """Return ``value`` as a float if it is a finite, non-negative number, else raise ValueError."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {type(value).__name__}")
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value!r}")
    return float(value)


def check_count(name: str, value: object) -> int:
    """Return ``value`` if it is a non-negative integer (not a bool or float), else raise ValueError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value!r}")
    return value


def confidence_bucket(value: float) -> str:
    """Name the bucket of a confidence score: ``0.0-0.1``, ..., ``0.9-1.0`` (1.0 falls in the last)."""
    index = min(int(round(value * _CONFIDENCE_BUCKETS, 9)), _CONFIDENCE_BUCKETS - 1)
    low = index * CONFIDENCE_BUCKET_WIDTH
    return f"{low:.1f}-{low + CONFIDENCE_BUCKET_WIDTH:.1f}"


def _labels(fixed: Mapping[str, str | None], extra: Mapping[str, object]) -> LabelSet:
    clash = fixed.keys() & extra.keys()
    if clash:
        raise ValueError(f"label {sorted(clash)[0]!r} is given twice")
    merged: dict[str, object] = {key: value for key, value in fixed.items() if value is not None}
    merged.update(extra)
    return make_label_set(merged)


def queue_depth(queue: str, depth: int, *, recorded_at: datetime | None = None, **labels: object) -> list[Sample]:
    """One ``queue_depth`` sample: ``depth`` messages in ``queue``."""
    value = check_count("depth", depth)
    return [Sample(MetricType.QUEUE_DEPTH, value, _labels({"queue": queue}, labels), utc_timestamp(recorded_at))]


def processing_time(
    actor: str,
    duration_ms: float,
    *,
    queue: str | None = None,
    recorded_at: datetime | None = None,
    **labels: object,
) -> list[Sample]:
    """One ``processing_time`` sample of ``duration_ms`` milliseconds for ``actor``."""
    value = check_measurement("duration_ms", duration_ms)
    label_set = _labels({"actor": actor, "queue": queue}, labels)
    return [Sample(MetricType.PROCESSING_TIME, value, label_set, utc_timestamp(recorded_at))]


def error(
    actor: str,
    error_type: str,
    *,
    queue: str | None = None,
    recorded_at: datetime | None = None,
    **labels: object,
) -> list[Sample]:
    """One ``error`` sample (value 1) for ``actor``, labelled with ``error_type``."""
    label_set = _labels({"actor": actor, "error_type": error_type, "queue": queue}, labels)
    return [Sample(MetricType.ERROR, 1.0, label_set, utc_timestamp(recorded_at))]


def token_usage(
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    *,
    actor: str | None = None,
    recorded_at: datetime | None = None,
    **labels: object,
) -> list[Sample]:
    """Two samples for one language-model call: ``prompt_tokens`` and ``completion_tokens``."""
    prompt = check_count("prompt_tokens", prompt_tokens)
    completion = check_count("completion_tokens", completion_tokens)
    label_set = _labels({"model": model, "actor": actor}, labels)
    at = utc_timestamp(recorded_at)
    return [
        Sample(MetricType.PROMPT_TOKENS, prompt, label_set, at),
        Sample(MetricType.COMPLETION_TOKENS, completion, label_set, at),
    ]


def confidence(value: float, *, recorded_at: datetime | None = None, **labels: object) -> list[Sample]:
    """One ``confidence`` sample of ``value`` in [0, 1], labelled with its ``bucket``."""
    score = check_measurement("confidence", value)
    if score > 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {value!r}")
    label_set = _labels({"bucket": confidence_bucket(score)}, labels)
    return [Sample(MetricType.CONFIDENCE, score, label_set, utc_timestamp(recorded_at))]


def message_labels(actor: str, *, queue: str | None = None, **labels: object) -> LabelSet:
    """The label set of a message's samples: ``actor`` and ``queue`` (if given) plus ``labels``."""
    return _labels({"actor": actor, "queue": queue}, labels)


def wait_time(
    actor: str,
    wait_ms: float,
    *,
    queue: str | None = None,
    recorded_at: datetime | None = None,
    **labels: object,
) -> list[Sample]:
    """One ``wait_time`` sample: a message of ``actor`` waited ``wait_ms`` milliseconds for a worker."""
    value = check_measurement("wait_ms", wait_ms)
    label_set = message_labels(actor, queue=queue, **labels)
    return [Sample(MetricType.WAIT_TIME, value, label_set, utc_timestamp(recorded_at))]


def skipped(
    actor: str, *, queue: str | None = None, recorded_at: datetime | None = None, **labels: object
) -> list[Sample]:
    """One ``skipped`` sample (value 1): a message of ``actor`` was skipped by a middleware."""
    return [Sample(MetricType.SKIPPED, 1.0, message_labels(actor, queue=queue, **labels), utc_timestamp(recorded_at))]


def dropped_samples(count: int, *, recorded_at: datetime | None = None, **labels: object) -> list[Sample]:
    """One ``dropped_samples`` sample: ``count`` samples were dropped because a buffer was full."""
    value = check_count("count", count)
    return [Sample(MetricType.DROPPED_SAMPLES, value, make_label_set(labels), utc_timestamp(recorded_at))]
