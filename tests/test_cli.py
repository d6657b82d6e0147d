from __future__ import annotations

import pytest
from sqlalchemy.engine import URL

from dramatiq_opmetrics.cli import main
from dramatiq_opmetrics.migrate import current_revision


def url_text(url: URL) -> str:
    return url.render_as_string(hide_password=False)


def test_migrate_upgrades_and_says_where(database_url: URL, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate", "--database-url", url_text(database_url)]) == 0
    assert current_revision(database_url) == "0002"
    assert "is at revision 0002" in capsys.readouterr().out


def test_migrate_downgrade_to_base(sqlite_url: URL) -> None:
    main(["migrate", "--database-url", url_text(sqlite_url)])
    assert main(["migrate", "--database-url", url_text(sqlite_url), "--downgrade", "--revision", "base"]) == 0
    assert current_revision(sqlite_url) is None


def test_migrate_reads_the_url_from_the_environment(sqlite_url: URL, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPMETRICS_DATABASE_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL", url_text(sqlite_url))
    assert main(["migrate"]) == 0
    assert current_revision(sqlite_url) == "0002"


def test_no_database_configured_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("OPMETRICS_DATABASE_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert main(["migrate"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "OPMETRICS_DATABASE_URL" in err


def test_unreachable_database_is_one_line_without_the_password(capsys: pytest.CaptureFixture[str]) -> None:
    url = "postgresql+psycopg://user:s3cret-pw@127.0.0.1:1/nowhere?connect_timeout=2"
    assert main(["migrate", "--database-url", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dramatiq-opmetrics: error: cannot reach the metrics database")
    assert err.count("\n") == 1
    assert "s3cret-pw" not in err
