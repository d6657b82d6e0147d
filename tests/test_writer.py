"""The writer: batch writes (COPY on PostgreSQL), the background thread, retries while the database is down."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from raw_samples import stored_samples
from sqlalchemy import Engine, func, select, text
from sqlalchemy.engine import URL
from tcp_proxy import TcpProxy
from waiting import wait_until

from dramatiq_opmetrics import samples
from dramatiq_opmetrics.buffer import SampleBuffer
from dramatiq_opmetrics.database import make_engine
from dramatiq_opmetrics.metric_types import MetricType
from dramatiq_opmetrics.migrate import upgrade
from dramatiq_opmetrics.models import OperationalMetric
from dramatiq_opmetrics.writer import BackgroundWriter, write_samples


def make_buffer(capacity: int = 100_000, batch_size: int = 5_000) -> SampleBuffer:
    """A buffer that knows the label sets the tests' entries use."""
    buffer = SampleBuffer(capacity=capacity, batch_size=batch_size)
    for actor in ("a", "parent", "child"):
        buffer.register_label_set(samples.message_labels(actor, queue="q"))
    return buffer


def count(engine: Engine, metric_type: MetricType | None = None) -> int:
    query = select(func.count()).select_from(OperationalMetric)
    if metric_type is not None:
        query = query.where(OperationalMetric.metric_type == metric_type)
    with engine.connect() as connection:
        return int(connection.execute(query).scalar_one())


def test_write_samples_stores_rows_with_their_labels_in_the_callers_transaction(engine: Engine) -> None:
    at = datetime(2026, 11, 27, 9, 30, 15, 123456, tzinfo=UTC)
    batch = [
        *samples.processing_time("send_email", 182.5, queue="default", recorded_at=at),
        *samples.wait_time("send_email", 12.0, queue="default", recorded_at=at),
        *samples.error("send_email", "SMTPError", queue="default", outcome="retried", recorded_at=at),
    ]
    with engine.begin() as connection:
        assert write_samples(connection, batch) == 3
    with engine.connect() as connection, connection.begin():
        write_samples(connection, samples.confidence(0.5, recorded_at=at))
        connection.rollback()
    assert stored_samples(engine, order_by=OperationalMetric.value) == [
        ("error", 1.0, "actor:send_email|error_type:SMTPError|outcome:retried|queue:default", at),
        ("wait_time", 12.0, "actor:send_email|queue:default", at),
        ("processing_time", 182.5, "actor:send_email|queue:default", at),
    ]


def test_write_samples_of_nothing_writes_nothing(engine: Engine) -> None:
    with engine.begin() as connection:
        assert write_samples(connection, []) == 0
    assert count(engine) == 0


def test_the_background_writer_writes_everything_buffered_on_flush(migrated_url: URL, engine: Engine) -> None:
    buffer = make_buffer(batch_size=100)
    writer = BackgroundWriter(migrated_url, buffer, flush_interval_s=60)
    try:
        at = time.time()
        buffer.extend([("processing_time", float(i), "actor:a|queue:q", at) for i in range(250)])
        buffer.add_many(samples.queue_depth("q", 3, state="ready"))
        assert writer.flush(timeout_s=30)
        assert count(engine, MetricType.PROCESSING_TIME) == 250
        assert count(engine, MetricType.QUEUE_DEPTH) == 1
        assert writer.written_total == 251
    finally:
        writer.stop()


def test_the_background_writer_flushes_every_interval_without_being_asked(migrated_url: URL, engine: Engine) -> None:
    buffer = make_buffer()
    writer = BackgroundWriter(migrated_url, buffer, flush_interval_s=0.1)
    writer.start()
    try:
        buffer.add_many(samples.confidence(0.7))
        wait_until(lambda: count(engine) == 1, timeout_s=20, poll_s=0.05)
    finally:
        writer.stop()


def test_stop_writes_everything_buffered_and_stops_the_thread(migrated_url: URL, engine: Engine) -> None:
    buffer = make_buffer()
    writer = BackgroundWriter(migrated_url, buffer, flush_interval_s=3600)
    writer.start()
    buffer.extend([("wait_time", float(i), "actor:a|queue:q", time.time()) for i in range(10)])
    assert writer.stop()
    assert not writer.running
    assert count(engine) == 10


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    proxy = TcpProxy(5432)
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.fixture
def proxied_url(postgres_url: URL, proxy: TcpProxy) -> URL:
    """A migrated PostgreSQL schema reached through ``proxy``, with a password that must never be shown."""
    upgrade(postgres_url)
    return postgres_url.set(port=proxy.port, password="s3cret-pw")


@pytest.mark.postgres
def test_a_failed_write_keeps_its_batch_and_writes_it_once_the_database_is_back(
    proxied_url: URL, postgres_engine: Engine, proxy: TcpProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dramatiq_opmetrics.writer")
    buffer = make_buffer(batch_size=50)
    writer = BackgroundWriter(proxied_url, buffer, flush_interval_s=0.05, max_retry_backoff_s=0.2)
    writer.start()
    try:
        buffer.extend([("processing_time", float(i), "actor:a|queue:q", time.time()) for i in range(20)])
        assert writer.flush(timeout_s=20)
        proxy.stop()
        buffer.extend([("processing_time", float(i), "actor:a|queue:q", time.time()) for i in range(20, 120)])
        assert not writer.flush(timeout_s=1.0)
        assert len(buffer) == 100
        proxy.start()
        assert writer.flush(timeout_s=20)
    finally:
        writer.stop()
    values = [value for _, value, _, _ in stored_samples(postgres_engine, order_by=OperationalMetric.value)]
    assert values == [float(i) for i in range(120)]
    assert "Could not write" in caplog.text
    assert "reachable again" in caplog.text
    assert "s3cret-pw" not in caplog.text


@pytest.mark.postgres
def test_a_full_buffer_drops_counts_warns_once_per_interval_and_records_the_drops_when_back(
    proxied_url: URL, postgres_engine: Engine, proxy: TcpProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dramatiq_opmetrics.writer")
    buffer = make_buffer(capacity=1_000, batch_size=100)
    writer = BackgroundWriter(
        proxied_url, buffer, flush_interval_s=0.05, max_retry_backoff_s=0.1, warning_interval_s=0.5
    )
    proxy.stop()
    writer.start()
    try:
        started = time.monotonic()
        sent = 0
        while time.monotonic() - started < 1.6:
            now = time.perf_counter()
            buffer.append_message((None, "actor:a|queue:q", time.time() * 1000.0, now, now + 0.001))
            sent += 2
            time.sleep(0.0002)
        elapsed = time.monotonic() - started
        assert len(buffer) == 1_000
        dropped = buffer.dropped_total
        assert dropped == sent - 2 * 1_000
        time.sleep(0.8)  # one more warning interval: the writer reports the last drops
        warnings = [r for r in caplog.records if r.getMessage().startswith("Dropped")]
        assert 1 <= len(warnings) <= (elapsed + 0.8) / 0.5 + 1
        warned = sum(int(r.getMessage().split()[1]) for r in warnings)
        assert warned == dropped
        proxy.start()
        assert writer.flush(timeout_s=20)
    finally:
        writer.stop()
    assert count(postgres_engine, MetricType.PROCESSING_TIME) == count(postgres_engine, MetricType.WAIT_TIME) == 1_000
    with postgres_engine.connect() as connection:
        recorded = connection.execute(
            text("SELECT sum(value) FROM operational_metrics WHERE metric_type = 'dropped_samples'")
        )
        assert recorded.scalar_one() == dropped
    assert "s3cret-pw" not in caplog.text


@pytest.mark.postgres
def test_stop_gives_up_after_its_timeout_when_the_database_stays_down(
    proxied_url: URL, proxy: TcpProxy, caplog: pytest.LogCaptureFixture
) -> None:
    buffer = make_buffer()
    writer = BackgroundWriter(proxied_url, buffer, flush_interval_s=0.05, max_retry_backoff_s=0.1)
    proxy.stop()
    writer.start()
    buffer.extend([("wait_time", 1.0, "actor:a|queue:q", time.time())])
    started = time.monotonic()
    assert not writer.stop(timeout_s=0.5)
    assert time.monotonic() - started < 5
    assert "Gave up writing 1 buffered metric samples" in caplog.text


def test_the_writer_repr_never_shows_the_password(postgres_url: URL) -> None:
    writer = BackgroundWriter(postgres_url.set(password="s3cret-pw"), SampleBuffer())
    assert "s3cret-pw" not in repr(writer)
    assert "***" in repr(writer)


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), "1"])
def test_a_duration_that_is_not_positive_is_refused(sqlite_url: URL, bad: object) -> None:
    with pytest.raises(ValueError, match="flush_interval_s must be a positive number of seconds"):
        BackgroundWriter(sqlite_url, SampleBuffer(), flush_interval_s=bad)  # type: ignore[arg-type]


def test_a_forked_child_forgets_the_parents_thread_and_samples(migrated_url: URL, engine: Engine) -> None:
    buffer = make_buffer()
    writer = BackgroundWriter(migrated_url, buffer, flush_interval_s=3600)
    writer.start()
    buffer.extend([("wait_time", 1.0, "actor:parent|queue:q", time.time())])
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        status = 1
        try:
            fine = not writer.running and len(buffer) == 0
            buffer.extend([("wait_time", 2.0, "actor:child|queue:q", time.time())])
            fine = fine and writer.flush(timeout_s=20) and writer.stop()
            os.write(write_end, b"ok" if fine else b"bad")
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    assert os.read(read_end, 10) == b"ok"
    os.close(read_end)
    assert writer.stop()
    assert sorted(value for _, value, _, _ in stored_samples(engine, order_by=OperationalMetric.value)) == [1.0, 2.0]


def test_the_writer_of_a_sqlite_database_uses_batched_inserts(sqlite_url: URL) -> None:
    upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    try:
        buffer = make_buffer(batch_size=7)
        writer = BackgroundWriter(sqlite_url, buffer)
        buffer.extend([("processing_time", float(i), "actor:a|queue:q", time.time()) for i in range(20)])
        assert writer.flush(timeout_s=20) and writer.stop()
        assert count(engine) == 20
    finally:
        engine.dispose()
