"""The examples run against the real services, so they cannot rot."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from command_line import BIN, run_command, url_text
from sqlalchemy import create_engine, func, inspect, select, text
from sqlalchemy.engine import URL
from waiting import wait_until

from dramatiq_opmetrics.database import make_engine
from dramatiq_opmetrics.demo import run_demo
from dramatiq_opmetrics.migrate import VERSION_TABLE, alembic_config, current_revision, upgrade
from dramatiq_opmetrics.models import LabelSet, OperationalMetric
from examples import collector_in_transaction
from examples.own_alembic.migrate_all import migrate_all
from tests.conftest import REDIS_URL


def test_collector_example_commits_the_invoice_and_its_metrics_together(
    database_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    collector_in_transaction.main(url_text(database_url))
    engine = create_engine(database_url)
    with engine.connect() as connection:
        invoices = connection.execute(text("SELECT customer FROM example_invoices")).scalars().all()
        metric_types = connection.execute(select(OperationalMetric.metric_type)).scalars().all()
    engine.dispose()
    assert invoices == ["ACME Corp"]
    # One billing committed: prompt and completion tokens, confidence and processing time; the failed one
    # recorded tokens and confidence too, and they were rolled back with it.
    assert sorted(metric_types) == ["completion_tokens", "confidence", "processing_time", "prompt_tokens"]
    assert "neither an invoice nor metric rows" in capsys.readouterr().out


def test_own_alembic_example_migrates_the_application_and_opmetrics_side_by_side(database_url: URL) -> None:
    migrate_all(url_text(database_url))
    engine = create_engine(database_url)
    with engine.connect() as connection:
        tables = set(inspect(connection).get_table_names())
        app_version = connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
        rows = connection.execute(select(func.count()).select_from(OperationalMetric)).scalar_one()
    engine.dispose()
    assert {"example_invoices", "operational_metrics", "operational_metrics_daily", VERSION_TABLE} <= tables
    assert app_version == "a1"
    assert rows == 0
    head = ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()
    assert current_revision(database_url) == head


# examples/app.py: the fleet, run with the real `dramatiq` and `periodiq` commands on Redis and PostgreSQL.

REPO = Path(__file__).resolve().parent.parent


def stop(process: subprocess.Popen[str]) -> str:
    """SIGTERM ``process`` (as a user's Ctrl-C or a deployment would) and return what it logged."""
    process.send_signal(signal.SIGTERM)
    try:
        _, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
    return err


@pytest.fixture
def fleet_environment(postgres_url: URL, redis_namespace: str) -> dict[str, str]:
    """The example's environment: a migrated PostgreSQL schema and a Redis namespace of its own."""
    upgrade(postgres_url)
    return {
        **os.environ,
        "OPMETRICS_DATABASE_URL": url_text(postgres_url),
        "OPMETRICS_FLUSH_INTERVAL_S": "0.2",
        "EXAMPLE_REDIS_URL": REDIS_URL,
        "EXAMPLE_REDIS_NAMESPACE": redis_namespace,
        "TZ": "UTC",
    }


def processing_attempts(url: URL) -> dict[str, int]:
    engine = make_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(
            select(LabelSet.labels, func.count())
            .join(OperationalMetric, OperationalMetric.label_set_id == LabelSet.id)
            .where(OperationalMetric.metric_type == "processing_time")
            .group_by(LabelSet.labels)
        ).all()
    engine.dispose()
    return {labels["actor"]: count for labels, count in rows}


@pytest.mark.slow
@pytest.mark.postgres
def test_the_example_fleet_runs_with_the_dramatiq_command_and_reports(
    fleet_environment: dict[str, str], postgres_url: URL
) -> None:
    workers = subprocess.Popen(
        [str(BIN / "dramatiq"), "examples.app", "--processes", "2", "--threads", "2"],
        cwd=REPO,
        env=fleet_environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        sent = run_command([sys.executable, "-m", "examples.app", "20"], cwd=REPO, env=fleet_environment)
        assert sent.returncode == 0, sent.stderr
        assert "sent 20 documents and 20 tickets" in sent.stdout
        # Tickets 0 and 10 fail, are retried once and dead-lettered: 22 attempts.
        expected = {"summarise_document": 20, "classify_ticket": 22}
        wait_until(
            lambda: processing_attempts(postgres_url) == expected, 60, f"{expected} processing times", poll_s=0.2
        )
    finally:
        log = stop(workers)
    assert workers.returncode == 0, log

    report = run_command(
        [str(BIN / "dramatiq-opmetrics"), "report", "--days", "1", "--json"], cwd=REPO, env=fleet_environment
    )
    assert report.returncode == 0, report.stderr
    metrics = json.loads(report.stdout)["metrics"]
    processing = {row["labels"]["actor"]: row for row in metrics["processing_time"]["rows"]}
    assert processing["classify_ticket"]["count"] == 22
    assert processing["classify_ticket"]["error_rate"] == pytest.approx(4 / 22)
    assert processing["summarise_document"]["error_rate"] == 0
    errors = {row["labels"]["outcome"]: row["count"] for row in metrics["error"]["rows"]}
    assert errors == {"retried": 2, "final": 2}
    calls = {row["labels"]["model"]: row["count"] for row in metrics["prompt_tokens"]["rows"]}
    assert calls == {"gpt-4o-mini": 20, "claude-3-5-haiku": 22}
    assert sum(row["count"] for row in metrics["confidence"]["rows"]) == 20 + 18

    text = run_command([str(BIN / "dramatiq-opmetrics"), "report", "--days", "1"], cwd=REPO, env=fleet_environment)
    assert text.returncode == 0, text.stderr
    assert "classify_ticket" in text.stdout and "token usage" in text.stdout


@pytest.mark.slow
def test_the_example_schedules_the_rollup_with_the_periodiq_command(
    fleet_environment: dict[str, str], tmp_path: Path
) -> None:
    log_path = tmp_path / "periodiq.log"
    with log_path.open("w") as log_file:
        scheduler = subprocess.Popen(
            [str(BIN / "periodiq"), "examples.app", "-v"],
            cwd=REPO,
            env=fleet_environment,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            # periodiq logs its schedule once it has imported the app, then sleeps until the next minute.
            wait_until(
                lambda: "opmetrics_rollup@opmetrics_rollup" in log_path.read_text(),
                60,
                "periodiq's schedule",
                poll_s=0.2,
            )
            assert scheduler.poll() is None, "periodiq exited early"
        finally:
            stop(scheduler)
    log = log_path.read_text()
    assert "30 1 * * *" in log and "opmetrics_rollup@opmetrics_rollup" in log


# The README's SQL, on a PostgreSQL schema the demo populated.


def readme_sql_statements() -> list[str]:
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```sql\n(.*?)```", text, flags=re.S)
    statements = []
    for block in blocks:
        code = "\n".join(line for line in block.splitlines() if not line.lstrip().startswith("--"))
        statements += [statement.strip() for statement in code.split(";") if statement.strip()]
    return statements


@pytest.mark.postgres
def test_every_sql_query_of_the_readme_runs_on_postgresql(postgres_url: URL) -> None:
    assert run_demo(postgres_url, history_days=2, live_messages=20, out=lambda line: None) == 0
    statements = readme_sql_statements()
    assert len(statements) >= 7
    engine = make_engine(postgres_url)
    with engine.connect() as connection:
        for statement in statements:
            rows = connection.execute(text(statement)).all()
            assert rows, statement
    engine.dispose()
