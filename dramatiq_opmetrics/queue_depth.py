"""Read how many messages each queue of a broker holds, by state, and how long its oldest ready message has
waited, without touching the broker's own state.

Dramatiq has no public API for either, so each broker kind is read directly:

- Redis (:class:`~dramatiq.brokers.redis.RedisBroker`): one round trip for all queues, a read-only Lua
  script (:data:`REDIS_READ_SCRIPT`) reading ``LLEN {ns}:{q}`` (ready), ``HLEN {ns}:{q}.msgs`` (ready + in
  flight), ``HLEN {ns}:{q}.DQ.msgs`` (delayed, including the ones workers have prefetched), ``ZCARD
  {ns}:{q}.XQ`` (dead) and the head of the ready list (``LINDEX {ns}:{q} 0``, the end workers ``LPOP``
  from, then ``HGET`` of that message). A script, not a ``MULTI``/``EXEC``, because the message to read
  depends on the id read just before it; it runs atomically, so the numbers and the head of a queue are
  one consistent snapshot. The broker's dispatch script is never called: each call of it registers the
  caller as a worker in the heartbeat set.
- RabbitMQ (:class:`~dramatiq.brokers.rabbitmq.RabbitmqBroker`): passive declares of ``q``, ``q.DQ`` and
  ``q.XQ`` on a connection of the reader's own (three round trips per queue). A passive declare never
  creates a queue; a queue that does not exist holds no messages and reads as 0. RabbitMQ reports only
  messages that are ready for delivery, so there is no ``in_flight`` state, and delayed messages that
  workers have prefetched are not counted. The oldest message is not read (see below).
- :class:`~dramatiq.brokers.stub.StubBroker`: its in-memory queues and dead letters.

Any other broker kind is not supported: :func:`depth_reader_for` returns None.

The oldest ready message is the one workers get next, the head of the queue (``.DQ`` messages are not ready:
once due, the worker holding them moves them to the queue, where they count from the end of their delay).
Its age is measured from when it became due: the ``opmetrics_due_ms`` option that
:class:`~dramatiq_opmetrics.OpMetrics` notes on a delayed or retried message, else its
``message_timestamp`` (when it was sent), the same due time as ``wait_time``'s, so a queue's
``oldest_message_age`` is the wait time its next message will have if a worker starts it now. On Redis the
head is exact, with one limit of the broker: messages a stopping worker gives back and messages recovered
from a dead worker are pushed at the *tail* (``RPUSH``), so for a while an older message may wait behind
the head, and the age read is then that of the head (a lower bound).

RabbitMQ offers no way to look at the head of a queue without taking it: ``basic.get`` delivers the message
to the reader, which hides it from the workers meanwhile (a worker then gets the next one, out of order),
and giving it back (``basic.nack`` with requeue) marks it ``redelivered`` and, on quorum queues, counts a
delivery towards the queue's delivery limit, after which the message is dead-lettered. The management
plugin's ``head_message_timestamp`` needs the AMQP ``timestamp`` property, which Dramatiq does not set. So
on RabbitMQ ``oldest_message_age`` is not recorded.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import dramatiq
from dramatiq.common import dq_name, q_name, xq_name

from . import samples

#: ``state`` label: messages waiting to be delivered.
READY = "ready"
#: ``state`` label: messages in the delay queue (their ETA has not come yet).
DELAYED = "delayed"
#: ``state`` label: dead-lettered messages.
DEAD = "dead"
#: ``state`` label: messages delivered to a worker and not acknowledged yet (Redis and StubBroker only).
IN_FLIGHT = "in_flight"

#: Depths of one read: ``{queue: {state: messages}}``.
Depths = dict[str, dict[str, int]]
#: The message option in which OpMetrics notes when a delayed message became due (``middleware.DUE_OPTION``).
_DUE_OPTION = "opmetrics_due_ms"


@dataclass(frozen=True, slots=True)
class QueueSnapshot:
    """One read of a broker's queues.

    Attributes:
      depths(Depths): messages of each queue by state.
      oldest_due_ms(Mapping[str, float | None]): per queue, when its oldest ready message became due, in
        milliseconds since the epoch; None when the queue has no ready message. A queue is missing where
        the broker cannot tell (RabbitMQ) or its head message cannot be decoded.
    """

    depths: Depths
    oldest_due_ms: Mapping[str, float | None] = field(default_factory=dict)


class DepthReader(Protocol):
    """Reads queue depths (and, where the broker allows, the oldest ready message) from one broker."""

    def read(self, queues: Iterable[str]) -> Depths:
        """Return the depth of each of ``queues`` (canonical names) by state."""

    def snapshot(self, queues: Iterable[str]) -> QueueSnapshot:
        """Return the depths of ``queues`` and when the oldest ready message of each became due."""

    def close(self) -> None:
        """Release any connection the reader opened itself."""


def message_due_ms(data: bytes) -> float | None:
    """When the encoded message ``data`` became due (ms since the epoch), or None if that cannot be told.

    The due time is the ``opmetrics_due_ms`` option if set, else ``message_timestamp``; a value that is not
    a finite positive number (or data the broker's encoder cannot decode) gives None.
    """
    try:
        message = dramatiq.Message.decode(data)
        due = message.options.get(_DUE_OPTION) or message.message_timestamp
    except Exception:  # another application's or a corrupt message: its age is unknown, not an error
        return None
    if isinstance(due, bool) or not isinstance(due, int | float):
        return None
    try:
        due_ms = float(due)
    except OverflowError:
        return None
    return due_ms if math.isfinite(due_ms) and due_ms > 0 else None


def oldest_message_age_s(due_ms: float | None, now_ms: float) -> float:
    """Seconds from ``due_ms`` to ``now_ms``: 0 for an empty queue (None) or a due time still to come."""
    return 0.0 if due_ms is None else max(now_ms - due_ms, 0.0) / 1000.0


def check_queue_names(queues: Iterable[str]) -> tuple[str, ...]:
    """Return ``queues`` as a tuple if every name is a non-empty string, else raise ValueError."""
    names = tuple(queues)
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"queue names must be non-empty strings, got {name!r}")
    return names


def canonical_queue_names(broker: dramatiq.Broker, extra_queues: Iterable[str] = ()) -> list[str]:
    """The canonical names (no ``.DQ``/``.XQ`` suffix) of the broker's declared queues and ``extra_queues``.

    Raises:
      ValueError: if an extra queue name is not a non-empty string.
    """
    names = {q_name(name) for name in check_queue_names(extra_queues)}
    names.update(q_name(name) for name in broker.get_declared_queues())
    return sorted(names)


def depth_samples(depths: Mapping[str, Mapping[str, int]], recorded_at: datetime) -> list[samples.Sample]:
    """One ``queue_depth`` sample per queue and state, labelled ``queue`` and ``state``."""
    return [
        sample
        for queue, by_state in sorted(depths.items())
        for state, depth in sorted(by_state.items())
        for sample in samples.queue_depth(queue, depth, state=state, recorded_at=recorded_at)
    ]


def oldest_age_samples(oldest_due_ms: Mapping[str, float | None], recorded_at: datetime) -> list[samples.Sample]:
    """One ``oldest_message_age`` sample per queue whose oldest message is known, aged at ``recorded_at``."""
    now_ms = recorded_at.timestamp() * 1000.0
    return [
        sample
        for queue, due_ms in sorted(oldest_due_ms.items())
        for sample in samples.oldest_message_age(queue, oldest_message_age_s(due_ms, now_ms), recorded_at=recorded_at)
    ]


def broker_identity(broker: dramatiq.Broker) -> str:
    """A short name for the broker's message store, the same in every process of a fleet (no password)."""
    from dramatiq.brokers.rabbitmq import RabbitmqBroker
    from dramatiq.brokers.redis import RedisBroker

    if isinstance(broker, RedisBroker):
        kwargs = broker.client.connection_pool.connection_kwargs
        return f"redis:{kwargs.get('host', '')}:{kwargs.get('port', '')}/{kwargs.get('db', 0)}:{broker.namespace}"
    if isinstance(broker, RabbitmqBroker):
        parameters = broker.parameters[0] if isinstance(broker.parameters, list) else broker.parameters
        return f"rabbitmq:{parameters.host}:{parameters.port}{parameters.virtual_host}"
    return type(broker).__name__


def depth_reader_for(broker: dramatiq.Broker) -> DepthReader | None:
    """A reader for ``broker``, or None if depth cannot be read from this kind of broker."""
    from dramatiq.brokers.rabbitmq import RabbitmqBroker
    from dramatiq.brokers.redis import RedisBroker
    from dramatiq.brokers.stub import StubBroker

    if isinstance(broker, RedisBroker):
        return RedisDepthReader(broker.client, broker.namespace)
    if isinstance(broker, RabbitmqBroker):
        return RabbitmqDepthReader(broker.parameters)
    if isinstance(broker, StubBroker):
        return StubDepthReader(broker)
    return None


#: The Redis read of :class:`RedisDepthReader`: for each queue name in ARGV (KEYS[1] is the namespace, as
#: in Dramatiq's own dispatch script), its ready, stored, delayed and dead counts and the data of the message
#: at the head of its ready list (false when it has none). Read-only: it writes no key.
REDIS_READ_SCRIPT = """
local namespace = KEYS[1]
local replies = {}
for i = 1, #ARGV do
    local key = namespace .. ":" .. ARGV[i]
    local ready = redis.call("llen", key)
    local head = false
    if ready > 0 then
        head = redis.call("hget", key .. ".msgs", redis.call("lindex", key, 0))
    end
    replies[#replies + 1] = ready
    replies[#replies + 1] = redis.call("hlen", key .. ".msgs")
    replies[#replies + 1] = redis.call("hlen", key .. ".DQ.msgs")
    replies[#replies + 1] = redis.call("zcard", key .. ".XQ")
    replies[#replies + 1] = head
end
return replies
"""
_REDIS_REPLIES_PER_QUEUE = 5


class RedisDepthReader:
    """Reads depths and the head of each queue from a Redis broker's keys in one round trip for all queues.

    :data:`REDIS_READ_SCRIPT` runs atomically, so the numbers of a queue are one consistent snapshot:
    ``in_flight`` (messages in ``{q}.msgs`` that are not in the ``{q}`` list: fetched by a worker, not
    acknowledged yet) is exact, and so is the head. It is sent with ``EVAL`` each time (about 600 bytes):
    one round trip always, where ``EVALSHA`` would need a second (and a third) whenever the server has not
    cached the script yet, after every restart.

    Parameters:
      client(redis.Redis): the broker's client (``broker.client``).
      namespace(str): the broker's key namespace (``broker.namespace``, default ``dramatiq``).
    """

    def __init__(self, client: Any, namespace: str) -> None:
        self.client = client
        self.namespace = namespace

    def read(self, queues: Iterable[str]) -> Depths:
        """Return ready, delayed, dead and in-flight counts of each queue."""
        return self.snapshot(queues).depths

    def snapshot(self, queues: Iterable[str]) -> QueueSnapshot:
        """Return the counts of each queue and when its head message became due."""
        names = list(queues)
        if not names:
            return QueueSnapshot({})
        replies = self.client.eval(REDIS_READ_SCRIPT, 1, self.namespace, *names)
        depths: Depths = {}
        oldest_due_ms: dict[str, float | None] = {}
        for index, name in enumerate(names):
            start = _REDIS_REPLIES_PER_QUEUE * index
            ready, stored, delayed, dead = (int(reply) for reply in replies[start : start + 4])
            depths[name] = {READY: ready, IN_FLIGHT: max(stored - ready, 0), DELAYED: delayed, DEAD: dead}
            head = replies[start + 4]
            if head is None:
                if ready == 0:
                    oldest_due_ms[name] = None
                continue  # an id without its message (another client's keys): unknown, not empty
            due_ms = message_due_ms(head)
            if due_ms is not None:
                oldest_due_ms[name] = due_ms
        return QueueSnapshot(depths, oldest_due_ms)

    def close(self) -> None:
        """Nothing to do: the broker's client is the broker's to close."""


class RabbitmqDepthReader:
    """Reads ready counts of ``q``, ``q.DQ`` and ``q.XQ`` with passive declares on a connection of its own.

    The connection is opened on the first read, kept, and reopened after a failure. A passive declare of a
    queue that does not exist closes the channel (404) and creates nothing; that queue reads as 0.

    Parameters:
      parameters(pika.ConnectionParameters | list): the broker's connection parameters
        (``broker.parameters``).
    """

    def __init__(self, parameters: Any) -> None:
        self.parameters = parameters
        self._connection: Any = None
        self._channel: Any = None

    def read(self, queues: Iterable[str]) -> Depths:
        """Return ready, delayed and dead counts of each queue.

        A kept connection the server has dropped meanwhile (it sends no heartbeats between reads, so a
        long interval outlives the heartbeat timeout) is replaced and the read tried once more.
        """
        import pika.exceptions

        names = list(queues)
        try:
            return self._read(names)
        except pika.exceptions.AMQPConnectionError:
            self.close()
        try:
            return self._read(names)
        except Exception:
            self.close()
            raise

    def snapshot(self, queues: Iterable[str]) -> QueueSnapshot:
        """Return the counts of each queue; the oldest message is never read on RabbitMQ (module docstring)."""
        return QueueSnapshot(self.read(queues))

    def _read(self, names: list[str]) -> Depths:
        return {
            name: {
                READY: self._message_count(name),
                DELAYED: self._message_count(dq_name(name)),
                DEAD: self._message_count(xq_name(name)),
            }
            for name in names
        }

    def _message_count(self, queue: str) -> int:
        import pika.exceptions

        if self._channel is None or not self._channel.is_open:
            if self._connection is None or not self._connection.is_open:
                self._connection = pika.BlockingConnection(self.parameters)
            self._channel = self._connection.channel()
        try:
            frame = self._channel.queue_declare(queue=queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker as error:
            if error.reply_code != 404:
                raise
            self._channel = None
            return 0
        return int(frame.method.message_count)

    def close(self) -> None:
        """Close the reader's own connection, if open."""
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            with contextlib.suppress(Exception):  # a broken connection has nothing left to close
                connection.close()


class StubDepthReader:
    """Reads a :class:`~dramatiq.brokers.stub.StubBroker`'s in-memory queues and dead letters.

    Ready is what waits in the queue; in flight is what a worker took and has not acknowledged yet;
    delayed counts the delay queue's messages including those a worker holds until their ETA.

    Parameters:
      broker(StubBroker): the broker.
    """

    def __init__(self, broker: Any) -> None:
        self.broker = broker

    def read(self, queues: Iterable[str]) -> Depths:
        """Return ready, in-flight, delayed and dead counts of each queue."""
        return self.snapshot(queues).depths

    def snapshot(self, queues: Iterable[str]) -> QueueSnapshot:
        """Return the counts of each queue and when the message at its head became due."""
        depths: Depths = {}
        oldest_due_ms: dict[str, float | None] = {}
        for name in queues:
            queue = self.broker.queues.get(name)
            delay_queue = self.broker.queues.get(dq_name(name))
            head = None
            if queue is not None:
                with queue.mutex:  # the worker's consumer takes from the same deque
                    head = queue.queue[0] if queue.queue else None
            if head is None:
                oldest_due_ms[name] = None
            elif (due_ms := message_due_ms(head)) is not None:
                oldest_due_ms[name] = due_ms
            ready = queue.qsize() if queue is not None else 0
            unfinished = queue.unfinished_tasks if queue is not None else 0
            dead_letters = self.broker.dead_letters_by_queue
            depths[name] = {
                READY: ready,
                IN_FLIGHT: max(unfinished - ready, 0),
                DELAYED: delay_queue.unfinished_tasks if delay_queue is not None else 0,
                DEAD: len(dead_letters.get(name, ())) + len(dead_letters.get(dq_name(name), ())),
            }
        return QueueSnapshot(depths, oldest_due_ms)

    def close(self) -> None:
        """Nothing to do."""
