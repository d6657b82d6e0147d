"""Everything dramatiq-opmetrics does against PostgreSQL also works through PgBouncer in transaction pooling
mode, given ``?prepare_threshold=none`` in the URL and the schema set on the role (see tests/pgbouncer.py).

Workers writing samples (binary COPY), queue depth sampling with interval claims in the database, the
rollup, the report, the dashboard and ``migrate`` all run through a real PgBouncer whose pool has a single
server connection shared by every client.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import pytest
from command_line import BIN, run_command, url_text
from conftest import POSTGRES_URL
from dramatiq.brokers.stub import StubBroker
from pgbouncer import STATEMENT_TIMEOUT, PgBouncer
from raw_samples import at, insert_samples, raw_counts
from sqlalchemy import Engine, text
from sqlalchemy.exc import ProgrammingError
from tcp_proxy import free_port
from waiting import wait_until

from dramatiq_opmetrics import OpMetrics, record_token_usage
from dramatiq_opmetrics.cli import main
from dramatiq_opmetrics.database import make_engine
from dramatiq_opmetrics.interval_claims import DatabaseIntervalClaim
from dramatiq_opmetrics.metric_types import MetricType
from dramatiq_opmetrics.migrate import current_revision, upgrade

pytestmark = pytest.mark.postgres

#: Messages the workers process through PgBouncer (several batches, so psycopg would prepare statements).
MESSAGES = 300


@pytest.fixture
def bouncer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PgBouncer]:
    """A PgBouncer of the test's own with an empty schema behind it.

    As the README says for PgBouncer, the engines set no statement timeout of their own (PgBouncer refuses
    the ``options`` startup parameter): the role behind it has one.
    """
    monkeypatch.setenv("OPMETRICS_STATEMENT_TIMEOUT_S", "0")
    monkeypatch.setenv("OPMETRICS_MAINTENANCE_STATEMENT_TIMEOUT_S", "0")
    with PgBouncer(POSTGRES_URL, tmp_path) as bouncer:
        yield bouncer


@pytest.fixture
def bouncer_engine(bouncer: PgBouncer) -> Iterator[Engine]:
    """An engine through ``bouncer`` on a migrated schema."""
    upgrade(bouncer.url)
    engine = make_engine(bouncer.url)
    yield engine
    engine.dispose()


def test_clients_share_the_server_connection_so_prepared_statements_collide_without_the_parameter(
    bouncer: PgBouncer,
) -> None:
    engine = make_engine(bouncer.url_with_prepared_statements)
    try:
        first, second = engine.connect(), engine.connect()
        with pytest.raises(ProgrammingError, match=r"prepared statement \S+ already exists"):
            for _ in range(10):  # psycopg prepares a query from its sixth run on a connection
                pids = set()
                for connection in (first, second):
                    pids.add(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())
                    connection.commit()
                assert len(pids) == 1  # transaction pooling: two clients, one server session
        first.close()
        second.close()
    finally:
        engine.dispose()


def test_with_the_parameter_no_statement_is_prepared_on_the_server(bouncer: PgBouncer) -> None:
    engine = make_engine(bouncer.url)
    try:
        with engine.connect() as first, engine.connect() as second:
            for _ in range(10):
                for connection in (first, second):
                    schema = connection.execute(text("SELECT current_schema()")).scalar_one()
                    connection.commit()
                    assert schema == bouncer.role  # the role's search_path, not a startup option
            assert first.execute(text("SELECT count(*) FROM pg_prepared_statements")).scalar_one() == 0
            first.commit()
    finally:
        engine.dispose()


def test_two_concurrent_migrates_through_the_bouncer_both_succeed(bouncer: PgBouncer) -> None:
    command = [str(BIN / "dramatiq-opmetrics"), "migrate", "--database-url", url_text(bouncer.url)]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(process.wait(timeout=60), process.communicate()[1]) for process in processes]
    assert results == [(0, ""), (0, "")]
    assert current_revision(bouncer.direct_url) == current_revision(bouncer.url) is not None


def test_workers_write_every_sample_and_claim_queue_depth_intervals_through_the_bouncer(
    bouncer: PgBouncer, bouncer_engine: Engine
) -> None:
    opmetrics = OpMetrics(bouncer.url, flush_interval_s=0.1, batch_size=50, queue_depth_interval_s=0.5)
    broker = StubBroker()
    broker.add_middleware(opmetrics)
    broker.emit_after("process_boot")

    @dramatiq.actor(broker=broker, queue_name="llm")
    def summarise(i: int) -> None:
        record_token_usage("model-x", i, 1)

    for i in range(MESSAGES):
        summarise.send(i)
    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=4)
    worker.start()
    try:
        broker.join("llm")
        worker.join()
        assert opmetrics.queue_depth_sampler is not None
        assert isinstance(opmetrics.queue_depth_sampler.claimer, DatabaseIntervalClaim)
        wait_until(
            lambda: raw_counts(bouncer_engine)[("queue_depth", "queue:llm|state:ready")] >= 2,
            timeout_s=30,
            what="two intervals of queue depth samples",
        )
    finally:
        worker.stop()
    counts = raw_counts(bouncer_engine)
    for metric_type in ("processing_time", "wait_time"):
        assert counts[(metric_type, "actor:summarise|queue:llm")] == MESSAGES
    for metric_type in ("prompt_tokens", "completion_tokens"):
        assert counts[(metric_type, "actor:summarise|model:model-x|queue:llm")] == MESSAGES
    with bouncer_engine.connect() as connection:
        claims = connection.execute(text("SELECT count(*) FROM opmetrics_interval_claims")).scalar_one()
    assert claims == counts[("queue_depth", "queue:llm|state:ready")]  # one claim, one sample per interval


def test_rollup_report_and_dashboard_work_through_the_bouncer(
    bouncer: PgBouncer, bouncer_engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    labels = {"actor": "summarise", "queue": "llm"}
    samples = [(MetricType.PROCESSING_TIME, labels, float(i), at(yesterday, i)) for i in range(50)]
    insert_samples(bouncer_engine, samples)
    url = ["--database-url", url_text(bouncer.url)]

    assert main(["rollup", *url]) == 0
    assert capsys.readouterr().out.startswith(f"rolled up {yesterday}: 50 rows, 1 label sets, 1 daily rows")
    assert main(["report", "--days", "2", "--json", *url]) == 0
    report = json.loads(capsys.readouterr().out)
    [row] = report["metrics"]["processing_time"]["rows"]
    assert row["count"] == 50

    port = free_port()
    command = [sys.executable, "-m", "dramatiq_opmetrics.cli", "dashboard", "--port", str(port), *url]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().startswith(f"dramatiq-opmetrics dashboard on http://127.0.0.1:{port}/")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/?days=7", timeout=30) as response:
            assert response.status == 200
            assert b"summarise" in response.read()
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert run_command([str(BIN / "dramatiq-opmetrics"), "prune", "--dry-run", *url]).returncode == 0


def test_the_exporters_first_scrape_through_the_bouncer_reads_its_months_and_its_recent_days(
    bouncer_engine: Engine,
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from dramatiq_opmetrics.exporter import FleetCollector

    today = dt.datetime.now(dt.UTC).date()
    labels = {"actor": "summarise", "queue": "llm"}
    insert_samples(bouncer_engine, [(MetricType.PROCESSING_TIME, labels, 5.0, at(today - dt.timedelta(days=1), 9))] * 7)
    assert main(["rollup", "--database-url", url_text(bouncer_engine.url)]) == 0
    insert_samples(bouncer_engine, [(MetricType.PROCESSING_TIME, labels, 5.0, at(today, 1))] * 3)
    # A first read takes its two parts on two connections: with one server connection, one after the other.
    for _ in range(2):
        body, _ = FleetCollector(bouncer_engine).exposition()
        [messages] = [
            sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples
            if sample.name == "dramatiq_messages_total"
        ]
        assert messages == 10


def test_behind_pgbouncer_the_engines_send_no_startup_option_and_the_roles_statement_timeout_applies(
    bouncer_engine: Engine,
) -> None:
    with bouncer_engine.connect() as connection:
        assert connection.exec_driver_sql("SHOW statement_timeout").scalar_one() == STATEMENT_TIMEOUT
