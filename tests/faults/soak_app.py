"""The application of the fleet soak (tests/faults/test_fleet_soak.py), loaded by the ``dramatiq`` command.

Configured by environment variables: ``OPMETRICS_SOAK_REDIS_URL``, ``OPMETRICS_SOAK_NAMESPACE`` (the Redis
broker's namespace) and the middleware's own (``OPMETRICS_DATABASE_URL``, ``OPMETRICS_FLUSH_INTERVAL_S``).

Each attempt counts itself in Redis, the ground truth the test compares the stored metrics with:
``{namespace}:done:{queue}`` for successes, ``{namespace}:failed:{queue}`` for failed attempts, and
``{namespace}:finished:{queue}`` a list of the completion times (seconds since the epoch), so the test can
tell how many messages a killed process finished in its last moments.
"""

from __future__ import annotations

import os
import time

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage

from dramatiq_opmetrics import OpMetrics

NAMESPACE = os.environ["OPMETRICS_SOAK_NAMESPACE"]
REDIS_URL = os.environ["OPMETRICS_SOAK_REDIS_URL"]

opmetrics = OpMetrics()
broker = RedisBroker(url=REDIS_URL, namespace=NAMESPACE)
broker.add_middleware(CurrentMessage())
broker.add_middleware(opmetrics)
dramatiq.set_broker(broker)
client = redis.Redis.from_url(REDIS_URL)

#: One retry, soon: a failing message fails twice (``retried`` then ``final``).
RETRY = {"max_retries": 1, "min_backoff": 10, "max_backoff": 20}


class SoakFailure(Exception):
    """The failure of the soak's failing messages."""


def _attempt(queue: str, fail: bool) -> None:
    time.sleep(0.002)
    pipe = client.pipeline()
    pipe.incr(f"{NAMESPACE}:{'failed' if fail else 'done'}:{queue}")
    pipe.rpush(f"{NAMESPACE}:finished:{queue}", time.time())
    pipe.execute()
    if fail:
        raise SoakFailure("this message always fails")


@dramatiq.actor(queue_name="soak-a", **RETRY)
def work_a(i: int, fail: bool) -> None:
    _attempt("soak-a", fail)


@dramatiq.actor(queue_name="soak-b", **RETRY)
def work_b(i: int, fail: bool) -> None:
    _attempt("soak-b", fail)


@dramatiq.actor(queue_name="soak-victim", **RETRY)
def work_victim(i: int, fail: bool) -> None:
    _attempt("soak-victim", fail)
