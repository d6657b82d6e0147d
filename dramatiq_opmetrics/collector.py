"""``MetricsCollector``: metric rows inside the caller's own SQLAlchemy transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.orm import Session

from . import samples
from .label_sets import resolve_label_set_ids
from .models import LabelSet, OperationalMetric
from .writer import is_refusal


class MetricsCollector:
    """Records metric samples as rows of the caller's SQLAlchemy :class:`~sqlalchemy.orm.Session`.

    The collector never commits and never flushes the session: the rows are written when, and only if,
    the caller commits, so metrics and the work they describe succeed or fail together. The one statement
    it runs itself is the lookup (and first-time insert) of a label set, inside the caller's transaction
    and, on PostgreSQL, inside a SAVEPOINT of its own: should the database refuse it, the caller's
    transaction stays usable (SQLite keeps a transaction usable after a failed statement anyway, and its
    driver would commit at the release of a SAVEPOINT that opens a transaction, so none is used there).
    Use it where a metric belongs to a business transaction; inside actors, the buffered
    :func:`~dramatiq_opmetrics.record_token_usage` and the :class:`~dramatiq_opmetrics.OpMetrics`
    middleware are cheaper.

    Example::

        with Session(engine) as session, session.begin():
            session.add(invoice)
            MetricsCollector(session).record_processing_time("bill_customer", 182.5, queue="billing")

    Every method validates all its inputs first and raises :class:`ValueError` (adding nothing) for a
    negative, NaN, infinite or too large value (above :data:`~dramatiq_opmetrics.samples.MAX_SAMPLE_VALUE`),
    a non-integer token count, a confidence outside [0, 1], a naive ``recorded_at``, None or a non-string as
    ``actor``, ``model``, ``error_type`` or ``queue``, or bad labels (see
    :func:`~dramatiq_opmetrics.labels.make_label_set`), so nothing it adds can fail the caller's commit. A
    caller that catches the ValueError and commits keeps its own rows. ``recorded_at`` (timezone-aware,
    default now) serves backfills.

    Parameters:
      session(Session): the caller's session, bound to a database migrated with ``dramatiq-opmetrics
        migrate``.
    """

    def __init__(self, session: Session) -> None:
        self.session = session

    def record_queue_depth(self, queue: str, depth: int, *, recorded_at: datetime | None = None, **labels: str) -> None:
        """Record that ``queue`` held ``depth`` messages."""
        self.add_samples(samples.queue_depth(queue, depth, recorded_at=recorded_at, **labels))

    def record_processing_time(
        self,
        actor: str,
        duration_ms: float,
        *,
        queue: str | None = None,
        recorded_at: datetime | None = None,
        **labels: str,
    ) -> None:
        """Record that ``actor`` took ``duration_ms`` milliseconds to process one message."""
        self.add_samples(samples.processing_time(actor, duration_ms, queue=queue, recorded_at=recorded_at, **labels))

    def record_error(
        self,
        actor: str,
        error_type: str,
        *,
        queue: str | None = None,
        recorded_at: datetime | None = None,
        **labels: str,
    ) -> None:
        """Record one failure of ``actor`` with exception class name ``error_type``."""
        self.add_samples(samples.error(actor, error_type, queue=queue, recorded_at=recorded_at, **labels))

    def record_token_usage(
        self,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        *,
        actor: str | None = None,
        recorded_at: datetime | None = None,
        **labels: str,
    ) -> None:
        """Record the prompt and completion tokens of one call to language model ``model``."""
        self.add_samples(
            samples.token_usage(model, prompt_tokens, completion_tokens, actor=actor, recorded_at=recorded_at, **labels)
        )

    def record_confidence(self, value: float, *, recorded_at: datetime | None = None, **labels: str) -> None:
        """Record a confidence score ``value`` in [0, 1], labelled with its bucket (``bucket=0.9-1.0``)."""
        self.add_samples(samples.confidence(value, recorded_at=recorded_at, **labels))

    def add_samples(self, new_samples: Sequence[samples.Sample]) -> None:
        """Add already built :class:`~dramatiq_opmetrics.samples.Sample` objects to the session.

        Samples built by hand are checked like the builders' (:func:`~dramatiq_opmetrics.samples.check_sample`).

        Raises:
          ValueError: for a sample that is not valid, or label sets the database refuses (nothing is added).
        """
        values = [samples.check_sample(sample) for sample in new_samples]
        label_sets = [sample.label_set for sample in new_samples]
        connection = self.session.connection(bind_arguments={"mapper": LabelSet})
        try:
            if connection.dialect.name == "sqlite":
                ids = resolve_label_set_ids(connection, label_sets)
            else:
                with connection.begin_nested():
                    ids = resolve_label_set_ids(connection, label_sets)
        except Exception as error:
            if not is_refusal(error):
                raise
            detail = str(getattr(error, "orig", None) or error).strip().splitlines()
            raise ValueError(
                f"the metrics database refuses these labels: {detail[0] if detail else error!r}"
            ) from error
        self.session.add_all(
            OperationalMetric(
                metric_type=sample.metric_type,
                value=value,
                label_set_id=ids[sample.label_set.labels_key],
                recorded_at=samples.utc_timestamp(sample.recorded_at),
            )
            for sample, value in zip(new_samples, values, strict=True)
        )
