"""Concurrent ``dramatiq-opmetrics migrate`` runs (every host migrating at deploy time) serialise.

Real processes of the installed command, two at a time on an empty database, many rounds: before the lock,
one of the two failed in about a third of the rounds (a unique violation on PostgreSQL, "table already
exists" on SQLite).
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from command_line import BIN, url_text
from conftest import POSTGRES_URL, libpq_conninfo
from sqlalchemy.engine import URL, make_url

from dramatiq_opmetrics.migrate import current_revision, script_location

#: Rounds of two concurrent runs on PostgreSQL (each about a second).
POSTGRES_ROUNDS = 25
#: Rounds on SQLite (the race failed 2 rounds in 10 there before the lock; fewer rounds keep the suite quick).
SQLITE_ROUNDS = 5
#: Longest a round may take, in seconds.
ROUND_TIMEOUT_S = 60


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory(str(script_location())).get_current_head()
    assert head is not None
    return head


def run_two_migrates(url: URL) -> list[tuple[int, str]]:
    """Start two ``migrate`` processes on ``url`` at once; return each one's exit status and stderr."""
    command = [str(BIN / "dramatiq-opmetrics"), "migrate", "--database-url", url_text(url)]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = []
    for process in processes:
        _, stderr = process.communicate(timeout=ROUND_TIMEOUT_S)
        results.append((process.returncode, stderr))
    return results


def assert_rounds_all_succeed(rounds: int, fresh_database: Callable[[int], URL]) -> None:
    head = head_revision()
    failures = []
    for round_number in range(rounds):
        url = fresh_database(round_number)
        results = run_two_migrates(url)
        if [status for status, _ in results] != [0, 0] or current_revision(url) != head:
            failures.append((round_number, results))
    assert failures == []


@pytest.mark.postgres
def test_two_concurrent_migrates_on_an_empty_postgresql_schema_both_succeed_every_round() -> None:
    conninfo = libpq_conninfo(POSTGRES_URL)
    schemas: list[str] = []

    def fresh_schema(_round: int) -> URL:
        schema = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(conninfo, autocommit=True) as admin:
            admin.execute(f"CREATE SCHEMA {schema}")
        schemas.append(schema)
        return POSTGRES_URL.update_query_dict({"options": f"-csearch_path={schema}"})

    try:
        assert_rounds_all_succeed(POSTGRES_ROUNDS, fresh_schema)
    finally:
        with psycopg.connect(conninfo, autocommit=True) as admin:
            for schema in schemas:
                admin.execute(f"DROP SCHEMA {schema} CASCADE")


def test_two_concurrent_migrates_on_an_empty_sqlite_file_both_succeed_every_round(tmp_path: Path) -> None:
    assert_rounds_all_succeed(SQLITE_ROUNDS, lambda n: make_url(f"sqlite:///{tmp_path / f'metrics-{n}.sqlite3'}"))
