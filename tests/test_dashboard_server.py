"""Serving the dashboard: loopback by default; another interface only when asked, and only with authentication."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from command_line import run_command, url_text
from sqlalchemy import Engine
from sqlalchemy.engine import URL
from tcp_proxy import free_port

from dramatiq_opmetrics.cli import main
from dramatiq_opmetrics.config import ConfigurationError
from dramatiq_opmetrics.dashboard import DashboardApp
from dramatiq_opmetrics.dashboard.data import DashboardData
from dramatiq_opmetrics.dashboard.server import check_binding, is_loopback
from dramatiq_opmetrics.migrate import upgrade


def app_on(engine: Engine, **auth: object) -> DashboardApp:
    return DashboardApp(DashboardData(engine), **auth)  # type: ignore[arg-type]


def test_loopback_addresses_and_names_are_recognised() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("[::1]") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("::")
    assert not is_loopback("192.0.2.10")


def test_another_interface_needs_the_explicit_flag(engine: Engine) -> None:
    with pytest.raises(ConfigurationError, match="--allow-remote"):
        check_binding(app_on(engine, bearer_token="t"), "0.0.0.0", allow_remote=False)


def test_another_interface_needs_authentication(engine: Engine) -> None:
    with pytest.raises(ConfigurationError, match="without authentication"):
        check_binding(app_on(engine), "0.0.0.0", allow_remote=True)
    check_binding(app_on(engine, bearer_token="t"), "0.0.0.0", allow_remote=True)
    check_binding(app_on(engine, basic_auth=("u", "p")), "0.0.0.0", allow_remote=True)
    check_binding(app_on(engine), "127.0.0.1", allow_remote=False)


def test_the_command_refuses_a_public_interface_in_one_line(
    sqlite_url: URL, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("OPMETRICS_DASHBOARD_TOKEN", raising=False)
    assert main(["dashboard", "--database-url", url_text(sqlite_url), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--allow-remote" in err
    assert main(["dashboard", "--database-url", url_text(sqlite_url), "--host", "0.0.0.0", "--allow-remote"]) == 2
    assert "without authentication" in capsys.readouterr().err


def test_the_base_package_imports_and_says_how_to_get_the_dashboard_without_web_dependencies(
    sqlite_url: URL,
) -> None:
    code = (
        "import sys\n"
        "for name in ('jinja2', 'werkzeug', 'waitress'): sys.modules[name] = None\n"
        "import dramatiq_opmetrics, dramatiq_opmetrics.cli, dramatiq_opmetrics.query\n"
        "assert not any(name.startswith('dramatiq_opmetrics.dashboard') for name in sys.modules)\n"
        f"sys.exit(dramatiq_opmetrics.cli.main(['dashboard', '--database-url', {url_text(sqlite_url)!r}]))\n"
    )
    result = run_command([sys.executable, "-c", code])
    assert result.returncode == 2, result.stderr
    assert "pip install 'dramatiq-opmetrics[dashboard]'" in result.stderr
    assert result.stderr.count("\n") == 1


@pytest.mark.slow
def test_the_command_serves_the_dashboard_on_loopback(sqlite_url: URL, tmp_path: Path) -> None:
    migrated_url = sqlite_url
    upgrade(migrated_url)
    command = [sys.executable, "-m", "dramatiq_opmetrics.cli", "dashboard", "--port", str(free_port())]
    env = {**os.environ, "OPMETRICS_DATABASE_URL": url_text(migrated_url)}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("dramatiq-opmetrics dashboard on http://127.0.0.1:"), line
        address = line.split()[3]
        with urllib.request.urlopen(address + "?days=7", timeout=30) as response:
            assert response.status == 200
            assert b"Overview" in response.read()
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_keeping_warm_prepares_every_ranges_overview_until_stopped(engine: Engine) -> None:
    import datetime as dt
    import threading

    from fleet_history import make_actors, populate

    from dramatiq_opmetrics.dashboard import keep_warm

    populate(engine, days=10, actors=make_actors(3), raw_samples_per_actor=5)
    app = app_on(engine)
    stop = threading.Event()
    thread = threading.Thread(target=keep_warm, args=(app, stop, 0.05), daemon=True)
    thread.start()
    deadline = dt.datetime.now() + dt.timedelta(seconds=60)

    def overview_ranges() -> set[int]:
        return {key[1].days for key in list(app.data.kept._entries) if key[0] == "overview"}

    while overview_ranges() != {7, 30, 90, 365} and dt.datetime.now() < deadline:
        stop.wait(0.05)
    stop.set()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert overview_ranges() == {7, 30, 90, 365}
