"""The metric types dramatiq-opmetrics records, defined in one place.

Every raw sample and every daily aggregate carries one of these names in its ``metric_type`` column.
The unit of a sample's ``value`` depends on its type and is given next to each member.
"""

from __future__ import annotations

import enum


class MetricType(enum.StrEnum):
    """What a sample measures. The member's value is what the database stores."""

    #: Time an actor spent processing one message, in milliseconds (success or failure).
    PROCESSING_TIME = "processing_time"
    #: Time a message waited between becoming due and a worker starting it, in milliseconds.
    WAIT_TIME = "wait_time"
    #: One failed message; ``value`` is always 1. Labelled with ``error_type`` and ``outcome``.
    ERROR = "error"
    #: One message skipped by a middleware (``SkipMessage``); ``value`` is always 1.
    SKIPPED = "skipped"
    #: Messages in a queue at sampling time (a count), labelled with ``queue`` and ``state``.
    QUEUE_DEPTH = "queue_depth"
    #: Prompt (input) tokens of one language-model call (a count), labelled with ``model``.
    PROMPT_TOKENS = "prompt_tokens"
    #: Completion (output) tokens of one language-model call (a count), labelled with ``model``.
    COMPLETION_TOKENS = "completion_tokens"
    #: A confidence score in [0, 1], labelled with its ``bucket`` (``0.9-1.0``).
    CONFIDENCE = "confidence"
    #: Samples a process dropped because its buffer was full (a count per report).
    DROPPED_SAMPLES = "dropped_samples"
    #: Samples the database refused (a count per report), labelled with their ``metric_type`` and the
    #: ``reason`` (the exception class): the writer dropped only those and wrote the rest.
    REJECTED_SAMPLES = "rejected_samples"
    #: One message whose due time (``message_timestamp`` or the ``opmetrics_due_ms`` option) was not a
    #: plausible time (not a number, not finite, in the future or absurdly old): its wait time is not
    #: recorded; ``value`` is always 1. Labelled with ``actor`` and ``queue``.
    CLOCK_SKEW = "clock_skew"
    #: Seconds since the oldest ready message of a queue became due (sent, or the end of its delay), at
    #: sampling time; 0 for an empty queue. Labelled with ``queue``. Sampled with ``queue_depth`` by one
    #: process of the fleet per interval; Redis and StubBroker only (see :mod:`~dramatiq_opmetrics.queue_depth`).
    OLDEST_MESSAGE_AGE = "oldest_message_age"
    #: Worker threads of one worker process at sampling time (a count), labelled with ``host`` and
    #: ``queues`` (the queues it consumes). Every worker process records one per queue depth interval, so
    #: the samples of an interval count the workers online.
    WORKER_THREADS = "worker_threads"
    #: Worker threads of one worker process processing a message at sampling time (a count), labelled like
    #: ``worker_threads``: utilisation is ``busy_threads`` / ``worker_threads``.
    BUSY_THREADS = "busy_threads"


#: The name of the database enum type (PostgreSQL) that holds :class:`MetricType` values.
METRIC_TYPE_ENUM_NAME = "opmetrics_metric_type"
