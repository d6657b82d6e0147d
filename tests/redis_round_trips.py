"""Test and benchmark helper: count the round trips a Redis client makes."""

from __future__ import annotations

import redis


class CountingConnection(redis.Connection):
    """A Redis connection that counts the times it sends commands: one send, one round trip (a pipeline
    sends once). ``CountingConnection.sends`` is the count over every such connection."""

    sends = 0

    def send_packed_command(self, command: object, check_health: bool = True) -> None:
        type(self).sends += 1
        super().send_packed_command(command, check_health)


def counting_client(url: str) -> redis.Redis:
    """A client of the Redis at ``url`` whose connections are :class:`CountingConnection`."""
    return redis.Redis(connection_pool=redis.ConnectionPool.from_url(url, connection_class=CountingConnection))
