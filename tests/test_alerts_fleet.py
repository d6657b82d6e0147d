"""Alerting in a real ``dramatiq`` fleet on Redis, writing to PostgreSQL: 3 worker processes, each with
``OpMetrics`` and the rules (``OPMETRICS_ALERT_RULES``), evaluating every :data:`EVALUATION_INTERVAL_S`
seconds; one of them evaluates per interval. Notifications go to a real JSON receiver, one path per rule.

An actor made to fail fires the error-rate rule once after its ``for`` and resolves once after it
recovers; a queue nobody consumes fires the oldest-message-age and the stalled rules once each.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from notification_servers import JsonHttpServer
from sqlalchemy import Engine, select, text
from test_fleet_signals import Fleet
from test_middleware_fleet import TESTS, fleet_env, load_app  # noqa: F401 (fleet_env is a fixture)
from waiting import wait_until

from dramatiq_opmetrics.models import AlertTransition

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

#: Seconds between evaluations (the rule file's ``evaluation_interval``).
EVALUATION_INTERVAL_S = 2
#: How long the error rate must hold before the alert fires, in seconds.
FOR_S = 20
#: Messages of ``work`` sent per second while the test runs.
MESSAGES_PER_S = 10
RULES = """
[settings]
evaluation_interval = "{interval}s"

[notifiers.errors]
urls = ["{url}/errors"]
[notifiers.age]
urls = ["{url}/age"]
[notifiers.stalled]
urls = ["{url}/stalled"]

[[rules]]
name = "work-errors"
metric = "error_rate"
labels = {{ queue = "work" }}
above = 0.5
window = "1m"
for = "{for_s}s"
notify = ["errors"]

[[rules]]
name = "parked-age"
metric = "oldest_message_age"
statistic = "max"
group_by = ["queue"]
above = 10
window = "1m"
notify = ["age"]

[[rules]]
name = "parked-stalled"
metric = "stalled"
group_by = ["queue"]
above = 0.5
window = "1m"
notify = ["stalled"]
"""


@pytest.fixture
def fleet(fleet_env: dict[str, str], tmp_path: Path, json_server: JsonHttpServer) -> Iterator[Fleet]:  # noqa: F811
    rules = tmp_path / "alerts.toml"
    url = json_server.apprise_url("")
    rules.write_text(RULES.format(interval=EVALUATION_INTERVAL_S, url=url, for_s=FOR_S))
    env = {
        **fleet_env,
        "OPMETRICS_ALERT_RULES": str(rules),
        "OPMETRICS_QUEUE_DEPTH_INTERVAL_S": "1",
        "OPMETRICS_RECENT_FOLD_INTERVAL_S": "5",
        "OPMETRICS_FLUSH_INTERVAL_S": "0.2",
    }
    running = Fleet(
        env, tmp_path, [sys.executable, "-m", "dramatiq", "opmetrics_alerts_fleet_app", "--path", str(TESTS)]
    )
    try:
        yield running
    finally:
        running.stop_all()


def received(server: JsonHttpServer) -> Counter[tuple[str, str]]:
    """(rule path, event) of every notification received."""
    return Counter((path, body["title"].split()[0]) for path, body in list(server.bodies))


def explain(engine: Engine) -> str:
    """The alerts' transitions and the parked queue's oldest-message-age samples, for a failure's message."""
    with engine.connect() as connection:
        transitions = connection.execute(
            select(AlertTransition.rule, AlertTransition.to_state, AlertTransition.at).order_by(AlertTransition.id)
        ).all()
        ages = connection.execute(
            text(
                "SELECT m.recorded_at, m.value FROM operational_metrics m"
                " JOIN opmetrics_label_sets l ON l.id = m.label_set_id"
                " WHERE m.metric_type = 'oldest_message_age' AND l.labels ->> 'queue' = 'parked'"
                " ORDER BY m.recorded_at"
            )
        ).all()
    lines = [f"{rule} -> {state} at {at:%H:%M:%S.%f}" for rule, state, at in transitions]
    lines.append("parked oldest_message_age: " + ", ".join(f"{at:%H:%M:%S.%f} {value:.1f}" for at, value in ages))
    return "\n".join(lines)


def test_a_fleet_of_three_processes_fires_and_resolves_each_alert_exactly_once(
    fleet: Fleet,
    fleet_env: dict[str, str],  # noqa: F811
    postgres_engine: Engine,
    json_server: JsonHttpServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = load_app(fleet_env, monkeypatch, module="opmetrics_alerts_fleet_app.py")
    for _ in range(3):
        app.parked.send()
    app.client.set(app.FAILING_KEY, 1)
    fleet.start("workers", processes=3, threads=2, queues=["work"])
    started_s = time.monotonic()

    def keep_sending(until: object, timeout_s: float, what: str) -> float:
        """Send ``work`` messages until ``until()`` holds; return when it did (seconds since the start)."""
        deadline = time.monotonic() + timeout_s
        while not until():  # type: ignore[operator]
            assert time.monotonic() < deadline, f"timed out waiting for {what}\n{fleet.log('workers')}"
            for _ in range(MESSAGES_PER_S // 5):
                app.work.send()
            time.sleep(0.2)
        return time.monotonic() - started_s

    fired_s = keep_sending(
        lambda: received(json_server)[("/errors", "[FIRING]")] >= 1, 90, "the error-rate alert to fire"
    )
    assert fired_s >= FOR_S
    app.client.delete(app.FAILING_KEY)
    keep_sending(lambda: received(json_server)[("/errors", "[RESOLVED]")] >= 1, 90, "the error-rate alert to resolve")
    wait_until(
        lambda: received(json_server)[("/stalled", "[FIRING]")] >= 1,
        timeout_s=100,
        what=f"the stalled alert\n{fleet.log('workers')}",
    )
    # A few more evaluations: nobody sends anything twice.
    time.sleep(3 * EVALUATION_INTERVAL_S)
    assert received(json_server) == Counter(
        {("/errors", "[FIRING]"): 1, ("/errors", "[RESOLVED]"): 1, ("/age", "[FIRING]"): 1, ("/stalled", "[FIRING]"): 1}
    ), explain(postgres_engine)
    # Evaluation and delivery never failed (the actor's own failures are logged by Dramatiq).
    problems = [
        line
        for line in fleet.log("workers").splitlines()
        if "[dramatiq_opmetrics." in line and ("[WARNING]" in line or "[ERROR]" in line)
    ]
    assert problems == []
    with postgres_engine.connect() as connection:
        history = connection.execute(
            select(AlertTransition.rule, AlertTransition.to_state).order_by(AlertTransition.id)
        ).all()
    assert [tuple(row) for row in history if row[0] == "work-errors"] == [
        ("work-errors", "pending"),
        ("work-errors", "firing"),
        ("work-errors", "ok"),
    ]
