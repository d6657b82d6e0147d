"""The tables, as SQLAlchemy 2.0 typed declarative models.

``operational_metrics`` holds raw samples for the retention period (30 days by default). To keep it small
(a fleet writes millions of rows a day) a raw row stores only a reference to its labels: each distinct
label set is stored once in ``opmetrics_label_sets``. On PostgreSQL the raw table is partitioned by day on
``recorded_at``; the migrations create it (the partitioned DDL is not expressible in these models).

``operational_metrics_daily`` holds the permanent daily aggregates, one row per
(metric_type, date, labels_key), self-contained: it copies the labels so it outlives the raw rows.
``operational_metrics_monthly`` holds the same merged per calendar month (and per third of it, and from each
of its days to its end), kept by the rollup, so that a year is read as 12 rows per label set, whichever day
it starts on (:mod:`~dramatiq_opmetrics.rollup`, :mod:`~dramatiq_opmetrics.query`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Date,
    Dialect,
    Enum,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    Sequence,
    SmallInteger,
    Text,
    TypeDecorator,
)
from sqlalchemy import DateTime as SADateTime
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.ext.associationproxy import AssociationProxy, association_proxy
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from .metric_types import METRIC_TYPE_ENUM_NAME, MetricType

#: Raw samples table.
RAW_TABLE = "operational_metrics"
#: Daily aggregates table.
DAILY_TABLE = "operational_metrics_daily"
#: Monthly aggregates table (the daily rows of a calendar month merged).
MONTHLY_TABLE = "operational_metrics_monthly"
#: Distinct label sets table.
LABEL_SETS_TABLE = "opmetrics_label_sets"
#: The sequence that numbers raw samples.
RAW_ID_SEQUENCE = "operational_metrics_id_seq"
#: Fleet-wide claims of periodic jobs (one row per job and interval).
INTERVAL_CLAIMS_TABLE = "opmetrics_interval_claims"
#: The recent tier: per-minute and per-10-minute aggregates of raw rows (:mod:`~dramatiq_opmetrics.recent_tier`).
RECENT_TABLE = "opmetrics_recent_aggregates"
#: The recent tier's fold watermark (one row).
RECENT_STATE_TABLE = "opmetrics_recent_state"
#: The recent tier's day rows: its 10-minute buckets merged per UTC day (:mod:`~dramatiq_opmetrics.recent_tier`).
RECENT_DAYS_TABLE = "opmetrics_recent_days"
#: The recent tier's hour rows: its 10-minute buckets merged per UTC hour (:mod:`~dramatiq_opmetrics.recent_tier`).
RECENT_HOURS_TABLE = "opmetrics_recent_hours"


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware UTC timestamp on every backend.

    PostgreSQL stores ``timestamptz``. SQLite has no time zones: values are stored as naive UTC text (which
    sorts in time order) and come back as aware UTC datetimes.
    """

    impl = SADateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


#: JSON on every backend, JSONB on PostgreSQL.
JSONType = JSON().with_variant(JSONB(), "postgresql")

#: The metric type column type: a native enum on PostgreSQL, text elsewhere.
MetricTypeColumn = Enum(
    MetricType,
    name=METRIC_TYPE_ENUM_NAME,
    values_callable=lambda members: [member.value for member in members],
    validate_strings=True,
)


class Base(DeclarativeBase):
    """Declarative base of dramatiq-opmetrics' own tables (kept apart from the application's metadata)."""

    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class LabelSet(Base):
    """One distinct set of labels, stored once and referenced by raw samples."""

    __tablename__ = LABEL_SETS_TABLE

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    labels_key: Mapped[str] = mapped_column(Text, unique=True)
    labels: Mapped[dict[str, str]] = mapped_column(JSONType)


class OperationalMetric(Base):
    """A raw sample: one measured ``value`` of ``metric_type`` with its labels, at ``recorded_at`` (UTC).

    ``labels`` and ``labels_key`` are read through the referenced :class:`LabelSet`.
    """

    __tablename__ = RAW_TABLE

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), Sequence(RAW_ID_SEQUENCE), primary_key=True
    )
    metric_type: Mapped[MetricType] = mapped_column(MetricTypeColumn)
    value: Mapped[float] = mapped_column(Float)
    label_set_id: Mapped[int] = mapped_column(Integer)
    recorded_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)

    label_set: Mapped[LabelSet] = relationship(
        LabelSet, primaryjoin="foreign(OperationalMetric.label_set_id) == LabelSet.id", viewonly=True
    )
    labels_key: AssociationProxy[str] = association_proxy("label_set", "labels_key")
    labels: AssociationProxy[dict[str, str]] = association_proxy("label_set", "labels")


class OperationalMetricDaily(Base):
    """Permanent aggregate of one day (UTC) of one metric type and label set.

    ``histogram`` is a mergeable log-bucket histogram (DDSketch mapping, 1% relative accuracy) so that
    percentiles over any range of days can be computed from daily rows alone. ``histogram_packed`` is the
    same histogram packed (:mod:`~dramatiq_opmetrics.packed_histograms`), which range reads merge without
    parsing JSON; None on rows rolled up before migration 0007 until the rollup packs them.
    """

    __tablename__ = DAILY_TABLE

    metric_type: Mapped[MetricType] = mapped_column(MetricTypeColumn, primary_key=True)
    date: Mapped[dt.date] = mapped_column(primary_key=True)
    labels_key: Mapped[str] = mapped_column(Text, primary_key=True)
    labels: Mapped[dict[str, str]] = mapped_column(JSONType)
    sample_count: Mapped[int] = mapped_column(BigInteger)
    sum: Mapped[float] = mapped_column(Float)
    min: Mapped[float] = mapped_column(Float)
    max: Mapped[float] = mapped_column(Float)
    avg: Mapped[float] = mapped_column(Float)
    p50: Mapped[float | None] = mapped_column(Float)
    p95: Mapped[float | None] = mapped_column(Float)
    p99: Mapped[float | None] = mapped_column(Float)
    histogram: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    rolled_up_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    histogram_packed: Mapped[bytes | None] = mapped_column(LargeBinary)


#: A list of floats: ``double precision[]`` on PostgreSQL, a JSON list elsewhere.
FloatListType = JSON().with_variant(ARRAY(Float), "postgresql")


class OperationalMetricMonthly(Base):
    """The daily rows of one calendar month (UTC), or of a part of it, of one metric type and label set,
    merged.

    ``month`` is the first day of the month; ``part`` is 0 for the whole month, 1, 2 and 3 for its days 1 to
    10, 11 to 20 and 21 to its end, and ``SUFFIX_PART_BASE + d``
    (:data:`~dramatiq_opmetrics.rollup.SUFFIX_PART_BASE`, 100) for its days ``d`` to its end, a "suffix",
    for every ``d`` from 2 to its last day but 21 (days 21 to the end are part 3). A range starting on day
    ``d`` of a month reads that month as its one suffix row, then one row per month; the thirds serve a
    range that ends mid-month. The suffixes cost about one row per day of the month: the table holds about
    as many rows as the daily table (some 33 per month, metric type and label set, instead of 4), and about
    half its bytes (a monthly row carries no JSON histogram).

    ``sample_count``, ``min`` and ``max`` are those of the daily rows together; ``sum`` is the sum of their
    sums correctly rounded and ``sum_parts`` that sum exactly, as floats whose exact sum it is (so that sums
    over months and days add up exactly as the daily sums do).
    ``histogram_packed`` is the merged histogram (:mod:`~dramatiq_opmetrics.packed_histograms`; None if a
    daily row has none); ``p50``/``p95``/``p99`` are the period's percentiles read from it (within 1%; the
    day's exact ones when the period has one daily row). ``daily_rows`` counts the daily rows merged and
    ``source_rolled_up_at`` is their latest ``rolled_up_at`` (the rollup sees from these when the daily
    rows changed). ``first_day`` and ``last_day`` are the first and last day of the period that has daily
    rows of any metric type and label set, the same in every row of the period: a range read uses the
    period's rows when both lie in the range.
    """

    __tablename__ = MONTHLY_TABLE

    metric_type: Mapped[MetricType] = mapped_column(MetricTypeColumn, primary_key=True)
    month: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    part: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    labels_key: Mapped[str] = mapped_column(Text, primary_key=True)
    labels: Mapped[dict[str, str]] = mapped_column(JSONType)
    sample_count: Mapped[int] = mapped_column(BigInteger)
    sum: Mapped[float] = mapped_column(Float)
    sum_parts: Mapped[list[float]] = mapped_column(FloatListType)
    min: Mapped[float] = mapped_column(Float)
    max: Mapped[float] = mapped_column(Float)
    p50: Mapped[float | None] = mapped_column(Float)
    p95: Mapped[float | None] = mapped_column(Float)
    p99: Mapped[float | None] = mapped_column(Float)
    histogram_packed: Mapped[bytes | None] = mapped_column(LargeBinary)
    daily_rows: Mapped[int] = mapped_column(Integer)
    first_day: Mapped[dt.date] = mapped_column(Date)
    last_day: Mapped[dt.date] = mapped_column(Date)
    source_rolled_up_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    merged_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class IntervalClaim(Base):
    """One claimed run of a periodic fleet-wide job: the process that inserted the row does the job."""

    __tablename__ = INTERVAL_CLAIMS_TABLE

    job: Mapped[str] = mapped_column(Text, primary_key=True)
    interval_start: Mapped[dt.datetime] = mapped_column(UTCDateTime, primary_key=True)
    claimed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


#: A multiset of histogram bucket keys: ``integer[]`` on PostgreSQL, a JSON list elsewhere.
KeysType = JSON().with_variant(ARRAY(Integer), "postgresql")


class _TierRow:
    """The columns the recent tier's buckets, day rows and hour rows share, after their bucket or period."""

    metric_type: Mapped[MetricType] = mapped_column(MetricTypeColumn, primary_key=True)
    label_set_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)
    sum: Mapped[float] = mapped_column(Float)
    min: Mapped[float] = mapped_column(Float)
    max: Mapped[float] = mapped_column(Float)


class RecentAggregate(_TierRow, Base):
    """The raw rows of one metric type and label set recorded in one bucket of ``width_minutes`` minutes.

    ``keys`` holds one histogram bucket key per value (:mod:`~dramatiq_opmetrics.recent_tier`), so that
    folding more rows in appends to it and percentiles within 1% are read from it; ``p50``/``p95``/``p99``
    hold them, written with the bucket (and recomputed when late rows are folded in). On SQLite
    ``metric_type`` is plain text (this table is only written from the raw table, which checks it).
    """

    __tablename__ = RECENT_TABLE

    # First, as in the table.
    width_minutes: Mapped[int] = mapped_column(SmallInteger, primary_key=True, sort_order=-2)
    bucket_start: Mapped[dt.datetime] = mapped_column(UTCDateTime, primary_key=True, sort_order=-1)
    keys: Mapped[list[int | None]] = mapped_column(KeysType)
    p50: Mapped[float | None] = mapped_column(Float)
    p95: Mapped[float | None] = mapped_column(Float)
    p99: Mapped[float | None] = mapped_column(Float)


class RecentState(Base):
    """The recent tier's watermark: raw rows with ``id <= folded_id`` and ``floor <= recorded_at < cutoff``
    are folded into its 1-minute buckets; its 10-minute and hourly buckets are built up to ``built_10m_until``
    and ``built_60m_until``, its day rows (:class:`RecentDay`) up to ``built_days_until`` (None: not started,
    they hold nothing); ``skipped_id`` is the smallest id up to ``folded_id`` of a raw row recorded from the
    cutoff on, if any (such rows are folded by a later fold).

    ``candidate_id`` and ``candidate_holders`` (PostgreSQL): a larger id seen while writers were still in
    their transactions, and those transactions; it becomes the horizon once they have all ended.
    """

    __tablename__ = RECENT_STATE_TABLE

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    folded_id: Mapped[int] = mapped_column(BigInteger)
    floor: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    candidate_id: Mapped[int | None] = mapped_column(BigInteger)
    candidate_holders: Mapped[list[str] | None] = mapped_column(JSON)
    folded_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    cutoff: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    built_10m_until: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    built_60m_until: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    skipped_id: Mapped[int | None] = mapped_column(BigInteger)
    built_days_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class _RecentPeriod(_TierRow):
    """The columns of a row of :class:`RecentDay` and :class:`RecentHour` after their period."""

    histogram_packed: Mapped[bytes] = mapped_column(LargeBinary)


class RecentDay(_RecentPeriod, Base):
    """The raw rows of one metric type and label set recorded on one UTC ``day``, as far as the recent tier's
    day rows hold them: those its 10-minute buckets of the day starting before ``built_days_until`` hold
    (:class:`RecentState`), i.e. the raw rows with ``id <= folded_id`` recorded in ``[day, min(day + 1 day,
    built_days_until))``. Only days starting at or after the tier's ``floor`` have rows.

    ``count``, ``sum``, ``min`` and ``max`` are of their values; ``histogram_packed`` is their histogram,
    packed (:mod:`~dramatiq_opmetrics.packed_histograms`), as a daily row's. The fold merges each 10-minute
    bucket into its day row once, when the bucket is built, and late rows of buckets already merged directly;
    range reads of a day not rolled up read these rows plus the raw rows they do not hold
    (:func:`~dramatiq_opmetrics.recent_tier.day_aggregates`). On SQLite ``metric_type`` is plain text.
    """

    __tablename__ = RECENT_DAYS_TABLE

    day: Mapped[dt.date] = mapped_column(Date, primary_key=True, sort_order=-1)  # first, as in the table


class RecentHour(_RecentPeriod, Base):
    """The same as :class:`RecentDay` for one UTC ``hour`` (its start): the raw rows with ``id <= folded_id``
    recorded in ``[hour, min(hour + 1 hour, built_days_until))``, from the first day with day rows on
    (migration 0013). Merged by the fold with the day rows, in the same transactions; read for the
    percentiles of totals over windows of hours (:func:`~dramatiq_opmetrics.series.query_totals`), a few
    hundred bytes a row where the tier's hourly buckets hold the key of every value.
    """

    __tablename__ = RECENT_HOURS_TABLE

    hour: Mapped[dt.datetime] = mapped_column(UTCDateTime, primary_key=True, sort_order=-1)


#: Alert state per rule and group (:mod:`~dramatiq_opmetrics.alert_evaluator`).
ALERT_STATES_TABLE = "opmetrics_alert_states"
#: The history of alert state changes.
ALERT_TRANSITIONS_TABLE = "opmetrics_alert_transitions"
#: Silences of alert rules.
ALERT_SILENCES_TABLE = "opmetrics_alert_silences"
#: The outbox of alert notifications (one row per notification and target).
ALERT_DELIVERIES_TABLE = "opmetrics_alert_deliveries"


class AlertState(Base):
    """The state of one alert: a rule and a group of labels (its ``group_by`` values; ``{}`` ungrouped).

    ``state`` is ``ok``, ``pending`` (the condition holds, not yet for the rule's ``for``) or ``firing``,
    since ``since``; ``value`` is the last value computed (None: no data) at ``evaluated_at``.
    ``notified_state`` is what the notifiers were last told (``firing``, ``ok`` after a resolved
    notification, None: nothing yet) at ``last_notified_at``, so that any evaluator sends only what they have
    not heard (a silence defers it).
    """

    __tablename__ = ALERT_STATES_TABLE

    rule: Mapped[str] = mapped_column(Text, primary_key=True)
    group_key: Mapped[str] = mapped_column(Text, primary_key=True)
    group_labels: Mapped[dict[str, str]] = mapped_column(JSONType)
    state: Mapped[str] = mapped_column(Text)
    since: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    value: Mapped[float | None] = mapped_column(Float)
    evaluated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    notified_state: Mapped[str | None] = mapped_column(Text)
    last_notified_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class AlertTransition(Base):
    """One change of an alert's state, at ``at``, with the value that caused it."""

    __tablename__ = ALERT_TRANSITIONS_TABLE

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rule: Mapped[str] = mapped_column(Text)
    group_key: Mapped[str] = mapped_column(Text)
    from_state: Mapped[str] = mapped_column(Text)
    to_state: Mapped[str] = mapped_column(Text)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    value: Mapped[float | None] = mapped_column(Float)


class AlertSilence(Base):
    """Notifications of ``rule`` are held back until ``until`` (the alert's state still changes)."""

    __tablename__ = ALERT_SILENCES_TABLE

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rule: Mapped[str] = mapped_column(Text)
    until: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class AlertDelivery(Base):
    """One notification to one target, kept until delivered (the outbox).

    ``notification`` is the :class:`~dramatiq_opmetrics.notifiers.Notification` as JSON; ``alert_key`` its
    key. ``next_attempt_at`` is when the next attempt is due (None: given up); ``delivered_at`` when the
    target accepted it; ``last_error`` the latest failure.
    """

    __tablename__ = ALERT_DELIVERIES_TABLE

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alert_key: Mapped[str] = mapped_column(Text)
    target: Mapped[str] = mapped_column(Text)
    notification: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
