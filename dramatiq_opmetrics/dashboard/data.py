"""What the dashboard's pages read from: the metrics database, the clock, and results kept between requests.

Each page is a module of :mod:`dramatiq_opmetrics.dashboard.pages` with one function that takes a
:class:`DashboardData` and returns plain data (numbers, strings and chart data) for the web layer to render;
no page keeps state of its own. Pages read through the library's query functions:

- Ranges of whole days (:mod:`~dramatiq_opmetrics.dashboard.days`): rolled-up days from the daily table
  (:mod:`~dramatiq_opmetrics.query`), their results kept between requests
  (:mod:`~dramatiq_opmetrics.dashboard.kept`); today, and any day the rollup has not reached yet, from
  :func:`~dramatiq_opmetrics.series.query_totals`, which reads the recent tier (and only the few raw rows it
  does not hold yet), so a page never aggregates a day of raw rows.
- The last hours (the Now page, the queues page's recent depth): :func:`~dramatiq_opmetrics.series.query_series`
  and :func:`~dramatiq_opmetrics.series.query_stalled`, from the recent tier.
- Alerts (the Alerts page and the banner of every page): the states, silences, outbox and history the
  evaluator stored in the alert tables (:mod:`~dramatiq_opmetrics.models`), with the rule file's severities and
  thresholds when the dashboard is given it.

Every query runs SELECT statements only, built with SQLAlchemy expressions and bound parameters; label values
only ever travel as parameters or as data.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from sqlalchemy import Engine

from ..alert_rules import RuleSet
from ..config import resolve_setting
from ..middleware import QUEUE_DEPTH_INTERVAL_ENV_VAR
from ..queue_depth_sampler import DEFAULT_QUEUE_DEPTH_INTERVAL_S, check_interval_s
from .kept import KeptResults


def utc_now() -> dt.datetime:
    """The current time, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)


class DashboardData:
    """The metrics database and clock the dashboard's pages read, and the results they keep between requests.

    One instance serves every request of a dashboard (it is thread-safe); pass it to the page functions of
    :mod:`dramatiq_opmetrics.dashboard.pages`.

    Parameters:
      engine(Engine): an engine on the metrics database (see :func:`~dramatiq_opmetrics.database.make_engine`).
      clock(Callable[[], datetime]): returns the current time, timezone-aware UTC; default the real clock.
      sampling_interval_s(float | None): seconds between two samples of a worker process (the workers'
        ``queue_depth_interval_s``), which turns counts of ``worker_threads`` samples into workers online;
        default ``$OPMETRICS_QUEUE_DEPTH_INTERVAL_S``, else 15, as the middleware reads it.
      alert_rules(RuleSet | None): the alert rules the fleet evaluates (see
        :func:`~dramatiq_opmetrics.alert_rules.load_rules`), for their severities, thresholds and summaries
        and the rules not evaluated yet; default None (the Alerts page shows what the database holds).

    Raises:
      ValueError: ``sampling_interval_s`` is not a number of seconds the middleware accepts.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Callable[[], dt.datetime] = utc_now,
        sampling_interval_s: float | None = None,
        alert_rules: RuleSet | None = None,
    ) -> None:
        self.engine = engine
        self.alert_rules = alert_rules
        self.clock = clock
        self.kept = KeptResults()
        interval_s = resolve_setting(
            sampling_interval_s, QUEUE_DEPTH_INTERVAL_ENV_VAR, DEFAULT_QUEUE_DEPTH_INTERVAL_S, float
        )
        # 0 turns the workers' sampling off: there are no samples to count then, any interval will do.
        self.sampling_interval_s = check_interval_s(interval_s) if interval_s else DEFAULT_QUEUE_DEPTH_INTERVAL_S
