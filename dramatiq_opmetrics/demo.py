"""``dramatiq-opmetrics demo``: a week of a small fleet's metrics, recorded, rolled up and reported.

With nothing installed it uses an embedded SQLite file and Dramatiq's in-process
:class:`~dramatiq.brokers.stub.StubBroker` served by a real :class:`dramatiq.Worker`. Given a database URL
and a Redis (or RabbitMQ) broker URL, it runs the same way on PostgreSQL and Redis.

What it does, in order:

1. Migrates the database.
2. Backfills :data:`DEFAULT_HISTORY_DAYS` past days of history: samples with ``recorded_at`` in those days,
   generated from the same actor profiles as the live run and written by the real writer.
3. Runs today's work live: a mix of actors (fast, slow, flaky and retried, always failing and
   dead-lettered, and two calling a fake language model that record token usage with two models and
   confidence) through the real :class:`~dramatiq_opmetrics.OpMetrics` middleware, while queue depth is
   sampled.
4. Rolls up the past days with the real rollup, as the nightly actor would.
5. Prints the report of the whole range (today comes from raw rows) and where the data is.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

#: The SQLite file the demo uses when no database is given (in the current directory).
DEFAULT_DEMO_DATABASE = Path("opmetrics-demo.sqlite3")
#: Environment variable naming the demo's broker (``redis://...`` or ``amqp://...``); default: in-process.
BROKER_URL_ENV_VAR = "OPMETRICS_DEMO_BROKER_URL"
#: The Redis key namespace (and RabbitMQ queue-name prefix) of the demo's queues on a real broker.
DEFAULT_DEMO_NAMESPACE = "opmetrics-demo"
#: Days of history backfilled before today.
DEFAULT_HISTORY_DAYS = 6
#: Messages each actor profile gets today (the live run), scaled by each profile's share.
DEFAULT_LIVE_MESSAGES = 300
#: Worker threads of the live run.
DEFAULT_WORKER_THREADS = 8
#: Seconds between progress lines.
PROGRESS_INTERVAL_S = 1.0
#: Retry backoff of the demo's actors, in milliseconds (small so the demo is quick).
RETRY_MIN_BACKOFF_MS = 10
RETRY_MAX_BACKOFF_MS = 50
#: The two models of the fake language model.
MODELS = ("gpt-4o-mini", "claude-3-5-haiku")


class SMTPServerDisconnected(Exception):
    """The fake mail server hung up (the demo's transient error; retried)."""


class CRMUnavailable(Exception):
    """The fake CRM refused the connection (the demo's permanent error; dead-lettered)."""


@dataclass(frozen=True)
class LanguageModelReply:
    """What :func:`fake_language_model` returns: the text, its token counts and a confidence score."""

    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    confidence: float


def fake_language_model(prompt: str, *, model: str = MODELS[0], rng: random.Random | None = None) -> LanguageModelReply:
    """An offline stand-in for a language-model client: plausible token counts, a short pause, no network.

    Prompt tokens are about one per four characters of ``prompt`` (plus a system prompt); the completion
    is a few dozen to a few hundred tokens; confidence is mostly high with a tail of unsure answers.
    """
    rng = rng or random.Random()
    prompt_tokens = 120 + len(prompt) // 4
    completion_tokens = max(8, int(rng.lognormvariate(math.log(140), 0.5)))
    confidence = min(1.0, max(0.0, rng.betavariate(8, 1.6)))
    time.sleep(0.002 + completion_tokens / 40_000)
    return LanguageModelReply(f"[{model}] {prompt[:40]}...", model, prompt_tokens, completion_tokens, confidence)


@dataclass(frozen=True)
class ActorProfile:
    """How one of the demo's actors behaves, used both for the live run and for generating history.

    Attributes:
      actor, queue: the actor's name and queue.
      share: its share of all messages.
      median_ms, spread: its processing time is lognormal with this median (ms) and sigma.
      transient_failure: the probability that one attempt raises :class:`SMTPServerDisconnected` (retried).
      permanent_failure: the probability that a message always raises :class:`CRMUnavailable` (so it is
        retried :attr:`max_retries` times and dead-lettered).
      model: the language model it calls (None: it calls none).
      max_retries: Dramatiq's ``max_retries`` for the actor.
    """

    actor: str
    queue: str
    share: float
    median_ms: float
    spread: float = 0.5
    transient_failure: float = 0.0
    permanent_failure: float = 0.0
    model: str | None = None
    max_retries: int = 3

    def duration_ms(self, rng: random.Random) -> float:
        """One processing time, in milliseconds."""
        return rng.lognormvariate(math.log(self.median_ms), self.spread)


#: The demo fleet: fast, slow, flaky, failing and language-model actors.
PROFILES: tuple[ActorProfile, ...] = (
    ActorProfile("send_welcome_email", "emails", 0.35, median_ms=20, transient_failure=0.08),
    ActorProfile("resize_image", "media", 0.10, median_ms=180, spread=0.4),
    ActorProfile("summarise_document", "llm", 0.20, median_ms=12, model=MODELS[0]),
    ActorProfile("classify_ticket", "llm", 0.25, median_ms=6, model=MODELS[1]),
    ActorProfile("sync_crm", "crm", 0.10, median_ms=35, permanent_failure=0.15, max_retries=2),
)


class _Progress(Middleware):
    """Counts finished messages (succeeded, or failed for good) so the demo can report progress.

    Placed first among the broker's middleware: ``after_*`` hooks run in reverse order, so it sees a failure
    after :class:`~dramatiq.middleware.Retries` has decided whether to retry or dead-letter it.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.succeeded = self.retried = self.dead_lettered = 0

    def after_process_message(
        self, broker: dramatiq.Broker, message: Any, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        with self.lock:
            if exception is None:
                self.succeeded += 1
            elif message.failed:
                self.dead_lettered += 1
            else:
                self.retried += 1

    @property
    def finished(self) -> int:
        """Messages that succeeded or were dead-lettered."""
        return self.succeeded + self.dead_lettered


def _declare_actors(broker: dramatiq.Broker, profiles: Sequence[ActorProfile]) -> dict[str, dramatiq.Actor[Any, Any]]:
    """One dramatiq actor per profile on ``broker``; each takes ``(item, fails)``."""
    actors = {}
    for profile in profiles:
        actors[profile.actor] = dramatiq.actor(
            _actor_function(profile),
            broker=broker,
            actor_name=profile.actor,
            queue_name=profile.queue,
            max_retries=profile.max_retries,
            min_backoff=RETRY_MIN_BACKOFF_MS,
            max_backoff=RETRY_MAX_BACKOFF_MS,
        )
    return actors


def _actor_function(profile: ActorProfile) -> Callable[[int, bool], None]:
    def work(item: int, fails: bool) -> None:
        rng = random.Random()
        if profile.model is not None:
            reply = fake_language_model(f"{profile.actor} item {item}", model=profile.model, rng=rng)
            record_token_usage(
                model=reply.model, prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens
            )
            record_confidence(reply.confidence)
        time.sleep(profile.duration_ms(rng) / 1000)
        if fails:
            raise CRMUnavailable(f"CRM refused item {item}")
        if rng.random() < profile.transient_failure:
            raise SMTPServerDisconnected("the mail server hung up")

    work.__name__ = work.__qualname__ = profile.actor
    return work


def _live_plan(profiles: Sequence[ActorProfile], messages: int, rng: random.Random) -> list[tuple[str, int, bool]]:
    """Today's messages: ``(actor, item, fails for good)``, shuffled."""
    plan = [
        (profile.actor, item, rng.random() < profile.permanent_failure)
        for profile in profiles
        for item in range(max(1, round(messages * profile.share)))
    ]
    rng.shuffle(plan)
    return plan
