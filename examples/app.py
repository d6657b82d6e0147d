"""A complete fleet setup to copy: a Redis broker with ``OpMetrics``, the nightly rollup under periodiq, and
actors that call a language model (a fake, offline one here) and record token usage and confidence.

Every message any worker processes is measured by the middleware (processing time, wait time, errors with
their outcome, skipped messages); the actors add what only they know with ``record_token_usage`` and
``record_confidence``. The commands to run it are in ``examples/README.md``.

Environment:
  ``OPMETRICS_DATABASE_URL``: the metrics database (required), e.g.
    ``postgresql+psycopg://postgres@127.0.0.1/test``; migrate it first with ``dramatiq-opmetrics migrate``.
  ``EXAMPLE_REDIS_URL``: the Redis broker (default ``redis://127.0.0.1:6379/0``).
  ``EXAMPLE_REDIS_NAMESPACE``: the broker's key namespace (default ``opmetrics-example``).
"""

from __future__ import annotations

import os
import sys

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from dramatiq_opmetrics import OpMetrics, record_confidence, record_token_usage
from dramatiq_opmetrics.demo import fake_language_model
from dramatiq_opmetrics.periodic import register_rollup_actor

#: The Redis broker of the fleet.
REDIS_URL = os.environ.get("EXAMPLE_REDIS_URL", "redis://127.0.0.1:6379/0")
#: The key namespace of the fleet's queues.
REDIS_NAMESPACE = os.environ.get("EXAMPLE_REDIS_NAMESPACE", "opmetrics-example")

broker = RedisBroker(url=REDIS_URL, namespace=REDIS_NAMESPACE)
# Measures every message; its database is $OPMETRICS_DATABASE_URL. In a process that only sends messages
# (a web app, or `python -m examples.app`) it opens no connection and starts no thread.
broker.add_middleware(OpMetrics())
dramatiq.set_broker(broker)
# The nightly rollup (01:30 in the periodiq scheduler's time zone: run it with TZ=UTC) and the 30-day
# retention, on a queue of its own ("opmetrics_rollup") that the workers consume like any other.
rollup = register_rollup_actor(broker)


class TicketUnreadable(Exception):
    """A ticket the model cannot classify (every tenth one, to show errors, retries and dead letters)."""


@dramatiq.actor(queue_name="documents", max_retries=3, min_backoff=100, max_backoff=1000)
def summarise_document(document_id: int) -> None:
    """Summarise a document with the larger model; record its token usage and confidence."""
    reply = fake_language_model(f"Summarise document {document_id}", model="gpt-4o-mini")
    record_token_usage("gpt-4o-mini", reply.prompt_tokens, reply.completion_tokens)
    record_confidence(reply.confidence)


@dramatiq.actor(queue_name="tickets", max_retries=1, min_backoff=100, max_backoff=100)
def classify_ticket(ticket_id: int) -> None:
    """Classify a support ticket with the smaller model; every tenth ticket fails, is retried once and
    dead-lettered."""
    reply = fake_language_model(f"Classify ticket {ticket_id}", model="claude-3-5-haiku")
    record_token_usage("claude-3-5-haiku", reply.prompt_tokens, reply.completion_tokens)
    if ticket_id % 10 == 0:
        raise TicketUnreadable(f"ticket {ticket_id} is unreadable")
    record_confidence(reply.confidence, category="billing" if ticket_id % 2 else "technical")


def send_work(count: int) -> None:
    """Send ``count`` documents and ``count`` tickets (ids 0 to count - 1)."""
    for item in range(count):
        summarise_document.send(item)
        classify_ticket.send(item)


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    send_work(count)
    print(f"sent {count} documents and {count} tickets to {REDIS_URL} (namespace {REDIS_NAMESPACE})")
