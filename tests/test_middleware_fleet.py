"""The OpMetrics middleware in a real ``dramatiq`` worker fleet on Redis, writing to PostgreSQL."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest
import redis
from conftest import REDIS_URL
from raw_samples import raw_counts
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

TESTS = Path(__file__).parent
SUCCEED, FLAKY, DOOMED, REFUSES, STALE = 60, 10, 5, 5, 5


@pytest.fixture
def fleet_env(redis_namespace: str, postgres_url: URL, postgres_engine: Engine) -> dict[str, str]:
    return {
        **os.environ,
        "OPMETRICS_FLEET_NAMESPACE": redis_namespace,
        "OPMETRICS_FLEET_REDIS_URL": REDIS_URL,
        "OPMETRICS_DATABASE_URL": postgres_url.render_as_string(hide_password=False),
        # Longer than the test: what the fleet writes, it writes when it stops.
        "OPMETRICS_FLUSH_INTERVAL_S": "600",
    }


def load_app(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, module: str = "opmetrics_fleet_app.py"
) -> ModuleType:
    """Import the fleet's application (``module`` of the tests) in this process, which then only sends
    messages (a web process)."""
    for name in ("OPMETRICS_FLEET_NAMESPACE", "OPMETRICS_FLEET_REDIS_URL", "OPMETRICS_DATABASE_URL"):
        monkeypatch.setenv(name, env[name])
    spec = importlib.util.spec_from_file_location(f"fleet_app_{uuid.uuid4().hex}", TESTS / module)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_worker_fleet_records_exactly_one_sample_per_event_and_writes_them_all_on_sigterm(
    fleet_env: dict[str, str],
    redis_namespace: str,
    postgres_engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    app = load_app(fleet_env, monkeypatch)
    for i in range(SUCCEED):
        app.succeed.send(i)
    for i in range(FLAKY):
        app.flaky.send(f"token-{i}")
    for _ in range(DOOMED):
        app.doomed.send()
    for _ in range(REFUSES):
        app.refuses.send()
    for _ in range(STALE):
        app.stale.send_with_options(max_age=1)
    assert not app.opmetrics.writer.running  # this process only sends: no thread, no connection
    app.broker.close()

    log = (tmp_path / "fleet.log").open("w")
    fleet = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dramatiq",
            "opmetrics_fleet_app",
            "--processes",
            "2",
            "--threads",
            "3",
            "--path",
            str(TESTS),
        ],
        env=fleet_env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:

        def finished() -> bool:
            return (
                int(client.get(f"{redis_namespace}:done:succeed") or 0) == SUCCEED
                and int(client.get(f"{redis_namespace}:done:flaky") or 0) == FLAKY
                and client.zcard(f"{redis_namespace}:slow.XQ") == DOOMED
                and client.zcard(f"{redis_namespace}:default.XQ") == REFUSES + STALE
            )

        deadline = time.monotonic() + 120
        while not finished():
            assert fleet.poll() is None, (tmp_path / "fleet.log").read_text()
            assert time.monotonic() < deadline, "the fleet did not process every message in time"
            time.sleep(0.2)
        assert raw_counts(postgres_engine) == Counter()  # nothing flushed yet: the interval is 600 s
        fleet.send_signal(signal.SIGTERM)
        assert fleet.wait(timeout=90) == 0, (tmp_path / "fleet.log").read_text()
    finally:
        if fleet.poll() is None:
            fleet.kill()
            fleet.wait()
        log.close()
        client.close()

    assert int(redis.Redis.from_url(REDIS_URL).get(f"{redis_namespace}:done:stale") or 0) == 0
    fast = "actor:succeed|queue:fast"
    assert raw_counts(postgres_engine) == Counter(
        {
            ("processing_time", fast): SUCCEED,
            ("wait_time", fast): SUCCEED,
            ("prompt_tokens", "actor:succeed|model:model-x|queue:fast"): SUCCEED,
            ("completion_tokens", "actor:succeed|model:model-x|queue:fast"): SUCCEED,
            ("confidence", "actor:succeed|bucket:0.7-0.8|queue:fast"): SUCCEED,
            ("processing_time", "actor:flaky|queue:slow"): 3 * FLAKY,
            ("wait_time", "actor:flaky|queue:slow"): 3 * FLAKY,
            ("error", "actor:flaky|error_type:ConnectionError|outcome:retried|queue:slow"): 2 * FLAKY,
            ("processing_time", "actor:doomed|queue:slow"): 3 * DOOMED,
            ("wait_time", "actor:doomed|queue:slow"): 3 * DOOMED,
            ("error", "actor:doomed|error_type:KeyError|outcome:retried|queue:slow"): 2 * DOOMED,
            ("error", "actor:doomed|error_type:KeyError|outcome:final|queue:slow"): DOOMED,
            ("processing_time", "actor:refuses|queue:default"): REFUSES,
            ("wait_time", "actor:refuses|queue:default"): REFUSES,
            ("error", "actor:refuses|error_type:ValueError|outcome:final|queue:default"): REFUSES,
            ("skipped", "actor:stale|queue:default"): STALE,
        }
    )
    with postgres_engine.connect() as connection:
        negative = connection.execute(text("SELECT count(*) FROM operational_metrics WHERE value < 0")).scalar_one()
    assert negative == 0
    log_text = (tmp_path / "fleet.log").read_text()
    assert "Could not write" not in log_text and "Dropped" not in log_text
