"""``dramatiq-opmetrics top``: what the fleet is doing right now, in the terminal, refreshed every few seconds.

::

    $ dramatiq-opmetrics top
    dramatiq-opmetrics top: 12:03:27 UTC, last 5m, every 5s (Ctrl-C quits)
    workers online: 3 processes, 12 threads, 5 busy (41.7%)

    actors (last 5m; p95 of processing and wait time in ms)
    actor               queue    msg/s   err%  p95 ms  wait p95
    send_welcome_email  emails    4.20   7.1%    45.2       120
    classify_ticket     llm       1.03   0.0%    15.0       3.1

    queues (latest samples; oldest s = age of the oldest ready message)
    queue   ready  oldest s  workers  stalled
    emails     12       3.2        2        -
    llm     1,204       620        0       4m

Per actor and queue, over the window (``--window``, the last 5 minutes by default): ``msg/s``, messages
finished per second (``processing_time`` samples, one per attempt), ``err%``, the share of those attempts
that raised, and the 95th percentile of processing time and of wait time (within 1%), from the recent tier
and the raw rows it does not hold yet (:func:`~dramatiq_opmetrics.series.query_totals`), so the numbers are
exact and current.

Per queue: ``ready``, the latest ``queue_depth`` sample of state ``ready`` in the window; ``oldest s``, the
latest ``oldest_message_age`` (not recorded on RabbitMQ); ``workers``, the worker processes online that
consume the queue: the ``worker_threads`` samples whose ``queues`` label names it, in the latest complete
queue depth interval (every process records one per interval, see
:mod:`~dramatiq_opmetrics.worker_sampler`; ``--queue-depth-interval`` must be the fleet's, 15 s by default;
an interval counts as complete :data:`SAMPLES_SETTLE_S` seconds after it started, when its samples are
written); ``stalled``, for how many of the last whole minutes in a row the queue had ready messages and
finished none (:func:`~dramatiq_opmetrics.series.query_stalled`), ``5m+`` when all of the window's. A
``-`` means no sample of that kind in the window. The "workers online" line counts every process of that
interval, their threads and how many were busy.

Tables fit the terminal's width (80 columns when the output is not a terminal), labels too long for it
end with an ellipsis. On a terminal the screen is redrawn in place (plain ANSI: cursor home, clear to the
end) and tables are cut to the terminal's height; elsewhere (a pipe, a file) each refresh is printed after
the previous one. ``--once`` prints once, every row and no escape sequence, and exits. Ctrl-C (SIGINT)
ends it with exit status 0.
A database error after the first refresh is shown under the last numbers and retried at the next refresh.

From Python: :func:`take_snapshot` then :func:`render`, or :func:`run_top`.
"""

from __future__ import annotations

import datetime as dt
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TextIO

from sqlalchemy import Connection, Engine, select
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError

from .database import connection_for, engine_for
from .interval_claims import interval_start
from .metric_types import MetricType
from .models import OperationalMetric
from .query import labels_of_ids
from .queue_depth import READY
from .queue_depth_sampler import DEFAULT_QUEUE_DEPTH_INTERVAL_S
from .recent_tier import bucket_floor
from .report import (
    NO_METRICS_YET,
    TEXT_WIDTH,
    database_has_metrics,
    existing_database_url,
    format_count,
    format_duration,
    format_number,
    format_percent,
    format_table,
)
from .series import SeriesPoint, StalledBucket, query_stalled, query_totals
from .worker_sampler import NO_QUEUES

#: Seconds between two refreshes.
DEFAULT_REFRESH_INTERVAL_S = 5.0
#: The shortest refresh interval accepted, in seconds.
MIN_REFRESH_INTERVAL_S = 1.0
#: The longest refresh interval accepted, in seconds.
MAX_REFRESH_INTERVAL_S = 3_600.0
#: The window the rates and percentiles are computed over.
DEFAULT_WINDOW = dt.timedelta(minutes=5)
#: The shortest window accepted (stalls are told per minute).
MIN_WINDOW = dt.timedelta(minutes=1)
#: The longest window accepted.
MAX_WINDOW = dt.timedelta(hours=24)
#: Seconds after a queue depth interval starts by which the samples taken at its start are written (each
#: worker process writes its buffer every second by default): an interval counts for "workers online" from
#: then on, and a minute counts for "stalled" once it ended this long ago.
SAMPLES_SETTLE_S = 3.0
#: The labels the actor table is grouped by.
ACTOR_GROUP = ("actor", "queue")

_MINUTE = dt.timedelta(minutes=1)
_LATEST_TYPES = (MetricType.QUEUE_DEPTH, MetricType.OLDEST_MESSAGE_AGE)
_WORKER_TYPES = (MetricType.WORKER_THREADS, MetricType.BUSY_THREADS)


@dataclass(frozen=True)
class ActorLine:
    """One actor and queue over the window.

    Parameters:
      actor, queue(str | None): the group (None: its samples have no such label).
      messages(int): attempts finished in the window (``processing_time`` samples).
      rate_per_s(float): ``messages`` per second of the window.
      error_rate(float | None): the share of those attempts that raised; None without attempts.
      p95_processing_ms, p95_wait_ms(float | None): the 95th percentiles (within 1%); None without samples.
    """

    actor: str | None
    queue: str | None
    messages: int
    rate_per_s: float
    error_rate: float | None
    p95_processing_ms: float | None
    p95_wait_ms: float | None


@dataclass(frozen=True)
class QueueLine:
    """One queue now.

    Parameters:
      queue(str): its name.
      ready(float | None): the latest ready count sampled in the window; None if none was.
      oldest_age_s(float | None): the latest oldest-message age sampled in the window, in seconds.
      workers_online(int | None): processes consuming it in the latest complete interval; None if no worker
        process recorded ``worker_threads`` in the window (worker sampling off).
      stalled_minutes(int): the last whole minutes in a row in which it was stalled; 0: not stalled.
    """

    queue: str
    ready: float | None
    oldest_age_s: float | None
    workers_online: int | None
    stalled_minutes: int


@dataclass(frozen=True)
class Snapshot:
    """The fleet at ``taken_at``: what :func:`render` shows.

    Parameters:
      taken_at(datetime): the end of the window (UTC).
      window(timedelta): its length.
      actors(Sequence[ActorLine]): busiest first.
      queues(Sequence[QueueLine]): by name.
      processes, threads, busy_threads(int | None): of the whole fleet in the latest complete interval;
        None if no worker process recorded ``worker_threads`` in the window.
      stall_minutes_checked(int): how many whole minutes were checked for stalls.
      database_has_metrics(bool): whether the database holds any sample at all.
    """

    taken_at: dt.datetime
    window: dt.timedelta
    actors: Sequence[ActorLine]
    queues: Sequence[QueueLine]
    processes: int | None
    threads: int | None
    busy_threads: int | None
    stall_minutes_checked: int
    database_has_metrics: bool = True


def take_snapshot(
    connectable: Engine | Connection,
    *,
    window: dt.timedelta = DEFAULT_WINDOW,
    queue_depth_interval_s: float = DEFAULT_QUEUE_DEPTH_INTERVAL_S,
    now: dt.datetime | None = None,
) -> Snapshot:
    """Read the fleet's numbers over ``[now - window, now)`` (see the module docstring).

    Parameters:
      connectable(Engine | Connection): the metrics database.
      window(timedelta): how far back the rates and percentiles look (default :data:`DEFAULT_WINDOW`).
      queue_depth_interval_s(float): the fleet's queue depth interval, in seconds (default 15).
      now(datetime | None): the end of the window (timezone-aware); default: now.

    Raises:
      ValueError: a window that is not positive, a naive ``now`` or an interval that is not positive.
    """
    if window <= dt.timedelta(0):
        raise ValueError(f"window must be a positive duration, got {window}")
    if not queue_depth_interval_s > 0:
        raise ValueError(f"queue_depth_interval_s must be a positive number of seconds, got {queue_depth_interval_s}")
    now = now or dt.datetime.now(dt.UTC)
    if now.utcoffset() is None:
        raise ValueError(f"now must be timezone-aware, got naive {now.isoformat()}")
    now = now.astimezone(dt.UTC)
    start = now - window
    settled = now - dt.timedelta(seconds=SAMPLES_SETTLE_S)
    latest_interval = interval_start(settled, queue_depth_interval_s)
    stall_end = bucket_floor(settled, 1)
    stall_minutes = max(1, -(-window // _MINUTE))
    with connection_for(connectable) as connection:
        processing = query_totals(connection, start, now, metric_type=MetricType.PROCESSING_TIME, group_by=ACTOR_GROUP)
        waits = query_totals(connection, start, now, metric_type=MetricType.WAIT_TIME, group_by=ACTOR_GROUP)
        samples = _samples(connection, min(start, latest_interval), now)
        stalled = query_stalled(connection, stall_end - stall_minutes * _MINUTE, stall_end, step=_MINUTE)
        has_metrics = bool(processing or waits or samples) or database_has_metrics(connection)
    actors = _actor_lines(processing, waits, window)
    in_window = [sample for sample in samples if start <= sample.recorded_at]
    # Without a worker_threads sample in the window, worker sampling is off: unknown, not 0.
    sampling = any(sample.metric_type is MetricType.WORKER_THREADS for sample in in_window)
    end = latest_interval + dt.timedelta(seconds=queue_depth_interval_s)
    current = [sample for sample in samples if latest_interval <= sample.recorded_at < end]
    online = [sample for sample in current if sample.metric_type is MetricType.WORKER_THREADS]
    busy = [sample for sample in current if sample.metric_type is MetricType.BUSY_THREADS]
    latest = _latest_by_queue(in_window)
    stalled_minutes = _stalled_minutes(stalled, stall_end)
    names = {line.queue for line in actors if line.queue is not None} | set(stalled_minutes)
    names |= {queue for (_, queue) in latest}
    names |= {queue for sample in in_window if sample.metric_type in _WORKER_TYPES for queue in _consumed(sample)}
    queues = [
        QueueLine(
            queue=name,
            ready=latest.get((MetricType.QUEUE_DEPTH, name)),
            oldest_age_s=latest.get((MetricType.OLDEST_MESSAGE_AGE, name)),
            workers_online=sum(1 for sample in online if name in _consumed(sample)) if sampling else None,
            stalled_minutes=stalled_minutes.get(name, 0),
        )
        for name in sorted(names)
    ]
    return Snapshot(
        taken_at=now,
        window=window,
        actors=actors,
        queues=queues,
        processes=len(online) if sampling else None,
        threads=round(sum(sample.value for sample in online)) if sampling else None,
        busy_threads=round(sum(sample.value for sample in busy)) if sampling else None,
        stall_minutes_checked=stall_minutes,
        database_has_metrics=has_metrics,
    )


@dataclass(frozen=True)
class _Sample:
    metric_type: MetricType
    labels: Mapping[str, str]
    value: float
    recorded_at: dt.datetime


def _samples(connection: Connection, low: dt.datetime, high: dt.datetime) -> list[_Sample]:
    """The raw samples of queue depth, oldest-message age and worker threads recorded in ``[low, high)``: a
    few per queue and process and interval (the latest value is a sample, not an aggregate)."""
    raw = OperationalMetric.__table__
    rows = connection.execute(
        select(raw.c.metric_type, raw.c.label_set_id, raw.c.value, raw.c.recorded_at).where(
            raw.c.recorded_at >= low,
            raw.c.recorded_at < high,
            raw.c.metric_type.in_([*_LATEST_TYPES, *_WORKER_TYPES]),
        )
    ).all()
    labels = labels_of_ids(connection, {row.label_set_id for row in rows}) if rows else {}
    return [
        _Sample(MetricType(row.metric_type), labels.get(row.label_set_id, {}), row.value, row.recorded_at)
        for row in rows
    ]


def _latest_by_queue(samples: Iterable[_Sample]) -> dict[tuple[MetricType, str], float]:
    """The latest ready count and oldest-message age of each queue."""
    newest: dict[tuple[MetricType, str], _Sample] = {}
    for sample in samples:
        queue = sample.labels.get("queue")
        if queue is None or sample.metric_type not in _LATEST_TYPES:
            continue
        if sample.metric_type is MetricType.QUEUE_DEPTH and sample.labels.get("state") != READY:
            continue
        key = (sample.metric_type, queue)
        if key not in newest or newest[key].recorded_at <= sample.recorded_at:
            newest[key] = sample
    return {key: sample.value for key, sample in newest.items()}


def _consumed(sample: _Sample) -> list[str]:
    """The queues a worker process's ``queues`` label names (a shortened list's ``+N more #digest`` is not
    one, see :func:`~dramatiq_opmetrics.worker_sampler.queues_label`)."""
    names = sample.labels.get("queues", NO_QUEUES)
    if names == NO_QUEUES:
        return []
    return [name for name in names.split(",") if name and not name.startswith("+")]


def _stalled_minutes(stalled: Iterable[StalledBucket], end: dt.datetime) -> dict[str, int]:
    """Per queue, how many minutes in a row up to ``end`` it was stalled in."""
    minutes: dict[str, set[dt.datetime]] = {}
    for bucket in stalled:
        minutes.setdefault(bucket.queue, set()).add(bucket.start)
    found = {}
    for queue, starts in minutes.items():
        count = 0
        while end - (count + 1) * _MINUTE in starts:
            count += 1
        if count:
            found[queue] = count
    return found


def _actor_lines(
    processing: Sequence[SeriesPoint], waits: Sequence[SeriesPoint], window: dt.timedelta
) -> list[ActorLine]:
    def group(point: SeriesPoint) -> tuple[str | None, str | None]:
        return (point.labels.get("actor"), point.labels.get("queue"))

    attempts = {group(point): point for point in processing}
    waited = {group(point): point for point in waits}
    lines = []
    for actor, queue in attempts.keys() | waited.keys():
        done, wait = attempts.get((actor, queue)), waited.get((actor, queue))
        messages = done.count if done is not None else 0
        lines.append(
            ActorLine(
                actor=actor,
                queue=queue,
                messages=messages,
                rate_per_s=messages / window.total_seconds(),
                error_rate=done.error_rate if done is not None else None,
                p95_processing_ms=done.p95 if done is not None else None,
                p95_wait_ms=wait.p95 if wait is not None else None,
            )
        )
    lines.sort(key=lambda line: (-line.messages, line.actor or "", line.queue or ""))
    return lines


def render(
    snapshot: Snapshot,
    *,
    width: int = TEXT_WIDTH,
    max_rows: int | None = None,
    refresh_interval_s: float | None = None,
    ellipsis: str = "…",
) -> list[str]:
    """The lines of ``snapshot``, each at most ``width`` columns.

    Parameters:
      snapshot(Snapshot): what to show.
      width(int): the columns the lines fit in (default 80).
      max_rows(int | None): the most rows a table shows (the rest are counted on one line); default: all.
      refresh_interval_s(float | None): said in the heading (with "Ctrl-C quits") when refreshing.
      ellipsis(str): ends a label cut short (one character).
    """
    window = format_duration(snapshot.window)
    heading = f"dramatiq-opmetrics top: {snapshot.taken_at:%H:%M:%S} UTC, last {window}"
    if refresh_interval_s is not None:
        heading += f", every {refresh_interval_s:g}s (Ctrl-C quits)"
    lines = [heading]
    if not snapshot.database_has_metrics:
        return [*lines, NO_METRICS_YET]
    if snapshot.processes is None:
        lines.append(f"workers online: - (no worker_threads samples in the last {window})")
    else:
        utilisation = (
            snapshot.busy_threads / snapshot.threads if snapshot.threads and snapshot.busy_threads is not None else None
        )
        lines.append(
            f"workers online: {format_count(snapshot.processes)} processes, {format_count(snapshot.threads or 0)}"
            f" threads, {format_count(snapshot.busy_threads or 0)} busy ({format_percent(utilisation)})"
        )
    lines += ["", f"actors (last {window}; p95 of processing and wait time in ms)"]
    if snapshot.actors:
        body = [
            [
                line.actor or "-",
                line.queue or "-",
                _rate(line.rate_per_s),
                format_percent(line.error_rate),
                format_number(line.p95_processing_ms),
                format_number(line.p95_wait_ms),
            ]
            for line in snapshot.actors
        ]
        headers = ["actor", "queue", "msg/s", "err%", "p95 ms", "wait p95"]
        lines += _limited(headers, body, 2, width, max_rows, ellipsis, "actors")
    else:
        lines.append(f"no message finished or started in the last {window}")
    lines += ["", "queues (latest samples; oldest s = age of the oldest ready message)"]
    if snapshot.queues:
        body = [
            [
                line.queue,
                format_count(line.ready) if line.ready is not None else "-",
                format_number(line.oldest_age_s),
                format_count(line.workers_online) if line.workers_online is not None else "-",
                _stalled(line.stalled_minutes, snapshot.stall_minutes_checked),
            ]
            for line in snapshot.queues
        ]
        headers = ["queue", "ready", "oldest s", "workers", "stalled"]
        lines += _limited(headers, body, 1, width, max_rows, ellipsis, "queues")
    else:
        lines.append(f"no queue sampled or served in the last {window}")
    return [_fit(line, width, ellipsis) for line in lines]


def _limited(
    headers: Sequence[str],
    body: Sequence[Sequence[str]],
    label_columns: int,
    width: int,
    max_rows: int | None,
    ellipsis: str,
    what: str,
) -> list[str]:
    shown = body if max_rows is None or len(body) <= max_rows else body[: max(max_rows - 1, 1)]
    lines = format_table(headers, shown, label_columns, width, ellipsis=ellipsis)
    if len(shown) < len(body):
        lines.append(f"{ellipsis} and {len(body) - len(shown)} more {what}")
    return lines


def _fit(line: str, width: int, ellipsis: str) -> str:
    return line if len(line) <= width else line[: width - 1] + ellipsis


def _rate(per_s: float) -> str:
    return f"{per_s:.2f}" if per_s < 100 else format_number(per_s)


def _stalled(minutes: int, checked: int) -> str:
    if not minutes:
        return "-"
    return f"{minutes}m+" if minutes >= checked else f"{minutes}m"


#: Clear the screen, once at the start on a terminal.
CLEAR_SCREEN = "\x1b[2J"
#: Move the cursor home (top left) before each frame on a terminal.
CURSOR_HOME = "\x1b[H"
#: Clear the rest of the line after each line of a frame, so a shorter line leaves nothing behind.
CLEAR_LINE_END = "\x1b[K"
#: Clear from the cursor to the end of the screen after a frame, so a shorter frame leaves nothing behind.
CLEAR_SCREEN_END = "\x1b[J"


def run_top(
    database_url: str | URL | None,
    *,
    refresh_interval_s: float = DEFAULT_REFRESH_INTERVAL_S,
    window: dt.timedelta = DEFAULT_WINDOW,
    queue_depth_interval_s: float = DEFAULT_QUEUE_DEPTH_INTERVAL_S,
    once: bool = False,
    out: TextIO | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Show the fleet on ``out`` (default standard output) every ``refresh_interval_s`` seconds until Ctrl-C,
    or once; return the exit status (0).

    The first reading's errors propagate (the command line turns them into one line); a later reading's
    :class:`~sqlalchemy.exc.OperationalError` (the database went away, a locked SQLite file) is shown under
    the last numbers and the reading retried at the next refresh.

    Raises:
      ConfigurationError: no database configured, or a SQLite file that does not exist.
    """
    stream = out if out is not None else sys.stdout
    try:
        with engine_for(existing_database_url(database_url)) as engine:
            _show(engine, stream, refresh_interval_s, window, queue_depth_interval_s, once, sleep)
    except KeyboardInterrupt:
        if stream.isatty():
            stream.write("\n")  # the shell's prompt on a line of its own, below the last frame
            stream.flush()
    return 0


def _show(
    engine: Engine,
    stream: TextIO,
    refresh_interval_s: float,
    window: dt.timedelta,
    queue_depth_interval_s: float,
    once: bool,
    sleep: Callable[[float], None],
) -> None:
    terminal = stream.isatty()
    redraw = terminal and not once
    ellipsis = _ellipsis_for(stream)
    shown: list[str] = []  # the last frame read without an error
    first = True
    deadline = time.monotonic()
    while True:
        width, max_rows = TEXT_WIDTH, None
        if terminal:
            size = shutil.get_terminal_size((TEXT_WIDTH, 24))
            width = max(size.columns, 40)
            max_rows = max((size.lines - 9) // 2, 3) if redraw else None
        try:
            snapshot = take_snapshot(engine, window=window, queue_depth_interval_s=queue_depth_interval_s)
            refreshing = None if once else refresh_interval_s
            lines = shown = render(
                snapshot, width=width, max_rows=max_rows, refresh_interval_s=refreshing, ellipsis=ellipsis
            )
        except OperationalError as error:
            if first:
                raise
            reason = (str(error.orig or error).strip().splitlines() or [type(error).__name__])[0]
            failed = f"{dt.datetime.now(dt.UTC):%H:%M:%S} database error, retrying: {reason}"
            lines = [*shown, "", _fit(failed, width, ellipsis)]
        if redraw:
            frame = "".join(f"{line}{CLEAR_LINE_END}\n" for line in lines)
            stream.write((CLEAR_SCREEN if first else "") + CURSOR_HOME + frame + CLEAR_SCREEN_END)
        else:
            stream.write("".join(f"{line}\n" for line in lines) + ("" if once else "\n"))
        stream.flush()
        first = False
        if once:
            return
        deadline += refresh_interval_s
        pause = deadline - time.monotonic()
        if pause < 0:  # a reading took longer than the interval: start again from now
            deadline, pause = time.monotonic(), 0.0
        sleep(pause)


def _ellipsis_for(stream: TextIO) -> str:
    """``…`` where the output's encoding has it, else ``~``."""
    try:
        "…".encode(getattr(stream, "encoding", None) or "utf-8")
    except (UnicodeEncodeError, LookupError):
        return "~"
    return "…"
