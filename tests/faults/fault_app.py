"""Test helper: the application the fault suite's ``dramatiq`` and ``dramatiq-opmetrics sample-queues`` load.

Configured by environment variables: ``FAULT_APP_REDIS_URL`` and ``FAULT_APP_NAMESPACE`` (a Redis broker;
without them a ``StubBroker``), ``FAULT_APP_SHUTDOWN_TIMEOUT_S`` (the middleware's ``shutdown_timeout_s``),
and the middleware's own (``OPMETRICS_DATABASE_URL``, ``OPMETRICS_FLUSH_INTERVAL_S``,
``OPMETRICS_STATEMENT_TIMEOUT_S``, ...). The ``noop`` actor counts its runs in ``{namespace}:done``.
"""

from __future__ import annotations

import os

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

from dramatiq_opmetrics import OpMetrics

REDIS_URL = os.environ.get("FAULT_APP_REDIS_URL")
NAMESPACE = os.environ.get("FAULT_APP_NAMESPACE", "fault-app")

broker: dramatiq.Broker = RedisBroker(url=REDIS_URL, namespace=NAMESPACE) if REDIS_URL else StubBroker()
if os.environ.get("OPMETRICS_DATABASE_URL"):
    opmetrics = OpMetrics(shutdown_timeout_s=float(os.environ.get("FAULT_APP_SHUTDOWN_TIMEOUT_S", "10")))
    broker.add_middleware(opmetrics)
dramatiq.set_broker(broker)
client = redis.Redis.from_url(REDIS_URL) if REDIS_URL else None


@dramatiq.actor(queue_name=os.environ.get("FAULT_APP_QUEUE", "fault"), max_retries=0)
def noop(i: int) -> None:
    if client is not None:
        client.incr(f"{NAMESPACE}:done")
