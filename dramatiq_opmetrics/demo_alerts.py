"""The demo's alerting step: two rules evaluated by the real evaluator over the demo's data, with a clock
the demo controls, and their notifications delivered through Apprise to a webhook the demo listens on.

- ``crm-errors``: the error rate of ``sync_crm`` above :data:`CRM_ERRORS_ABOVE` over a day. Evaluated at
  each midnight of the backfilled history (each evaluation reads the day before it), it fires at the end of
  the day of the CRM incident (:func:`~dramatiq_opmetrics.demo.day_shape`) and resolves a day later.
- ``exports-waiting``: the oldest message of the queue nobody consumes (``exports``) older than
  :data:`EXPORTS_WAITING_ABOVE_S`. Evaluated now, it fires, and is still firing when the demo ends: the
  dashboard's banner shows it.

The rules are a rule file's text (:data:`DEMO_RULES`, read by
:func:`~dramatiq_opmetrics.alert_rules.parse_rules`); the notifications go through the outbox
(:func:`~dramatiq_opmetrics.alert_delivery.deliver_due`) to ``json://127.0.0.1:PORT/hook``, a small HTTP
server on the loopback interface (:class:`DemoWebhook`) started for the step and stopped after it.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from sqlalchemy import Engine

from .alert_delivery import deliver_due
from .alert_evaluator import Transition, evaluate
from .alert_rules import RuleSet, parse_rules
from .notifiers import format_labels, format_value

#: The threshold of ``crm-errors``: failed attempts / attempts of ``sync_crm`` over a day (an ordinary day
#: has about 35%, the day of the incident about 80%).
CRM_ERRORS_ABOVE = 0.6
#: The threshold of ``exports-waiting``, in seconds of the oldest message's age.
EXPORTS_WAITING_ABOVE_S = 300
#: The dashboard the notifications link to (``dramatiq-opmetrics dashboard``'s default address).
DEMO_DASHBOARD_URL = "http://127.0.0.1:8070"
#: The demo's rule file; ``{webhook}`` is the address of :class:`DemoWebhook`.
DEMO_RULES = """\
[settings]
dashboard_url = "{dashboard}"

[notifiers.ops]
urls = ["{webhook}"]

[[rules]]
name = "crm-errors"
metric = "error_rate"
labels = {{ actor = "sync_crm" }}
above = {crm_above}
window = "1d"
for = "0m"
severity = "critical"
summary = "sync_crm failed {{value}} of its attempts in a day"
notify = ["ops"]

[[rules]]
name = "exports-waiting"
metric = "oldest_message_age"
statistic = "max"
labels = {{ queue = "exports" }}
group_by = ["queue"]
above = {exports_above}
window = "5m"
for = "0m"
severity = "warning"
summary = "the oldest message of {{label.queue}} has waited {{value}} s"
notify = ["ops"]
"""
#: Seconds the webhook waits for a request's body.
WEBHOOK_TIMEOUT_S = 5.0


class DemoWebhook:
    """An HTTP server on 127.0.0.1 (a free port) that keeps the JSON body of every POST it receives, as a
    chat or paging service's webhook would; use it as a context manager.

    ``url`` is its Apprise URL (``json://127.0.0.1:PORT/hook``); ``received`` the bodies, in order.
    """

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            timeout = WEBHOOK_TIMEOUT_S

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    received.append(json.loads(self.rfile.read(length) or b"{}"))
                except ValueError:
                    self.send_response(400)
                else:
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the demo prints what was received."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="opmetrics-demo-webhook", daemon=True)
        self.url = f"json://127.0.0.1:{self._server.server_address[1]}/hook"

    def __enter__(self) -> DemoWebhook:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=WEBHOOK_TIMEOUT_S)


def demo_rules(webhook_url: str) -> RuleSet:
    """The demo's rules (:data:`DEMO_RULES`) notifying ``webhook_url``."""
    text = DEMO_RULES.format(
        dashboard=DEMO_DASHBOARD_URL,
        webhook=webhook_url,
        crm_above=CRM_ERRORS_ABOVE,
        exports_above=EXPORTS_WAITING_ABOVE_S,
    )
    return parse_rules(text, source="the demo's rules")


def run_alerting(engine: Engine, first_day: dt.date, now: dt.datetime, out: Callable[[str], None]) -> list[Transition]:
    """Evaluate the demo's rules at each midnight after ``first_day`` up to today, then at ``now``, delivering
    the notifications after each evaluation; print the state changes and the notifications the webhook
    received. Returns the state changes."""
    changes: list[Transition] = []
    with DemoWebhook() as webhook:
        ruleset = demo_rules(webhook.url)
        out(f"      crm-errors (critical): sync_crm's error rate over a day above {CRM_ERRORS_ABOVE:.0%},")
        out("        evaluated at each midnight of the history")
        out(f"      exports-waiting (warning): oldest message of exports older than {EXPORTS_WAITING_ABOVE_S} s, now")
        midnights = [
            dt.datetime.combine(first_day + dt.timedelta(days=days), dt.time(), tzinfo=dt.UTC)
            for days in range(1, (now.date() - first_day).days + 1)
        ]
        earlier = 0
        for at in [*midnights, now]:
            result = evaluate(engine, ruleset, at)
            earlier += result.already_evaluated
            for change in result.transitions:
                value = format_value(None) if change.value is None else f"{change.value:.3g}"
                labels = f" {format_labels(change.group)}" if change.group else ""
                change_text = f"{change.from_state} -> {change.to_state}"
                out(f"      {at:%Y-%m-%d %H:%M} {change.rule}{labels}: {change_text} ({value})")
            changes += result.transitions
            deliver_due(engine)
        if earlier:
            out(f"      {earlier} evaluations were made by an earlier demo run already: left as they are")
        out(f"      Received by the demo's webhook {webhook.url} via Apprise:")
        for body in webhook.received:
            out(f"        {body.get('title', '?')}")
        if webhook.received:
            link = next(
                (line for line in str(webhook.received[0].get("message", "")).splitlines() if "://" in line), ""
            )
            if link:
                out(f"        ({link.strip()})")
        else:
            out("        (none)")
    return changes
