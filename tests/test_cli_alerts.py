"""``dramatiq-opmetrics alerts run/status/history/silence/silences/unsilence`` on PostgreSQL and SQLite."""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import time
from pathlib import Path

import pytest
from command_line import BIN, url_text
from notification_servers import JsonHttpServer
from sqlalchemy import Engine
from sqlalchemy.engine import URL
from test_alert_evaluator import MINUTE, T0, messages, rule, ruleset

from dramatiq_opmetrics.alert_delivery import deliver_due
from dramatiq_opmetrics.alert_evaluator import evaluate
from dramatiq_opmetrics.cli import main

RULES = """
[settings]
evaluation_interval = "1m"

[notifiers.ops]
urls = ["{url}"]

[[rules]]
name = "crm-errors"
metric = "error_rate"
labels = {{ actor = "crm" }}
above = 0.5
window = "5m"
for = "0m"
notify = ["ops"]
"""


def rule_file(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "alerts.toml"
    path.write_text(RULES.format(url=url))
    return path


def test_alerts_run_once_evaluates_the_current_interval_and_delivers_once(
    engine: Engine, migrated_url: URL, tmp_path: Path, json_server: JsonHttpServer, capsys: pytest.CaptureFixture[str]
) -> None:
    now = dt.datetime.now(dt.UTC)
    messages(engine, now - 10 * MINUTE, now, failing=True)
    path = rule_file(tmp_path, json_server.apprise_url())
    arguments = ["alerts", "run", "--rules", str(path), "--once", "--database-url", url_text(migrated_url)]
    assert main(arguments) == 0
    assert "1 notifications; delivered 1, failed 0" in capsys.readouterr().out
    assert main(arguments) == 0
    assert "0 notifications; delivered 0" in capsys.readouterr().out
    assert len(json_server.wait_for_bodies(1)) == 1
    assert len(json_server.bodies) == 1


def test_alerts_status_shows_each_alert_and_the_failing_deliveries(
    engine: Engine, migrated_url: URL, json_server: JsonHttpServer, capsys: pytest.CaptureFixture[str]
) -> None:
    messages(engine, T0 - 5 * MINUTE, T0, failing=True)
    json_server.stop()
    evaluate(engine, ruleset(rule(), targets=(json_server.apprise_url(),)), T0)
    deliver_due(engine, T0)
    assert main(["alerts", "status", "--database-url", url_text(migrated_url)]) == 0
    out = capsys.readouterr().out
    assert f"crm-errors               (all)                            firing   {T0:%Y-%m-%d %H:%M:%S}" in out
    assert "deliveries not made yet: 1 (1 failing)" in out
    assert "firing of crm-errors{} to json://127.0.0.1:" in out
    assert "failed 1 times, next attempt" in out


def test_alerts_history_lists_the_transitions_oldest_first_and_filters_by_rule(
    engine: Engine, migrated_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    messages(engine, T0 - 5 * MINUTE, T0, failing=True)
    messages(engine, T0, T0 + 10 * MINUTE, failing=False)
    rules = ruleset(rule(), rule(name="other", labels={"actor": "nobody"}, no_data="alert"))
    evaluate(engine, rules, T0)
    evaluate(engine, rules, T0 + 6 * MINUTE)
    assert main(["alerts", "history", "--rule", "crm-errors", "--database-url", url_text(migrated_url)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[4:7] for line in lines[1:]] == [["ok", "->", "firing"], ["firing", "->", "ok"]]
    assert main(["alerts", "history", "--limit", "1", "--database-url", url_text(migrated_url)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_silence_is_listed_and_removed_by_id_or_rule(migrated_url: URL, capsys: pytest.CaptureFixture[str]) -> None:
    url = ["--database-url", url_text(migrated_url)]
    assert main(["alerts", "silence", "crm-errors", "--for", "2h", "--reason", "deploy", *url]) == 0
    assert capsys.readouterr().out.startswith("silence #1: crm-errors until ")
    assert main(["alerts", "silence", "crm-errors", "--for", "1d", *url]) == 0
    assert main(["alerts", "silences", *url]) == 0
    listed = capsys.readouterr().out.splitlines()[1:]
    assert [line.split()[:2] for line in listed] == [["#1", "crm-errors"], ["#2", "crm-errors"]]
    assert listed[0].endswith(": deploy")
    assert main(["alerts", "unsilence", "1", *url]) == 0
    assert main(["alerts", "unsilence", "crm-errors", *url]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "removed 1 silence"
    assert main(["alerts", "silences", *url]) == 0
    assert capsys.readouterr().out == "no silences in force\n"
    assert main(["alerts", "unsilence", "crm-errors", *url]) == 2
    assert "no silence 'crm-errors'" in capsys.readouterr().err


def test_a_bad_silence_duration_is_one_line_and_writes_nothing(
    migrated_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    url = ["--database-url", url_text(migrated_url)]
    assert main(["alerts", "silence", "crm-errors", "--for", "2 hours", *url]) == 2
    assert "expected a duration such as" in capsys.readouterr().err
    assert main(["alerts", "silences", *url]) == 0
    assert capsys.readouterr().out == "no silences in force\n"


def test_alerts_run_evaluates_every_interval_until_sigterm_and_sends_once(
    migrated_url: URL, tmp_path: Path, json_server: JsonHttpServer
) -> None:
    path = tmp_path / "alerts.toml"
    path.write_text(
        RULES.format(url=json_server.apprise_url())
        .replace('evaluation_interval = "1m"', 'evaluation_interval = "1s"')
        .replace('for = "0m"', 'for = "0m"\nno_data = "alert"')
    )
    command = [str(BIN / "dramatiq-opmetrics"), "alerts", "run", "--rules", str(path)]
    process = subprocess.Popen(
        [*command, "--database-url", url_text(migrated_url)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        [(_, body)] = json_server.wait_for_bodies(1, timeout_s=20)
        assert body["title"].startswith("[FIRING] crm-errors")
        time.sleep(2.5)  # two more evaluations: nothing new to say
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    assert process.returncode == 0, output
    assert "evaluating 1 rules every 1 s" in output
    assert len(json_server.bodies) == 1
