"""``dramatiq-opmetrics demo``: a week of a small fleet's metrics, recorded, rolled up and reported.

With nothing installed it uses an embedded SQLite file and Dramatiq's in-process
:class:`~dramatiq.brokers.stub.StubBroker` served by a real :class:`dramatiq.Worker`. Given a database URL
and a Redis broker URL, it runs the same way on PostgreSQL and Redis.

What it does, in order:

1. Migrates the database.
2. Backfills :data:`DEFAULT_HISTORY_DAYS` past days of history: samples with ``recorded_at`` in those days,
   generated from the same actor profiles as the live run and written by the real writer.
3. Runs today's work live: a mix of actors (fast, slow, flaky and retried, always failing and
   dead-lettered, and two calling a fake language model that record token usage with two models and
   confidence) through the real :class:`~dramatiq_opmetrics.OpMetrics` middleware, while queue depth,
   oldest-message age and the worker's busy threads are sampled and the worker keeps the recent tier
   current. One queue, ``exports``, has had messages waiting for :data:`STUCK_FOR` and no worker consuming
   it: its oldest-message age grows and it shows as stalled.
4. Rolls up the past days with the real rollup, as the nightly actor would.
5. Prints the report of the whole range (today comes from raw rows), then the last hour from the recent
   tier (:func:`~dramatiq_opmetrics.series.query_totals` and
   :func:`~dramatiq_opmetrics.series.query_stalled`): attempts, error rate and p95 per actor, ready
   messages, oldest-message age and stalled minutes per queue, workers online and their utilisation; and
   where the data is.
6. Evaluates two alert rules with the real evaluator and a clock it controls (:mod:`.demo_alerts`): an
   error-rate rule on ``sync_crm`` fires at the end of the day of the CRM incident and resolves the next
   day; an oldest-message-age rule on the stuck queue fires now. Their notifications are delivered through
   the outbox and Apprise to a webhook the demo serves on 127.0.0.1, and printed as received.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import random
import shlex
import shutil
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dramatiq
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Middleware, Retries
from sqlalchemy import Engine, func, select
from sqlalchemy.engine import URL

from . import samples
from .aggregate import raw_count
from .config import ConfigurationError, redact_url, resolve_database_url
from .database import engine_for
from .demo_alerts import run_alerting
from .middleware import OUTCOME_FINAL, OUTCOME_RETRIED, OpMetrics
from .migrate import upgrade
from .models import RecentAggregate
from .queue_depth import DEAD, DELAYED, READY
from .recent_tier import DEFAULT_RECENT_RETENTION_DAYS, fold, read_state
from .recording import record_confidence, record_token_usage
from .report import TEXT_WIDTH, build_report, format_count, format_number, format_percent, format_table, render_text
from .rollup import daily_totals, rollup
from .series import SeriesPoint, query_series, query_stalled, query_totals
from .worker_sampler import host_label, queues_label
from .writer import write_samples

#: The SQLite file the demo uses when no database is given (in the current directory; remade each run).
DEFAULT_DEMO_DATABASE = Path("opmetrics-demo.sqlite3")
#: Environment variable naming the demo's database (the demo never reads ``OPMETRICS_DATABASE_URL`` or
#: ``DATABASE_URL``, so it cannot write demo data into a real metrics database by accident).
DATABASE_URL_ENV_VAR = "OPMETRICS_DEMO_DATABASE_URL"
#: Environment variable naming the demo's Redis broker (``redis://...``); default: in-process StubBroker.
BROKER_URL_ENV_VAR = "OPMETRICS_DEMO_BROKER_URL"
#: The Redis key namespace of the demo's queues (its keys are deleted when the demo ends).
DEFAULT_DEMO_NAMESPACE = "opmetrics-demo"
#: Days of history backfilled before today.
DEFAULT_HISTORY_DAYS = 6
#: Messages a backfilled day has (before its weekday and incident factors).
DEFAULT_MESSAGES_PER_DAY = 1200
#: Messages of today's live run.
DEFAULT_LIVE_MESSAGES = 300
#: Worker threads of the live run.
DEFAULT_WORKER_THREADS = 8
#: Seconds between progress lines of the live run.
PROGRESS_INTERVAL_S = 1.0
#: Seconds between queue depth samples of the live run (15 s in a real fleet).
DEMO_QUEUE_DEPTH_INTERVAL_S = 0.5
#: Seconds between folds of the recent tier by the live run's worker (60 s in a real fleet).
DEMO_RECENT_FOLD_INTERVAL_S = 1.0
#: The queue nobody consumes in the live run (its worker is "down").
STUCK_QUEUE = "exports"
#: The actor of :data:`STUCK_QUEUE`.
STUCK_ACTOR = "export_invoices"
#: Messages waiting on :data:`STUCK_QUEUE`.
STUCK_MESSAGES = 5
#: How long ago the first of them was sent.
STUCK_FOR = dt.timedelta(minutes=12)
#: The range of the report's "last hour" section.
LAST_HOUR = dt.timedelta(hours=1)
#: Seconds the live run may take before the demo gives up.
LIVE_TIMEOUT_S = 60.0
#: Minutes between the queue depth samples of a backfilled day.
HISTORY_DEPTH_EVERY_MIN = 10
#: Retry backoff of the demo's actors, in milliseconds (small so that the demo is quick).
RETRY_MIN_BACKOFF_MS = 10
RETRY_MAX_BACKOFF_MS = 50
#: The two models of the fake language model.
MODELS = ("gpt-4o-mini", "claude-3-5-haiku")
#: Seed of the generated history (the same every run).
HISTORY_SEED = 20261127


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


def fake_language_model(
    prompt: str, *, model: str = MODELS[0], rng: random.Random | None = None, pause: bool = True
) -> LanguageModelReply:
    """An offline stand-in for a language-model client: plausible token counts, a short pause, no network.

    The prompt counts a system prompt, about one token per four characters of ``prompt`` and some retrieved
    context; the completion is a few dozen to a few hundred tokens; confidence is mostly high with a tail of
    unsure answers. ``pause`` sleeps a few milliseconds, as a (very fast) model would.
    """
    rng = rng or random.Random()
    prompt_tokens = 120 + len(prompt) // 4 + int(rng.lognormvariate(math.log(600), 0.6))
    completion_tokens = max(8, int(rng.lognormvariate(math.log(140), 0.5)))
    confidence = rng.betavariate(8, 1.6)
    if pause:
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

    def summary(self, total: int) -> str:
        """``finished of total messages (succeeded, retried, dead-lettered)``."""
        return (
            f"{self.finished} of {total} messages finished ({self.succeeded} succeeded, {self.retried} attempts"
            f" retried, {self.dead_lettered} dead-lettered)"
        )


def _declare_actors(broker: dramatiq.Broker, profiles: Sequence[ActorProfile]) -> dict[str, dramatiq.Actor[Any, Any]]:
    """One dramatiq actor per profile on ``broker``; each takes ``(item, fails)``."""
    actors = {}
    for profile in profiles:
        decorate = dramatiq.actor(
            broker=broker,
            actor_name=profile.actor,
            queue_name=profile.queue,
            max_retries=profile.max_retries,
            min_backoff=RETRY_MIN_BACKOFF_MS,
            max_backoff=RETRY_MAX_BACKOFF_MS,
        )
        actors[profile.actor] = decorate(_actor_function(profile))
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


# The history: what the middleware, the actors and the sampler would have recorded on past days.

#: Share of a day's messages in each UTC hour: quiet nights, a busy afternoon.
_HOUR_WEIGHTS = tuple(0.25 + math.exp(-(((hour - 14) / 4.0) ** 2)) for hour in range(24))


@dataclass(frozen=True)
class DayShape:
    """How one backfilled day differs from an ordinary one.

    Attributes:
      volume: factor on the number of messages (weekends are quieter).
      incident: the CRM is down most of the day: ``sync_crm`` is slow and mostly fails.
    """

    volume: float = 1.0
    incident: bool = False


def day_shape(day: dt.date, days_ago: int) -> DayShape:
    """Weekends carry 40% of a weekday's volume; three days ago the CRM had an incident."""
    return DayShape(volume=0.4 if day.weekday() >= 5 else 1.0, incident=days_ago == 3)


def history_samples(day: dt.date, shape: DayShape, messages: int, rng: random.Random) -> list[samples.Sample]:
    """The samples of one past day of the demo fleet: every attempt's processing and wait time, errors with
    their outcome, token usage and confidence of the language-model actors, and queue depth, oldest-message
    age and the worker process's threads every :data:`HISTORY_DEPTH_EVERY_MIN` minutes."""
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    out: list[samples.Sample] = []
    dead_at: dict[str, list[dt.datetime]] = {profile.queue: [] for profile in PROFILES}
    for profile in PROFILES:
        permanent = 0.6 if shape.incident and profile.permanent_failure else profile.permanent_failure
        slowdown = 4.0 if shape.incident and profile.permanent_failure else 1.0
        for _ in range(round(messages * shape.volume * profile.share)):
            hour = rng.choices(range(24), _HOUR_WEIGHTS)[0]
            at = start + dt.timedelta(hours=hour, seconds=rng.uniform(0, 3600))
            fails = rng.random() < permanent
            for attempt in range(profile.max_retries + 1):
                queue = profile.queue
                wait_ms = rng.lognormvariate(math.log(8 + 40 * _HOUR_WEIGHTS[hour]), 0.8)
                out += samples.wait_time(profile.actor, wait_ms, queue=queue, recorded_at=at)
                out += samples.processing_time(
                    profile.actor, profile.duration_ms(rng) * slowdown, queue=queue, recorded_at=at
                )
                if profile.model is not None:
                    reply = fake_language_model(profile.actor, model=profile.model, rng=rng, pause=False)
                    out += samples.token_usage(
                        profile.model,
                        reply.prompt_tokens,
                        reply.completion_tokens,
                        actor=profile.actor,
                        queue=queue,
                        recorded_at=at,
                    )
                    out += samples.confidence(reply.confidence, actor=profile.actor, queue=queue, recorded_at=at)
                error = "CRMUnavailable" if fails else "SMTPServerDisconnected"
                if not fails and rng.random() >= profile.transient_failure:
                    break
                final = attempt == profile.max_retries
                outcome = OUTCOME_FINAL if final else OUTCOME_RETRIED
                out += samples.error(profile.actor, error, outcome=outcome, queue=queue, recorded_at=at)
                if final:
                    dead_at[profile.queue].append(at)
                at += dt.timedelta(milliseconds=RETRY_MIN_BACKOFF_MS * 2**attempt)
    out += _history_depths(start, dead_at, rng)
    return out


def _history_depths(
    start: dt.datetime, dead_at: dict[str, list[dt.datetime]], rng: random.Random
) -> list[samples.Sample]:
    out = []
    # One worker process, labelled as the live run's is (this host, every queue), so both share a row.
    host, queues = host_label(), queues_label(profile.queue for profile in PROFILES)
    for minute in range(0, 24 * 60, HISTORY_DEPTH_EVERY_MIN):
        at = start + dt.timedelta(minutes=minute)
        load = _HOUR_WEIGHTS[minute // 60]
        aged: set[str] = set()
        for profile in PROFILES:
            ready = int(rng.expovariate(1 / (1 + 60 * load * profile.share)))
            delayed = int(
                rng.expovariate(1 / (0.5 + 3 * load * (profile.transient_failure + profile.permanent_failure)))
            )
            dead = sum(1 for moment in dead_at[profile.queue] if moment <= at)
            for state, depth in ((READY, ready), (DELAYED, delayed), (DEAD, dead)):
                out += samples.queue_depth(profile.queue, depth, state=state, recorded_at=at)
            if profile.queue not in aged:  # one per queue (two actors share "llm")
                aged.add(profile.queue)
                # The oldest of ``ready`` messages has waited about as long as the workers take to drain them.
                age_s = rng.uniform(0.5, 1.5) * ready * profile.duration_ms(rng) / 1000 / DEFAULT_WORKER_THREADS
                out += samples.oldest_message_age(profile.queue, age_s, recorded_at=at)
        busy = min(DEFAULT_WORKER_THREADS, round(rng.uniform(0.6, 1.0) * load / 1.25 * DEFAULT_WORKER_THREADS))
        out += samples.worker_threads(DEFAULT_WORKER_THREADS, busy, host=host, queues=queues, recorded_at=at)
    return out


# The run.


def run_demo(
    database_url: str | URL | None = None,
    broker_url: str | None = None,
    *,
    history_days: int = DEFAULT_HISTORY_DAYS,
    messages_per_day: int = DEFAULT_MESSAGES_PER_DAY,
    live_messages: int = DEFAULT_LIVE_MESSAGES,
    namespace: str = DEFAULT_DEMO_NAMESPACE,
    out: Callable[[str], None] = print,
) -> int:
    """Run the demo (see the module docstring) and print its report; return the exit status.

    Parameters:
      database_url: the database; default ``$OPMETRICS_DEMO_DATABASE_URL``, else a fresh SQLite file
        :data:`DEFAULT_DEMO_DATABASE` in the current directory.
      broker_url: a Redis URL; default ``$OPMETRICS_DEMO_BROKER_URL``, else an in-process ``StubBroker``.
      history_days: past days to backfill (:data:`DEFAULT_HISTORY_DAYS`).
      messages_per_day: messages of an ordinary backfilled day (:data:`DEFAULT_MESSAGES_PER_DAY`).
      live_messages: messages of today's live run (:data:`DEFAULT_LIVE_MESSAGES`).
      namespace: the Redis key namespace of the demo's queues (its keys are deleted at the end).
      out: where the lines go.

    Raises:
      ConfigurationError: the broker URL is not a Redis URL, or a database URL cannot be parsed.
    """
    started = time.monotonic()
    broker_url = broker_url or os.environ.get(BROKER_URL_ENV_VAR) or None
    broker = _demo_broker(broker_url, namespace)  # first: a broker it cannot use ends the demo before any change
    url, fresh_file, replaced = _demo_database(database_url)
    today = dt.datetime.now(dt.UTC).date()
    first_day = today - dt.timedelta(days=history_days)
    broker_name = f"Redis at {redact_url(broker_url)}" if broker_url else "an in-process StubBroker"
    out(f"dramatiq-opmetrics demo: a small fleet's week on {redact_url(url)} and {broker_name}")
    out("")
    if fresh_file:
        out(f"[1/6] Creating {fresh_file}{' (replacing the previous demo run)' if replaced else ''} ...")
    else:
        out(f"[1/6] Migrating {redact_url(url)} ...")
    upgrade(url)
    with engine_for(url) as engine:
        try:
            out(f"[2/6] Backfilling {history_days} days of history, {first_day} to {today - dt.timedelta(days=1)} ...")
            _backfill(engine, first_day, today, messages_per_day, out)
            # The catch-up a fleet's first fold does; from then on the live run's worker keeps the tier current.
            folded, days = fold(engine), DEFAULT_RECENT_RETENTION_DAYS
            out(f"      Folded {folded.rows:,} raw rows of the last {days} days into the recent tier")
            out(f"[3/6] Running today's work live: {live_messages} messages, a real dramatiq Worker, the OpMetrics")
            out("      middleware, queue depth sampled every 0.5 s, the recent tier folded every second by the")
            out(f"      worker; some actors fail on purpose, and nobody consumes {STUCK_QUEUE!r} ...")
            live = _run_live(broker, url, live_messages, out)
            if live is None:
                return 1
            out(f"[4/6] Rolling up {first_day} to {today - dt.timedelta(days=1)} (what the nightly actor does) ...")
            for day in range(history_days):
                for done in rollup(engine, day=first_day + dt.timedelta(days=day)):
                    rows, seconds = f"{done.rows:,} raw rows", f"{done.duration_s:.2f} s"
                    out(f"      {done.day}: {rows} -> {done.daily_rows} daily rows in {seconds}")
            out(f"[5/6] Report of {first_day} to {today} (today straight from raw rows, not rolled up yet):")
            out("")
            with engine.connect() as connection:
                out(render_text(build_report(connection, first_day, today, filters={})))
            out("")
            out("\n".join(last_hour_lines(engine, dt.datetime.now(dt.UTC), sampling_intervals(*live))))
            out("")
            out("[6/6] Alerting: two rules evaluated by the real evaluator on a clock the demo")
            out("      controls; their notifications delivered by the outbox through Apprise to a")
            out("      webhook the demo serves ...")
            run_alerting(engine, first_day, dt.datetime.now(dt.UTC), out)
        finally:
            if broker_url:
                _delete_redis_keys(broker, namespace)
            broker.close()
    out("")
    out(f"Done in {time.monotonic() - started:.1f} s.")
    out(_where_to_look(url, fresh_file, history_days))
    return 0


def _demo_database(database_url: str | URL | None) -> tuple[URL, Path | None, bool]:
    """The demo's database URL, the SQLite file it makes afresh (None for a database given), and whether it
    replaces a previous run's file."""
    given = database_url or os.environ.get(DATABASE_URL_ENV_VAR) or None
    if given is not None:
        return resolve_database_url(given), None, False
    path = DEFAULT_DEMO_DATABASE.resolve()
    replaced = path.exists()
    for leftover in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        leftover.unlink(missing_ok=True)
    return resolve_database_url(f"sqlite:///{path}"), path, replaced


def _demo_broker(broker_url: str | None, namespace: str) -> dramatiq.Broker:
    if broker_url is None:
        return StubBroker(fail_fast_default=False)
    if not broker_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigurationError(
            f"the demo runs on Redis (redis://host:6379/0) or, without a broker URL, in process;"
            f" got {redact_url(broker_url)}"
        )
    from dramatiq.brokers.redis import RedisBroker
    from redis.exceptions import RedisError

    broker: dramatiq.Broker = RedisBroker(url=broker_url, namespace=namespace)  # type: ignore[no-untyped-call]
    try:
        broker.client.ping()  # type: ignore[attr-defined]
    except RedisError as error:
        broker.close()
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ConfigurationError(
            f"cannot reach the demo's Redis broker at {redact_url(broker_url)}: {reason}"
        ) from None
    return broker


def _backfill(engine: Engine, first_day: dt.date, today: dt.date, messages: int, out: Callable[[str], None]) -> None:
    rng = random.Random(HISTORY_SEED)
    day = first_day
    while day < today:
        shape = day_shape(day, (today - day).days)
        history = history_samples(day, shape, messages, rng)
        with engine.begin() as connection:
            if raw_count(connection, day) or daily_totals(connection, day):
                out(f"      {day} {day:%a}: has data already (an earlier demo run?), left as it is")
                day += dt.timedelta(days=1)
                continue
            write_samples(connection, history)
        note = " (weekend)" if shape.volume < 1 else ""
        note += " (CRM incident: sync_crm slow and failing)" if shape.incident else ""
        out(f"      {day} {day:%a}: {len(history):,} samples{note}")
        day += dt.timedelta(days=1)


def _run_live(
    broker: dramatiq.Broker, url: URL, messages: int, out: Callable[[str], None]
) -> tuple[dt.datetime, dt.datetime] | None:
    """Process today's messages through the real middleware; return when the worker had booted and when it
    began to stop, or None if not all of the messages finished."""
    progress = _Progress()
    broker.add_middleware(progress, before=Retries)
    broker.add_middleware(
        OpMetrics(
            database_url=url,
            flush_interval_s=0.5,
            queue_depth_interval_s=DEMO_QUEUE_DEPTH_INTERVAL_S,
            recent_fold_interval_s=DEMO_RECENT_FOLD_INTERVAL_S,
        )
    )
    actors = _declare_actors(broker, PROFILES)
    _send_stuck_messages(broker)
    plan = _live_plan(PROFILES, messages, random.Random())
    dramatiq_logger = logging.getLogger("dramatiq")
    level = dramatiq_logger.level
    dramatiq_logger.setLevel(logging.CRITICAL)  # the failing actors' tracebacks are expected
    consumed = {profile.queue for profile in PROFILES}  # not STUCK_QUEUE: its worker is down
    worker = dramatiq.Worker(broker, queues=consumed, worker_threads=DEFAULT_WORKER_THREADS, worker_timeout=100)
    try:
        worker.start()
        booted_at = dt.datetime.now(dt.UTC)
        started = time.monotonic()
        for actor, item, fails in plan:
            actors[actor].send(item, fails)
        next_line = started + PROGRESS_INTERVAL_S
        while progress.finished < len(plan):
            if time.monotonic() - started > LIVE_TIMEOUT_S:
                out(f"      gave up after {LIVE_TIMEOUT_S:.0f} s: {progress.finished} of {len(plan)} messages finished")
                return None
            time.sleep(0.05)
            if time.monotonic() >= next_line:
                out(f"      {progress.summary(len(plan))}")
                next_line += PROGRESS_INTERVAL_S
        out(f"      {progress.summary(len(plan))} in {time.monotonic() - started:.1f} s")
        time.sleep(DEMO_QUEUE_DEPTH_INTERVAL_S * 1.5)  # one more depth sample, with the dead letters
        stopping_at = dt.datetime.now(dt.UTC)
    finally:
        worker.stop()  # writes everything the middleware buffered
        dramatiq_logger.setLevel(level)
    return booted_at, stopping_at


def sampling_intervals(booted_at: dt.datetime, stopping_at: dt.datetime) -> int:
    """How many worker samples one worker process recorded from ``booted_at`` to ``stopping_at``: one at
    each multiple of :data:`DEMO_QUEUE_DEPTH_INTERVAL_S` in between (its sampler starts at the next one
    after the boot and stops when the worker begins to stop)."""
    interval_ms = round(DEMO_QUEUE_DEPTH_INTERVAL_S * 1000)
    return int(stopping_at.timestamp() * 1000) // interval_ms - int(booted_at.timestamp() * 1000) // interval_ms


def _send_stuck_messages(broker: dramatiq.Broker) -> None:
    """:data:`STUCK_MESSAGES` messages on :data:`STUCK_QUEUE`, the first sent :data:`STUCK_FOR` ago."""

    def export_invoices(batch: int) -> None:
        """Never runs in the demo: no worker consumes its queue."""

    export_invoices.__name__ = export_invoices.__qualname__ = STUCK_ACTOR
    actor = dramatiq.actor(broker=broker, actor_name=STUCK_ACTOR, queue_name=STUCK_QUEUE)(export_invoices)
    first_ms = int((time.time() - STUCK_FOR.total_seconds()) * 1000)
    for batch in range(STUCK_MESSAGES):
        broker.enqueue(actor.message(batch).copy(message_timestamp=first_ms + batch * 60_000))


# The "last hour" section: what an operator looks at during an incident, from the recent tier.


def last_hour_lines(engine: Engine, end: dt.datetime, intervals: int, width: int = TEXT_WIDTH) -> list[str]:
    """The report's "last hour" section: the hour before ``end`` read from the recent tier (plus the raw rows
    it does not hold yet) with :func:`~dramatiq_opmetrics.series.query_totals` and
    :func:`~dramatiq_opmetrics.series.query_stalled`, in tables of at most ``width`` columns.

    Worker processes online, on average while the live run's worker ran: their ``worker_threads`` samples
    (one per process and interval) over the ``intervals`` of that time (:func:`sampling_intervals`).
    """
    start = end - LAST_HOUR
    minute = dt.timedelta(minutes=1)
    with engine.connect() as connection:
        state = read_state(connection)
        buckets = connection.execute(select(func.count()).select_from(RecentAggregate)).scalar_one()
        attempts = query_totals(connection, start, end, metric_type="processing_time", group_by=("actor", "queue"))
        waits = query_totals(connection, start, end, metric_type="wait_time", group_by=("actor", "queue"))
        ready = query_totals(
            connection, start, end, metric_type="queue_depth", labels={"state": READY}, group_by=("queue",)
        )
        ages = query_totals(connection, start, end, metric_type="oldest_message_age", group_by=("queue",))
        sampled = query_series(
            connection, start, end, step=minute, metric_type="queue_depth", labels={"state": READY}, group_by=("queue",)
        )
        stalled = query_stalled(connection, start, end, step=minute)
        threads = query_totals(connection, start, end, metric_type="worker_threads", group_by=("host", "queues"))
        busy = query_totals(connection, start, end, metric_type="busy_threads", group_by=("host", "queues"))
    tier = f"the recent tier ({format_count(buckets)} buckets)" if state else "raw rows (no fold yet)"
    lines = [f"last hour: {start:%H:%M} to {end:%H:%M} UTC", f"from {tier} and the raw rows not folded into it yet"]

    wait_p95 = {_group(point, ("actor", "queue")): point.p95 for point in waits}
    body = [
        [
            *_cells(point, ("actor", "queue")),
            format_count(point.count),
            format_percent(point.error_rate),
            format_number(point.p95),
            format_number(wait_p95.get(_group(point, ("actor", "queue")))),
        ]
        for point in sorted(attempts, key=lambda point: -point.count)
    ]
    headers = ["actor", "queue", "attempts", "err%", "p95 ms", "wait p95"]
    lines += ["", "actors (p95 of processing and wait time in ms)", *format_table(headers, body, 2, width)]

    age_by_queue = {point.labels.get("queue", "-"): point.max for point in ages}
    minutes = Counter(point.labels.get("queue", "-") for point in sampled)
    stalled_minutes = Counter(bucket.queue for bucket in stalled)
    body = []
    for point in sorted(ready, key=lambda point: point.labels.get("queue", "-")):
        queue = point.labels.get("queue", "-")
        stall = f"{stalled_minutes[queue]} of {minutes[queue]} min" if stalled_minutes[queue] else "-"
        body.append([queue, format_count(point.max), format_number(age_by_queue.get(queue)), stall])
    title = "queues (most ready; oldest s = oldest-message age; stalled: ready, none done)"
    lines += ["", title, *format_table(["queue", "ready", "oldest s", "stalled"], body, 1, width)]

    busy_by_group = {_group(point, ("host", "queues")): point for point in busy}
    body = []
    for point in threads:
        busy_point = busy_by_group.get(_group(point, ("host", "queues")))
        utilisation = busy_point.sum / point.sum if busy_point is not None and point.sum else None
        online = point.count / max(intervals, 1)
        body.append(
            [*_cells(point, ("host", "queues")), f"{online:.1f}", format_number(point.avg), format_percent(utilisation)]
        )
    title = "workers (online = processes, on average while it ran; util% = busy / threads)"
    lines += ["", title, *format_table(["host", "queues", "online", "threads", "util%"], body, 2, width)]
    return lines


def _group(point: SeriesPoint, keys: Sequence[str]) -> tuple[str | None, ...]:
    return tuple(point.labels.get(key) for key in keys)


def _cells(point: SeriesPoint, keys: Sequence[str]) -> list[str]:
    return [point.labels.get(key, "-") for key in keys]


def _delete_redis_keys(broker: dramatiq.Broker, namespace: str) -> None:
    client = broker.client  # type: ignore[attr-defined]
    keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
    if keys:
        client.delete(*keys)


def _where_to_look(url: URL, fresh_file: Path | None, history_days: int) -> str:
    command = _command_name()
    url_text = shlex.quote(redact_url(url))
    lines = [
        f"The data is in {redact_url(url)}",
        "(raw samples in operational_metrics, daily rows in operational_metrics_daily).",
    ]
    lines.append("Look at it:")
    lines.append(f"  {command} report --database-url {url_text} --days {history_days + 1}")
    lines.append(f"  {command} report --database-url {url_text} --days 1 --actor sync_crm --json")
    lines.append(f"  {command} alerts history --database-url {url_text}")
    lines.append(f"  {command} dashboard --database-url {url_text}   (then http://127.0.0.1:8070/alerts)")
    if fresh_file is not None:
        sql = "SELECT metric_type, COUNT(*) FROM operational_metrics GROUP BY metric_type"
        lines.append(f"  sqlite3 {shlex.quote(str(fresh_file))} {shlex.quote(sql)}")
        lines.append("Running the demo again starts over.")
    return "\n".join(lines)


def _command_name() -> str:
    """How to call ``dramatiq-opmetrics`` from here: by name if it is on the PATH, else by its full path."""
    if shutil.which("dramatiq-opmetrics"):
        return "dramatiq-opmetrics"
    beside = Path(sys.executable).parent / "dramatiq-opmetrics"
    if beside.exists():
        try:
            return str(beside.relative_to(Path.cwd()))
        except ValueError:
            return str(beside)
    return f"{sys.executable} -m dramatiq_opmetrics.cli"
