"""Samples: one measured value with its metric type, labels and time, validated before anything is written.

Every way of recording a metric (the middleware, :func:`~dramatiq_opmetrics.record_token_usage`,
:class:`~dramatiq_opmetrics.MetricsCollector`) builds its samples with the functions here, so the rules
for values and labels live in one place. A builder either returns every sample of a call or raises
:class:`ValueError` before any is made.

The rules make every sample storable, so one bad call can never block the writer (which isolates what the
database still refuses, see :mod:`~dramatiq_opmetrics.writer`):

- values are ``int``, ``float`` or another :class:`numbers.Real` (``Fraction``, numpy scalars; not ``bool``
  nor ``Decimal``), finite, not negative and at most :data:`MAX_SAMPLE_VALUE` (2**53): counts up to it are
  exact in the ``double precision`` column, and a day's sums of such values can never overflow it
  (PostgreSQL raises an error where a float8 sum overflows). Counts (tokens, queue depth) are integers
  (``int`` or another :class:`numbers.Integral`, such as numpy's). ``-0.0`` is stored as ``0.0``;
- labels follow :func:`~dramatiq_opmetrics.labels.make_label_set`. A required label argument (``actor``,
  ``model``, ``error_type``, ``queue`` of a queue depth) must be a non-empty string: None is refused, never
  dropped. An optional one (``queue=None``, ``actor=None``) left at None means "no such label".
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from .labels import LabelSet, make_label_set
from .metric_types import MetricType

#: Width of one confidence bucket: ``0.0-0.1`` ... ``0.9-1.0``.
CONFIDENCE_BUCKET_WIDTH = 0.1
_CONFIDENCE_BUCKETS = 10
#: The largest value of any sample (2**53 = 9,007,199,254,740,992): the largest count a float8 holds
#: exactly, and far above any real duration (285,000 years in milliseconds) or count.
MAX_SAMPLE_VALUE = 2**53


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
      ValueError: if ``recorded_at`` is not a datetime, is naive (has no time zone), or is so close to the
        ends of the datetime range that it has no UTC equivalent.
    """
    if recorded_at is None:
        return datetime.now(UTC)
    if not isinstance(recorded_at, datetime):
        raise ValueError(f"recorded_at must be a datetime, got {type(recorded_at).__name__}")
    if recorded_at.tzinfo is None or recorded_at.utcoffset() is None:
        raise ValueError("recorded_at must be timezone-aware (for example datetime.now(timezone.utc))")
    try:
        return recorded_at.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"recorded_at {recorded_at.isoformat()} has no UTC equivalent (out of range)") from None


def check_measurement(name: str, value: object) -> float:
    """Return ``value`` as a float if it is a finite number in [0, :data:`MAX_SAMPLE_VALUE`], else raise ValueError.

    ``value`` is an ``int``, a ``float`` or another :class:`numbers.Real` (not a ``bool``).
    """
    if type(value) is float and 0.0 <= value <= MAX_SAMPLE_VALUE:  # the common case, false for NaN
        return value + 0.0  # -0.0 becomes 0.0
    if isinstance(value, bool) or not isinstance(value, float | int | numbers.Real):
        raise ValueError(f"{name} must be a number, got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:
        raise ValueError(f"{name} must be at most {MAX_SAMPLE_VALUE:,}, got {describe_value(value)}") from None
    if math.isnan(number) or math.isinf(number):
        raise ValueError(f"{name} must be finite, got {number!r}")
    if number < 0:
        raise ValueError(f"{name} must not be negative, got {number!r}")
    if number > MAX_SAMPLE_VALUE or (isinstance(value, int) and value > MAX_SAMPLE_VALUE):  # 2**53 + 1 rounds down
        raise ValueError(f"{name} must be at most {MAX_SAMPLE_VALUE:,}, got {describe_value(value)}")
    return number + 0.0


def check_count(name: str, value: object) -> int:
    """Return ``value`` as an int if it is an integer in [0, :data:`MAX_SAMPLE_VALUE`], else raise ValueError.

    ``value`` is an ``int`` or another :class:`numbers.Integral` (numpy's integers), not a ``bool`` or float.
    """
    if isinstance(value, bool) or not isinstance(value, int | numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {describe_value(value)}")
    value = int(value)
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {describe_value(value)}")
    if value > MAX_SAMPLE_VALUE:
        raise ValueError(f"{name} must be at most {MAX_SAMPLE_VALUE:,}, got {describe_value(value)}")
    return value


def describe_value(value: object) -> str:
    """``value`` for a message: short, never the 400 digits of a huge integer, and never raising."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length():,} bits"
    try:
        text = repr(value) if isinstance(value, int | float) else f"{type(value).__name__} {value!r}"
    except Exception:  # a producer's object whose repr fails still gets described
        return type(value).__name__
    return text if len(text) <= 60 else f"{text[:57]}..."


def check_sample(sample: object, *, check_labels: bool = True) -> float:
    """Check a :class:`Sample` built by hand as the builders here would; return its value as a float.

    Checks the metric type, the value (as :func:`check_measurement`), that ``recorded_at`` is
    timezone-aware and, unless ``check_labels`` is false (a caller that checked this label set already),
    that the label set is valid and canonical.

    Raises:
      ValueError: naming what is wrong.
    """
    if not isinstance(sample, Sample):
        raise ValueError(f"expected a Sample, got {type(sample).__name__}")
    if not isinstance(sample.metric_type, MetricType):
        raise ValueError(f"metric_type must be a MetricType, got {describe_value(sample.metric_type)}")
    value = check_measurement("value", sample.value)
    recorded_at = sample.recorded_at
    if type(recorded_at) is not datetime or recorded_at.tzinfo is not UTC:  # the builders' own are UTC already
        utc_timestamp(recorded_at)
    if check_labels:
        label_set = sample.label_set
        if not isinstance(label_set, LabelSet):
            raise ValueError(f"label_set must be a LabelSet, got {type(label_set).__name__}")
        if make_label_set(label_set.labels).labels_key != label_set.labels_key:
            raise ValueError(f"label set {label_set.labels_key[:60]!r} is not canonical: make it with make_label_set")
    return value


def confidence_bucket(value: float) -> str:
    """Name the bucket of a confidence score: ``0.0-0.1``, ..., ``0.9-1.0`` (1.0 falls in the last)."""
    index = min(int(round(value * _CONFIDENCE_BUCKETS, 9)), _CONFIDENCE_BUCKETS - 1)
    low = index * CONFIDENCE_BUCKET_WIDTH
    return f"{low:.1f}-{low + CONFIDENCE_BUCKET_WIDTH:.1f}"


def _labels(
    required: Mapping[str, object], extra: Mapping[str, object], optional: Mapping[str, object] | None = None
) -> LabelSet:
    """The label set of ``required`` labels (each a string), the ``optional`` ones that are not None, ``extra``."""
    merged = dict(required)
    if optional:
        merged.update((key, value) for key, value in optional.items() if value is not None)
    clash = merged.keys() & extra.keys()
    if clash:
        raise ValueError(f"label {sorted(clash)[0]!r} is given twice")
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
    label_set = message_labels(actor, queue=queue, **labels)
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
    label_set = _labels({"actor": actor, "error_type": error_type}, labels, {"queue": queue})
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
    label_set = _labels({"model": model}, labels, {"actor": actor})
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
    return _labels({"actor": actor}, labels, {"queue": queue})


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


def rejected_samples(count: int, *, metric_type: str, reason: str, recorded_at: datetime | None = None) -> list[Sample]:
    """One ``rejected_samples`` sample: the database refused ``count`` samples of ``metric_type`` for ``reason``."""
    value = check_count("count", count)
    label_set = make_label_set({"metric_type": metric_type, "reason": reason})
    return [Sample(MetricType.REJECTED_SAMPLES, value, label_set, utc_timestamp(recorded_at))]


def oldest_message_age(queue: str, age_s: float, *, recorded_at: datetime | None = None) -> list[Sample]:
    """One ``oldest_message_age`` sample: the oldest ready message of ``queue`` became due ``age_s`` seconds ago."""
    value = check_measurement("age_s", age_s)
    return [Sample(MetricType.OLDEST_MESSAGE_AGE, value, _labels({"queue": queue}, {}), utc_timestamp(recorded_at))]


def worker_threads(
    threads: int, busy: int, *, host: str, queues: str, recorded_at: datetime | None = None
) -> list[Sample]:
    """Two samples of one worker process: its ``worker_threads`` and, of those, its ``busy_threads``."""
    total = check_count("threads", threads)
    busy_count = check_count("busy", busy)
    if busy_count > total:
        raise ValueError(f"busy threads ({busy_count}) cannot exceed worker threads ({total})")
    label_set = _labels({"host": host, "queues": queues}, {})
    at = utc_timestamp(recorded_at)
    return [
        Sample(MetricType.WORKER_THREADS, total, label_set, at),
        Sample(MetricType.BUSY_THREADS, busy_count, label_set, at),
    ]
