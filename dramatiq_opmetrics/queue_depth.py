"""Read how many messages each queue of a broker holds, by state, without touching the broker's own state.

Dramatiq has no public API for queue depth, so each broker kind is read directly:

- Redis (:class:`~dramatiq.brokers.redis.RedisBroker`): one pipelined ``MULTI``/``EXEC`` round trip for all
  queues, reading ``LLEN {ns}:{q}`` (ready), ``HLEN {ns}:{q}.msgs`` (ready + in flight),
  ``HLEN {ns}:{q}.DQ.msgs`` (delayed, including the ones workers have prefetched) and ``ZCARD {ns}:{q}.XQ``
  (dead). The broker's dispatch script (``do_qsize``) is never called: each call of it registers the
  caller as a worker in the heartbeat set.
- RabbitMQ (:class:`~dramatiq.brokers.rabbitmq.RabbitmqBroker`): passive declares of ``q``, ``q.DQ`` and
  ``q.XQ`` on a connection of the reader's own (three round trips per queue). A passive declare never
  creates a queue; a queue that does not exist holds no messages and reads as 0. RabbitMQ reports only
  messages that are ready for delivery, so there is no ``in_flight`` state, and delayed messages that
  workers have prefetched are not counted.
- :class:`~dramatiq.brokers.stub.StubBroker`: its in-memory queues and dead letters.

Any other broker kind is not supported: :func:`depth_reader_for` returns None.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
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


class DepthReader(Protocol):
    """Reads queue depths from one broker."""

    def read(self, queues: Iterable[str]) -> Depths:
        """Return the depth of each of ``queues`` (canonical names) by state."""

    def close(self) -> None:
        """Release any connection the reader opened itself."""


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


class RedisDepthReader:
    """Reads depths from a Redis broker's keys in one ``MULTI``/``EXEC`` round trip for all queues.

    The transaction makes the four numbers of a queue one consistent snapshot, so ``in_flight`` (messages
    in ``{q}.msgs`` that are not in the ``{q}`` list: fetched by a worker, not acknowledged yet) is exact.

    Parameters:
      client(redis.Redis): the broker's client (``broker.client``).
      namespace(str): the broker's key namespace (``broker.namespace``, default ``dramatiq``).
    """

    def __init__(self, client: Any, namespace: str) -> None:
        self.client = client
        self.namespace = namespace

    def read(self, queues: Iterable[str]) -> Depths:
        """Return ready, delayed, dead and in-flight counts of each queue."""
        names = list(queues)
        if not names:
            return {}
        pipeline = self.client.pipeline(transaction=True)
        for name in names:
            key = f"{self.namespace}:{name}"
            pipeline.llen(key)
            pipeline.hlen(f"{key}.msgs")
            pipeline.hlen(f"{self.namespace}:{dq_name(name)}.msgs")
            pipeline.zcard(f"{self.namespace}:{xq_name(name)}")
        replies = pipeline.execute()
        depths: Depths = {}
        for index, name in enumerate(names):
            ready, stored, delayed, dead = (int(reply) for reply in replies[4 * index : 4 * index + 4])
            depths[name] = {READY: ready, IN_FLIGHT: max(stored - ready, 0), DELAYED: delayed, DEAD: dead}
        return depths

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
        depths: Depths = {}
        for name in queues:
            queue = self.broker.queues.get(name)
            delay_queue = self.broker.queues.get(dq_name(name))
            ready = queue.qsize() if queue is not None else 0
            unfinished = queue.unfinished_tasks if queue is not None else 0
            dead_letters = self.broker.dead_letters_by_queue
            depths[name] = {
                READY: ready,
                IN_FLIGHT: max(unfinished - ready, 0),
                DELAYED: delay_queue.unfinished_tasks if delay_queue is not None else 0,
                DEAD: len(dead_letters.get(name, ())) + len(dead_letters.get(dq_name(name), ())),
            }
        return depths

    def close(self) -> None:
        """Nothing to do."""
