"""The exporter scraped by a real Prometheus (1 s interval) while a real fleet processes messages: the
``dramatiq`` command with 2 worker processes on Redis, writing to PostgreSQL, folding the recent tier every
few seconds; the exporter is the ``dramatiq-opmetrics exporter`` command.

Read back through Prometheus' HTTP API: ``increase`` over the run of each of Dramatiq's counters is what the
actors did, no counter ever reset, ``histogram_quantile(0.95, ...)`` falls in the bucket of the project's own
p95 of the same messages, and the PromQL of a dashboard made for Dramatiq's Prometheus middleware works
as it is.
"""

from __future__ import annotations

import datetime as dt
import random
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import REDIS_URL
from prometheus_client.parser import text_string_to_metric_families
from prometheus_server import Prometheus
from sqlalchemy import Engine
from tcp_proxy import free_port
from test_fleet_signals import Fleet
from test_middleware_fleet import fleet_env, load_app  # noqa: F401 (fleet_env is a fixture)
from waiting import wait_until

from dramatiq_opmetrics.exporter import DURATION_BUCKETS_MS
from dramatiq_opmetrics.metric_types import MetricType
from dramatiq_opmetrics.series import query_totals

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

#: Messages of the run, per actor of tests/opmetrics_fleet_app.py.
SUCCEED, FLAKY, DOOMED = 60, 8, 4
#: Milliseconds each ``timed`` message runs: 80% below 250 ms, the rest from 300 to 450 ms, so that the p95
#: (rank 57 of 60) lies well inside the bucket (250, 500], far from its edges.
TIMED_MS = [random.Random(13).uniform(20, 200) for _ in range(48)] + [
    random.Random(14).uniform(300, 450) for _ in range(12)
]
DRAMATIQ_LABELS = {"queue_name", "actor_name"}
#: Seconds the fleet may take to process a phase's messages.
PROCESS_TIMEOUT_S = 120.0


@pytest.fixture
def exporter(fleet_env: dict[str, str], tmp_path: Path) -> Iterator[str]:  # noqa: F811
    """The ``dramatiq-opmetrics exporter`` command on a free port; its ``host:port``."""
    port = free_port()
    log = (tmp_path / "exporter.log").open("wb")
    url = fleet_env["OPMETRICS_DATABASE_URL"]
    command = [sys.executable, "-m", "dramatiq_opmetrics.cli", "exporter", "--database-url", url, "--port", str(port)]
    process = subprocess.Popen(command, env=fleet_env, stdout=log, stderr=subprocess.STDOUT)
    try:

        def ready() -> bool:
            assert process.poll() is None, (tmp_path / "exporter.log").read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
                    return bool(answer.status == 200)
            except (urllib.error.URLError, OSError):
                return False

        wait_until(ready, 30, "the exporter to answer", poll_s=0.1)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture
def fleet(fleet_env: dict[str, str], tmp_path: Path) -> Iterator[Fleet]:  # noqa: F811
    env = {
        **fleet_env,
        "OPMETRICS_FLUSH_INTERVAL_S": "0.2",
        "OPMETRICS_RECENT_FOLD_INTERVAL_S": "5",
        "OPMETRICS_QUEUE_DEPTH_INTERVAL_S": "1",
    }
    running = Fleet(env, tmp_path)
    try:
        yield running
    finally:
        running.stop_all()


def exported(target: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """What the exporter serves now."""
    with urllib.request.urlopen(f"http://{target}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def per_actor(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str) -> dict[str, float]:
    totals: dict[str, float] = {}
    for (sample, labels), number in found.items():
        if sample == name:
            actor = dict(labels)["actor_name"]
            totals[actor] = totals.get(actor, 0.0) + number
    return totals


def expected_messages(succeed: int, flaky: int, doomed: int, timed: int) -> dict[str, float]:
    """``dramatiq_messages_total`` per actor: every attempt (flaky's fail twice, doomed's run three times)."""
    return {"succeed": succeed, "flaky": 3 * flaky, "doomed": 3 * doomed, "timed": timed}


def first_scrape_after(prometheus: Prometheus, moment: float) -> float:
    """The timestamp of Prometheus' first successful scrape that started after ``moment``."""
    found: list[float] = []

    def scraped() -> bool:
        found[:] = [at for at in prometheus.scrape_times() if at > moment]
        return bool(found)

    wait_until(scraped, 20, "a scrape of the exporter", poll_s=0.2)
    return min(found)


def single(result: list[dict[str, Any]]) -> float:
    assert len(result) == 1, result
    return float(result[0]["value"][1])


def test_prometheus_sees_the_fleet_through_one_exporter_as_dramatiq_middleware_would_show_it(
    fleet: Fleet,
    fleet_env: dict[str, str],  # noqa: F811
    exporter: str,
    postgres_engine: Engine,
    redis_namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    app = load_app(fleet_env, monkeypatch)
    client = redis.Redis.from_url(REDIS_URL)
    with Prometheus(tmp_path, exporter) as prometheus:
        fleet.start("workers", processes=2, threads=4, queues=["fast", "slow", "timed"])

        def processed(succeed: int, flaky: int, doomed: int, timed: int) -> None:
            """Wait until the fleet has processed this many messages and the exporter serves them."""
            wanted = expected_messages(succeed, flaky, doomed, timed)

            def done() -> bool:
                assert fleet.commands["workers"].poll() is None, fleet.log("workers")
                return (
                    int(client.get(f"{redis_namespace}:done:succeed") or 0) == succeed
                    and int(client.get(f"{redis_namespace}:done:flaky") or 0) == flaky
                    and client.zcard(f"{redis_namespace}:slow.XQ") == doomed
                    and per_actor(exported(exporter), "dramatiq_messages_total") == wanted
                )

            wait_until(done, PROCESS_TIMEOUT_S, f"the fleet to process {wanted}\n{fleet.log('workers')}", poll_s=0.3)

        # Warm-up: every series exists, so that the run's increase starts from a scraped value.
        app.succeed.send(-1)
        app.flaky.send("warm-up")
        app.doomed.send()
        app.timed.send(1.0)
        processed(1, 1, 1, 1)
        before = first_scrape_after(prometheus, time.time())
        run_start = dt.datetime.now(dt.UTC)
        for index in range(SUCCEED):
            app.succeed.send(index)
        for index in range(FLAKY):
            app.flaky.send(f"token-{index}")
        for _ in range(DOOMED):
            app.doomed.send()
        for ms in TIMED_MS:
            app.timed.send(ms)
        processed(1 + SUCCEED, 1 + FLAKY, 1 + DOOMED, 1 + len(TIMED_MS))
        run_end = dt.datetime.now(dt.UTC)
        after = first_scrape_after(prometheus, time.time())
        # The range runs from one scrape to another exactly: increase() then extrapolates nothing.
        window = f"[{round((after - before) * 1000)}ms]"

        def increase(name: str, by: str = "", labels: str = "") -> list[dict[str, Any]]:
            return prometheus.query(f"sum{by}(increase({name}{labels}{window}))", at=after)

        run = expected_messages(SUCCEED, FLAKY, DOOMED, len(TIMED_MS))
        assert single(increase("dramatiq_messages_total")) == sum(run.values())
        by_actor = {
            entry["metric"]["actor_name"]: float(entry["value"][1])
            for entry in increase("dramatiq_messages_total", " by (actor_name)")
        }
        assert by_actor == run
        # Each flaky message fails twice, then succeeds; each doomed one fails three times, the last final.
        assert single(increase("dramatiq_message_errors_total")) == 2 * FLAKY + 3 * DOOMED
        assert single(increase("dramatiq_message_retries_total")) == 2 * FLAKY + 2 * DOOMED
        assert single(increase("dramatiq_message_rejects_total")) == DOOMED
        assert single(increase("dramatiq_message_duration_milliseconds_count")) == sum(run.values())
        # Not one counter or bucket went down between two scrapes (a fold ran every 5 s meanwhile).
        for name in ("dramatiq_messages_total", "dramatiq_message_duration_milliseconds_bucket"):
            assert single(prometheus.query(f"sum(resets({name}{window}))", at=after)) == 0

        # p95: Prometheus' interpolation within its bucket, and the project's own for the same messages.
        prometheus_p95 = single(
            prometheus.query(
                "histogram_quantile(0.95, sum by (le) (increase("
                f'dramatiq_message_duration_milliseconds_bucket{{actor_name="timed"}}{window})))',
                at=after,
            )
        )
        (ours,) = query_totals(
            postgres_engine, run_start, run_end, metric_type=MetricType.PROCESSING_TIME, labels={"actor": "timed"}
        )
        assert ours.count == len(TIMED_MS)
        assert ours.p95 is not None
        assert 250 < prometheus_p95 <= 500
        assert 250 < ours.p95 <= 500, ours
        assert abs(ours.p95 - sorted(TIMED_MS)[56]) <= 0.05 * ours.p95 + 15  # its sleep, plus scheduling

        # A dashboard made for Dramatiq's Prometheus middleware, unchanged.
        rates = prometheus.query("sum by (actor_name) (rate(dramatiq_messages_total[5m]))", at=after)
        assert {entry["metric"]["actor_name"] for entry in rates} == set(run)
        assert all(float(entry["value"][1]) > 0 for entry in rates)
        quantiles = prometheus.query(
            "histogram_quantile(0.95, sum by (le, actor_name)"
            " (rate(dramatiq_message_duration_milliseconds_bucket[5m])))",
            at=after,
        )
        timed = [entry for entry in quantiles if entry["metric"]["actor_name"] == "timed"]
        assert 100 < single(timed) <= 500
        series = prometheus.api("series", **{"match[]": "dramatiq_message_duration_milliseconds_bucket"})
        assert {key for entry in series for key in entry} == {"__name__", "job", "instance", "le", *DRAMATIQ_LABELS}
        # Dramatiq's own bucket bounds, as its prometheus_client writes them.
        bounds = {entry["le"] for entry in series}
        assert bounds == {str(float(bound)) for bound in DURATION_BUCKETS_MS} | {"+Inf"}
        names = {entry["__name__"] for entry in prometheus.api("series", **{"match[]": '{job="opmetrics"}'})}
        assert {"dramatiq_opmetrics_workers", "dramatiq_opmetrics_wait_time_milliseconds_bucket"} <= names
    client.close()
