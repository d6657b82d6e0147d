"""The nightly job: one periodiq-scheduled actor that rolls up complete days and then prunes old raw rows.

Example (in the module that sets up your broker)::

    import dramatiq
    from dramatiq_opmetrics.periodic import register_rollup_actor

    broker = ...                      # your RedisBroker / RabbitmqBroker
    dramatiq.set_broker(broker)
    register_rollup_actor(broker)     # adds PeriodiqMiddleware if missing; queue "opmetrics_rollup"

Then run the scheduler next to your workers (one is enough; see the caveats below)::

    TZ=UTC periodiq yourapp.broker    # sends the rollup message at 01:30 every day
    dramatiq yourapp.broker           # workers; they consume every queue, "opmetrics_rollup" included

What to know about periodiq (0.14):

- **Time zone.** periodiq evaluates ``30 1 * * *`` in the scheduler's *local* time zone. Run it with
  ``TZ=UTC`` to roll up at 01:30 UTC. In another zone nothing breaks: the rollup rolls up every complete UTC
  day that needs it whenever it runs, so the hour only changes how soon after midnight UTC yesterday's
  daily rows appear (and the query API reads not-rolled-up days from raw rows meanwhile).
- **skip_delay.** ``PeriodiqMiddleware`` silently skips a scheduled message that starts more than
  ``skip_delay`` seconds (default 30) after it was scheduled. A backed-up queue would therefore skip the
  rollup; that is why the actor has a queue of its own by default. Give that queue a worker, and do not
  put slow actors on it. A retried message is past ``skip_delay`` too, so the actor does not retry: the
  next run catches up.
- **Downtime.** The scheduler sends nothing while it is down and does not make up missed runs. The next run
  catches up every missed day (raw rows are kept 30 days, so up to a month of downtime heals by itself);
  ``dramatiq-opmetrics rollup`` does the same by hand.
- **Two schedulers send two messages.** The two runs serialise on a database lock; the second finds every
  day up to date and does nothing. Running one scheduler is still the intent.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from typing import Any

import dramatiq
from periodiq import PeriodiqMiddleware, cron
from sqlalchemy import Engine
from sqlalchemy.engine import URL

from .config import redact_url
from .database import make_engine
from .retention import DEFAULT_RETENTION_DAYS, prune, retention_cutoff
from .rollup import rollup

logger = logging.getLogger(__name__)

#: The queue the rollup actor consumes by default: its own, so a backed-up queue never delays it.
DEFAULT_ROLLUP_QUEUE = "opmetrics_rollup"
#: When the rollup runs: 01:30 every day (in the periodiq scheduler's local time zone; run it with TZ=UTC).
DEFAULT_ROLLUP_SCHEDULE = "30 1 * * *"
#: The rollup actor's name.
ROLLUP_ACTOR_NAME = "opmetrics_rollup"
#: How long one run (rollup and prune) may take before dramatiq interrupts it, in milliseconds.
DEFAULT_ROLLUP_TIME_LIMIT_MS = 2 * 60 * 60 * 1000


def register_rollup_actor(
    broker: dramatiq.Broker,
    database_url: str | URL | None = None,
    *,
    queue_name: str = DEFAULT_ROLLUP_QUEUE,
    schedule: str = DEFAULT_ROLLUP_SCHEDULE,
    retention_days: int = DEFAULT_RETENTION_DAYS,
    time_limit_ms: int = DEFAULT_ROLLUP_TIME_LIMIT_MS,
) -> dramatiq.Actor[[], None]:
    """Register the periodic rollup-and-prune actor on ``broker`` and return it.

    Adds periodiq's ``PeriodiqMiddleware`` (default ``skip_delay``) to the broker if it has none. Each run
    rolls up every complete UTC day that needs it (:func:`~dramatiq_opmetrics.rollup.rollup`), then removes
    raw rows older than ``retention_days`` of rolled-up days (:func:`~dramatiq_opmetrics.retention.prune`).
    The database engine is created in the worker process on the first run, with the long statement timeout
    of maintenance jobs (:data:`~dramatiq_opmetrics.database.DEFAULT_MAINTENANCE_STATEMENT_TIMEOUT_S`, or
    ``$OPMETRICS_MAINTENANCE_STATEMENT_TIMEOUT_S``).

    Parameters:
      broker(Broker): your dramatiq broker.
      database_url(str | URL | None): the metrics database; default ``$OPMETRICS_DATABASE_URL``, then
        ``$DATABASE_URL`` (read when the actor first runs).
      queue_name(str): the actor's queue (default :data:`DEFAULT_ROLLUP_QUEUE`).
      schedule(str): cron spec, in the scheduler's local time (default :data:`DEFAULT_ROLLUP_SCHEDULE`).
      retention_days(int): days of raw rows kept (default 30).
      time_limit_ms(int): dramatiq time limit of one run, in milliseconds (default two hours).
    """
    retention_cutoff(retention_days, dt.date.today())  # a bad retention fails here, not at 01:30
    if not any(isinstance(middleware, PeriodiqMiddleware) for middleware in broker.middleware):
        broker.add_middleware(PeriodiqMiddleware())
    spec = cron(schedule)
    engine_lock = threading.Lock()
    engines: list[Engine] = []

    def get_engine() -> Engine:
        with engine_lock:
            if not engines:
                engines.append(make_engine(database_url, maintenance=True))
            return engines[0]

    def opmetrics_rollup() -> None:
        engine = get_engine()
        rollup(engine)
        prune(engine, retention_days=retention_days)

    options: dict[str, Any] = {"periodic": spec, "max_retries": 0, "time_limit": time_limit_ms}
    declare = dramatiq.actor(actor_name=ROLLUP_ACTOR_NAME, queue_name=queue_name, broker=broker, **options)
    actor: dramatiq.Actor[[], None] = declare(opmetrics_rollup)
    logger.info(
        "Registered actor %s on queue %s with schedule %r (database %s, retention %d days)",
        ROLLUP_ACTOR_NAME,
        queue_name,
        str(spec),
        redact_url(database_url) if database_url is not None else "from the environment",
        retention_days,
        extra={
            "event": "rollup_actor_registered",
            "actor": ROLLUP_ACTOR_NAME,
            "queue": queue_name,
            "schedule": str(spec),
            "retention_days": retention_days,
        },
    )
    return actor
