"""The ``dramatiq-opmetrics`` command line.

Each subcommand is a thin shell around a library function; run ``dramatiq-opmetrics COMMAND --help``.
Errors a user can fix (no database configured, database unreachable, not migrated) end the command with
one line on standard error and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from collections.abc import Callable, Sequence

from sqlalchemy.exc import OperationalError, ProgrammingError

from .config import ConfigurationError, redact_url, resolve_database_url

#: What each subcommand registers: its name, a one-line help, a function that adds its arguments and the
#: function that runs it (returning the exit status).
Command = tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]


def _add_database_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        help="metrics database (SQLAlchemy URL); default: $OPMETRICS_DATABASE_URL, then $DATABASE_URL",
    )


def _migrate_arguments(parser: argparse.ArgumentParser) -> None:
    _add_database_url(parser)
    parser.add_argument("--revision", default="head", help="target revision (default: head)")
    parser.add_argument(
        "--downgrade",
        action="store_true",
        help="migrate down to --revision (use --revision base to remove all)",
    )


def _migrate(args: argparse.Namespace) -> int:
    from . import migrate

    url = resolve_database_url(args.database_url)
    if args.downgrade:
        migrate.downgrade(url, args.revision)
    else:
        migrate.upgrade(url, args.revision)
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


def _date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, got {value!r}") from None


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
        type=int,
        default=DEFAULT_RETENTION_DAYS,
        help=f"days of raw rows kept (default: {DEFAULT_RETENTION_DAYS})",
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
        "--days", type=int, help=f"the last N UTC days, today included (default: {DEFAULT_REPORT_DAYS})"
    )
    parser.add_argument("--since", type=_date, metavar="YYYY-MM-DD", help="first UTC day (inclusive)")
    parser.add_argument("--until", type=_date, metavar="YYYY-MM-DD", help="last UTC day (inclusive; default: today)")
    parser.add_argument(
        "--metric", choices=[metric_type.value for metric_type in MetricType], help="only this metric type"
    )
    parser.add_argument("--actor", help="only samples labelled with this actor")
    parser.add_argument("--queue", help="only samples labelled with this queue")
    parser.add_argument("--model", help="only samples labelled with this language model")
    parser.add_argument("--json", action="store_true", help="print JSON (shape: see dramatiq_opmetrics.report)")


def _report(args: argparse.Namespace) -> int:
    from . import report
    from .metric_types import MetricType

    try:
        since, until = report.report_range(days=args.days, since=args.since, until=args.until)
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


def _sample_queues_arguments(parser: argparse.ArgumentParser) -> None:
    from .queue_depth_sampler import DEFAULT_QUEUE_DEPTH_INTERVAL_S

    parser.add_argument("--broker", required=True, help="the broker to sample, as module:attribute")
    parser.add_argument(
        "--interval",
        type=float,
        default=DEFAULT_QUEUE_DEPTH_INTERVAL_S,
        help=f"seconds between samples (default: {DEFAULT_QUEUE_DEPTH_INTERVAL_S:g})",
    )
    parser.add_argument("--once", action="store_true", help="sample the current interval once and exit")
    parser.add_argument(
        "--queue", action="append", default=[], help="a queue to sample besides the declared ones (repeatable)"
    )
    _add_database_url(parser)


def _sample_queues(args: argparse.Namespace) -> int:
    from .sample_queues import run_sample_queues

    return run_sample_queues(
        args.broker, database_url=args.database_url, interval_s=args.interval, once=args.once, queues=args.queue
    )


def _dashboard_arguments(parser: argparse.ArgumentParser) -> None:
    _add_database_url(parser)
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8070, help="TCP port (default: 8070)")
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a --host reachable from other machines; needs $OPMETRICS_DASHBOARD_TOKEN (bearer token)"
        " or $OPMETRICS_DASHBOARD_USER and $OPMETRICS_DASHBOARD_PASSWORD (basic auth)",
    )


def _dashboard(args: argparse.Namespace) -> int:
    try:
        from .dashboard import create_app, serve
    except ImportError as error:
        raise ConfigurationError(
            f"the dashboard needs its extra ({error.name} is missing): pip install 'dramatiq-opmetrics[dashboard]'"
        ) from None
    user, password = os.environ.get("OPMETRICS_DASHBOARD_USER"), os.environ.get("OPMETRICS_DASHBOARD_PASSWORD")
    if bool(user) != bool(password):
        raise ConfigurationError("set both OPMETRICS_DASHBOARD_USER and OPMETRICS_DASHBOARD_PASSWORD, or neither")
    app = create_app(
        resolve_database_url(args.database_url),
        bearer_token=os.environ.get("OPMETRICS_DASHBOARD_TOKEN") or None,
        basic_auth=(user, password) if user and password else None,
    )
    serve(app, args.host, args.port, allow_remote=args.allow_remote)
    return 0


#: The subcommands, in the order ``--help`` lists them.
COMMANDS: list[Command] = [
    ("migrate", "create or upgrade the metrics tables", _migrate_arguments, _migrate),
    ("demo", "see dramatiq-opmetrics work on an embedded SQLite database", _demo_arguments, _demo),
    ("report", "print statistics per metric type for a range of days", _report_arguments, _report),
    ("rollup", "roll up raw samples of complete UTC days into daily rows", _rollup_arguments, _rollup),
    ("prune", "remove raw rows of rolled-up days older than the retention", _prune_arguments, _prune),
    (
        "sample-queues",
        "sample queue depth for the whole fleet into the database",
        _sample_queues_arguments,
        _sample_queues,
    ),
    ("dashboard", "serve the read-only web dashboard", _dashboard_arguments, _dashboard),
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="dramatiq-opmetrics", description="Durable operational metrics for Dramatiq worker fleets."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text, add_arguments, run in COMMANDS:
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        add_arguments(subparser)
        subparser.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        status: int = args.run(args)
    except ConfigurationError as error:
        return _fail(str(error))
    except OperationalError as error:
        # SQLite reports a missing table as an OperationalError, PostgreSQL as a ProgrammingError.
        if "no such table" in str(error.orig or error):
            return _not_ready(error)
        return _fail(f"cannot reach the metrics database: {_first_line(error.orig or error)}")
    except ProgrammingError as error:
        return _not_ready(error)
    except KeyboardInterrupt:
        return 130
    return status


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
