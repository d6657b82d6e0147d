"""Every way to call the command line wrongly ends in one line on standard error and exit status 2.

Each case names the problem it must name; none may print a traceback or a second line. Most run
``main()`` in process (fast); a few run the installed ``dramatiq-opmetrics`` program to prove the real
entry point behaves the same.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from command_line import BIN, run_command
from tcp_proxy import free_port

from dramatiq_opmetrics.cli import main
from dramatiq_opmetrics.migrate import upgrade

#: Every subcommand that opens the metrics database, with the arguments it needs besides the URL.
DATABASE_COMMANDS = {
    "migrate": ["migrate"],
    "report": ["report"],
    "rollup": ["rollup"],
    "prune": ["prune"],
    "dashboard": ["dashboard", "--port", "{port}"],
    "sample-queues": ["sample-queues", "--broker", "{broker}", "--once"],
    "top": ["top", "--once"],
    "fold": ["fold"],
}


@dataclass(frozen=True)
class Places:
    """What the cases' ``{placeholders}`` stand for."""

    migrated: str  # a migrated SQLite database
    unmigrated: str  # an empty SQLite database
    garbage: str  # a SQLite "database" file full of garbage
    refused: str  # a PostgreSQL URL on a port where nothing listens
    broker: str  # a module:attribute naming a StubBroker
    port: str  # a free TCP port
    busy_port: str  # a TCP port something listens on

    def fill(self, argv: list[str]) -> list[str]:
        return [argument.format(**self.__dict__) for argument in argv]


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Places]:
    for name in ("OPMETRICS_DATABASE_URL", "DATABASE_URL", "OPMETRICS_DASHBOARD_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    migrated = f"sqlite:///{tmp_path / 'migrated.sqlite3'}"
    upgrade(migrated)
    (tmp_path / "empty.sqlite3").touch()
    (tmp_path / "garbage.sqlite3").write_bytes(b"this is not a database\n" * 1000)
    (tmp_path / "cli_errors_broker.py").write_text(
        "from dramatiq.brokers.stub import StubBroker\nbroker = StubBroker()\nnot_a_broker = 42\n"
    )
    monkeypatch.chdir(tmp_path)  # sample-queues imports the broker's module from the current directory
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        yield Places(
            migrated=migrated,
            unmigrated=f"sqlite:///{tmp_path / 'empty.sqlite3'}",
            garbage=f"sqlite:///{tmp_path / 'garbage.sqlite3'}",
            refused=f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test",
            broker="cli_errors_broker:broker",
            port=str(free_port()),
            busy_port=str(listening.getsockname()[1]),
        )


#: A database at base (never migrated).
URL_AT_BASE = ["--database-url", "{unmigrated}"]


def on(url: str, command: str) -> list[str]:
    return [*DATABASE_COMMANDS[command], "--database-url", url]


#: (id, arguments, what the line must say). ``{migrated}`` and the like: see :class:`Places`.
CASES: list[tuple[str, list[str], str]] = [
    # report
    ("report-days-huge", ["report", "--days", "999999999"], "argument --days: expected 1 to 36,600 days"),
    ("report-days-zero", ["report", "--days", "0"], "argument --days: expected 1 to 36,600 days, got 0"),
    ("report-days-negative", ["report", "--days", "-3"], "argument --days: expected 1 to 36,600 days, got -3"),
    ("report-days-not-a-number", ["report", "--days", "seven"], "expected a whole number of days, got 'seven'"),
    ("report-until-9999", ["report", "--until", "9999-12-31"], "argument --until: expected a date from 1970-01-01"),
    ("report-since-year-1", ["report", "--since", "0001-01-01"], "argument --since: expected a date from 1970-01-01"),
    ("report-since-not-a-date", ["report", "--since", "yesterday"], "expected a date as YYYY-MM-DD"),
    ("report-since-impossible-date", ["report", "--since", "2026-02-30"], "expected a date as YYYY-MM-DD"),
    (
        "report-since-after-until",
        ["report", "--since", "2026-03-02", "--until", "2026-03-01"],
        "--since 2026-03-02 is after --until 2026-03-01",
    ),
    ("report-days-and-since", ["report", "--days", "3", "--since", "2026-03-01"], "give either --days or --since"),
    (
        "report-longer-than-the-limit",
        ["report", "--since", "1970-01-01", "--until", "2999-12-31"],
        "a report covers at most 36,600 days",
    ),
    ("report-last-not-a-duration", ["report", "--last", "an hour"], "argument --last: expected a duration such as 15m"),
    ("report-last-bare-number", ["report", "--last", "60"], "expected a duration such as 15m, 1h, 6h, 24h, 7d"),
    ("report-last-fraction", ["report", "--last", "1.5h"], "expected a duration such as 15m"),
    ("report-last-unknown-unit", ["report", "--last", "2y"], "(units d, h, m, s), got '2y'"),
    ("report-last-zero", ["report", "--last", "0m"], "argument --last: expected a duration from 1s to 36600d, got 0m"),
    ("report-last-too-long", ["report", "--last", "36601d"], "expected a duration from 1s to 36600d, got 36601d"),
    ("report-last-absurd", ["report", "--last", "9" * 30 + "d"], "is longer than any range"),
    ("report-last-and-days", ["report", "--last", "1h", "--days", "2"], "give either --last or --days/--since/--until"),
    ("report-last-and-until", ["report", "--last", "1h", "--until", "2026-03-01"], "give either --last or --days"),
    (
        "report-since-not-a-datetime",
        ["report", "--since", "2026-03-01T25:00"],
        "argument --since: expected a date as YYYY-MM-DD or an ISO datetime such as 2026-11-27T09:30",
    ),
    ("report-until-datetime-9999", ["report", "--until", "9999-12-31T10:00"], "expected a time from 1970-01-01"),
    ("report-since-datetime-year-1", ["report", "--since", "0001-01-01T00:00+05:00"], "expected a time from 1970"),
    (
        "report-since-datetime-after-until",
        ["report", "--since", "2026-03-01T10:00", "--until", "2026-03-01T09:59:59+00:00"],
        "--since 2026-03-01T10:00:00+00:00 is not before --until 2026-03-01T09:59:59+00:00",
    ),
    (
        "report-since-datetime-equal-until",
        ["report", "--since", "2026-03-01T10:00+01:00", "--until", "2026-03-01T09:00"],
        "is not before --until",
    ),
    (
        "report-window-longer-than-the-limit",
        ["report", "--since", "1970-01-01T00:00", "--until", "2999-12-31T00:00"],
        "a report covers at most 36,600 days",
    ),
    ("report-unknown-metric", ["report", "--metric", "latency"], "argument --metric: invalid choice: 'latency'"),
    ("report-filter-not-utf8", ["report", "--actor", "\udcff"], "is not valid UTF-8 text"),
    ("report-unknown-option", ["report", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    # prune
    ("prune-retention-huge", ["prune", "--retention-days", "999999999"], "argument --retention-days: expected 1 to"),
    ("prune-retention-zero", ["prune", "--retention-days", "0"], "expected 1 to 36,600 days, got 0"),
    ("prune-retention-negative", ["prune", "--retention-days", "-30"], "expected 1 to 36,600 days, got -30"),
    ("prune-retention-fraction", ["prune", "--retention-days", "1.5"], "expected a whole number of days, got '1.5'"),
    # top
    ("top-interval-zero", ["top", "--interval", "0"], "argument --interval: expected 1 to 3,600 seconds, got 0"),
    ("top-interval-huge", ["top", "--interval", "1e9"], "expected 1 to 3,600 seconds, got 1e9"),
    ("top-interval-nan", ["top", "--interval", "nan"], "expected 1 to 3,600 seconds, got nan"),
    ("top-interval-text", ["top", "--interval", "often"], "expected a number of seconds, got 'often'"),
    ("top-window-too-short", ["top", "--window", "30s"], "argument --window: expected a duration from 1m to 1d"),
    ("top-window-too-long", ["top", "--window", "2d"], "expected a duration from 1m to 1d, got 2d"),
    ("top-window-not-a-duration", ["top", "--window", "5 minutes"], "expected a duration such as 15m"),
    ("top-queue-depth-interval-zero", ["top", "--queue-depth-interval", "0"], "from 0.1 to"),
    # fold
    ("fold-retention-zero", ["fold", "--retention-days", "0"], "argument --retention-days: expected 1 to 36,600 days"),
    ("fold-retention-text", ["fold", "--retention-days", "three"], "expected a whole number of days, got 'three'"),
    # rollup
    ("rollup-date-9999", ["rollup", "--date", "9999-12-31"], "argument --date: expected a date from 1970-01-01"),
    ("rollup-since-year-1", ["rollup", "--since", "0001-01-01"], "argument --since: expected a date from"),
    ("rollup-date-in-the-future", ["rollup", "--date", "2999-12-31"], "is not complete yet"),
    ("rollup-date-and-since", ["rollup", "--date", "2026-01-01", "--since", "2026-01-01"], "not allowed with"),
    # migrate
    ("migrate-unknown-revision", ["migrate", "--revision", "nonsense"], "cannot migrate to revision 'nonsense'"),
    ("migrate-past-head", ["migrate", "--revision", "+5"], "cannot migrate to revision '+5'"),
    ("migrate-downgrade-without-revision", ["migrate", "--downgrade"], "--downgrade needs --revision"),
    # dashboard
    ("dashboard-port-negative", ["dashboard", "--port", "-1"], "argument --port: expected a TCP port from 1 to 65535"),
    ("dashboard-port-zero", ["dashboard", "--port", "0"], "expected a TCP port from 1 to 65535, got 0"),
    ("dashboard-port-too-high", ["dashboard", "--port", "99999"], "expected a TCP port from 1 to 65535, got 99999"),
    ("dashboard-port-not-a-number", ["dashboard", "--port", "abc"], "expected a TCP port number, got 'abc'"),
    ("dashboard-port-in-use", ["dashboard", "--port", "{busy_port}"], "cannot listen on 127.0.0.1:"),
    ("dashboard-public-interface", ["dashboard", "--port", "{port}", "--host", "0.0.0.0"], "pass --allow-remote"),
    # sample-queues
    ("sample-queues-interval-negative", ["sample-queues", "--broker", "{broker}", "--interval", "-1"], "from 0.1 to"),
    ("sample-queues-interval-nan", ["sample-queues", "--broker", "{broker}", "--interval", "nan"], "got nan"),
    ("sample-queues-interval-inf", ["sample-queues", "--broker", "{broker}", "--interval", "inf"], "got inf"),
    ("sample-queues-interval-huge", ["sample-queues", "--broker", "{broker}", "--interval", "1e300"], "86400 s"),
    ("sample-queues-interval-text", ["sample-queues", "--broker", "{broker}", "--interval", "often"], "of seconds"),
    ("sample-queues-empty-queue", ["sample-queues", "--broker", "{broker}", "--once", "--queue", ""], "non-empty"),
    ("sample-queues-no-broker", ["sample-queues", "--once"], "the following arguments are required: --broker"),
    ("sample-queues-broker-no-colon", ["sample-queues", "--broker", "cli_errors_broker"], "module:attribute"),
    ("sample-queues-broker-missing-module", ["sample-queues", "--broker", "no_such_module:b"], "cannot import"),
    ("sample-queues-not-a-broker", ["sample-queues", "--broker", "cli_errors_broker:not_a_broker"], "not a Dramatiq"),
    # demo
    ("demo-unknown-database", ["demo", "--database-url", "foo://x/y"], "unknown database 'foo'"),
    ("demo-broker-not-redis", ["demo", "--broker-url", "amqp://guest@127.0.0.1/"], "the demo runs on Redis"),
    ("demo-broker-refused", ["demo", "--broker-url", "redis://127.0.0.1:{port}/0"], "cannot reach the demo's Redis"),
    # the command itself
    ("no-command", [], "the following arguments are required: COMMAND"),
    ("unknown-command", ["frobnicate"], "argument COMMAND: invalid choice: 'frobnicate'"),
    ("no-database-configured", ["report"], "no metrics database configured"),
    # database URLs
    ("url-unparseable", ["report", "--database-url", "::::"], "the metrics database URL cannot be parsed"),
    ("url-unknown-dialect", ["report", "--database-url", "foo://x/y"], "unknown database 'foo'"),
    ("url-unsupported-database", ["migrate", "--database-url", "mysql+mysqldb://u@h/db"], "PostgreSQL or SQLite"),
    ("url-driver-missing", ["report", "--database-url", "postgresql+pg8000://u@h/db"], "pg8000 is missing"),
    ("url-asyncio-driver", ["rollup", "--database-url", "postgresql+asyncpg://u@h/db"], "is an asyncio driver"),
    ("url-sqlite-file-missing", ["report", "--database-url", "sqlite:///no/such/dir/x.db"], "no SQLite database"),
    ("migrate-downgrade-at-base", ["migrate", "--downgrade", "--revision", "-1", *URL_AT_BASE], "revision '-1'"),
    *(
        (f"{command}-on-a-garbage-file", on("{garbage}", command), "cannot use the metrics database: file is not a")
        for command in DATABASE_COMMANDS
    ),
    *(
        (f"{command}-on-a-refusing-server", on("{refused}", command), "cannot reach the metrics database")
        for command in DATABASE_COMMANDS
    ),
    *(
        (f"{command}-before-migrate", on("{unmigrated}", command), "run `dramatiq-opmetrics migrate` first")
        for command in DATABASE_COMMANDS
        if command != "migrate"
    ),
]  # fmt: skip

#: Cases also run through the installed program.
SUBPROCESS_CASES = [
    "report-days-huge",
    "dashboard-port-too-high",
    "url-driver-missing",
    "migrate-on-a-garbage-file",
    "sample-queues-on-a-refusing-server",
    "report-last-zero",
    "top-on-a-refusing-server",
    "fold-before-migrate",
]


#: Cases run without a database URL (the others get the migrated database unless they name one).
WITHOUT_DATABASE = {"no-command", "unknown-command", "no-database-configured"}


def arguments(case: str) -> list[str]:
    """The arguments of ``case``, given the migrated database when it names none, so the argument is what is
    wrong."""
    argv = next(argv for name, argv, _ in CASES if name == case)
    if case in WITHOUT_DATABASE or argv[0] == "demo" or "--database-url" in argv:
        return argv
    return [*argv, "--database-url", "{migrated}"]


def expected(case: str) -> str:
    return next(expected for name, _, expected in CASES if name == case)


def assert_one_error_line(status: int, stderr: str, expected: str) -> None:
    assert status == 2, stderr
    assert "Traceback" not in stderr
    assert stderr.count("\n") == 1 and stderr.endswith("\n"), stderr
    assert stderr.startswith("dramatiq-opmetrics: error: "), stderr
    assert expected in stderr


@pytest.mark.parametrize("case", [name for name, _, _ in CASES])
def test_every_bad_call_is_one_line_and_status_2(places: Places, capsys: pytest.CaptureFixture[str], case: str) -> None:
    status = main(places.fill(arguments(case)))
    assert_one_error_line(status, capsys.readouterr().err, expected(case))


@pytest.mark.parametrize("case", SUBPROCESS_CASES)
def test_the_installed_program_gives_the_same_one_line(places: Places, case: str) -> None:
    result = run_command([str(BIN / "dramatiq-opmetrics"), *places.fill(arguments(case))], env=os.environ)
    assert_one_error_line(result.returncode, result.stderr, expected(case))


def test_the_installed_program_refuses_an_argument_that_is_not_utf8(places: Places) -> None:
    command = [os.fsencode(BIN / "dramatiq-opmetrics"), b"report", b"--actor", b"\xff", b"--database-url"]
    result = subprocess.run([*command, places.migrated.encode()], capture_output=True, timeout=60)
    assert_one_error_line(result.returncode, result.stderr.decode(errors="replace"), "is not valid UTF-8 text")


def test_help_still_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--help"]) == 0
    assert "--days DAYS" in capsys.readouterr().out


def test_the_dashboard_command_checks_the_database_before_listening(places: Places) -> None:
    assert main(["dashboard", "--port", places.port, "--database-url", places.unmigrated]) == 2
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", int(places.port)))  # nothing was left listening


def test_the_limits_themselves_are_accepted(places: Places, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prune", "--retention-days", "36600", "--database-url", places.migrated]) == 0
    assert main(["rollup", "--since", "1970-01-01", "--database-url", places.migrated]) == 0
    assert main(["report", "--until", "2999-12-31", "--days", "1", "--database-url", places.migrated]) != 0
    assert capsys.readouterr().err.startswith("dramatiq-opmetrics: error: give either --days or --since/--until")
