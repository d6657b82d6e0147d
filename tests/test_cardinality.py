"""The cap of label sets per metric type: samples beyond it are written under the overflow label set, counts
stay right, one warning per interval names the label that explodes, and a worker's memory stays bounded."""

from __future__ import annotations

import gc
import logging
import time
import tracemalloc

import dramatiq
import pytest
from dramatiq.broker import MessageProxy
from dramatiq.brokers.stub import StubBroker
from raw_samples import raw_counts
from sqlalchemy import Engine, func, select
from sqlalchemy.engine import URL

from dramatiq_opmetrics import OpMetrics, record_token_usage
from dramatiq_opmetrics.buffer import SampleBuffer
from dramatiq_opmetrics.cardinality import (
    DEFAULT_MAX_LABEL_SETS_PER_METRIC,
    LABEL_SET_BYTES,
    OVERFLOW_LABEL_SET,
    LabelSetCap,
)
from dramatiq_opmetrics.models import LabelSet
from dramatiq_opmetrics.samples import token_usage

OVERFLOW = OVERFLOW_LABEL_SET.labels_key
CAP_LOGGER = "dramatiq_opmetrics.cardinality"


def fold_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == CAP_LOGGER and record.levelno == logging.WARNING]


@pytest.mark.postgres
def test_beyond_the_cap_every_sample_is_written_and_the_excess_goes_under_the_overflow_label_set(
    postgres_engine: Engine, postgres_url: URL
) -> None:
    opmetrics = OpMetrics(postgres_url, flush_interval_s=3600, max_label_sets_per_metric=100)
    for user in range(250):
        record_token_usage("gpt-4o-mini", 10, 1, user_id=f"user-{user}")
    for user in range(0, 250, 10):  # again: the first 100 users keep their label sets, the others fold again
        record_token_usage("gpt-4o-mini", 10, 1, user_id=f"user-{user}")
    assert opmetrics.writer.stop(timeout_s=30)

    counts = raw_counts(postgres_engine)
    assert sum(counts.values()) == 2 * (250 + 25)
    for metric_type in ("prompt_tokens", "completion_tokens"):
        assert counts[(metric_type, OVERFLOW)] == 150 + 15
        kept = {key for (type_, key), n in counts.items() if type_ == metric_type and key != OVERFLOW}
        assert kept == {f"model:gpt-4o-mini|user_id:user-{user}" for user in range(100)}
    assert opmetrics.buffer.label_set_cap.folded_total == {"prompt_tokens": 165, "completion_tokens": 165}
    with postgres_engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(LabelSet)).scalar_one() == 101


def test_one_warning_per_interval_names_the_metric_type_the_label_that_explodes_and_the_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    buffer = SampleBuffer(label_set_cap=LabelSetCap(100, warning_interval_s=0.5))
    caplog.set_level(logging.WARNING, logger=CAP_LOGGER)
    for call in range(130):
        buffer.add_many(token_usage("gpt-4o-mini", 10, 1, actor="summarise", document_id=f"doc-{call}"))
    first = fold_warnings(caplog)
    assert [record.metric_type for record in first] == ["prompt_tokens", "completion_tokens"]  # type: ignore[attr-defined]
    message = first[0].getMessage()
    assert "Folded 1 prompt_tokens samples" in message
    assert "Label 'document_id' has the most distinct values (100)" in message

    time.sleep(0.6)
    for call in range(130, 140):
        buffer.add_many(token_usage("gpt-4o-mini", 10, 1, actor="summarise", document_id=f"doc-{call}"))
    second = fold_warnings(caplog)[len(first) :]
    # The 29 folded after the first warning and the first of this interval: one warning per type.
    assert [(record.metric_type, record.folded) for record in second] == [  # type: ignore[attr-defined]
        ("prompt_tokens", 30),
        ("completion_tokens", 30),
    ]
    assert "(31 in all)" in second[0].getMessage()
    assert len(buffer.label_sets) == 101


def test_label_sets_kept_before_the_cap_are_recorded_as_they_are_for_good() -> None:
    buffer = SampleBuffer(label_set_cap=LabelSetCap(2))
    for user in ["a", "b", "c", "a", "b", "c"]:
        buffer.add_many(token_usage("m", 1, 1, user_id=user))
    keys = [entry[2] for entry in buffer.take_batch() if entry[0] == "prompt_tokens"]
    assert keys == ["model:m|user_id:a", "model:m|user_id:b", OVERFLOW] * 2


def test_the_cap_is_set_by_its_environment_variable_and_refuses_what_is_not_a_positive_integer(
    monkeypatch: pytest.MonkeyPatch, sqlite_url: URL
) -> None:
    assert OpMetrics(sqlite_url).buffer.label_set_cap.max_label_sets_per_metric == DEFAULT_MAX_LABEL_SETS_PER_METRIC
    monkeypatch.setenv("OPMETRICS_MAX_LABEL_SETS_PER_METRIC", "250")
    assert OpMetrics(sqlite_url).buffer.label_set_cap.max_label_sets_per_metric == 250
    for bad in [0, -1, 2.5, True]:
        with pytest.raises(ValueError, match="max_label_sets_per_metric must be a positive integer"):
            OpMetrics(sqlite_url, max_label_sets_per_metric=bad)  # type: ignore[arg-type]


@pytest.mark.postgres
def test_messages_of_actors_beyond_the_cap_are_counted_under_the_overflow_label_set(
    postgres_engine: Engine, postgres_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    opmetrics = OpMetrics(postgres_url, flush_interval_s=3600, max_label_sets_per_metric=3)
    broker = StubBroker()
    broker.add_middleware(opmetrics)
    broker.emit_after("process_boot")
    actors = []
    for index in range(5):

        def work(user: str) -> None:
            record_token_usage("m", 1, 1)

        actors.append(dramatiq.actor(work, actor_name=f"actor_{index}", broker=broker, queue_name="default"))
    for index, actor in enumerate(actors):
        for _ in range(index + 1):  # actor_i gets i + 1 messages
            actor.send("user")
    worker = dramatiq.Worker(broker, worker_timeout=20, worker_threads=1)
    worker.start()
    try:
        broker.join("default")
        worker.join()
    finally:
        worker.stop()

    counts = raw_counts(postgres_engine)
    for metric_type in ("processing_time", "wait_time"):
        assert sum(n for (type_, _), n in counts.items() if type_ == metric_type) == 15
        assert counts[(metric_type, OVERFLOW)] == 4 + 5
    # Token usage has its own cap: labelled with every actor, overflowed messages included.
    assert {key for (type_, key) in counts if type_ == "prompt_tokens"} == {
        f"actor:actor_{index}|model:m|queue:default" for index in range(3)
    } | {OVERFLOW}
    assert any("processing_time" in record.getMessage() for record in fold_warnings(caplog))


@pytest.mark.postgres
def test_a_worker_recording_100000_label_sets_stays_within_the_memory_bound_of_its_cap(
    postgres_engine: Engine, postgres_url: URL
) -> None:
    """Memory grows with the label sets kept (at most the cap per metric type), not with those recorded."""
    opmetrics = OpMetrics(postgres_url, flush_interval_s=3600, batch_size=20_000, buffer_capacity=250_000)
    cap = opmetrics.buffer.label_set_cap
    opmetrics.writer.start()
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for user in range(100_000):
            record_token_usage("gpt-4o-mini", 100, 20, user_id=f"user-{user}")
            if user % 20_000 == 19_999:
                assert opmetrics.writer.flush(timeout_s=60)
        assert opmetrics.writer.flush(timeout_s=60)
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert opmetrics.writer.stop(timeout_s=30)
    kept = cap.kept_count("prompt_tokens") + cap.kept_count("completion_tokens")
    assert kept == 2 * DEFAULT_MAX_LABEL_SETS_PER_METRIC
    # The buffer's and the writer's caches hold the label sets kept and the overflow one, nothing more.
    assert len(opmetrics.buffer.label_sets) == len(opmetrics.writer._label_set_ids) == 10_001
    grown = after - before
    print(f"memory grown by {grown / 1e6:.1f} MB for 100,000 label sets recorded, {kept} kept")
    assert grown <= kept * LABEL_SET_BYTES
    with postgres_engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(LabelSet)).scalar_one() == 10_001
    assert sum(raw_counts(postgres_engine).values()) == 200_000


def test_the_middlewares_cache_of_message_labels_stays_within_the_cap_whatever_the_actor_names(
    sqlite_url: URL,
) -> None:
    opmetrics = OpMetrics(sqlite_url, max_label_sets_per_metric=5)
    broker = StubBroker()
    # A producer sending messages of 50 actor names, none declared here, then 20 that are no valid label.
    for name in [f"junk_{index}" for index in range(50)] + [f"nul\x00{index}" for index in range(20)]:
        options = {"opmetrics_due_ms": 1.0}
        message = MessageProxy(
            dramatiq.Message(queue_name="default", actor_name=name, args=(), kwargs={}, options=options)
        )
        for _ in range(2):
            opmetrics.before_process_message(broker, message)
            opmetrics.after_process_message(broker, message)
    cached = sum(len(queues) for queues in opmetrics._label_sets.values())
    assert cached == 5
    keys = [entry[1] for entry in opmetrics.buffer.take_batch()]
    assert len(keys) == 100
    assert keys.count(OVERFLOW) == 90
    assert opmetrics.buffer.label_set_cap.folded_total == {"processing_time": 90}
