"""Poison inputs: each is refused at the call with a ValueError naming the problem, or written; either way
every other sample of the process is written (real OpMetrics, real Worker, PostgreSQL and SQLite).

The bypass tests put entries straight into the buffer, past validation, to prove that the writer isolates
what the database refuses: only those samples are dropped, counted as ``rejected_samples`` and logged once.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import random
import string
import time
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from types import MappingProxyType
from typing import Any

import dramatiq
import numpy as np
import pytest
from dramatiq.brokers.stub import StubBroker
from raw_samples import raw_counts
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL

from dramatiq_opmetrics import OpMetrics, record_token_usage, samples
from dramatiq_opmetrics.buffer import SampleBuffer
from dramatiq_opmetrics.labels import MAX_KEY_LENGTH, MAX_LABEL_SET_BYTES, MAX_LABELS, LabelSet, make_label_set
from dramatiq_opmetrics.metric_types import MetricType
from dramatiq_opmetrics.middleware import DUE_OPTION
from dramatiq_opmetrics.query import query_metrics
from dramatiq_opmetrics.rollup import rollup_day
from dramatiq_opmetrics.samples import MAX_SAMPLE_VALUE
from dramatiq_opmetrics.writer import MAX_PLAUSIBLE_WAIT_MS, BackgroundWriter, write_samples

NOW_MS = time.time() * 1000.0
DAY_MS = 24 * 3600 * 1000.0


def run_worker(broker: dramatiq.Broker) -> None:
    """Process everything on the default queue with a real Worker, then stop it (which flushes the metrics)."""
    worker = dramatiq.Worker(broker, worker_timeout=20, worker_threads=2)
    worker.start()
    try:
        broker.join("default", fail_fast=False)  # type: ignore[attr-defined]
        worker.join()
    finally:
        worker.stop()


def stub_broker(opmetrics: OpMetrics) -> StubBroker:
    broker = StubBroker(middleware=[opmetrics])
    broker.emit_after("process_boot")
    return broker


def long_labels(count: int) -> dict[str, str]:
    """``count`` labels with the longest keys and values allowed one by one."""
    return {f"k{i:02d}".ljust(MAX_KEY_LENGTH, "x"): "v" * 200 for i in range(count)}


# The poison inputs of the issue, and None where a required label goes.
POISON_CALLS: list[tuple[str, Callable[[], object], str]] = [
    ("10**400 prompt tokens", lambda: record_token_usage("m", 10**400, 1), "prompt_tokens must be at most"),
    ("a lone surrogate label", lambda: record_token_usage("m", 1, 1, note="\ud800"), "'note'.*surrogate"),
    ("13 long labels", lambda: record_token_usage("m", 1, 1, **long_labels(13)), "labels too large"),
    ("None as model", lambda: record_token_usage(None, 1, 1), "'model'"),  # type: ignore[arg-type]
    ("None as actor", lambda: samples.processing_time(None, 1.0), "'actor'"),  # type: ignore[arg-type]
    ("None as error type", lambda: samples.error("a", None), "'error_type'"),  # type: ignore[arg-type]
    ("None as queue of a depth", lambda: samples.queue_depth(None, 1), "'queue'"),  # type: ignore[arg-type]
    ("an int as actor", lambda: samples.processing_time(7, 1.0), "'actor'"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("case", "call", "message"), POISON_CALLS, ids=[case for case, _, _ in POISON_CALLS])
def test_each_poison_input_of_the_issue_is_refused_at_the_call_naming_the_problem(
    case: str, call: Callable[[], object], message: str
) -> None:
    target = OpMetrics("sqlite://", flush_interval_s=3600)  # of record_token_usage outside an actor
    with pytest.raises(ValueError, match=message):
        call()
    assert len(target.buffer) == 0


# Malformed due times as any producer may send them: (case, option or message_timestamp, what is recorded).
MALFORMED_DUE_TIMES: list[tuple[str, str, object, str]] = [
    ("a string", DUE_OPTION, "soon", "clock_skew"),
    ("a numeric string", DUE_OPTION, str(int(NOW_MS)), "clock_skew"),
    ("None (falls back to message_timestamp)", DUE_OPTION, None, "wait_time"),
    ("an empty list (falls back)", DUE_OPTION, [], "wait_time"),
    ("a list", DUE_OPTION, [1], "clock_skew"),
    ("a dict", DUE_OPTION, {"ms": 1}, "clock_skew"),
    ("true", DUE_OPTION, True, "clock_skew"),
    ("NaN", DUE_OPTION, math.nan, "clock_skew"),
    ("infinity", DUE_OPTION, math.inf, "clock_skew"),
    ("minus infinity", DUE_OPTION, -math.inf, "clock_skew"),
    ("minus one", DUE_OPTION, -1, "clock_skew"),
    ("10**30", DUE_OPTION, 10**30, "clock_skew"),
    ("10**400", DUE_OPTION, 10**400, "clock_skew"),
    ("an hour in the future", DUE_OPTION, NOW_MS + 3_600_000, "clock_skew"),
    ("1 ms after the epoch", DUE_OPTION, 1, "clock_skew"),
    ("31 days ago", DUE_OPTION, NOW_MS - 31 * DAY_MS, "clock_skew"),
    ("29 days ago", DUE_OPTION, NOW_MS - 29 * DAY_MS, "wait_time"),
    ("a float due time of now", DUE_OPTION, NOW_MS, "wait_time"),
    ("message_timestamp epoch 0", "message_timestamp", 0, "clock_skew"),
    ("message_timestamp a string", "message_timestamp", "yesterday", "clock_skew"),
    ("message_timestamp None", "message_timestamp", None, "clock_skew"),
    ("message_timestamp in the future", "message_timestamp", int(NOW_MS) + 86_400_000, "clock_skew"),
]


def test_poison_calls_and_malformed_due_times_never_cost_the_other_samples_of_the_process(
    migrated_url: URL, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dramatiq_opmetrics.writer")
    opmetrics = OpMetrics(migrated_url, flush_interval_s=3600)
    broker = stub_broker(opmetrics)
    refused: list[str] = []

    @dramatiq.actor(broker=broker)
    def poisoned(n: int) -> None:
        for case, call, _ in POISON_CALLS:
            try:
                call()
            except ValueError:
                refused.append(case)
        record_token_usage("good", n, 1)

    @dramatiq.actor(broker=broker)
    def timed(case: int) -> None:
        pass

    for n in range(10):
        poisoned.send(n)
    for index, (_, field, bad, _) in enumerate(MALFORMED_DUE_TIMES):
        message = timed.message(index)
        if field == DUE_OPTION:
            message = message.copy(options={**message.options, DUE_OPTION: bad})
        else:
            message = message.copy(message_timestamp=bad)
        broker.enqueue(message)
    run_worker(broker)

    assert Counter(refused) == Counter({case: 10 for case, _, _ in POISON_CALLS})
    skews = sum(1 for *_, recorded in MALFORMED_DUE_TIMES if recorded == "clock_skew")
    poisoned_key, timed_key = "actor:poisoned|queue:default", "actor:timed|queue:default"
    good_key = "actor:poisoned|model:good|queue:default"
    assert raw_counts(engine) == Counter(
        {
            ("processing_time", poisoned_key): 10,
            ("wait_time", poisoned_key): 10,
            ("prompt_tokens", good_key): 10,
            ("completion_tokens", good_key): 10,
            ("processing_time", timed_key): len(MALFORMED_DUE_TIMES),
            ("wait_time", timed_key): len(MALFORMED_DUE_TIMES) - skews,
            ("clock_skew", timed_key): skews,
        }
    )
    with engine.connect() as connection:
        waits = connection.execute(text("SELECT max(value) FROM operational_metrics WHERE metric_type = 'wait_time'"))
        assert 29 * DAY_MS - 60_000 < waits.scalar_one() <= MAX_PLAUSIBLE_WAIT_MS
    skew_warnings = [r.getMessage() for r in caplog.records if "clock_skew" in r.getMessage()]
    assert len(skew_warnings) == 1
    assert f"of {skews} messages" in skew_warnings[0]
    assert "'actor': 'timed'" in skew_warnings[0]
    assert not [r for r in caplog.records if "Could not write" in r.getMessage() or "Rejected" in r.getMessage()]


# Numbers as a duration (a measurement) and as a token count: (case, value, written or the error's words).
MEASUREMENTS: list[tuple[str, object, str | None]] = [
    ("zero", 0, None),
    ("minus zero", -0.0, None),
    ("the smallest subnormal", 5e-324, None),
    ("a tiny normal", 1e-300, None),
    ("2**53", 2**53, None),
    ("2**53 as a float", float(2**53), None),
    ("a Fraction", Fraction(1, 3), None),
    ("a numpy float64", np.float64(2.5), None),
    ("a numpy float32", np.float32(1.5), None),
    ("a numpy int64", np.int64(7), None),
    ("1e308", 1e308, "must be at most"),
    ("2**53 + 1", 2**53 + 1, "must be at most"),
    ("2**63", 2**63, "must be at most"),
    ("2**1024", 2**1024, "must be at most"),
    ("10**400", 10**400, "must be at most"),
    ("NaN", math.nan, "finite"),
    ("numpy NaN", np.float64("nan"), "finite"),
    ("infinity", math.inf, "finite"),
    ("minus one", -1, "negative"),
    ("minus the smallest subnormal", -5e-324, "negative"),
    ("a Decimal", Decimal("1.5"), "must be a number"),
    ("a complex", complex(1, 0), "must be a number"),
    ("True", True, "must be a number"),
    ("a string", "12", "must be a number"),
    ("None", None, "must be a number"),
]
COUNTS: list[tuple[str, object, str | None]] = [
    ("zero", 0, None),
    ("2**53", 2**53, None),
    ("a numpy int64", np.int64(5), None),
    ("a numpy uint64 of 2**53", np.uint64(2**53), None),
    ("2**53 + 1", 2**53 + 1, "must be at most"),
    ("2**63", 2**63, "must be at most"),
    ("10**400", 10**400, "must be at most"),
    ("minus one", -1, "negative"),
    ("a float", 1.0, "must be an integer"),
    ("a Fraction of 2", Fraction(2, 1), "must be an integer"),
    ("a Decimal", Decimal(3), "must be an integer"),
    ("True", True, "must be an integer"),
    ("a string", "3", "must be an integer"),
    ("None", None, "must be an integer"),
]

# Label values: (case, value, written or the error's words).
LABEL_VALUES: list[tuple[str, object, str | None]] = [
    ("an emoji", "🚀 launch", None),
    ("right-to-left text with an override", "\u202e\u05e9\u05dc\u05d5\u05dd \u05e2\u05d5\u05dc\u05dd", None),
    ("combining characters", "e\u0301\u0301\u0301", None),
    ("control characters", "\x01\x07\x1b[31m\x7f", None),
    ("tab and newline", "a\tb\nc\r\n", None),
    ("separators", "|", None),
    ("a colon", ":", None),
    ("a backslash", "\\", None),
    ("every escape", "a|b:c\\d\\|e\\:", None),
    ("a byte order mark", "\ufeff", None),
    ("a noncharacter", "\uffff", None),
    ("a line separator", "\u2028", None),
    ("a surrogate pair's character", "\U0001f600", None),
    ("200 four-byte characters", "\U0001f600" * 200, None),
    ("SQL", "'); DROP TABLE operational_metrics; --", None),
    ("empty", "", "empty value"),
    ("a NUL", "\x00", "NUL"),
    ("a NUL inside", "a\x00b", "NUL"),
    ("a lone high surrogate", "\ud800", "surrogate"),
    ("a lone low surrogate", "x\udfff", "surrogate"),
    ("a reversed pair", "\ude00\ud83d", "surrogate"),
    ("10,000 characters", "x" * 10_000, "longer than"),
    ("bytes", b"abc", "string value"),
    ("a number", 5, "string value"),
    ("None", None, "string value"),
]


def _label_set_of_size(size: int, alphabet: str) -> dict[str, str]:
    """Labels whose labels key takes exactly ``size`` bytes in UTF-8, made of random (incompressible)
    characters of ``alphabet`` (each the same size in UTF-8)."""
    rng = random.Random(size)
    width = len(alphabet[0].encode())
    labels: dict[str, str] = {}
    used = 0
    for index in range(MAX_LABELS):
        key = f"k{index:02d}"
        overhead = len(key) + 1 + (1 if labels else 0)
        room = size - used - overhead
        if room <= 0:
            break
        ascii_tail = room % width
        characters = min(200 - ascii_tail, room // width)
        value = "".join(rng.choice(alphabet) for _ in range(characters)) + "a" * ascii_tail
        if len(value) > 200 or not value:
            break
        labels[key] = value
        used += overhead + len(value.encode())
    assert len(make_label_set_unchecked(labels).encode()) == size, "the test helper missed the size"
    return labels


def make_label_set_unchecked(labels: dict[str, str]) -> str:
    """The labels key of ``labels`` as :func:`make_label_set` writes it, without its checks."""
    escapes = str.maketrans({"\\": "\\\\", "|": "\\|", ":": "\\:"})
    return "|".join(f"{key}:{labels[key].translate(escapes)}" for key in sorted(labels))


ASCII = string.ascii_letters + string.digits
FOUR_BYTES = "".join(chr(0x1F600 + i) for i in range(64))
LABEL_SETS: list[tuple[str, dict[str, str], str | None]] = [
    ("the largest allowed, ASCII", _label_set_of_size(MAX_LABEL_SET_BYTES, ASCII), None),
    ("the largest allowed, four-byte characters", _label_set_of_size(MAX_LABEL_SET_BYTES, FOUR_BYTES), None),
    ("one byte over, ASCII", _label_set_of_size(MAX_LABEL_SET_BYTES + 1, ASCII), "labels too large"),
    ("one byte over, four-byte", _label_set_of_size(MAX_LABEL_SET_BYTES + 1, FOUR_BYTES), "labels too large"),
    ("escapes push it over", {"j": "v" * 150, "k": "|" * 200, **long_labels(6)}, "labels too large"),
    ("16 short labels", {f"k{i}": "v" for i in range(MAX_LABELS)}, None),
    ("17 short labels", {f"k{i}": "v" for i in range(MAX_LABELS + 1)}, "too many labels"),
    ("13 long labels", long_labels(13), "labels too large"),
    ("7 long labels", long_labels(7), None),
]


def confidence_sample(label_set: LabelSet) -> samples.Sample:
    """A confidence sample with exactly ``label_set`` (the builders would add a bucket label)."""
    return samples.Sample(MetricType.CONFIDENCE, 0.5, label_set, dt.datetime.now(dt.UTC))


def _all_cases() -> list[tuple[str, Callable[[], list[samples.Sample]], str | None]]:
    cases: list[tuple[str, Callable[[], list[samples.Sample]], str | None]] = []
    for case, value, error in MEASUREMENTS:
        cases.append((f"duration: {case}", lambda v=value: samples.processing_time("p", v, queue="q"), error))
    for case, value, error in COUNTS:
        cases.append((f"token count: {case}", lambda v=value: samples.token_usage("m", v, 1), error))
    for case, value, error in LABEL_VALUES:
        cases.append((f"label value: {case}", lambda v=value: samples.error("p", "E", note=v), error))
        cases.append((f"actor: {case}", lambda v=value: samples.processing_time(v, 1.0), error))
    for case, labels, error in LABEL_SETS:
        cases.append((f"label set: {case}", lambda ls=labels: [confidence_sample(make_label_set(ls))], error))
    return cases


CASES = _all_cases()


@pytest.mark.parametrize(("case", "build", "error"), CASES, ids=[case for case, _, _ in CASES])
def test_a_generated_odd_input_is_refused_with_a_value_error_naming_the_problem_or_accepted(
    case: str, build: Callable[[], list[samples.Sample]], error: str | None
) -> None:
    if error is None:
        built = build()
        assert all(0.0 <= sample.value <= MAX_SAMPLE_VALUE for sample in built)
        assert all(math.copysign(1.0, sample.value) == 1.0 for sample in built)  # never -0.0
    else:
        with pytest.raises(ValueError, match=error):
            build()


def test_every_accepted_odd_input_is_written_and_aggregated_with_every_other_sample(
    migrated_url: URL, engine: Engine
) -> None:
    buffer = SampleBuffer(batch_size=50)
    writer = BackgroundWriter(migrated_url, buffer, flush_interval_s=3600)
    accepted: Counter[tuple[str, str]] = Counter()
    refused = 0
    for index, (_, build, _) in enumerate(CASES):
        good = samples.queue_depth("q", index, state="ready")
        try:
            odd = build()
        except ValueError:
            refused += 1
            odd = []
        for sample in [*good, *odd]:
            accepted[sample.metric_type.value, sample.label_set.labels_key] += 1
        buffer.add_many([*good, *odd])
    try:
        assert writer.flush(timeout_s=60)
    finally:
        assert writer.stop(timeout_s=30)
    assert refused == sum(1 for _, _, error in CASES if error is not None)
    assert raw_counts(engine) == accepted
    with engine.connect() as connection:
        today = dt.datetime.now(dt.UTC).date()
        stats = query_metrics(connection, today - dt.timedelta(days=1), today + dt.timedelta(days=1))
    assert sum(stat.count for stat in stats) == sum(accepted.values())
    assert all(math.isfinite(stat.sum) and math.isfinite(stat.p99 or 0.0) for stat in stats)


def poisoned_buffer(good: int) -> tuple[SampleBuffer, str]:
    """A buffer holding ``good`` valid sample entries and three the database refuses, added past validation."""
    buffer = SampleBuffer(batch_size=good + 3)
    key = buffer.register_label_set(make_label_set({"actor": "a", "queue": "q"}))
    # A label set built by hand, past make_label_set: no UTF-8 encoder takes a lone surrogate.
    surrogate = buffer.register_label_set(LabelSet("note:\ud800", MappingProxyType({"note": "\ud800"})))
    now = time.time()
    entries: list[Any] = [("processing_time", float(i), key, now) for i in range(good)]
    entries[good // 4 : good // 4] = [("prompt_tokens", 10**400, key, now)]  # no float8 or SQLite REAL holds it
    entries[good // 2 : good // 2] = [("error", 1.0, surrogate, now)]
    entries[good - 7 : good - 7] = [("queue_depth", 1.0, key, 1e300)]  # a time past any timestamp type
    buffer.extend(entries)
    return buffer, key


def test_a_batch_of_5000_with_three_poison_rows_writes_the_other_4997_counts_three_rejected_and_logs_once(
    migrated_url: URL, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dramatiq_opmetrics.writer")
    buffer, key = poisoned_buffer(4_997)
    writer = BackgroundWriter(migrated_url, buffer, flush_interval_s=3600, warning_interval_s=3600)
    try:
        assert writer.flush(timeout_s=60)
    finally:
        assert writer.stop(timeout_s=30)
    counts = raw_counts(engine)
    assert counts[("processing_time", key)] == 4_997
    assert writer.written_total == 4_997 + sum(n for (kind, _), n in counts.items() if kind == "rejected_samples")
    with engine.connect() as connection:
        rejected = connection.execute(
            text(
                "SELECT l.labels_key, m.value FROM operational_metrics m"
                " JOIN opmetrics_label_sets l ON l.id = m.label_set_id WHERE m.metric_type = 'rejected_samples'"
            )
        ).all()
    assert sum(value for _, value in rejected) == 3
    assert {labels_key.split("|")[0] for labels_key, _ in rejected} == {
        "metric_type:prompt_tokens",
        "metric_type:error",
        "metric_type:queue_depth",
    }
    assert {labels_key.split("|")[1] for labels_key, _ in rejected} == {
        "reason:OverflowError",
        "reason:UnicodeEncodeError",
    }
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("Rejected 3 metric samples")
    assert "OverflowError" in warnings[0]
    assert "prompt_tokens sample labelled {'actor': 'a', 'queue': 'q'}" in warnings[0]
    assert "keeping them" not in warnings[0]


def test_rejections_are_warned_about_once_per_interval_and_all_counted(
    migrated_url: URL, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dramatiq_opmetrics.writer")
    buffer = SampleBuffer(batch_size=10)
    key = buffer.register_label_set(make_label_set({"actor": "a"}))
    writer = BackgroundWriter(migrated_url, buffer, flush_interval_s=3600, warning_interval_s=3600)
    try:
        for round_ in range(4):
            buffer.extend([("confidence", 0.5, key, time.time()), ("confidence", 10**400, key, time.time())])
            assert writer.flush(timeout_s=30), round_
    finally:
        assert writer.stop(timeout_s=30)
    assert raw_counts(engine)[("confidence", "actor:a")] == 4
    with engine.connect() as connection:
        total = connection.execute(
            text("SELECT sum(value) FROM operational_metrics WHERE metric_type = 'rejected_samples'")
        ).scalar_one()
    assert total == 4
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        "Rejected 1 metric samples that the metrics database refuses"
    ]


@pytest.mark.postgres
def test_postgresql_refuses_an_index_row_just_above_the_measured_limit_and_the_writer_isolates_it(
    postgres_engine: Engine, postgres_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    """2,692 incompressible bytes fit in the unique index of labels_key, 2,693 do not: the bound of
    MAX_LABEL_SET_BYTES (2,048) keeps a margin of 644 bytes; a label set past it, added past validation,
    rejects only its own samples."""
    caplog.set_level(logging.WARNING, logger="dramatiq_opmetrics.writer")
    assert MAX_LABEL_SET_BYTES + 600 < 2_692
    buffer = SampleBuffer()
    fits = _label_set_of_size(2_692, ASCII)
    too_big = _label_set_of_size(2_693, ASCII)
    fits_key = buffer.register_label_set(LabelSet(make_label_set_unchecked(fits), MappingProxyType(fits)))
    too_big_key = buffer.register_label_set(LabelSet(make_label_set_unchecked(too_big), MappingProxyType(too_big)))
    good_key = buffer.register_label_set(make_label_set({"actor": "a"}))
    now = time.time()
    buffer.extend([("error", 1.0, key, now) for key in (fits_key, too_big_key, good_key, too_big_key)])
    writer = BackgroundWriter(postgres_url, buffer, flush_interval_s=3600)
    try:
        assert writer.flush(timeout_s=30)
    finally:
        assert writer.stop(timeout_s=30)
    counts = raw_counts(postgres_engine)
    assert counts[("error", fits_key)] == 1
    assert counts[("error", good_key)] == 1
    assert counts[("rejected_samples", "metric_type:error|reason:ProgramLimitExceeded")] == 1
    with postgres_engine.connect() as connection:
        assert (
            connection.execute(
                text("SELECT sum(value) FROM operational_metrics WHERE metric_type = 'rejected_samples'")
            ).scalar_one()
            == 2
        )
    assert "index row size" in caplog.text


@pytest.mark.postgres
def test_the_largest_allowed_label_set_is_stored_indexed_and_rolled_up_on_postgresql(
    postgres_engine: Engine,
) -> None:
    """The daily table's primary key indexes labels_key beside metric_type and date: the largest allowed
    label set, incompressible, in ASCII and in four-byte characters, fits there too."""
    day = dt.date(2026, 11, 20)
    at = dt.datetime.combine(day, dt.time(12), tzinfo=dt.UTC)
    batch = [
        samples.Sample(
            MetricType.CONFIDENCE, 0.5, make_label_set(_label_set_of_size(MAX_LABEL_SET_BYTES, alphabet)), at
        )
        for alphabet in (ASCII, FOUR_BYTES)
    ]
    with postgres_engine.begin() as connection:
        assert write_samples(connection, batch) == 2
    rolled = rollup_day(postgres_engine, day)
    assert rolled is not None and rolled.daily_rows == 2
    with postgres_engine.connect() as connection:
        sizes = connection.execute(text("SELECT octet_length(labels_key) FROM operational_metrics_daily")).scalars()
        assert list(sizes) == [MAX_LABEL_SET_BYTES, MAX_LABEL_SET_BYTES]


@pytest.mark.postgres
def test_an_outage_in_the_middle_of_the_splitting_resumes_where_it_stopped_and_writes_nothing_twice(
    postgres_engine: Engine, postgres_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    """A real transient error from the server (a trigger raising serialization_failure once, for the row of
    value 777) interrupts the splitting after the left half is written; the retry resumes after it."""
    caplog.set_level(logging.WARNING, logger="dramatiq_opmetrics.writer")
    with postgres_engine.begin() as connection:
        connection.execute(text("CREATE SEQUENCE fuse"))
        connection.execute(
            text(
                """
                CREATE FUNCTION fail_once() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF NEW.value = 777 AND nextval('fuse') = 1 THEN  -- nextval is never rolled back
                        RAISE EXCEPTION 'injected conflict' USING ERRCODE = '40001';
                    END IF;
                    RETURN NEW;
                END $$
                """
            )
        )
        connection.execute(
            text(
                "CREATE TRIGGER fail_once BEFORE INSERT ON operational_metrics"
                " FOR EACH ROW EXECUTE FUNCTION fail_once()"
            )
        )
    buffer = SampleBuffer(batch_size=1_000)
    key = buffer.register_label_set(make_label_set({"actor": "a"}))
    now = time.time()
    entries: list[Any] = [("processing_time", float(i), key, now) for i in range(1_000)]
    entries[100] = ("prompt_tokens", 10**400, key, now)  # in the left half: split first
    entries[800] = ("processing_time", 777.0, key, now)  # in the right half: the outage
    buffer.extend(entries)
    writer = BackgroundWriter(postgres_url, buffer, flush_interval_s=0.05, max_retry_backoff_s=0.1)
    try:
        assert writer.flush(timeout_s=30)
    finally:
        assert writer.stop(timeout_s=30)
    with postgres_engine.connect() as connection:
        values = connection.execute(
            text("SELECT value FROM operational_metrics WHERE metric_type = 'processing_time' ORDER BY value")
        ).scalars()
        expected = sorted([float(i) for i in range(1_000) if i not in (100, 800)] + [777.0])
        assert list(values) == expected
        rejected = connection.execute(
            text("SELECT sum(value) FROM operational_metrics WHERE metric_type = 'rejected_samples'")
        ).scalar_one()
        assert rejected == 1
    messages = [r.getMessage() for r in caplog.records]
    assert [m for m in messages if m.startswith("Could not write")] and "injected conflict" in caplog.text
    assert len([m for m in messages if m.startswith("Rejected 1 metric samples")]) == 1
