"""The examples run against the real services, so they cannot rot."""

from __future__ import annotations

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, func, inspect, select, text
from sqlalchemy.engine import URL

from dramatiq_opmetrics.migrate import VERSION_TABLE, alembic_config, current_revision
from dramatiq_opmetrics.models import OperationalMetric
from examples import collector_in_transaction
from examples.own_alembic.migrate_all import migrate_all


def url_text(url: URL) -> str:
    return url.render_as_string(hide_password=False)


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
