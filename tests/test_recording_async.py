"""record_token_usage and record_confidence inside Dramatiq's async actors (the ``AsyncIO`` middleware) get the
same automatic actor and queue labels as inside sync actors, also while several run at once on the one event
loop, in tasks they start and in threads they hand work to with ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator

import dramatiq
import pytest
from conftest import REDIS_URL
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware.asyncio import AsyncIO
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL

from dramatiq_opmetrics import OpMetrics, record_confidence, record_token_usage

pytestmark = pytest.mark.postgres

#: Messages per actor; the worker's threads hand them to the one event loop together, so they interleave.
MESSAGES = 20


def recorded(engine: Engine) -> Counter[tuple[str, str]]:
    with engine.connect() as connection:
        result = connection.execute(
            text(
                "SELECT m.metric_type::text, l.labels_key, count(*) FROM operational_metrics m"
                " JOIN opmetrics_label_sets l ON l.id = m.label_set_id"
                " WHERE m.metric_type::text IN ('prompt_tokens', 'completion_tokens', 'confidence') GROUP BY 1, 2"
            )
        )
        return Counter({(metric_type, key): count for metric_type, key, count in result})


@pytest.fixture(params=["AsyncIO first", "OpMetrics first"])
def async_broker(
    request: pytest.FixtureRequest, postgres_engine: Engine, postgres_url: URL, redis_namespace: str
) -> Iterator[RedisBroker]:
    """A Redis broker with the ``AsyncIO`` middleware and ``OpMetrics``, in either order."""
    broker = RedisBroker(url=REDIS_URL, namespace=redis_namespace)
    middleware: list[dramatiq.Middleware] = [AsyncIO(), OpMetrics(postgres_url, flush_interval_s=3600)]
    for each in middleware if request.param == "AsyncIO first" else reversed(middleware):
        broker.add_middleware(each)
    broker.emit_after("process_boot")
    yield broker
    broker.close()


def test_async_actors_label_their_recordings_with_their_own_actor_and_queue(
    async_broker: RedisBroker, postgres_engine: Engine
) -> None:
    @dramatiq.actor(broker=async_broker, queue_name="llm")
    async def summarise(document: str) -> None:
        await asyncio.sleep(0.01)  # lets the other messages' coroutines run in between
        record_token_usage("gpt-4o-mini", 812, 164)
        await asyncio.gather(asyncio.to_thread(record_confidence, 0.93, document_kind=document))

    async def classify_one() -> None:
        await asyncio.sleep(0.005)
        record_confidence(0.2)

    @dramatiq.actor(broker=async_broker, queue_name="classify.high")
    async def classify() -> None:
        await asyncio.create_task(classify_one())
        record_token_usage("claude-haiku", 100, 7, tenant="acme")

    @dramatiq.actor(broker=async_broker, queue_name="llm")
    def sync_neighbour() -> None:
        record_confidence(0.5)

    for _ in range(MESSAGES):
        summarise.send("invoice")
        classify.send()
        sync_neighbour.send()
    worker = dramatiq.Worker(async_broker, worker_timeout=20, worker_threads=8)
    worker.start()
    try:
        async_broker.join("llm")
        async_broker.join("classify.high")
        worker.join()
    finally:
        worker.stop()
    assert recorded(postgres_engine) == Counter(
        {
            ("prompt_tokens", "actor:summarise|model:gpt-4o-mini|queue:llm"): MESSAGES,
            ("completion_tokens", "actor:summarise|model:gpt-4o-mini|queue:llm"): MESSAGES,
            ("confidence", "actor:summarise|bucket:0.9-1.0|document_kind:invoice|queue:llm"): MESSAGES,
            ("confidence", "actor:classify|bucket:0.2-0.3|queue:classify.high"): MESSAGES,
            ("prompt_tokens", "actor:classify|model:claude-haiku|queue:classify.high|tenant:acme"): MESSAGES,
            ("completion_tokens", "actor:classify|model:claude-haiku|queue:classify.high|tenant:acme"): MESSAGES,
            ("confidence", "actor:sync_neighbour|bucket:0.5-0.6|queue:llm"): MESSAGES,
        }
    )
