"""The application of the alerting fleet in tests/test_alerts_fleet.py, loaded by the ``dramatiq`` command.

Configured by environment variables: ``OPMETRICS_FLEET_REDIS_URL``, ``OPMETRICS_FLEET_NAMESPACE`` and the
middleware's own (``OPMETRICS_DATABASE_URL``, ``OPMETRICS_ALERT_RULES``, ...).
"""

from __future__ import annotations

import os

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from dramatiq_opmetrics import OpMetrics

NAMESPACE = os.environ["OPMETRICS_FLEET_NAMESPACE"]
REDIS_URL = os.environ["OPMETRICS_FLEET_REDIS_URL"]

broker = RedisBroker(url=REDIS_URL, namespace=NAMESPACE)
broker.add_middleware(OpMetrics())
dramatiq.set_broker(broker)
client = redis.Redis.from_url(REDIS_URL)
#: While this key exists, ``work`` fails.
FAILING_KEY = f"{NAMESPACE}:failing"


@dramatiq.actor(queue_name="work", max_retries=0)
def work() -> None:
    if client.exists(FAILING_KEY):
        raise ValueError("made to fail by the test")


@dramatiq.actor(queue_name="parked")
def parked() -> None:
    """On a queue that the test gives no consumer."""
