"""A two-minute soak of a real ``dramatiq`` fleet: failures, two database outages and one SIGKILL.

Three worker processes (two in one ``dramatiq`` command consuming ``soak-a`` and ``soak-b``, one in
another consuming ``soak-victim``) work through a steady stream of messages, a tenth of which always
fail (one retry, so each fails twice: ``retried`` then ``final``). Their metrics database is a throwaway
PostgreSQL cluster that is stopped twice for several seconds; the victim process is SIGKILLed in
between. Every message of the surviving processes must be counted exactly, per actor, queue, error type
and outcome; the victim may lose only what it finished in its last flush interval; and the survivors'
memory stays flat.
"""

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
from raw_samples import raw_counts
from sqlalchemy.engine import URL

from dramatiq_opmetrics.database import make_engine
from dramatiq_opmetrics.migrate import upgrade
from faults.pg_cluster import PgCluster

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

HERE = Path(__file__).parent
TESTS = HERE.parent
#: Seconds the test keeps sending messages.
SEND_FOR_S = 100.0
#: Messages sent per second to each queue.
RATE_PER_QUEUE = 50
#: One message in this many always fails.
FAIL_EVERY = 10
#: (start, length) of the two database outages, seconds after the first message.
OUTAGES_S = ((15.0, 10.0), (65.0, 10.0))
#: When the victim process is SIGKILLed, seconds after the first message (the database is up then).
KILL_AT_S = 45.0
#: The writers' flush interval in the fleet, seconds.
FLUSH_INTERVAL_S = 0.5
#: What one worker process may grow by between the first and the last reading, in bytes. The fleet
#: processes about 5,000 messages per process between the readings: a leak of even 1 KiB per message would
#: exceed it, while allocator noise and the buffer's churn stay well below.
MEMORY_GROWTH_BOUND_BYTES = 5 * 1024 * 1024


def load_app(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Import the soak's application in this process, which then only sends messages."""
    for name in ("OPMETRICS_SOAK_NAMESPACE", "OPMETRICS_SOAK_REDIS_URL", "OPMETRICS_DATABASE_URL"):
        monkeypatch.setenv(name, env[name])
    spec = importlib.util.spec_from_file_location(f"soak_app_{uuid.uuid4().hex}", HERE / "soak_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def children(pid: int) -> list[int]:
    """The child processes of ``pid``."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def rss_bytes(pid: int) -> int:
    """The resident memory of process ``pid``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def start_fleet(env: dict[str, str], queues: list[str], processes: int, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "dramatiq", "soak_app", "--processes", str(processes), "--threads", "4"]
    command += ["--path", str(HERE), "--queues", *queues]
    return subprocess.Popen(command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_for_workers(fleet: subprocess.Popen[bytes], count: int, log: Path) -> list[int]:
    deadline = time.monotonic() + 30
    while len(pids := children(fleet.pid)) < count:
        assert fleet.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the fleet's worker processes did not start"
        time.sleep(0.1)
    return pids


def test_a_fleet_counts_every_message_through_failures_outages_and_a_sigkill(
    pg_cluster: PgCluster,
    cluster_url: URL,
    redis_url: str,
    redis_namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    cluster, database_url = pg_cluster, cluster_url
    upgrade(database_url)
    env = {
        **os.environ,
        "OPMETRICS_SOAK_NAMESPACE": redis_namespace,
        "OPMETRICS_SOAK_REDIS_URL": redis_url,
        "OPMETRICS_DATABASE_URL": database_url.render_as_string(hide_password=False),
        "OPMETRICS_FLUSH_INTERVAL_S": str(FLUSH_INTERVAL_S),
    }
    app = load_app(env, monkeypatch)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    survivors_log, victim_log = tmp_path / "survivors.log", tmp_path / "victim.log"
    survivors = start_fleet(env, ["soak-a", "soak-b"], 2, survivors_log)
    victim = start_fleet(env, ["soak-victim"], 1, victim_log)
    sent: Counter[tuple[str, bool]] = Counter()
    memory: dict[int, list[int]] = {}
    killed_at = 0.0
    try:
        survivor_pids = wait_for_workers(survivors, 2, survivors_log)
        (victim_pid,) = wait_for_workers(victim, 1, victim_log)
        actors = {"soak-a": app.work_a, "soak-b": app.work_b, "soak-victim": app.work_victim}
        started = time.monotonic()
        outages = list(OUTAGES_S)
        down_until = 0.0
        i = 0
        while (elapsed := time.monotonic() - started) < SEND_FOR_S:
            for queue, actor in actors.items():
                if queue == "soak-victim" and killed_at:
                    continue
                fail = i % FAIL_EVERY == 0
                actor.send(i, fail)
                sent[queue, fail] += 1
            i += 1
            if outages and elapsed >= outages[0][0]:
                cluster.stop()
                down_until = elapsed + outages.pop(0)[1]
            if down_until and elapsed >= down_until:
                cluster.start()
                down_until = 0.0
            if not killed_at and elapsed >= KILL_AT_S:
                os.kill(victim_pid, signal.SIGKILL)
                victim.kill()
                killed_at = time.time()
            if int(elapsed) % 10 == 0 and elapsed >= 30:
                for pid in survivor_pids:
                    memory.setdefault(pid, []).append(rss_bytes(pid))
            time.sleep(max(0.0, started + i / RATE_PER_QUEUE - time.monotonic()))
        assert not outages and not down_until and killed_at
        app.broker.close()

        def attempts(queue: str) -> int:
            return int(client.get(f"{redis_namespace}:done:{queue}") or 0) + int(
                client.get(f"{redis_namespace}:failed:{queue}") or 0
            )

        deadline = time.monotonic() + 120
        for queue in ("soak-a", "soak-b"):
            expected = sent[queue, False] + 2 * sent[queue, True]
            while attempts(queue) < expected:
                assert survivors.poll() is None, survivors_log.read_text()
                assert time.monotonic() < deadline, f"the fleet did not process every message of {queue} in time"
                time.sleep(0.2)
        time.sleep(3 * FLUSH_INTERVAL_S)
        for pid in survivor_pids:
            memory[pid].append(rss_bytes(pid))
        survivors.send_signal(signal.SIGTERM)
        assert survivors.wait(timeout=60) == 0, survivors_log.read_text()
    finally:
        for fleet in (survivors, victim):
            if fleet.poll() is None:
                fleet.kill()
                fleet.wait()
        for pid in children(survivors.pid) + children(victim.pid):
            os.kill(pid, signal.SIGKILL)

    engine = make_engine(database_url)
    try:
        counts = raw_counts(engine)
    finally:
        engine.dispose()
    expected_counts: Counter[tuple[str, str]] = Counter()
    for queue, actor in (("soak-a", "work_a"), ("soak-b", "work_b")):
        labels = f"actor:{actor}|queue:{queue}"
        attempts_made = sent[queue, False] + 2 * sent[queue, True]
        expected_counts["processing_time", labels] = attempts_made
        expected_counts["wait_time", labels] = attempts_made
        for outcome in ("retried", "final"):
            error_labels = f"actor:{actor}|error_type:SoakFailure|outcome:{outcome}|queue:{queue}"
            expected_counts["error", error_labels] = sent[queue, True]
    survivors_counts = Counter({key: n for key, n in counts.items() if "soak-victim" not in key[1]})
    assert survivors_counts == expected_counts

    # The victim loses at most what it finished in its last flush interval (and what was in flight).
    victim_labels = "actor:work_victim|queue:soak-victim"
    finished = [float(t) for t in client.lrange(f"{redis_namespace}:finished:soak-victim", 0, -1)]
    written = counts["processing_time", victim_labels]
    lost = len(finished) - written
    last_moments = sum(1 for t in finished if t >= killed_at - 2 * FLUSH_INTERVAL_S)
    print(f"victim: {len(finished)} attempts finished, {written} written, {lost} lost ({last_moments} in its last 1 s)")
    assert 0 <= lost <= last_moments
    assert counts["wait_time", victim_labels] == written

    for pid, readings in memory.items():
        print(f"worker {pid}: RSS {readings[0] / 2**20:.1f} MiB after 30 s, {readings[-1] / 2**20:.1f} MiB at the end")
        assert readings[-1] - readings[0] <= MEMORY_GROWTH_BOUND_BYTES, (pid, readings)
    log_text = survivors_log.read_text()
    assert "Dropped" not in log_text, log_text  # the buffers never filled
    assert "Gave up" not in log_text, log_text  # and the survivors wrote everything at SIGTERM
    client.close()
