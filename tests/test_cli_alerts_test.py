"""``dramatiq-opmetrics alerts test NOTIFIER --rules FILE``: a test notification to every target of a notifier,
received by real servers, one line per target."""

from __future__ import annotations

from pathlib import Path

import pytest
from command_line import BIN, run_command
from notification_servers import Alertmanager, JsonHttpServer, SmtpServer, message_text
from tcp_proxy import free_port

from dramatiq_opmetrics.cli import main
from dramatiq_opmetrics.notifiers import masked_target


def rule_file(folder: Path, urls: list[str], dashboard_url: str = "http://127.0.0.1:8070") -> Path:
    """A valid rule file whose notifier ``ops`` has ``urls``."""
    path = folder / "alerts.toml"
    quoted = ", ".join(f'"{url}"' for url in urls)
    path.write_text(
        f"""
[settings]
dashboard_url = "{dashboard_url}"

[notifiers.ops]
urls = [{quoted}]

[notifiers.other]
urls = ["json://127.0.0.1:1/unused"]

[[rules]]
name = "crm-errors"
metric = "error_rate"
above = 0.05
window = "10m"
for = "5m"
notify = ["ops"]
"""
    )
    return path


def test_a_test_notification_reaches_every_target_of_the_notifier_and_says_ok_for_each(
    tmp_path: Path,
    smtp_server: SmtpServer,
    json_server: JsonHttpServer,
    alertmanager: Alertmanager,
    capsys: pytest.CaptureFixture[str],
) -> None:
    targets = [smtp_server.apprise_url(), json_server.apprise_url("/hook"), alertmanager.target]
    rules = rule_file(tmp_path, targets)

    assert main(["alerts", "test", "ops", "--rules", str(rules)]) == 0

    assert capsys.readouterr().out.splitlines() == [f"ok: {masked_target(target)}" for target in targets]
    [mail] = smtp_server.wait_for_messages(1)
    assert mail["Subject"] == "[TEST] dramatiq-opmetrics-test (info) notifier=ops"
    assert 'the notifier "ops"' in message_text(mail)
    assert "Dashboard: http://127.0.0.1:8070" in message_text(mail)
    [(_, body)] = json_server.wait_for_bodies(1)
    assert body["type"] == "info"
    [alert] = alertmanager.wait_for_alerts(lambda alerts: len(alerts) == 1, "the test alert")
    assert alert["labels"] == {"alertname": "dramatiq-opmetrics-test", "severity": "info", "notifier": "ops"}
    assert len(json_server.bodies) == 1  # the other notifier's target was not sent to


def test_a_target_that_is_down_is_one_failed_line_with_its_reason_and_the_exit_status_is_1(
    tmp_path: Path, json_server: JsonHttpServer
) -> None:
    down = f"alertmanager+http://admin:s3cret-pw@127.0.0.1:{free_port()}"
    rules = rule_file(tmp_path, [down, json_server.apprise_url()])

    done = run_command(
        [str(BIN / "dramatiq-opmetrics"), "alerts", "test", "ops", "--rules", str(rules), "--timeout", "2"]
    )

    assert done.returncode == 1, done.stderr
    failed, ok = done.stdout.splitlines()
    assert failed.startswith("failed: alertmanager+http://admin:***@127.0.0.1:")
    assert "Connection refused" in failed
    assert ok == f"ok: {json_server.apprise_url()}"
    assert "s3cret-pw" not in done.stdout + done.stderr
    assert len(json_server.wait_for_bodies(1)) == 1


def test_an_unknown_notifier_is_one_error_line_naming_the_known_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = rule_file(tmp_path, ["json://127.0.0.1:1/hook"])

    assert main(["alerts", "test", "pager", "--rules", str(rules)]) == 2

    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f'dramatiq-opmetrics: error: {rules}: there is no notifier "pager" (the file has: "ops", "other")\n'
    )


def test_a_bad_rule_file_is_reported_as_by_alerts_check_and_nothing_is_sent(
    tmp_path: Path, json_server: JsonHttpServer, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = rule_file(tmp_path, [json_server.apprise_url(), "foo://nowhere"])

    assert main(["alerts", "test", "ops", "--rules", str(rules)]) == 2

    assert '"foo://..."' in capsys.readouterr().err
    assert json_server.bodies == []


@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "3601", "soon"])
def test_a_timeout_out_of_range_is_one_error_line(
    timeout: str, tmp_path: Path, json_server: JsonHttpServer, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = rule_file(tmp_path, [json_server.apprise_url()])

    assert main(["alerts", "test", "ops", "--rules", str(rules), "--timeout", timeout]) == 2

    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("dramatiq-opmetrics: error: argument --timeout: ")
    assert json_server.bodies == []
