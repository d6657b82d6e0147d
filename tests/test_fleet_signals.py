"""Oldest-message age, stalled queues, workers online and the recent tier in a real ``dramatiq`` fleet on
Redis, writing to PostgreSQL.

Two ``dramatiq`` commands share one Redis namespace: ``main`` (2 processes, 2 threads each, consuming
``fast`` and ``default``) and ``side`` (1 process consuming ``slow``). Nobody consumes ``stuck``, which holds
messages sent at a known time. Sampling runs every :data:`INTERVAL_S` second, and the fleet folds the recent
tier itself every :data:`FOLD_INTERVAL_S` seconds (one of its three processes per interval).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conftest import REDIS_URL
from raw_samples import stored_oldest_ages, stored_queue_depths, stored_worker_samples
from sqlalchemy import Engine
from test_middleware_fleet import TESTS, fleet_env, load_app  # noqa: F401 (fleet_env is a fixture)
from tier_counts import folded_raw_counts, tier_counts
from waiting import wait_until

from dramatiq_opmetrics.interval_claims import interval_start
from dramatiq_opmetrics.recent_tier import FOLD_JOB, bucket_floor
from dramatiq_opmetrics.series import query_stalled

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

#: Seconds between samples: short, so the test is quick; the checks allow one interval of slack.
INTERVAL_S = 1.0
#: Seconds between folds of the recent tier by the fleet.
FOLD_INTERVAL_S = 2.0
#: How many messages wait on the stuck queue.
STUCK_MESSAGES = 3
#: How long ago the stuck queue's first message was sent, in milliseconds.
STUCK_FOR_MS = 30_000
MAIN_QUEUES, SIDE_QUEUES = "default,fast", "slow"
#: Seconds a command may take to stop after SIGTERM before its process group is killed.
STOP_TIMEOUT_S = 15.0
DRAMATIQ = [sys.executable, "-m", "dramatiq", "opmetrics_fleet_app", "--path", str(TESTS)]


class Fleet:
    """The ``dramatiq`` commands of the test, stopped (killed if need be) at the end."""

    def __init__(self, env: dict[str, str], log_dir: Path, command: list[str] = DRAMATIQ) -> None:
        self.env = env
        self.log_dir = log_dir
        self.command = command
        self.commands: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, processes: int, threads: int, queues: list[str]) -> None:
        log = (self.log_dir / f"{name}.log").open("w")
        self.commands[name] = subprocess.Popen(
            [*self.command, "--processes", str(processes), "--threads", str(threads), "--queues", *queues],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a process group of its own: stop_all reaches its workers too
        )
        log.close()

    def children(self, name: str) -> list[int]:
        """The worker processes of the command ``name`` (from /proc)."""
        pid = self.commands[name].pid
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text()

    def stop_all(self) -> None:
        """SIGTERM each command, then SIGKILL what is left of its process group after
        :data:`STOP_TIMEOUT_S`: killing only the ``dramatiq`` parent would leave its workers running, each
        holding database connections."""
        for command in self.commands.values():
            if command.poll() is None:
                command.send_signal(signal.SIGTERM)
        for command in self.commands.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                command.wait(timeout=STOP_TIMEOUT_S)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(command.pid, signal.SIGKILL)
            command.wait()


@pytest.fixture
def fleet(fleet_env: dict[str, str], tmp_path: Path) -> Iterator[Fleet]:  # noqa: F811
    env = {
        **fleet_env,
        "OPMETRICS_QUEUE_DEPTH_INTERVAL_S": str(INTERVAL_S),
        "OPMETRICS_RECENT_FOLD_INTERVAL_S": str(FOLD_INTERVAL_S),
        "OPMETRICS_FLUSH_INTERVAL_S": "0.2",
    }
    running = Fleet(env, tmp_path)
    try:
        yield running
    finally:
        running.stop_all()


def processes_per_interval(engine: Engine) -> dict[dt.datetime, Counter[str]]:
    """For each interval start: how many ``worker_threads`` samples each ``queues`` label has (processes online)."""
    online: dict[dt.datetime, Counter[str]] = {}
    for kind, _, queues, _, recorded_at in stored_worker_samples(engine):
        if kind == "worker_threads":
            online.setdefault(interval_start(recorded_at, INTERVAL_S), Counter())[queues] += 1
    return online


def latest_interval_with(engine: Engine, expected: Counter[str]) -> bool:
    online = processes_per_interval(engine)
    return any(counts == expected for counts in online.values())


def assert_only_the_stuck_queue_is_stalled(engine: Engine, since: dt.datetime) -> None:
    """Per minute from ``since`` on, the stuck queue is stalled wherever its depth was sampled, and no other
    queue ever is."""
    since = bucket_floor(since, 1)  # whole minutes: buckets are not clipped at the start
    until = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=2)  # every sample before this is written
    stalled = query_stalled(engine, since, until, step=dt.timedelta(minutes=1))
    depths = stored_queue_depths(engine)
    sampled = {
        bucket_floor(at, 1) for queue, state, _, at in depths if (queue, state) == ("stuck", "ready") and at < until
    }
    assert sampled
    assert {(bucket.queue, bucket.start, bucket.ready) for bucket in stalled} == {
        ("stuck", minute, STUCK_MESSAGES) for minute in sampled
    }


def test_a_stuck_queues_age_grows_with_time_and_workers_drop_out_after_sigkill_and_sigterm(
    fleet: Fleet,
    fleet_env: dict[str, str],  # noqa: F811 (the fixture imported above)
    postgres_engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started_at = dt.datetime.now(dt.UTC)
    app = load_app(fleet_env, monkeypatch)
    sent_ms = int(time.time() * 1000) - STUCK_FOR_MS
    for offset_ms in range(0, STUCK_MESSAGES * 5_000, 5_000):
        app.broker.enqueue(app.stuck.message().copy(message_timestamp=sent_ms + offset_ms))
    app.broker.close()

    fleet.start("main", processes=2, threads=2, queues=["fast", "default"])
    fleet.start("side", processes=1, threads=1, queues=["slow"])
    wait_until(
        lambda: latest_interval_with(postgres_engine, Counter({MAIN_QUEUES: 2, SIDE_QUEUES: 1})),
        timeout_s=25,
        what=f"an interval with all three processes online\n{fleet.log('main')}\n{fleet.log('side')}",
    )

    def stuck_ages() -> list[tuple[float, dt.datetime]]:
        return [(value, at) for queue, value, at in stored_oldest_ages(postgres_engine) if queue == "stuck"]

    wait_until(lambda: len(stuck_ages()) >= 3, timeout_s=10, what="three oldest-age samples of the stuck queue")

    # The stuck queue: one sample per interval for the whole fleet, its age the time since the first send.
    ages = stuck_ages()
    starts = [interval_start(recorded_at, INTERVAL_S) for _, recorded_at in ages]
    assert len(set(starts)) == len(starts)
    for value, recorded_at in ages:
        assert value == pytest.approx(recorded_at.timestamp() - sent_ms / 1000, abs=0.001)
    for (earlier, earlier_at), (later, later_at) in itertools.pairwise(ages):
        assert later - earlier == pytest.approx((later_at - earlier_at).total_seconds(), abs=0.001)
    latest_value, _ = ages[-1]
    assert 0 <= (time.time() - sent_ms / 1000) - latest_value <= INTERVAL_S + 1.0  # within an interval (and a flush)

    # Stalled: the stuck queue had ready messages and finished none; the others had none ready.
    assert_only_the_stuck_queue_is_stalled(postgres_engine, started_at)

    # Nobody calls fold: the fleet's own folders put the rows into the tier, once their minute is over.
    wait_until(
        lambda: tier_counts(postgres_engine)["worker_threads"] > 0,
        timeout_s=60 + 3 * FOLD_INTERVAL_S + 5,
        what=f"the fleet to fold the recent tier\n{fleet.log('main')}\n{fleet.log('side')}",
    )

    # Threads online and busy: 2 x 2 threads for main, 1 for side, nothing to do.
    values = {(kind, queues, value) for kind, _, queues, value, _ in stored_worker_samples(postgres_engine)}
    assert values == {
        ("worker_threads", MAIN_QUEUES, 2),
        ("busy_threads", MAIN_QUEUES, 0),
        ("worker_threads", SIDE_QUEUES, 1),
        ("busy_threads", SIDE_QUEUES, 0),
    }

    # SIGKILL of the side command's only process: it drops out; main's two go on.
    (side_child,) = fleet.children("side")
    os.kill(side_child, signal.SIGKILL)
    killed_at = dt.datetime.now(dt.UTC)
    first_full = interval_start(killed_at, INTERVAL_S) + dt.timedelta(seconds=INTERVAL_S)
    # Wait for a third interval to begin: the two before it are complete (both processes' samples written).
    third = first_full + dt.timedelta(seconds=2 * INTERVAL_S)
    wait_until(
        lambda: any(start >= third for start in processes_per_interval(postgres_engine)),
        timeout_s=10,
        what="three intervals after the SIGKILL",
    )
    online = processes_per_interval(postgres_engine)
    after_kill = {start: counts for start, counts in online.items() if first_full <= start < third}
    assert all(counts == Counter({MAIN_QUEUES: 2}) for counts in after_kill.values()), online
    assert len(after_kill) == 2, online
    side_samples = [at for _, _, queues, _, at in stored_worker_samples(postgres_engine) if queues == SIDE_QUEUES]
    assert max(side_samples) <= killed_at

    # SIGTERM of the main command: both its processes stop recording within one interval.
    fleet.commands["main"].send_signal(signal.SIGTERM)
    terminated_at = dt.datetime.now(dt.UTC)
    assert fleet.commands["main"].wait(timeout=20) == 0, fleet.log("main")
    latest = max(at for *_, at in stored_worker_samples(postgres_engine))
    assert latest <= terminated_at + dt.timedelta(seconds=INTERVAL_S)
    time.sleep(INTERVAL_S * 1.5)
    assert max(at for *_, at in stored_worker_samples(postgres_engine)) == latest  # nobody is left to record

    # Three processes folded (each interval claimed by one of them on Redis), and no raw row is counted twice.
    claims = list(redis.Redis.from_url(REDIS_URL).scan_iter(f"{fleet_env['OPMETRICS_FLEET_NAMESPACE']}:*{FOLD_JOB}*"))
    assert claims
    assert tier_counts(postgres_engine) == folded_raw_counts(postgres_engine)
    assert tier_counts(postgres_engine)["worker_threads"] > 0
