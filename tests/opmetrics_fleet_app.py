"""The application of the worker fleet in tests/test_fleet.py, loaded by the ``dramatiq`` command.

Configured by environment variables: ``OPMETRICS_FLEET_REDIS_URL``, ``OPMETRICS_FLEET_NAMESPACE`` (the Redis
broker's namespace) and the middleware's own (``OPMETRICS_DATABASE_URL``, ``OPMETRICS_FLUSH_INTERVAL_S``).
"""

from __future__ import annotations

import os
import time

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from dramatiq_opmetrics import OpMetrics, record_confidence, record_token_usage

NAMESPACE = os.environ["OPMETRICS_FLEET_NAMESPACE"]
REDIS_URL = os.environ["OPMETRICS_FLEET_REDIS_URL"]

opmetrics = OpMetrics()
broker = RedisBroker(url=REDIS_URL, namespace=NAMESPACE)
broker.add_middleware(opmetrics)
dramatiq.set_broker(broker)
client = redis.Redis.from_url(REDIS_URL)

#: Retry fast: the test waits for every retry.
FAST_RETRIES = {"min_backoff": 10, "max_backoff": 50}


@dramatiq.actor(queue_name="fast", max_retries=0)
def succeed(i: int) -> None:
    record_token_usage("model-x", 10, 3)
    record_confidence(0.75)
    client.incr(f"{NAMESPACE}:done:succeed")


@dramatiq.actor(queue_name="slow", **FAST_RETRIES)
def flaky(token: str) -> None:
    if client.incr(f"{NAMESPACE}:attempts:{token}") < 3:
        raise ConnectionError("the first two attempts fail")
    client.incr(f"{NAMESPACE}:done:flaky")


@dramatiq.actor(queue_name="slow", max_retries=2, **FAST_RETRIES)
def doomed() -> None:
    raise KeyError("always")


@dramatiq.actor(throws=(ValueError,))
def refuses() -> None:
    raise ValueError("expected, never retried")


@dramatiq.actor
def stale() -> None:
    client.incr(f"{NAMESPACE}:done:stale")


@dramatiq.actor(queue_name="timed", max_retries=0)
def timed(ms: float) -> None:
    """Runs ``ms`` milliseconds (tests/test_exporter_prometheus.py compares percentiles of its durations)."""
    time.sleep(ms / 1000)


@dramatiq.actor(queue_name="stuck")
def stuck() -> None:
    """On a queue that tests/test_fleet_signals.py gives no consumer (``dramatiq --queues``)."""
