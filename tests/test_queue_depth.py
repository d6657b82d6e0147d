from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

import dramatiq
import pika
import pika.exceptions
import pytest
from conftest import RABBITMQ_URL, REDIS_URL
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import dq_name, xq_name
from redis_round_trips import CountingConnection, counting_client
from tcp_proxy import TcpProxy

from dramatiq_opmetrics.metric_types import MetricType
from dramatiq_opmetrics.queue_depth import (
    DEAD,
    DELAYED,
    IN_FLIGHT,
    READY,
    RabbitmqDepthReader,
    RedisDepthReader,
    StubDepthReader,
    canonical_queue_names,
    depth_reader_for,
    depth_samples,
)

#: A delay no test outlives, in milliseconds.
LONG_DELAY_MS = 600_000


def message(queue: str) -> dramatiq.Message[object]:
    return dramatiq.Message(queue_name=queue, actor_name="noop", args=(), kwargs={}, options={})


def fill(broker: dramatiq.Broker, queue: str, *, ready: int, delayed: int, dead: int, in_flight: int = 0) -> object:
    """Put exactly these numbers of messages in ``queue``; returns the consumer holding the in-flight ones."""
    broker.declare_queue(queue)
    consumer = None
    if dead or in_flight:
        for _ in range(dead + in_flight):
            broker.enqueue(message(queue))
        consumer = broker.consume(queue, prefetch=dead + in_flight, timeout=1000)
        fetched = []
        while len(fetched) < dead + in_flight:
            proxy = next(consumer)
            if proxy is not None:
                fetched.append(proxy)
        for proxy in fetched[:dead]:
            consumer.nack(proxy)
    for _ in range(ready):
        broker.enqueue(message(queue))
    for _ in range(delayed):
        broker.enqueue(message(queue), delay=LONG_DELAY_MS)
    return consumer


def redis_keys(broker: RedisBroker) -> set[bytes]:
    return set(broker.client.scan_iter(match=f"{broker.namespace}:*", count=1000))


def queue_exists(queue: str) -> bool:
    connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
    try:
        connection.channel().queue_declare(queue, passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker as error:
        assert error.reply_code == 404
        return False
    finally:
        connection.close()


def test_redis_depths_equal_the_known_numbers_of_ready_delayed_dead_and_in_flight_messages(
    redis_broker: RedisBroker, unique_queue: Callable[[str], str]
) -> None:
    emails, reports, idle = unique_queue("emails"), unique_queue("reports"), unique_queue("idle")
    fill(redis_broker, emails, ready=3, delayed=2, dead=1, in_flight=2)
    fill(redis_broker, reports, ready=5, delayed=1, dead=2)
    redis_broker.declare_queue(idle)

    depths = RedisDepthReader(redis_broker.client, redis_broker.namespace).read([emails, reports, idle])

    assert depths == {
        emails: {READY: 3, DELAYED: 2, DEAD: 1, IN_FLIGHT: 2},
        reports: {READY: 5, DELAYED: 1, DEAD: 2, IN_FLIGHT: 0},
        idle: {READY: 0, DELAYED: 0, DEAD: 0, IN_FLIGHT: 0},
    }


def test_redis_reading_writes_no_key_and_registers_no_heartbeat(
    redis_broker: RedisBroker, unique_queue: Callable[[str], str]
) -> None:
    queue = unique_queue("q")
    fill(redis_broker, queue, ready=2, delayed=1, dead=1, in_flight=1)
    heartbeats_key = f"{redis_broker.namespace}:__heartbeats__"
    keys_before = redis_keys(redis_broker)
    heartbeats_before = redis_broker.client.zrange(heartbeats_key, 0, -1, withscores=True)

    reader = RedisDepthReader(redis_broker.client, redis_broker.namespace)
    for _ in range(5):
        reader.read([queue, unique_queue("never-used")])

    assert redis_keys(redis_broker) == keys_before
    assert redis_broker.client.zrange(heartbeats_key, 0, -1, withscores=True) == heartbeats_before


def test_redis_reads_every_queue_in_one_round_trip(
    redis_broker: RedisBroker, unique_queue: Callable[[str], str]
) -> None:
    queues = [unique_queue(f"q{i}") for i in range(50)]
    client = counting_client(REDIS_URL)
    try:
        client.ping()
        before = CountingConnection.sends
        depths = RedisDepthReader(client, redis_broker.namespace).read(queues)
        assert CountingConnection.sends - before == 1
        assert len(depths) == 50
    finally:
        client.close()


def test_redis_keys_follow_the_brokers_namespace(unique_queue: Callable[[str], str]) -> None:
    queue = unique_queue("q")
    broker = RedisBroker(url=REDIS_URL, namespace=f"{unique_queue('ns')}")
    try:
        fill(broker, queue, ready=4, delayed=0, dead=0)
        assert RedisDepthReader(broker.client, "dramatiq").read([queue])[queue][READY] == 0
        assert depth_reader_for(broker).read([queue])[queue][READY] == 4  # type: ignore[union-attr]
    finally:
        keys = list(broker.client.scan_iter(match=f"{broker.namespace}:*"))
        broker.client.delete(*keys)
        broker.client.close()


def test_rabbitmq_depths_equal_the_known_numbers_and_no_queue_is_created(
    rabbitmq_broker: RabbitmqBroker, unique_queue: Callable[[str], str]
) -> None:
    emails, reports, lazy, ghost = (unique_queue(n) for n in ("emails", "reports", "lazy", "ghost"))
    consumers = [
        fill(rabbitmq_broker, emails, ready=3, delayed=2, dead=1),
        fill(rabbitmq_broker, reports, ready=5, delayed=1, dead=2),
    ]
    for consumer in consumers:
        consumer.close()  # type: ignore[attr-defined]
    rabbitmq_broker.declare_queue(lazy)  # declared on the broker, never created on the server
    wait_for_dead_letters(rabbitmq_broker, {emails: 1, reports: 2})
    absent = [name for base in (lazy, ghost) for name in (base, dq_name(base), xq_name(base))]
    assert not any(queue_exists(name) for name in absent)

    reader = RabbitmqDepthReader(rabbitmq_broker.parameters)
    try:
        depths = reader.read([emails, reports, lazy, ghost])
    finally:
        reader.close()

    assert depths == {
        emails: {READY: 3, DELAYED: 2, DEAD: 1},
        reports: {READY: 5, DELAYED: 1, DEAD: 2},
        lazy: {READY: 0, DELAYED: 0, DEAD: 0},
        ghost: {READY: 0, DELAYED: 0, DEAD: 0},
    }
    assert not any(queue_exists(name) for name in absent)


def test_rabbitmq_ready_excludes_messages_a_worker_holds(
    rabbitmq_broker: RabbitmqBroker, unique_queue: Callable[[str], str]
) -> None:
    queue = unique_queue("held")
    consumer = fill(rabbitmq_broker, queue, ready=0, delayed=0, dead=0, in_flight=2)
    for _ in range(3):
        rabbitmq_broker.enqueue(message(queue))
    reader = RabbitmqDepthReader(rabbitmq_broker.parameters)
    try:
        assert reader.read([queue])[queue][READY] == 3
    finally:
        reader.close()
        consumer.close()  # type: ignore[attr-defined]


def test_rabbitmq_reading_replaces_a_connection_the_server_dropped(
    rabbitmq_broker: RabbitmqBroker, unique_queue: Callable[[str], str]
) -> None:
    queue = unique_queue("q")
    fill(rabbitmq_broker, queue, ready=2, delayed=0, dead=0)
    proxy = TcpProxy(pika.URLParameters(RABBITMQ_URL).port, pika.URLParameters(RABBITMQ_URL).host)
    proxy.start()
    parameters = pika.URLParameters(RABBITMQ_URL)
    parameters.port = proxy.port
    reader = RabbitmqDepthReader(parameters)
    try:
        assert reader.read([queue])[queue][READY] == 2
        proxy.stop()  # the kept connection dies, as when the server drops an idle one
        proxy.start()
        assert reader.read([queue])[queue][READY] == 2
    finally:
        reader.close()
        proxy.stop()


def wait_for_dead_letters(broker: RabbitmqBroker, expected: dict[str, int]) -> None:
    """RabbitMQ dead-letters asynchronously: wait until each queue's .XQ holds its expected count."""
    deadline = time.monotonic() + 10
    while True:
        counts = {queue: broker.get_queue_message_counts(queue)[2] for queue in expected}
        if counts == expected or time.monotonic() > deadline:
            assert counts == expected
            return
        time.sleep(0.05)


def test_stub_depths_equal_the_known_numbers() -> None:
    broker = StubBroker()
    consumer = fill(broker, "emails", ready=3, delayed=2, dead=1, in_flight=2)
    fill(broker, "reports", ready=5, delayed=1, dead=0)
    broker.declare_queue("idle")

    depths = StubDepthReader(broker).read(["emails", "reports", "idle", "never-declared"])

    assert depths == {
        "emails": {READY: 3, DELAYED: 2, DEAD: 1, IN_FLIGHT: 2},
        "reports": {READY: 5, DELAYED: 1, DEAD: 0, IN_FLIGHT: 0},
        "idle": {READY: 0, DELAYED: 0, DEAD: 0, IN_FLIGHT: 0},
        "never-declared": {READY: 0, DELAYED: 0, DEAD: 0, IN_FLIGHT: 0},
    }
    assert "never-declared" not in broker.queues
    assert consumer is not None


def test_stub_counts_dead_letters_of_the_delay_queue_as_the_queues_own() -> None:
    broker = StubBroker()
    broker.declare_queue("q")
    broker.enqueue(message("q"), delay=1)
    consumer = broker.consume(dq_name("q"), prefetch=1, timeout=1000)
    consumer.nack(next(consumer))
    assert StubDepthReader(broker).read(["q"])["q"][DEAD] == 1


def test_queue_names_are_the_declared_ones_and_the_extra_ones_in_canonical_form() -> None:
    broker = StubBroker()
    broker.declare_queue("emails")
    assert canonical_queue_names(broker, ["reports.DQ", "reports.XQ", "billing", "emails"]) == [
        "billing",
        "emails",
        "reports",
    ]


@pytest.mark.parametrize("bad", ["", "  ", None, 3])
def test_a_bad_extra_queue_name_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="queue names must be non-empty strings"):
        canonical_queue_names(StubBroker(), [bad])  # type: ignore[list-item]


def test_depth_samples_are_queue_depth_samples_labelled_with_queue_and_state() -> None:
    at = dt.datetime(2026, 11, 27, 12, tzinfo=dt.UTC)
    made = depth_samples({"emails": {READY: 3, DEAD: 0}}, at)
    assert [(s.metric_type, s.value, s.label_set.labels_key, s.recorded_at) for s in made] == [
        (MetricType.QUEUE_DEPTH, 0, "queue:emails|state:dead", at),
        (MetricType.QUEUE_DEPTH, 3, "queue:emails|state:ready", at),
    ]


def test_brokers_of_an_unknown_kind_have_no_reader() -> None:
    class CustomBroker(dramatiq.Broker):
        pass

    assert depth_reader_for(CustomBroker()) is None
    assert isinstance(depth_reader_for(StubBroker()), StubDepthReader)


#: Milliseconds since the epoch a minute ago: the send time of the messages of the oldest-message tests.
def a_minute_ago_ms() -> int:
    return int(time.time() * 1000) - 60_000


def sent_at(queue: str, timestamp_ms: int, **options: object) -> dramatiq.Message[object]:
    return dramatiq.Message(
        queue_name=queue, actor_name="noop", args=(), kwargs={}, options=dict(options), message_timestamp=timestamp_ms
    )


def test_redis_oldest_due_is_the_send_time_of_the_message_workers_get_next(
    redis_broker: RedisBroker, unique_queue: Callable[[str], str]
) -> None:
    queue, empty = unique_queue("q"), unique_queue("empty")
    redis_broker.declare_queue(queue)
    sent_ms = a_minute_ago_ms()
    for offset_ms in (0, 1_000, 2_000):
        redis_broker.enqueue(sent_at(queue, sent_ms + offset_ms))
    redis_broker.enqueue(sent_at(queue, sent_ms - 30_000), delay=LONG_DELAY_MS)  # delayed: not ready
    reader = RedisDepthReader(redis_broker.client, redis_broker.namespace)

    assert reader.snapshot([queue, empty]).oldest_due_ms == {queue: sent_ms, empty: None}

    consumer = redis_broker.consume(queue, prefetch=1, timeout=1000)
    taken = next(consumer)
    assert taken is not None and taken.message_timestamp == sent_ms
    assert reader.snapshot([queue]).oldest_due_ms == {queue: sent_ms + 1_000}  # the taken one is in flight
    consumer.ack(taken)
    assert reader.snapshot([queue]).oldest_due_ms == {queue: sent_ms + 1_000}


def test_redis_oldest_due_of_a_delayed_or_retried_message_is_the_end_of_its_delay(
    redis_broker: RedisBroker, unique_queue: Callable[[str], str]
) -> None:
    queue = unique_queue("q")
    redis_broker.declare_queue(queue)
    sent_ms = a_minute_ago_ms()
    redis_broker.enqueue(sent_at(queue, sent_ms, opmetrics_due_ms=sent_ms + 45_000))

    oldest = RedisDepthReader(redis_broker.client, redis_broker.namespace).snapshot([queue]).oldest_due_ms

    assert oldest == {queue: sent_ms + 45_000}


def test_redis_queue_with_only_messages_in_flight_has_no_oldest_ready_message(
    redis_broker: RedisBroker, unique_queue: Callable[[str], str]
) -> None:
    queue = unique_queue("q")
    consumer = fill(redis_broker, queue, ready=0, delayed=1, dead=0, in_flight=2)

    snapshot = RedisDepthReader(redis_broker.client, redis_broker.namespace).snapshot([queue])

    assert snapshot.depths[queue] == {READY: 0, DELAYED: 1, DEAD: 0, IN_FLIGHT: 2}
    assert snapshot.oldest_due_ms == {queue: None}
    assert consumer is not None


def test_redis_head_that_is_not_a_dramatiq_message_is_unknown_and_the_depths_are_still_read(
    redis_broker: RedisBroker, unique_queue: Callable[[str], str]
) -> None:
    garbled, orphan, fine = unique_queue("garbled"), unique_queue("orphan"), unique_queue("fine")
    key = f"{redis_broker.namespace}:{garbled}"
    redis_broker.client.rpush(key, "id-1")
    redis_broker.client.hset(f"{key}.msgs", "id-1", b"\xff not json")
    redis_broker.client.rpush(f"{redis_broker.namespace}:{orphan}", "id-without-message")
    sent_ms = a_minute_ago_ms()
    redis_broker.declare_queue(fine)
    redis_broker.enqueue(sent_at(fine, sent_ms))

    snapshot = RedisDepthReader(redis_broker.client, redis_broker.namespace).snapshot([garbled, orphan, fine])

    assert snapshot.oldest_due_ms == {fine: sent_ms}
    assert snapshot.depths[garbled][READY] == snapshot.depths[orphan][READY] == 1


def test_redis_reads_depths_and_heads_of_every_queue_in_one_round_trip(
    redis_broker: RedisBroker, unique_queue: Callable[[str], str]
) -> None:
    queues = [unique_queue(f"q{i}") for i in range(50)]
    for queue in queues:
        redis_broker.declare_queue(queue)
        redis_broker.enqueue(message(queue))
    client = counting_client(REDIS_URL)
    try:
        client.ping()
        before = CountingConnection.sends
        snapshot = RedisDepthReader(client, redis_broker.namespace).snapshot(queues)
        assert CountingConnection.sends - before == 1
        assert len(snapshot.oldest_due_ms) == 50
        assert all(due is not None for due in snapshot.oldest_due_ms.values())
    finally:
        client.close()


def test_stub_oldest_due_is_the_head_of_its_queue() -> None:
    broker = StubBroker()
    broker.declare_queue("q")
    broker.declare_queue("empty")
    sent_ms = a_minute_ago_ms()
    broker.enqueue(sent_at("q", sent_ms))
    broker.enqueue(sent_at("q", sent_ms + 500))

    assert StubDepthReader(broker).snapshot(["q", "empty", "never-declared"]).oldest_due_ms == {
        "q": sent_ms,
        "empty": None,
        "never-declared": None,
    }


def test_rabbitmq_snapshot_reads_no_oldest_message_and_leaves_the_messages_as_they_were(
    rabbitmq_broker: RabbitmqBroker, unique_queue: Callable[[str], str]
) -> None:
    queue = unique_queue("q")
    fill(rabbitmq_broker, queue, ready=2, delayed=0, dead=0)
    reader = RabbitmqDepthReader(rabbitmq_broker.parameters)
    try:
        snapshot = reader.snapshot([queue])
    finally:
        reader.close()

    assert snapshot.depths[queue][READY] == 2
    assert snapshot.oldest_due_ms == {}
    assert [redelivered for redelivered in take_all(queue)] == [False, False]


def test_rabbitmq_has_no_way_to_peek_a_head_basic_get_and_requeue_marks_it_redelivered(
    rabbitmq_broker: RabbitmqBroker, unique_queue: Callable[[str], str]
) -> None:
    """Why RabbitMQ records no oldest_message_age: reading the head means taking it and giving it back."""
    queue = unique_queue("q")
    fill(rabbitmq_broker, queue, ready=2, delayed=0, dead=0)
    connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
    try:
        channel = connection.channel()
        method, _, _ = channel.basic_get(queue, auto_ack=False)
        assert method is not None
        # While the reader holds the head, a worker gets the message behind it.
        assert channel.queue_declare(queue, passive=True).method.message_count == 1
        channel.basic_nack(method.delivery_tag, requeue=True)
    finally:
        connection.close()

    assert take_all(queue) == [True, False]  # back at the head, but marked redelivered for its worker


def take_all(queue: str) -> list[bool]:
    """Take every ready message of ``queue`` (acknowledging it); return their ``redelivered`` flags in order."""
    connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
    flags = []
    try:
        channel = connection.channel()
        while True:
            method, _, _ = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return flags
            flags.append(bool(method.redelivered))
    finally:
        connection.close()
