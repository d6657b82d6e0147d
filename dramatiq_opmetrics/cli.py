"""The ``dramatiq-opmetrics`` command line.

Each subcommand is a thin shell around a library function; run ``dramatiq-opmetrics COMMAND --help``.
Errors a user can fix (a bad or out-of-range argument, no database configured, a database that is
unreachable, not migrated or not a database, a missing driver, an unknown revision) end the command with
one line on standard error, ``dramatiq-opmetrics: error: ...``, and exit status 2, never a traceback.
Arguments are checked against the limits below before anything touches the database.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from sqlalchemy import Engine
from sqlalchemy.exc import DatabaseError, OperationalError, ProgrammingError

from .alert_rules import RuleFileError
from .config import ConfigurationError, redact_url, resolve_database_url

#: The most days ``report --days`` and ``prune --retention-days`` take, and the longest report (about 100
#: years).
MAX_DAYS = 36_600
#: The earliest date a day argument (``--since``, ``--until``, ``--date``) takes: nothing is recorded before.
EARLIEST_DATE = dt.date(1970, 1, 1)
#: The latest date a day argument takes.
LATEST_DATE = dt.date(2999, 12, 31)
#: The most transitions ``alerts history --limit`` prints.
MAX_HISTORY_LIMIT = 100_000
#: The highest TCP port (``dashboard --port`` takes 1 to this).
MAX_TCP_PORT = 65_535

#: What each subcommand registers: its name, a one-line help, a function that adds its arguments and the
#: function that runs it (returning the exit status).
Command = tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]


class _ArgumentParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, like every other error of the command."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"dramatiq-opmetrics: error: {message} (see `{self.prog} --help`)\n")


def _bounded_int(value: str, low: int, high: int, *, what: str, bounds: str) -> int:
    """``value`` as an integer from ``low`` to ``high``; the argument error says what was ``expected``."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}") from None
    if not low <= number <= high:
        raise argparse.ArgumentTypeError(f"expected {bounds}, got {value}")
    return number


def _whole_days(value: str) -> int:
    """A number of days from 1 to :data:`MAX_DAYS`."""
    return _bounded_int(value, 1, MAX_DAYS, what="a whole number of days", bounds=f"1 to {MAX_DAYS:,} days")


def _date(value: str) -> dt.date:
    try:
        day = dt.date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, got {value!r}") from None
    if not EARLIEST_DATE <= day <= LATEST_DATE:
        raise argparse.ArgumentTypeError(f"expected a date from {EARLIEST_DATE} to {LATEST_DATE}, got {value}")
    return day


def _day_or_instant(value: str) -> dt.date | dt.datetime:
    """A UTC day (YYYY-MM-DD), or an ISO datetime in UTC (a naive one is taken as UTC)."""
    value = value.strip()
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        pass
    else:
        return _date(value)
    try:
        instant = dt.datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a date as YYYY-MM-DD or an ISO datetime such as 2026-11-27T09:30 (UTC) or"
            f" 2026-11-27T10:30+01:00, got {value!r}"
        ) from None
    if not EARLIEST_DATE <= instant.date() <= LATEST_DATE:
        raise argparse.ArgumentTypeError(f"expected a time from {EARLIEST_DATE} to {LATEST_DATE}, got {value}")
    return instant.replace(tzinfo=dt.UTC) if instant.utcoffset() is None else instant.astimezone(dt.UTC)


def _duration(value: str, low: dt.timedelta, high: dt.timedelta) -> dt.timedelta:
    """A duration (``15m``, ``1h``, ``7d``, see :func:`~dramatiq_opmetrics.report.parse_duration`) from ``low``
    to ``high``."""
    from .report import format_duration, parse_duration

    try:
        duration = parse_duration(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if not low <= duration <= high:
        raise argparse.ArgumentTypeError(
            f"expected a duration from {format_duration(low)} to {format_duration(high)}, got {value}"
        )
    return duration


def _report_window(value: str) -> dt.timedelta:
    """The length of ``report --last``: 1 second to :data:`MAX_DAYS` days."""
    return _duration(value, dt.timedelta(seconds=1), dt.timedelta(days=MAX_DAYS))


def _top_window(value: str) -> dt.timedelta:
    from .top import MAX_WINDOW, MIN_WINDOW

    return _duration(value, MIN_WINDOW, MAX_WINDOW)


def _refresh_interval_s(value: str) -> float:
    from .top import MAX_REFRESH_INTERVAL_S, MIN_REFRESH_INTERVAL_S

    seconds = _seconds(value)
    if not MIN_REFRESH_INTERVAL_S <= seconds <= MAX_REFRESH_INTERVAL_S:
        raise argparse.ArgumentTypeError(
            f"expected {MIN_REFRESH_INTERVAL_S:g} to {MAX_REFRESH_INTERVAL_S:,g} seconds, got {value}"
        )
    return seconds


def _port(value: str) -> int:
    """A TCP port from 1 to :data:`MAX_TCP_PORT`."""
    return _bounded_int(value, 1, MAX_TCP_PORT, what="a TCP port number", bounds=f"a TCP port from 1 to {MAX_TCP_PORT}")


def _seconds(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {value!r}") from None


def _interval_s(value: str) -> float:
    from .queue_depth_sampler import check_interval_s

    seconds = _seconds(value)
    try:
        return check_interval_s(seconds)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).replace("interval_s", "the interval")) from None


def _add_database_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        help="metrics database (SQLAlchemy URL); default: $OPMETRICS_DATABASE_URL, then $DATABASE_URL",
    )


def _migrate_arguments(parser: argparse.ArgumentParser) -> None:
    _add_database_url(parser)
    parser.add_argument("--revision", help="target revision (default: head; with --downgrade: required)")
    parser.add_argument(
        "--downgrade",
        action="store_true",
        help="migrate down to --revision (a revision, -1 for one step, or base to remove all)",
    )
    parser.epilog = (
        "All migrations run in one transaction. Concurrent runs wait for each other and the later one finds"
        " the work done. Through PgBouncer in transaction pooling mode, add ?prepare_threshold=none to the URL."
    )


def _migrate(args: argparse.Namespace) -> int:
    from alembic.util import CommandError

    from . import migrate

    if args.downgrade and args.revision is None:
        return _fail("--downgrade needs --revision (a revision, -1 for one step, or base to remove all)")
    url = resolve_database_url(args.database_url)
    revision = args.revision or "head"
    try:
        if args.downgrade:
            migrate.downgrade(url, revision)
        else:
            migrate.upgrade(url, revision)
    except CommandError as error:
        return _fail(f"cannot migrate to revision {revision!r}: {_first_line(error)}")
    print(f"{redact_url(url)} is at revision {migrate.current_revision(url) or 'base'}")
    return 0


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        help="database (SQLAlchemy URL); default: $OPMETRICS_DEMO_DATABASE_URL, else ./opmetrics-demo.sqlite3 (remade)",
    )
    parser.add_argument(
        "--broker-url", help="Redis broker (redis://...); default: $OPMETRICS_DEMO_BROKER_URL, else in-process"
    )


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.database_url, args.broker_url)


def _rollup_arguments(parser: argparse.ArgumentParser) -> None:
    _add_database_url(parser)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--date", type=_date, help="roll up this UTC day (YYYY-MM-DD), even if up to date")
    which.add_argument("--since", type=_date, help="roll up the days that need it from this UTC day on")


def _rollup(args: argparse.Namespace) -> int:
    from .database import engine_for
    from .rollup import rollup

    try:
        with engine_for(args.database_url, maintenance=True) as engine:
            days = rollup(engine, day=args.date, since=args.since)
    except ValueError as error:
        return _fail(str(error))
    for day in days:
        print(
            f"rolled up {day.day}: {day.rows} rows, {day.label_sets} label sets,"
            f" {day.daily_rows} daily rows in {day.duration_s:.2f} s"
        )
    if not days:
        print("nothing to roll up" if args.date is None else f"{args.date} was not rolled up (no raw rows left)")
    return 0


def _prune_arguments(parser: argparse.ArgumentParser) -> None:
    from .retention import DEFAULT_RETENTION_DAYS

    _add_database_url(parser)
    parser.add_argument("--dry-run", action="store_true", help="only print what would be removed")
    parser.add_argument(
        "--retention-days",
        type=_whole_days,
        default=DEFAULT_RETENTION_DAYS,
        help=f"days of raw rows kept, 1 to {MAX_DAYS:,} (default: {DEFAULT_RETENTION_DAYS})",
    )


def _prune(args: argparse.Namespace) -> int:
    from .database import engine_for
    from .retention import prune

    try:
        with engine_for(args.database_url, maintenance=True) as engine:
            result = prune(engine, retention_days=args.retention_days, dry_run=args.dry_run)
    except ValueError as error:
        return _fail(str(error))
    verb = "would remove" if result.dry_run else "removed"
    for day in result.pruned:
        how = "dropped its partition" if day.method == "partition" else "deleted"
        print(f"{verb} {day.day}: {day.rows} raw rows ({how})")
    for kept in result.kept:
        print(f"kept {kept.day}: {kept.rows} raw rows ({kept.reason})")
    if not result.pruned and not result.kept:
        print(f"nothing to prune: no raw rows before {result.cutoff}")
    return 0


def _report_arguments(parser: argparse.ArgumentParser) -> None:
    from .metric_types import MetricType
    from .report import DEFAULT_REPORT_DAYS

    _add_database_url(parser)
    parser.add_argument(
        "--days",
        type=_whole_days,
        help=f"the last N UTC days, today included, N from 1 to {MAX_DAYS:,} (default: {DEFAULT_REPORT_DAYS})",
    )
    parser.add_argument(
        "--last",
        type=_report_window,
        metavar="DURATION",
        help="the window up to now, e.g. 15m, 1h, 6h, 24h, 7d or 1h30m (units d, h, m, s), from the recent tier",
    )
    parser.add_argument(
        "--since",
        type=_day_or_instant,
        metavar="WHEN",
        help="first UTC day YYYY-MM-DD (inclusive), or the window's start as an ISO datetime"
        " (2026-11-27T09:30+01:00; without an offset: UTC)",
    )
    parser.add_argument(
        "--until",
        type=_day_or_instant,
        metavar="WHEN",
        help="last UTC day YYYY-MM-DD (inclusive; default: today), or the window's end as an ISO datetime"
        " (exclusive; default: now)",
    )
    parser.add_argument(
        "--metric", choices=[metric_type.value for metric_type in MetricType], help="only this metric type"
    )
    parser.add_argument("--actor", help="only samples labelled with this actor")
    parser.add_argument("--queue", help="only samples labelled with this queue")
    parser.add_argument("--model", help="only samples labelled with this language model")
    parser.add_argument("--json", action="store_true", help="print JSON (shape: see dramatiq_opmetrics.report)")
    parser.epilog = (
        "Dates report whole UTC days from the daily rows (and today's raw rows). --last, or a datetime in"
        " --since/--until, reports the window [since, until) from the recent tier and the raw rows not folded"
        " yet, exact to the second; raw rows are kept 30 days by default (prune --retention-days)."
    )


def _report(args: argparse.Namespace) -> int:
    from . import report
    from .metric_types import MetricType

    try:
        since, until = report.report_range(days=args.days, since=args.since, until=args.until, last=args.last)
        # Whole days count both ends (until - since is one day less than they cover); a window does not.
        longest = dt.timedelta(days=MAX_DAYS if isinstance(since, dt.datetime) else MAX_DAYS - 1)
        if until - since > longest:
            return _fail(
                f"a report covers at most {MAX_DAYS:,} days; --since {since.isoformat()} to --until"
                f" {until.isoformat()} is longer"
            )
        data = report.load_report(
            args.database_url,
            since,
            until,
            metric_types=[MetricType(args.metric)] if args.metric else None,
            filters={"actor": args.actor, "queue": args.queue, "model": args.model},
        )
    except ValueError as error:
        return _fail(str(error))
    print(report.render_json(data) if args.json else report.render_text(data))
    return 0


def _fold_arguments(parser: argparse.ArgumentParser) -> None:
    from .recent_tier import DEFAULT_RECENT_RETENTION_DAYS

    _add_database_url(parser)
    parser.add_argument(
        "--retention-days",
        type=_whole_days,
        default=DEFAULT_RECENT_RETENTION_DAYS,
        help=f"days of recent buckets kept, 1 to {MAX_DAYS:,} (default: {DEFAULT_RECENT_RETENTION_DAYS})",
    )
    parser.epilog = (
        "Folds every raw row not folded yet into the recent tier's 1- and 10-minute buckets, and removes"
        " buckets older than the retention. Safe to run while the fleet folds too: folds serialise and every raw"
        " row is counted once."
    )


def _fold(args: argparse.Namespace) -> int:
    from .database import engine_for
    from .recent_tier import fold, read_state

    try:
        with engine_for(args.database_url, maintenance=True) as engine:
            result = fold(engine, retention_days=args.retention_days)
            with engine.connect() as connection:
                started = read_state(connection) is not None
    except ValueError as error:
        return _fail(str(error))
    if not started:
        print("the recent tier did not start yet: writers were still in their transactions; run it again")
        return 0
    line = (
        f"folded {result.rows:,} raw rows into the recent tier (up to id {result.folded_id:,})"
        f" in {result.duration_s:.2f} s"
    )
    if result.pruned_buckets:
        line += f"; removed {result.pruned_buckets:,} buckets older than {args.retention_days} days"
    if result.pending_id is not None:
        line += f"; rows up to id {result.pending_id:,} wait for writers still in their transactions"
    print(line)
    return 0


def _top_arguments(parser: argparse.ArgumentParser) -> None:
    from .queue_depth_sampler import DEFAULT_QUEUE_DEPTH_INTERVAL_S
    from .report import format_duration
    from .top import DEFAULT_REFRESH_INTERVAL_S, DEFAULT_WINDOW, MAX_REFRESH_INTERVAL_S, MAX_WINDOW, MIN_WINDOW

    _add_database_url(parser)
    parser.add_argument(
        "--interval",
        type=_refresh_interval_s,
        default=DEFAULT_REFRESH_INTERVAL_S,
        help=f"seconds between refreshes, 1 to {MAX_REFRESH_INTERVAL_S:,g} (default: {DEFAULT_REFRESH_INTERVAL_S:g})",
    )
    parser.add_argument(
        "--window",
        type=_top_window,
        default=DEFAULT_WINDOW,
        metavar="DURATION",
        help=f"how far back rates and percentiles look, {format_duration(MIN_WINDOW)} to"
        f" {format_duration(MAX_WINDOW)} (default: {format_duration(DEFAULT_WINDOW)})",
    )
    parser.add_argument(
        "--queue-depth-interval",
        type=_interval_s,
        default=DEFAULT_QUEUE_DEPTH_INTERVAL_S,
        metavar="S",
        help="the fleet's queue depth interval in seconds, over which workers online are counted"
        f" (default: {DEFAULT_QUEUE_DEPTH_INTERVAL_S:g})",
    )
    parser.add_argument("--once", action="store_true", help="print once and exit (for scripts)")
    parser.epilog = "Ctrl-C quits. What each column means: see dramatiq_opmetrics.top."


def _top(args: argparse.Namespace) -> int:
    from .top import run_top

    try:
        return run_top(
            args.database_url,
            refresh_interval_s=args.interval,
            window=args.window,
            queue_depth_interval_s=args.queue_depth_interval,
            once=args.once,
        )
    except ValueError as error:
        return _fail(str(error))


def _sample_queues_arguments(parser: argparse.ArgumentParser) -> None:
    from .queue_depth_sampler import (
        DEFAULT_QUEUE_DEPTH_INTERVAL_S,
        MAX_QUEUE_DEPTH_INTERVAL_S,
        MIN_QUEUE_DEPTH_INTERVAL_S,
    )

    parser.add_argument("--broker", required=True, help="the broker to sample, as module:attribute")
    parser.add_argument(
        "--interval",
        type=_interval_s,
        default=DEFAULT_QUEUE_DEPTH_INTERVAL_S,
        help=f"seconds between samples, {MIN_QUEUE_DEPTH_INTERVAL_S:g} to {MAX_QUEUE_DEPTH_INTERVAL_S:,g}"
        f" (default: {DEFAULT_QUEUE_DEPTH_INTERVAL_S:g})",
    )
    parser.add_argument("--once", action="store_true", help="sample the current interval once and exit")
    parser.add_argument(
        "--queue", action="append", default=[], help="a queue to sample besides the declared ones (repeatable)"
    )
    parser.add_argument(
        "--no-fold",
        action="store_true",
        help="do not fold the recent tier (by default it does, every $OPMETRICS_RECENT_FOLD_INTERVAL_S seconds)",
    )
    _add_database_url(parser)


def _sample_queues(args: argparse.Namespace) -> int:
    from .sample_queues import run_sample_queues

    return run_sample_queues(
        args.broker,
        database_url=args.database_url,
        interval_s=args.interval,
        once=args.once,
        queues=args.queue,
        fold=not args.no_fold,
    )


def _add_serving_arguments(parser: argparse.ArgumentParser, default_port: int) -> None:
    """The database and the HTTP binding of a command that serves (the dashboard, the exporter)."""
    _add_database_url(parser)
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument(
        "--port", type=_port, default=default_port, help=f"TCP port, 1 to {MAX_TCP_PORT} (default: {default_port})"
    )
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a --host reachable from other machines; needs $OPMETRICS_DASHBOARD_TOKEN (bearer token)"
        " or $OPMETRICS_DASHBOARD_USER and $OPMETRICS_DASHBOARD_PASSWORD (basic auth)",
    )


def _dashboard_arguments(parser: argparse.ArgumentParser) -> None:
    _add_serving_arguments(parser, 8070)
    parser.add_argument(
        "--rules",
        metavar="FILE",
        help="the fleet's alert rule file, for the Alerts page's severities, conditions and rules not evaluated"
        " yet (default: $OPMETRICS_ALERT_RULES, else none)",
    )


def _dashboard(args: argparse.Namespace) -> int:
    try:
        from .dashboard import create_app, serve
        from .http_serving import Credentials
    except ImportError as error:
        raise _missing_extra(error, "the dashboard", "dashboard") from None
    credentials = Credentials.from_environment()
    app = create_app(
        resolve_database_url(args.database_url),
        bearer_token=credentials.bearer_token,
        basic_auth=credentials.basic_auth,
        alert_rules=args.rules,
    )
    return _serve(args, app, app.data.engine, serve, "the dashboard")


def _missing_extra(error: ImportError, what: str, extra: str) -> ConfigurationError:
    return ConfigurationError(
        f"{what} needs its extra ({error.name} is missing): pip install 'dramatiq-opmetrics[{extra}]'"
    )


def _serve(args: argparse.Namespace, app: Any, engine: Engine, serve: Callable[..., None], what: str) -> int:
    """Check the binding and the database, then serve ``app`` until interrupted (the dashboard, the exporter)."""
    from .http_serving import check_binding

    check_binding(app, args.host, allow_remote=args.allow_remote, what=what)
    _check_database(engine)
    try:
        serve(app, args.host, args.port, allow_remote=args.allow_remote)
    except OSError as error:
        return _fail(f"cannot listen on {args.host}:{args.port}: {error.strerror or error}")
    return 0


def _exporter_arguments(parser: argparse.ArgumentParser) -> None:
    _add_serving_arguments(parser, 9191)


def _exporter(args: argparse.Namespace) -> int:
    try:
        from .exporter import create_exporter_app, serve_exporter
        from .http_serving import Credentials
    except ImportError as error:
        raise _missing_extra(error, "the exporter", "exporter") from None
    credentials = Credentials.from_environment()
    app = create_exporter_app(
        resolve_database_url(args.database_url),
        bearer_token=credentials.bearer_token,
        basic_auth=credentials.basic_auth,
    )
    return _serve(args, app, app.collector.engine, serve_exporter, "the exporter")


def _add_rules_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rules", required=True, metavar="FILE", help="the alert rule file (TOML)")


def _alerts_check_arguments(parser: argparse.ArgumentParser) -> None:
    _add_rules_argument(parser)


def _alerts_check(args: argparse.Namespace) -> int:
    from .alert_rules import load_rules

    rule_set = load_rules(args.rules)  # a RuleFileError is printed by main(), one line per problem
    print(f"ok: {len(rule_set.rules)} rules, {len(rule_set.notifiers)} notifiers")
    return 0


def _optional_rules_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rules", metavar="FILE", help="the alert rule file: also list its rules not evaluated yet")


def _alerts_status_arguments(parser: argparse.ArgumentParser) -> None:
    _optional_rules_argument(parser)
    _add_database_url(parser)
    parser.epilog = (
        "Each alert (a rule and a group of its group_by labels): its state (ok, pending, firing), since when,"
        " its last value and evaluation; then the silences in force and the notifications not delivered yet"
        " (waiting, failing with their last error, or given up)."
    )


def _alerts_status(args: argparse.Namespace) -> int:
    from .alert_rules import load_rules
    from .alert_status import status_lines
    from .database import engine_for

    ruleset = load_rules(args.rules) if args.rules else None
    with engine_for(args.database_url) as engine:
        print("\n".join(status_lines(engine, ruleset)))
    return 0


def _history_limit(value: str) -> int:
    return _bounded_int(
        value, 1, MAX_HISTORY_LIMIT, what="a number of transitions", bounds=f"1 to {MAX_HISTORY_LIMIT:,}"
    )


def _alerts_history_arguments(parser: argparse.ArgumentParser) -> None:
    from .alert_status import DEFAULT_HISTORY_LIMIT

    parser.add_argument("--rule", help="only this rule's transitions")
    parser.add_argument(
        "--limit",
        type=_history_limit,
        default=DEFAULT_HISTORY_LIMIT,
        help=f"the latest this many transitions, 1 to {MAX_HISTORY_LIMIT:,} (default: {DEFAULT_HISTORY_LIMIT})",
    )
    _add_database_url(parser)


def _alerts_history(args: argparse.Namespace) -> int:
    from .alert_status import history_lines
    from .database import engine_for

    with engine_for(args.database_url) as engine:
        print("\n".join(history_lines(engine, rule=args.rule, limit=args.limit)))
    return 0


def _silence_duration(value: str) -> dt.timedelta:
    from .alert_silences import MAX_SILENCE

    return _duration(value, dt.timedelta(seconds=1), MAX_SILENCE)


def _alerts_silence_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rule", help="the rule whose notifications are held back")
    parser.add_argument(
        "--for",
        dest="duration",
        required=True,
        type=_silence_duration,
        metavar="DURATION",
        help="how long: 30m, 2h, 1d",
    )
    parser.add_argument("--reason", default="", help="why (shown by `alerts status` and `alerts silences`)")
    _add_database_url(parser)
    parser.epilog = (
        "The rule's alerts still change state; what they would have sent is sent at the first evaluation after"
        " the silence ends, if it is still true then (a firing alert; a resolution of an alert whose firing was"
        " sent)."
    )


def _alerts_silence(args: argparse.Namespace) -> int:
    from .alert_silences import add_silence
    from .database import engine_for

    with engine_for(args.database_url) as engine:
        silence = add_silence(engine, args.rule, args.duration, reason=args.reason)
    print(f"silence #{silence.id}: {silence.rule} until {silence.until:%Y-%m-%d %H:%M:%S} UTC")
    return 0


def _alerts_silences(args: argparse.Namespace) -> int:
    from .alert_silences import list_silences
    from .database import engine_for

    with engine_for(args.database_url) as engine:
        silences = list_silences(engine)
    for silence in silences:
        reason = f": {silence.reason}" if silence.reason else ""
        print(f"#{silence.id} {silence.rule} until {silence.until:%Y-%m-%d %H:%M:%S} UTC{reason}")
    if not silences:
        print("no silences in force")
    return 0


def _alerts_unsilence_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("silence", metavar="ID|RULE", help="a silence's number, or a rule (all its silences)")
    _add_database_url(parser)


def _alerts_unsilence(args: argparse.Namespace) -> int:
    from .alert_silences import remove_silences
    from .database import engine_for

    with engine_for(args.database_url) as engine:
        removed = remove_silences(engine, args.silence)
    if not removed:
        return _fail(f"no silence {args.silence!r} (see `dramatiq-opmetrics alerts silences`)")
    print(f"removed {removed} silence{'s' if removed != 1 else ''}")
    return 0


def _alerts_run_arguments(parser: argparse.ArgumentParser) -> None:
    _add_rules_argument(parser)
    parser.add_argument("--once", action="store_true", help="evaluate the current interval once, deliver, and exit")
    _add_database_url(parser)
    parser.epilog = (
        "Evaluates the rules every evaluation_interval of the file (one process of the fleet per interval,"
        " with workers given OpMetrics(alert_rules=...) too) and delivers their notifications."
    )


def _alerts_run(args: argparse.Namespace) -> int:
    from .alert_runner import run_alerts

    return run_alerts(args.rules, database_url=args.database_url, once=args.once)


def _send_timeout_s(value: str) -> float:
    from .notifiers import check_timeout_s

    try:
        return check_timeout_s(_seconds(value))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).replace("timeout_s", "the timeout")) from None


def _alerts_test_arguments(parser: argparse.ArgumentParser) -> None:
    from .notifiers import DEFAULT_SEND_TIMEOUT_S

    parser.add_argument("notifier", metavar="NOTIFIER", help="the name of a notifier of the rule file")
    _add_rules_argument(parser)
    parser.add_argument(
        "--timeout",
        type=_send_timeout_s,
        default=DEFAULT_SEND_TIMEOUT_S,
        metavar="SECONDS",
        help=f"wait at most this long for each connection and answer of a target (default {DEFAULT_SEND_TIMEOUT_S:g})",
    )


def _alerts_test(args: argparse.Namespace) -> int:
    from .alert_rules import load_rules
    from .notifiers import DeliveryError, make_test_notification, masked_target, send

    rule_set = load_rules(args.rules)
    notifier = rule_set.notifiers.get(args.notifier)
    if notifier is None:
        known = ", ".join(f'"{name}"' for name in sorted(rule_set.notifiers)) or "none"
        return _fail(f'{rule_set.source}: there is no notifier "{args.notifier}" (the file has: {known})')
    notification = make_test_notification(notifier.name, dashboard_url=rule_set.dashboard_url)
    failures = 0
    for target in notifier.urls:
        try:
            send(target, notification, timeout_s=args.timeout)
        except DeliveryError as error:
            failures += 1
            print(f"failed: {error}")
        else:
            print(f"ok: {masked_target(target)}")
    return 1 if failures else 0


#: The subcommands of ``dramatiq-opmetrics alerts``, in the order ``--help`` lists them.
ALERTS_COMMANDS: list[Command] = [
    (
        "check",
        "validate a rule file and exit (0: valid; 2: one line per problem); reads no database",
        _alerts_check_arguments,
        _alerts_check,
    ),
    (
        "test",
        "send a test notification to every target of a notifier, one line each (exit 0: all delivered; 1: not)",
        _alerts_test_arguments,
        _alerts_test,
    ),
    (
        "run",
        "evaluate the rules for the fleet and deliver notifications (a sidecar)",
        _alerts_run_arguments,
        _alerts_run,
    ),
    ("status", "each alert's state, since, value; deliveries not made yet", _alerts_status_arguments, _alerts_status),
    ("history", "the latest state changes of the alerts", _alerts_history_arguments, _alerts_history),
    ("silence", "hold back a rule's notifications for a while", _alerts_silence_arguments, _alerts_silence),
    ("silences", "list the silences in force", _add_database_url, _alerts_silences),
    ("unsilence", "remove a silence, or every silence of a rule", _alerts_unsilence_arguments, _alerts_unsilence),
]


def _add_alerts_parser(subparsers: argparse._SubParsersAction[_ArgumentParser]) -> None:
    """Add ``alerts`` and its subcommands (:data:`ALERTS_COMMANDS`) to the main parser's ``subparsers``."""
    help_text = "alerting: check, test, run, status, history, silences (see `dramatiq-opmetrics alerts --help`)"
    alerts = subparsers.add_parser("alerts", help=help_text, description=help_text)
    commands = alerts.add_subparsers(dest="alerts_command", required=True, metavar="ALERTS_COMMAND")
    for name, command_help, add_arguments, run in ALERTS_COMMANDS:
        subparser = commands.add_parser(name, help=command_help, description=command_help)
        add_arguments(subparser)
        subparser.set_defaults(run=run)


def _check_database(engine: Engine) -> None:
    """Fail now, not at the first request, on a database that is unreachable or not migrated."""
    from sqlalchemy import select

    from .models import LabelSet

    with engine.connect() as connection:
        connection.execute(select(LabelSet.id).limit(1))


#: The subcommands, in the order ``--help`` lists them.
COMMANDS: list[Command] = [
    ("migrate", "create or upgrade the metrics tables", _migrate_arguments, _migrate),
    ("demo", "see dramatiq-opmetrics work on an embedded SQLite database", _demo_arguments, _demo),
    ("report", "print statistics per metric type for a range of days or a window", _report_arguments, _report),
    ("top", "show the fleet now, refreshed every few seconds", _top_arguments, _top),
    ("rollup", "roll up raw samples of complete UTC days into daily rows", _rollup_arguments, _rollup),
    ("prune", "remove raw rows of rolled-up days older than the retention", _prune_arguments, _prune),
    ("fold", "fold the raw rows not folded yet into the recent tier, now", _fold_arguments, _fold),
    (
        "sample-queues",
        "sample queue depth for the whole fleet into the database",
        _sample_queues_arguments,
        _sample_queues,
    ),
    ("dashboard", "serve the read-only web dashboard", _dashboard_arguments, _dashboard),
    ("exporter", "serve the fleet's metrics to Prometheus (Dramatiq's metric names)", _exporter_arguments, _exporter),
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand of :data:`COMMANDS`."""
    parser = _ArgumentParser(
        prog="dramatiq-opmetrics", description="Durable operational metrics for Dramatiq worker fleets."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text, add_arguments, run in COMMANDS:
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        add_arguments(subparser)
        subparser.set_defaults(run=run)
    _add_alerts_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    for argument in argv:
        if not _is_text(argument):
            return _fail(f"the argument {argument!r} is not valid UTF-8 text")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit:  # --help, or an argument error already printed
        return exit.code if isinstance(exit.code, int) else 2
    try:
        status: int = args.run(args)
    except ConfigurationError as error:
        return _fail(str(error))
    except RuleFileError as error:
        for line in error.errors:
            _fail(line)
        return 2
    except OperationalError as error:
        # SQLite reports a missing table as an OperationalError, PostgreSQL as a ProgrammingError.
        if "no such table" in str(error.orig or error):
            return _not_ready(error)
        return _fail(f"cannot reach the metrics database: {_first_line(error.orig or error)}")
    except ProgrammingError as error:
        return _not_ready(error)
    except DatabaseError as error:
        # For example a SQLite file that is not a database.
        return _fail(f"cannot use the metrics database: {_first_line(error.orig or error)}")
    except KeyboardInterrupt:
        return 130
    return status


def _is_text(argument: str) -> bool:
    """Whether ``argument`` is UTF-8 (Python decodes other bytes of the command line to lone surrogates)."""
    try:
        argument.encode()
    except UnicodeEncodeError:
        return False
    return True


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _not_ready(error: OperationalError | ProgrammingError) -> int:
    reason = _first_line(error.orig or error)
    return _fail(f"the metrics database is not ready ({reason}); run `dramatiq-opmetrics migrate` first")


def _fail(message: str) -> int:
    print(f"dramatiq-opmetrics: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
