"""The ``alerts run`` sidecar: evaluates a rule file for the fleet from a process of its own.

For fleets that do not give ``alert_rules`` to their workers' ``OpMetrics`` (or in addition to them): it
runs an :class:`~dramatiq_opmetrics.alert_evaluator.AlertEvaluator` claiming its intervals in the metrics
database, like workers on brokers other than Redis. Next to Redis workers that also evaluate (their claims
are on Redis), both may compute an interval, and the stored states make the second one change and send
nothing (see :mod:`~dramatiq_opmetrics.alert_evaluator`).
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import threading
from types import FrameType

from sqlalchemy import select

from .alert_delivery import deliver_due
from .alert_evaluator import DEFAULT_ALERT_STATEMENT_TIMEOUT_S, AlertEvaluator, evaluate
from .alert_rules import load_rules
from .database import engine_for
from .interval_claims import interval_start
from .models import AlertState


def run_alerts(rules_path: str | os.PathLike[str], *, database_url: str | None = None, once: bool = False) -> int:
    """Evaluate the rules of ``rules_path`` into the metrics database; return the exit status.

    With ``once``, evaluate the current interval (its start is the evaluation's time; nothing changes if
    it was evaluated already), run one delivery pass, print what was done and return. Otherwise evaluate
    every evaluation interval of the rule file until SIGTERM or SIGINT.

    Raises:
      RuleFileError: the rule file is not valid.
      ConfigurationError: no database configured.
    """
    ruleset = load_rules(rules_path)
    with engine_for(database_url, statement_timeout_s=DEFAULT_ALERT_STATEMENT_TIMEOUT_S) as engine:
        with engine.connect() as connection:  # unreachable or not migrated: a clear error now, not later
            connection.execute(select(AlertState.rule).limit(1))
        if once:
            at = interval_start(dt.datetime.now(dt.UTC), ruleset.evaluation_interval.total_seconds())
            result = evaluate(engine, ruleset, at)
            delivered = deliver_due(engine)
            print(
                f"evaluated {len(ruleset.rules)} rules at {at.isoformat()}: {result.alerts} alerts,"
                f" {len(result.transitions)} state changes, {len(result.notifications)} notifications;"
                f" delivered {delivered.delivered}, failed {delivered.failed + delivered.given_up}"
            )
            return 0
        evaluator = AlertEvaluator(engine, ruleset)
        stopped = threading.Event()

        def request_stop(signum: int, _frame: FrameType | None) -> None:
            stopped.set()

        previous = {signum: signal.signal(signum, request_stop) for signum in (signal.SIGTERM, signal.SIGINT)}
        try:
            evaluator.start()
            print(
                f"evaluating {len(ruleset.rules)} rules every {evaluator.interval_s:g} s; stop with Ctrl-C", flush=True
            )
            stopped.wait()
        finally:
            evaluator.stop()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    return 0
