"""``dramatiq-opmetrics demo``: see metrics recorded and stored, with nothing installed.

It migrates an embedded SQLite file (or the database given), records a few samples with
:class:`~dramatiq_opmetrics.MetricsCollector` in one transaction, and prints what was stored.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from .collector import MetricsCollector
from .config import redact_url, resolve_database_url
from .database import make_engine
from .migrate import upgrade
from .models import OperationalMetric

#: The SQLite file the demo uses when no database is given.
DEFAULT_DEMO_DATABASE = Path("opmetrics-demo.sqlite3")


def run_demo(database_url: str | None = None) -> int:
    """Run the demo and print the samples it stored; return the exit status."""
    url = resolve_database_url(database_url or f"sqlite:///{DEFAULT_DEMO_DATABASE.resolve()}")
    print(f"Migrating {redact_url(url)} ...")
    upgrade(url)
    engine = make_engine(url)
    try:
        with Session(engine) as session, session.begin():
            collector = MetricsCollector(session)
            collector.record_processing_time("send_email", 182.5, queue="default")
            collector.record_processing_time("send_email", 97.0, queue="default")
            collector.record_error("send_email", "SMTPServerDisconnected", queue="default")
            collector.record_queue_depth("default", 42, state="ready")
            collector.record_token_usage("gpt-4o-mini", 812, 164, actor="summarise")
            collector.record_confidence(0.93, actor="classify")
        with Session(engine) as session:
            rows = session.scalars(
                select(OperationalMetric)
                .options(selectinload(OperationalMetric.label_set))
                .order_by(OperationalMetric.id.desc())
                .limit(7)
            ).all()
            print(f"{'id':>6}  {'metric_type':<18} {'value':>9}  labels_key")
            for row in reversed(rows):
                print(f"{row.id:>6}  {row.metric_type.value:<18} {row.value:>9g}  {row.labels_key}")
    finally:
        engine.dispose()
    print(f"\nThe samples are in {redact_url(url)} (table operational_metrics).")
    return 0
