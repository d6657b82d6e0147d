from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from typing import Any

import pytest
from raw_samples import stored_samples
from sqlalchemy import Engine, String, func, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from dramatiq_opmetrics import MetricsCollector, MetricType
from dramatiq_opmetrics.labels import make_label_set
from dramatiq_opmetrics.models import LabelSet, OperationalMetric
from dramatiq_opmetrics.samples import Sample

AT = dt.datetime(2026, 11, 20, 12, 30, tzinfo=dt.UTC)


def record(engine: Engine, call: Callable[[MetricsCollector], None]) -> None:
    with Session(engine) as session, session.begin():
        call(MetricsCollector(session))


def test_record_queue_depth_stores_one_sample(engine: Engine) -> None:
    record(engine, lambda c: c.record_queue_depth("default", 42, state="ready", recorded_at=AT))
    assert stored_samples(engine) == [("queue_depth", 42.0, "queue:default|state:ready", AT)]


def test_record_processing_time_stores_milliseconds_with_actor_and_queue(engine: Engine) -> None:
    record(engine, lambda c: c.record_processing_time("send_email", 182.5, queue="mail", recorded_at=AT))
    assert stored_samples(engine) == [("processing_time", 182.5, "actor:send_email|queue:mail", AT)]


def test_record_processing_time_without_queue_has_no_queue_label(engine: Engine) -> None:
    record(engine, lambda c: c.record_processing_time("send_email", 1, recorded_at=AT))
    assert stored_samples(engine) == [("processing_time", 1.0, "actor:send_email", AT)]


def test_record_error_stores_one_with_error_type(engine: Engine) -> None:
    record(engine, lambda c: c.record_error("send_email", "TimeoutError", queue="mail", recorded_at=AT))
    assert stored_samples(engine) == [("error", 1.0, "actor:send_email|error_type:TimeoutError|queue:mail", AT)]


def test_record_token_usage_stores_prompt_and_completion_tokens(engine: Engine) -> None:
    record(engine, lambda c: c.record_token_usage("gpt-x", 800, 150, actor="summarise", recorded_at=AT))
    assert stored_samples(engine) == [
        ("prompt_tokens", 800.0, "actor:summarise|model:gpt-x", AT),
        ("completion_tokens", 150.0, "actor:summarise|model:gpt-x", AT),
    ]


@pytest.mark.parametrize(
    ("value", "bucket"),
    [
        (0.0, "0.0-0.1"),
        (0.1, "0.1-0.2"),
        (0.3, "0.3-0.4"),
        (0.7, "0.7-0.8"),
        (0.95, "0.9-1.0"),
        (1.0, "0.9-1.0"),
    ],
)
def test_record_confidence_is_labelled_with_its_bucket(engine: Engine, value: float, bucket: str) -> None:
    record(engine, lambda c: c.record_confidence(value, actor="classify", recorded_at=AT))
    assert stored_samples(engine) == [("confidence", value, f"actor:classify|bucket:{bucket}", AT)]


def test_recorded_at_defaults_to_now_in_utc(engine: Engine) -> None:
    before = dt.datetime.now(dt.UTC)
    record(engine, lambda c: c.record_queue_depth("default", 1))
    after = dt.datetime.now(dt.UTC)
    [(_, _, _, at)] = stored_samples(engine)
    assert at.tzinfo is not None
    assert before - dt.timedelta(seconds=1) <= at <= after + dt.timedelta(seconds=1)


def test_recorded_at_in_another_zone_is_stored_as_the_same_instant(engine: Engine) -> None:
    tokyo = dt.timezone(dt.timedelta(hours=9))
    record(engine, lambda c: c.record_queue_depth("default", 1, recorded_at=AT.astimezone(tokyo)))
    assert stored_samples(engine)[0][3] == AT


BAD_CALLS: list[tuple[str, Callable[[MetricsCollector], Any], str]] = [
    ("negative depth", lambda c: c.record_queue_depth("q", -1), "depth"),
    ("float depth", lambda c: c.record_queue_depth("q", 1.5), "depth"),
    ("negative duration", lambda c: c.record_processing_time("a", -0.1), "duration_ms"),
    ("nan duration", lambda c: c.record_processing_time("a", math.nan), "duration_ms"),
    ("infinite duration", lambda c: c.record_processing_time("a", math.inf), "duration_ms"),
    ("string duration", lambda c: c.record_processing_time("a", "12"), "duration_ms"),
    ("bool duration", lambda c: c.record_processing_time("a", True), "duration_ms"),
    ("float tokens", lambda c: c.record_token_usage("m", 1.0, 2), "prompt_tokens"),
    ("negative tokens", lambda c: c.record_token_usage("m", 1, -2), "completion_tokens"),
    ("bool tokens", lambda c: c.record_token_usage("m", True, 2), "prompt_tokens"),
    ("confidence above one", lambda c: c.record_confidence(1.01), "between 0 and 1"),
    ("negative confidence", lambda c: c.record_confidence(-0.01), "confidence"),
    ("nan confidence", lambda c: c.record_confidence(math.nan), "confidence"),
    ("naive recorded_at", lambda c: c.record_error("a", "E", recorded_at=dt.datetime(2026, 1, 1)), "aware"),
    ("empty actor", lambda c: c.record_error("", "E"), "'actor'"),
    ("bad label key", lambda c: c.record_error("a", "E", **{"bad key": "x"}), "'bad key'"),
    ("label given twice", lambda c: c.record_confidence(0.5, bucket="high"), "'bucket'"),
]


@pytest.mark.parametrize(("case", "call", "message"), BAD_CALLS, ids=[case for case, _, _ in BAD_CALLS])
def test_bad_input_raises_value_error_and_adds_nothing(
    engine: Engine, case: str, call: Callable[[MetricsCollector], Any], message: str
) -> None:
    with Session(engine) as session, session.begin():
        with pytest.raises((ValueError, TypeError), match=message) as raised:
            call(MetricsCollector(session))
        assert raised.type is ValueError, f"{case}: {raised.value!r}"
        assert not session.new
    assert stored_samples(engine) == []


def test_collector_never_commits_or_flushes(engine: Engine) -> None:
    with Session(engine) as session:
        collector = MetricsCollector(session)
        collector.record_processing_time("a", 5)
        collector.record_processing_time("a", 6)
        assert len(session.new) == 2
        assert all(row.id is None for row in session.new if isinstance(row, OperationalMetric))
        session.rollback()


def test_rollback_means_nothing_is_recorded(engine: Engine) -> None:
    with Session(engine) as session:
        MetricsCollector(session).record_token_usage("gpt-x", 1, 2)
        session.rollback()
    assert stored_samples(engine) == []
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(LabelSet)) == 0


def test_commit_means_recorded_together_with_the_callers_own_rows(engine: Engine) -> None:
    with Session(engine) as session:
        MetricsCollector(session).record_processing_time("a", 5, recorded_at=AT)
        session.commit()
    assert stored_samples(engine) == [("processing_time", 5.0, "actor:a", AT)]


def test_a_label_set_is_stored_once_however_often_it_is_used(engine: Engine) -> None:
    for _ in range(3):
        record(engine, lambda c: c.record_processing_time("a", 5, queue="q"))
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(LabelSet)) == 1
        assert session.scalars(select(OperationalMetric)).first().labels == {"actor": "a", "queue": "q"}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "value",
    ["'); DROP TABLE operational_metrics; --", '" OR 1=1 --', "$$;DELETE$$", "a|b:c\\d", "ünïcødé ✓"],
)
def test_sql_looking_and_unusual_label_values_are_stored_verbatim(engine: Engine, value: str) -> None:
    record(engine, lambda c: c.record_error("a", "E", note=value))
    with Session(engine) as session:
        row = session.scalars(select(OperationalMetric)).one()
        assert row.labels["note"] == value
        assert row.metric_type is MetricType.ERROR


class Business(DeclarativeBase):
    """The caller's own models, apart from ours."""


class Order(Business):
    __tablename__ = "test_business_orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    customer: Mapped[str] = mapped_column(String(50))


@pytest.fixture
def business_engine(engine: Engine) -> Engine:
    """The metrics database with a business table of the caller in the same schema."""
    Business.metadata.create_all(engine)
    return engine


def orders(engine: Engine) -> list[str]:
    with Session(engine) as session:
        return list(session.scalars(select(Order.customer).order_by(Order.id)))


POISON_CALLS: list[tuple[str, Callable[[MetricsCollector], Any], str]] = [
    ("10**400 tokens", lambda c: c.record_token_usage("m", 10**400, 1), "prompt_tokens"),
    ("2**63 depth", lambda c: c.record_queue_depth("q", 2**63), "depth"),
    ("1e308 ms", lambda c: c.record_processing_time("a", 1e308), "duration_ms"),
    (
        "13 long labels",
        lambda c: c.record_error("a", "E", **{f"k{i:02d}" + "x" * 61: "v" * 200 for i in range(13)}),
        "too large",
    ),
    ("a lone surrogate", lambda c: c.record_error("a", "E", note="\ud800"), "surrogate"),
    ("None as model", lambda c: c.record_token_usage(None, 1, 1), "'model'"),  # type: ignore[arg-type]
    ("None as error type", lambda c: c.record_error("a", None), "'error_type'"),  # type: ignore[arg-type]
    ("None as actor", lambda c: c.record_processing_time(None, 1.0), "'actor'"),  # type: ignore[arg-type]
    ("None as queue", lambda c: c.record_queue_depth(None, 1), "'queue'"),  # type: ignore[arg-type]
    (
        "a hand-built sample",
        lambda c: c.add_samples([Sample(MetricType.ERROR, 10**400, make_label_set({"a": "b"}), AT)]),  # type: ignore[arg-type]
        "value",
    ),
]


@pytest.mark.parametrize(("case", "call", "message"), POISON_CALLS, ids=[case for case, _, _ in POISON_CALLS])
def test_a_caller_that_catches_the_collectors_value_error_and_commits_keeps_its_own_rows(
    business_engine: Engine, case: str, call: Callable[[MetricsCollector], Any], message: str
) -> None:
    with Session(business_engine) as session, session.begin():
        session.add(Order(customer="before"))
        session.flush()
        collector = MetricsCollector(session)
        with pytest.raises(ValueError, match=message):
            call(collector)
        collector.record_processing_time("a", 5.0, recorded_at=AT)
        session.add(Order(customer="after"))
    assert orders(business_engine) == ["before", "after"]
    assert stored_samples(business_engine) == [("processing_time", 5.0, "actor:a", AT)]


@pytest.mark.postgres
def test_a_label_set_the_database_refuses_never_aborts_the_callers_transaction(postgres_engine: Engine) -> None:
    """A refusal past validation (here a CHECK constraint the test adds) stays inside the collector's SAVEPOINT."""
    Business.metadata.create_all(postgres_engine)
    with postgres_engine.begin() as connection:
        connection.execute(
            text("ALTER TABLE opmetrics_label_sets ADD CONSTRAINT no_forbidden CHECK (labels_key <> 'actor:forbidden')")
        )
    with Session(postgres_engine) as session, session.begin():
        session.add(Order(customer="kept"))
        session.flush()
        collector = MetricsCollector(session)
        with pytest.raises(ValueError, match=r"refuses these labels.*no_forbidden"):
            collector.record_processing_time("forbidden", 1.0)
        collector.record_processing_time("a", 2.0, recorded_at=AT)
    assert orders(postgres_engine) == ["kept"]
    assert stored_samples(postgres_engine) == [("processing_time", 2.0, "actor:a", AT)]
