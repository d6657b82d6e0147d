from __future__ import annotations

import pytest
from command_line import url_text
from sqlalchemy import Engine
from sqlalchemy.engine import URL

from dramatiq_opmetrics.cli import main
from dramatiq_opmetrics.migrate import current_revision


def test_migrate_upgrades_and_says_where(database_url: URL, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate", "--database-url", url_text(database_url)]) == 0
    assert current_revision(database_url) == "0014"
    assert "is at revision 0014" in capsys.readouterr().out


def test_migrate_downgrade_to_base(sqlite_url: URL) -> None:
    main(["migrate", "--database-url", url_text(sqlite_url)])
    assert main(["migrate", "--database-url", url_text(sqlite_url), "--downgrade", "--revision", "base"]) == 0
    assert current_revision(sqlite_url) is None


def test_migrate_reads_the_url_from_the_environment(sqlite_url: URL, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPMETRICS_DATABASE_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL", url_text(sqlite_url))
    assert main(["migrate"]) == 0
    assert current_revision(sqlite_url) == "0014"


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


def test_rollup_and_prune_report_what_they_did(sqlite_url: URL, capsys: pytest.CaptureFixture[str]) -> None:
    import datetime as dt

    from raw_samples import at, insert_samples

    from dramatiq_opmetrics.database import make_engine
    from dramatiq_opmetrics.metric_types import MetricType

    main(["migrate", "--database-url", url_text(sqlite_url)])
    engine = make_engine(sqlite_url)
    old_day = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=40)
    insert_samples(engine, [(MetricType.ERROR, {"actor": "a"}, 1.0, at(old_day, i)) for i in range(5)])
    engine.dispose()
    capsys.readouterr()
    url = ["--database-url", url_text(sqlite_url)]

    assert main(["prune", *url]) == 0
    assert capsys.readouterr().out == f"kept {old_day}: 5 raw rows (not rolled up)\n"
    assert main(["rollup", *url]) == 0
    assert capsys.readouterr().out.startswith(f"rolled up {old_day}: 5 rows, 1 label sets, 1 daily rows in ")
    assert main(["rollup", *url]) == 0
    assert capsys.readouterr().out == "nothing to roll up\n"
    assert main(["prune", "--dry-run", *url]) == 0
    assert capsys.readouterr().out == f"would remove {old_day}: 5 raw rows (deleted)\n"
    assert main(["prune", "--retention-days", "50", *url]) == 0
    assert capsys.readouterr().out.startswith("nothing to prune: no raw rows before ")
    assert main(["prune", *url]) == 0
    assert capsys.readouterr().out == f"removed {old_day}: 5 raw rows (deleted)\n"
    assert main(["rollup", "--date", old_day.isoformat(), *url]) == 0
    assert capsys.readouterr().out == f"{old_day} was not rolled up (no raw rows left)\n"


def test_rollup_and_prune_refuse_bad_arguments_in_one_line(sqlite_url: URL, capsys: pytest.CaptureFixture[str]) -> None:
    import datetime as dt

    main(["migrate", "--database-url", url_text(sqlite_url)])
    capsys.readouterr()
    today = dt.datetime.now(dt.UTC).date().isoformat()
    assert main(["rollup", "--date", today, "--database-url", url_text(sqlite_url)]) == 2
    assert "is not complete yet" in capsys.readouterr().err
    assert main(["prune", "--retention-days", "0", "--database-url", url_text(sqlite_url)]) == 2
    assert "argument --retention-days: expected 1 to 36,600 days, got 0" in capsys.readouterr().err
    assert main(["rollup", "--date", "yesterday"]) == 2
    assert "expected a date as YYYY-MM-DD" in capsys.readouterr().err


def test_fold_folds_the_rows_not_folded_yet_and_says_what_it_did(
    migrated_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    import datetime as dt
    import re

    from raw_samples import insert_samples

    from dramatiq_opmetrics.database import make_engine
    from dramatiq_opmetrics.metric_types import MetricType

    now = dt.datetime.now(dt.UTC)
    five_days_ago = now.replace(minute=0, second=0, microsecond=0) - dt.timedelta(days=5)
    labels = {"actor": "a", "queue": "q"}
    engine = make_engine(migrated_url)
    insert_samples(engine, [(MetricType.PROCESSING_TIME, labels, 1.0 + i, five_days_ago) for i in range(5)])
    # A minute that is over (the fold leaves the minute in progress for a later one).
    insert_samples(
        engine, [(MetricType.PROCESSING_TIME, labels, 1.0 + i, now - dt.timedelta(minutes=1)) for i in range(3)]
    )
    engine.dispose()
    url = ["--database-url", url_text(migrated_url)]

    def folded(*arguments: str) -> str:
        assert main(["fold", *arguments, *url]) == 0
        out = capsys.readouterr().out
        assert out.count("\n") == 1
        return re.sub(r"in \d+\.\d\d s", "in T s", out.strip())

    assert folded("--retention-days", "10") == "folded 8 raw rows into the recent tier (up to id 8) in T s"
    assert folded("--retention-days", "10") == "folded 0 raw rows into the recent tier (up to id 8) in T s"
    # The default retention (3 days) removes the 1-minute, 10-minute and hourly buckets of five days ago.
    assert folded() == (
        "folded 0 raw rows into the recent tier (up to id 8) in T s; removed 3 buckets older than 3 days"
    )


@pytest.mark.postgres
def test_fold_says_when_writers_in_their_transactions_hold_rows_back(
    postgres_engine: Engine, postgres_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    import datetime as dt
    import re

    from raw_samples import insert_samples

    from dramatiq_opmetrics.metric_types import MetricType
    from dramatiq_opmetrics.models import OperationalMetric

    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)  # a minute that is over
    insert_samples(postgres_engine, [(MetricType.ERROR, {"actor": "a"}, 1.0, now)])
    url = ["--database-url", url_text(postgres_url)]

    def fold_while_a_writer_is_in_its_transaction() -> str:
        with postgres_engine.connect() as writer:
            transaction = writer.begin()
            writer.execute(
                OperationalMetric.__table__.insert(),
                [{"metric_type": MetricType.ERROR, "label_set_id": 1, "value": 1.0, "recorded_at": now}],
            )
            insert_samples(postgres_engine, [(MetricType.ERROR, {"actor": "a"}, 1.0, now)])  # committed, id 3
            try:
                assert main(["fold", *url]) == 0
            finally:
                transaction.commit()
        return re.sub(r"in \d+\.\d\d s", "in T s", capsys.readouterr().out.strip())

    assert fold_while_a_writer_is_in_its_transaction() == (
        "the recent tier did not start yet: writers were still in their transactions; run it again"
    )
    assert main(["fold", *url]) == 0
    assert capsys.readouterr().out.startswith("folded 3 raw rows into the recent tier (up to id 3)")
    assert fold_while_a_writer_is_in_its_transaction() == (
        "folded 0 raw rows into the recent tier (up to id 3) in T s;"
        " rows up to id 5 wait for writers still in their transactions"
    )
