"""record_token_usage and record_confidence: labelled with the current actor and queue, buffered."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import dramatiq
import pytest
from conftest import REDIS_URL
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL

from dramatiq_opmetrics import ConfigurationError, OpMetrics, record_confidence, record_token_usage, recording

pytestmark = pytest.mark.postgres


def rows(engine: Engine) -> Counter[tuple[str, str, float]]:
    with engine.connect() as connection:
        result = connection.execute(
            text(
                "SELECT m.metric_type::text, l.labels_key, m.value FROM operational_metrics m"
                " JOIN opmetrics_label_sets l ON l.id = m.label_set_id"
                " WHERE m.metric_type::text NOT IN ('processing_time', 'wait_time')"
            )
        )
        return Counter(tuple(row) for row in result)  # type: ignore[misc]


@pytest.fixture
def redis_broker(
    postgres_engine: Engine, postgres_url: URL, redis_namespace: str
) -> Iterator[tuple[RedisBroker, OpMetrics]]:
    opmetrics = OpMetrics(postgres_url, flush_interval_s=3600)
    broker = RedisBroker(url=REDIS_URL, namespace=redis_namespace)
    broker.add_middleware(opmetrics)
    broker.emit_after("process_boot")
    yield broker, opmetrics
    broker.close()


def test_token_usage_and_confidence_recorded_in_actors_carry_their_actor_and_queue(
    redis_broker: tuple[RedisBroker, OpMetrics], postgres_engine: Engine
) -> None:
    broker, _ = redis_broker

    @dramatiq.actor(broker=broker, queue_name="llm")
    def summarise(document: str) -> None:
        record_token_usage("gpt-4o-mini", 812, 164)
        record_confidence(0.93, document_kind=document)

    @dramatiq.actor(broker=broker, queue_name="classify.high")
    def classify() -> None:
        record_token_usage("claude-haiku", 100, 7, tenant="acme")
        record_confidence(0.2)

    summarise.send("invoice")
    summarise.send("invoice")
    classify.send_with_options(delay=50)
    worker = dramatiq.Worker(broker, worker_timeout=20, worker_threads=2)
    worker.start()
    try:
        broker.join("llm")
        broker.join("classify.high")
        worker.join()
    finally:
        worker.stop()
    assert rows(postgres_engine) == Counter(
        {
            ("prompt_tokens", "actor:summarise|model:gpt-4o-mini|queue:llm", 812.0): 2,
            ("completion_tokens", "actor:summarise|model:gpt-4o-mini|queue:llm", 164.0): 2,
            ("confidence", "actor:summarise|bucket:0.9-1.0|document_kind:invoice|queue:llm", 0.93): 2,
            ("prompt_tokens", "actor:classify|model:claude-haiku|queue:classify.high|tenant:acme", 100.0): 1,
            ("completion_tokens", "actor:classify|model:claude-haiku|queue:classify.high|tenant:acme", 7.0): 1,
            ("confidence", "actor:classify|bucket:0.2-0.3|queue:classify.high", 0.2): 1,
        }
    )


def test_the_caller_may_override_the_automatic_labels(
    redis_broker: tuple[RedisBroker, OpMetrics], postgres_engine: Engine
) -> None:
    broker, _ = redis_broker

    @dramatiq.actor(broker=broker)
    def step() -> None:
        record_confidence(0.5, actor="sub_step")

    step.send()
    worker = dramatiq.Worker(broker, worker_timeout=20, worker_threads=1)
    worker.start()
    try:
        broker.join("default")
        worker.join()
    finally:
        worker.stop()
    assert rows(postgres_engine) == Counter({("confidence", "actor:sub_step|bucket:0.5-0.6|queue:default", 0.5): 1})


def test_outside_an_actor_samples_go_to_the_configured_writer_without_actor_labels(
    postgres_engine: Engine, postgres_url: URL
) -> None:
    opmetrics = OpMetrics(postgres_url, flush_interval_s=3600)
    record_token_usage("gpt-4o", 10, 2, job="nightly")
    record_confidence(1.0)
    assert opmetrics.writer.running  # started by the first recording, in a process that is not a worker
    assert opmetrics.writer.stop()
    assert rows(postgres_engine) == Counter(
        {
            ("prompt_tokens", "job:nightly|model:gpt-4o", 10.0): 1,
            ("completion_tokens", "job:nightly|model:gpt-4o", 2.0): 1,
            ("confidence", "bucket:0.9-1.0", 1.0): 1,
        }
    )


def test_outside_an_actor_without_a_configured_writer_the_error_says_how_to_configure_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(recording, "_default_target", None)
    with pytest.raises(ConfigurationError, match=r"broker\.add_middleware\(OpMetrics\(database_url=\.\.\.\)\)"):
        record_token_usage("gpt-4o", 1, 1)
    with pytest.raises(ConfigurationError, match="no metrics writer is configured"):
        record_confidence(0.5)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: record_token_usage("m", -1, 0), "prompt_tokens must not be negative"),
        (lambda: record_token_usage("m", 1, 2.5), "completion_tokens must be an integer"),  # type: ignore[arg-type]
        (lambda: record_confidence(1.5), "confidence must be between 0 and 1"),
        (lambda: record_confidence(float("nan")), "confidence must be finite"),
        (lambda: record_confidence(0.5, **{"bad key": "x"}), "label key 'bad key'"),
    ],
)
def test_bad_input_raises_and_records_nothing(sqlite_url: URL, call: object, message: str) -> None:
    opmetrics = OpMetrics(sqlite_url)
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]
    assert len(opmetrics.buffer) == 0
    assert not opmetrics.writer.running
