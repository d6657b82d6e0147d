"""Metric rows inside the application's own SQLAlchemy transaction, with ``MetricsCollector``.

The invoice and the metrics that describe its creation are committed together, or not at all: if billing
fails after the metrics were recorded, the rollback takes the metric rows with it, so the metrics never
count work that did not happen.

Run it (creates ``example.sqlite3`` in the current directory)::

    python -m examples.collector_in_transaction sqlite:///example.sqlite3
"""

from __future__ import annotations

import sys
import time

from sqlalchemy import Engine, Integer, String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from dramatiq_opmetrics import MetricsCollector
from dramatiq_opmetrics.demo import fake_language_model
from dramatiq_opmetrics.migrate import upgrade


class Base(DeclarativeBase):
    """The application's own models (its metadata stays apart from dramatiq-opmetrics' tables)."""


class Invoice(Base):
    """An invoice of the example application."""

    __tablename__ = "example_invoices"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer: Mapped[str] = mapped_column(String(100))
    amount_cents: Mapped[int] = mapped_column(Integer)
    summary: Mapped[str] = mapped_column(String(500))


class BillingError(Exception):
    """Billing failed; the invoice and its metrics are rolled back."""


def bill_customer(engine: Engine, customer: str, amount_cents: int) -> int:
    """Create an invoice with a summary written by the (fake) language model; return its id.

    Processing time, token usage and confidence are recorded in the same transaction as the invoice.
    """
    started = time.monotonic()
    with Session(engine) as session, session.begin():
        metrics = MetricsCollector(session)
        reply = fake_language_model(f"Summarise the charges of {customer} for {amount_cents} cents")
        metrics.record_token_usage(reply.model, reply.prompt_tokens, reply.completion_tokens, actor="bill_customer")
        metrics.record_confidence(reply.confidence, actor="bill_customer")
        if amount_cents <= 0:
            raise BillingError(f"cannot bill {amount_cents} cents")
        invoice = Invoice(customer=customer, amount_cents=amount_cents, summary=reply.text)
        session.add(invoice)
        session.flush()
        metrics.record_processing_time("bill_customer", (time.monotonic() - started) * 1000, queue="billing")
        return invoice.id


def main(database_url: str) -> None:
    """Migrate ``database_url``, create the example table, bill twice (once failing) and say what was stored."""
    upgrade(database_url)
    engine = create_engine(database_url)
    Base.metadata.create_all(engine)
    invoice_id = bill_customer(engine, "ACME Corp", 12_500)
    print(f"invoice {invoice_id} and its metrics were committed together")
    try:
        bill_customer(engine, "Broken Ltd", 0)
    except BillingError as error:
        print(f"billing failed ({error}): neither an invoice nor metric rows were written")
    engine.dispose()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "sqlite:///example.sqlite3")
