from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import dramatiq
import pytest
from command_line import BIN, url_text
from conftest import RABBITMQ_URL, REDIS_URL
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import dq_name, xq_name
from raw_samples import insert_samples, stored_oldest_ages, stored_queue_depths
from series_samples import fleet_samples
from sqlalchemy.engine import URL
from tier_counts import folded_raw_counts, tier_counts
from waiting import wait_until

from dramatiq_opmetrics.cli import main
from dramatiq_opmetrics.database import make_engine
from dramatiq_opmetrics.interval_claims import interval_start
from dramatiq_opmetrics.migrate import upgrade
from dramatiq_opmetrics.queue_depth_sampler import QueueDepthSampler

#: Seconds between samples in the multi-process test: short, yet long enough for a loaded machine.
FLEET_INTERVAL_S = 2.0


def message(queue: str) -> dramatiq.Message[object]:
    return dramatiq.Message(queue_name=queue, actor_name="noop", args=(), kwargs={}, options={})


@pytest.fixture
def broker_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], str]]:
    """Writes a module defining ``broker`` in a fresh directory (the current one); returns ``module:broker``."""
    monkeypatch.chdir(tmp_path)
    names: list[str] = []

    def write(source: str) -> str:
        name = f"opm_broker_{uuid.uuid4().hex[:10]}"
        (tmp_path / f"{name}.py").write_text(source)
        names.append(name)
        return f"{name}:broker"

    yield write
    for name in names:
        sys.modules.pop(name, None)
    while str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))


def redis_module_source(namespace: str, queues: list[str]) -> str:
    return (
        "from dramatiq.brokers.redis import RedisBroker\n"
        f"broker = RedisBroker(url={REDIS_URL!r}, namespace={namespace!r})\n"
        f"for queue in {queues!r}:\n"
        "    broker.declare_queue(queue)\n"
    )


def sample_queues_once(spec: str, url: URL, *options: str) -> int:
    """Run ``dramatiq-opmetrics sample-queues --once`` in this process; return its exit status."""
    return main(["sample-queues", "--broker", spec, "--once", "--database-url", url_text(url), *options])


def stored_depths(url: URL) -> list[tuple[str, str, float, dt.datetime]]:
    """Every stored queue_depth sample as (queue, state, value, recorded_at)."""
    engine = make_engine(url)
    try:
        return stored_queue_depths(engine)
    finally:
        engine.dispose()


def stored_ages(url: URL) -> list[tuple[str, float, dt.datetime]]:
    """Every stored oldest_message_age sample as (queue, value, recorded_at)."""
    engine = make_engine(url)
    try:
        return stored_oldest_ages(engine)
    finally:
        engine.dispose()


def test_once_writes_one_sample_per_queue_and_state_to_the_database(
    migrated_url: URL,
    redis_broker: RedisBroker,
    unique_queue: Callable[[str], str],
    broker_module: Callable[[str], str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    emails, extra = unique_queue("emails"), unique_queue("extra")
    sent_ms = time.time() * 1000 - 90_000
    for index in range(4):
        redis_broker.enqueue(message(emails).copy(message_timestamp=int(sent_ms) + index))
    redis_broker.enqueue(message(emails), delay=600_000)
    spec = broker_module(redis_module_source(redis_broker.namespace, [emails]))

    status = sample_queues_once(spec, migrated_url, "--queue", extra)

    assert status == 0
    assert "sampled 2 queues: 10 samples" in capsys.readouterr().out
    assert sorted((q, s, v) for q, s, v, _ in stored_depths(migrated_url)) == sorted(
        [(emails, "ready", 4), (emails, "delayed", 1), (emails, "dead", 0), (emails, "in_flight", 0)]
        + [(extra, state, 0) for state in ("ready", "delayed", "dead", "in_flight")]
    )
    ages = {queue: (value, recorded_at) for queue, value, recorded_at in stored_ages(migrated_url)}
    assert ages.keys() == {emails, extra}
    assert ages[extra][0] == 0
    age_s, recorded_at = ages[emails]
    assert age_s == pytest.approx(recorded_at.timestamp() - int(sent_ms) / 1000, abs=0.002)


def test_once_again_in_the_same_interval_writes_nothing(
    migrated_url: URL,
    redis_broker: RedisBroker,
    unique_queue: Callable[[str], str],
    broker_module: Callable[[str], str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = broker_module(redis_module_source(redis_broker.namespace, [unique_queue("q")]))
    assert sample_queues_once(spec, migrated_url, "--interval", "3600") == 0
    assert sample_queues_once(spec, migrated_url, "--interval", "3600") == 0
    assert "already sampled by another process" in capsys.readouterr().out
    assert len(stored_depths(migrated_url)) == 4


def test_a_sidecar_and_the_workers_share_the_claims(
    migrated_url: URL,
    redis_broker: RedisBroker,
    unique_queue: Callable[[str], str],
    broker_module: Callable[[str], str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    queue = unique_queue("q")
    redis_broker.declare_queue(queue)
    spec = broker_module(redis_module_source(redis_broker.namespace, [queue]))
    worker_sampler = QueueDepthSampler(
        RedisBroker(url=REDIS_URL, namespace=redis_broker.namespace), list, interval_s=3600
    )
    worker_sampler.broker.declare_queue(queue)
    assert worker_sampler.sample() is not None  # a worker took this interval
    assert sample_queues_once(spec, migrated_url, "--interval", "3600") == 0
    assert "already sampled by another process" in capsys.readouterr().out
    assert stored_depths(migrated_url) == []


@pytest.mark.parametrize(
    ("source", "spec_suffix", "error"),
    [
        ("", "", "--broker must look like module:attribute"),
        ("broker = 3\n", ":broker", "is a int, not a Dramatiq broker"),
        ("x = 1\n", ":broker", "has no attribute 'broker'"),
    ],
)
def test_a_bad_broker_is_one_clear_line(
    sqlite_url: URL,
    broker_module: Callable[[str], str],
    capsys: pytest.CaptureFixture[str],
    source: str,
    spec_suffix: str,
    error: str,
) -> None:
    spec = broker_module(source).split(":")[0] + spec_suffix
    assert sample_queues_once(spec, sqlite_url) == 2
    assert error in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "value", "error"),
    [
        ("--interval", "0", "argument --interval: the interval must be from 0.1 to 86400 s, got 0.0"),
        ("--queue", "", "bad --interval or --queue: queue names must be non-empty strings"),
    ],
)
def test_a_bad_interval_or_queue_is_one_clear_line(
    migrated_url: URL,
    broker_module: Callable[[str], str],
    capsys: pytest.CaptureFixture[str],
    option: str,
    value: str,
    error: str,
) -> None:
    spec = broker_module("from dramatiq.brokers.stub import StubBroker\nbroker = StubBroker()\n")
    assert sample_queues_once(spec, migrated_url, option, value) == 2
    err = capsys.readouterr().err
    assert err.startswith("dramatiq-opmetrics: error: ") and err.count("\n") == 1
    assert error in err
    assert stored_depths(migrated_url) == []


@pytest.mark.parametrize(
    ("variable", "value", "error"),
    [
        ("OPMETRICS_RECENT_FOLD_INTERVAL_S", "0.01", "OPMETRICS_RECENT_FOLD_INTERVAL_S (0 turns folding off):"),
        ("OPMETRICS_RECENT_RETENTION_DAYS", "0", "OPMETRICS_RECENT_RETENTION_DAYS must be a whole number of days"),
        ("OPMETRICS_RECENT_RETENTION_DAYS", "3.5", "OPMETRICS_RECENT_RETENTION_DAYS must be a number"),
    ],
)
def test_a_bad_fold_setting_is_one_clear_line(
    migrated_url: URL,
    broker_module: Callable[[str], str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    error: str,
) -> None:
    monkeypatch.setenv(variable, value)
    spec = broker_module("from dramatiq.brokers.stub import StubBroker\nbroker = StubBroker()\n")
    assert sample_queues_once(spec, migrated_url) == 2
    err = capsys.readouterr().err
    assert err.startswith("dramatiq-opmetrics: error: ") and err.count("\n") == 1
    assert error in err


def test_a_missing_broker_module_is_one_clear_line(sqlite_url: URL, capsys: pytest.CaptureFixture[str]) -> None:
    spec = "no_such_module_opm:broker"
    assert sample_queues_once(spec, sqlite_url) == 2
    assert "cannot import the broker's module 'no_such_module_opm'" in capsys.readouterr().err


def test_an_unsupported_broker_is_reported_and_nothing_is_written(
    migrated_url: URL, broker_module: Callable[[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    spec = broker_module("import dramatiq\nclass Custom(dramatiq.Broker):\n    pass\nbroker = Custom()\n")
    assert sample_queues_once(spec, migrated_url) == 1
    assert "queue depth is not supported for Custom" in capsys.readouterr().err
    assert stored_depths(migrated_url) == []


def test_an_unreachable_broker_with_once_is_one_clear_line(
    migrated_url: URL, broker_module: Callable[[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    spec = broker_module(
        "from dramatiq.brokers.redis import RedisBroker\n"
        "broker = RedisBroker(url='redis://:secret-pw@127.0.0.1:1/0', namespace='unreachable')\n"
        "broker.declare_queue('q')\n"
    )
    assert sample_queues_once(spec, migrated_url) == 2
    err = capsys.readouterr().err
    assert err.startswith("dramatiq-opmetrics: error: cannot read the broker: ConnectionError: ")
    assert len(err.splitlines()) == 1
    assert "secret-pw" not in err
    assert stored_depths(migrated_url) == []


def test_a_database_that_is_not_migrated_is_reported_before_sampling(
    postgres_url: URL,
    redis_broker: RedisBroker,
    unique_queue: Callable[[str], str],
    broker_module: Callable[[str], str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = broker_module(redis_module_source(redis_broker.namespace, [unique_queue("q")]))
    assert main(["sample-queues", "--broker", spec, "--database-url", url_text(postgres_url)]) == 2
    assert "run `dramatiq-opmetrics migrate` first" in capsys.readouterr().err
    assert not any(
        b"__opmetrics_claims__" in key for key in redis_broker.client.scan_iter(f"{redis_broker.namespace}:*")
    )


def start_sidecars(
    spec: str,
    url: URL,
    tmp_path: Path,
    extra_queue: str,
    count: int = 3,
    options: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    first_index: int = 0,
) -> list[subprocess.Popen[str]]:
    command = [
        str(BIN / "dramatiq-opmetrics"),
        "sample-queues",
        "--broker",
        spec,
        "--interval",
        str(FLEET_INTERVAL_S),
        "--database-url",
        url_text(url),
        "--queue",
        extra_queue,
        *options,
    ]
    return [
        subprocess.Popen(
            command,
            cwd=tmp_path,
            env=env,
            stdout=(tmp_path / f"sidecar{index}.out").open("w"),
            stderr=subprocess.STDOUT,
            text=True,
        )
        for index in range(first_index, first_index + count)
    ]


def sidecar_outputs(tmp_path: Path, count: int, first_index: int = 0) -> list[str]:
    """What each of ``count`` sidecars has printed so far."""
    return [(tmp_path / f"sidecar{i}.out").read_text() for i in range(first_index, first_index + count)]


def wait_for_sidecars(processes: list[subprocess.Popen[str]], tmp_path: Path, first_index: int = 0) -> list[str]:
    """Wait until each sidecar says it runs; return what they printed."""

    def running() -> bool:
        outputs = sidecar_outputs(tmp_path, len(processes), first_index)
        assert all(p.poll() is None for p in processes), outputs
        return all("sampling" in output for output in outputs)

    wait_until(running, timeout_s=60, what="the sidecars to start", poll_s=0.1)
    return sidecar_outputs(tmp_path, len(processes), first_index)


def stop_sidecars(processes: list[subprocess.Popen[str]], tmp_path: Path, first_index: int = 0) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(30)
    assert all(p.returncode == 0 for p in processes), sidecar_outputs(tmp_path, len(processes), first_index)


def run_fleet_for_three_intervals(processes: list[subprocess.Popen[str]], tmp_path: Path) -> dt.datetime:
    """Wait until every sidecar runs, let three whole intervals pass, stop them; return the first's start."""
    try:
        wait_for_sidecars(processes, tmp_path)
        first = interval_start(dt.datetime.now(dt.UTC), FLEET_INTERVAL_S) + dt.timedelta(seconds=FLEET_INTERVAL_S)
        end = first + dt.timedelta(seconds=3 * FLEET_INTERVAL_S)
        # Stop in the middle of the interval after the third, so its sample (if any) is outside the window.
        time.sleep((end - dt.datetime.now(dt.UTC)).total_seconds() + FLEET_INTERVAL_S / 2)
    finally:
        stop_sidecars(processes, tmp_path)
    return first


def assert_three_samples_per_queue_and_state(
    url: URL, first: dt.datetime, expected: dict[tuple[str, str], float]
) -> None:
    stored = stored_depths(url)
    window = [s for s in stored if first <= s[3] < first + dt.timedelta(seconds=3 * FLEET_INTERVAL_S)]
    assert Counter((q, s) for q, s, _, _ in window) == {key: 3 for key in expected}
    assert {(q, s, v) for q, s, v, _ in window} == {(q, s, v) for (q, s), v in expected.items()}
    # Outside the window too, no interval was ever sampled twice.
    per_interval = Counter((q, s, interval_start(at, FLEET_INTERVAL_S)) for q, s, _, at in stored)
    assert set(per_interval.values()) == {1}


@pytest.mark.slow
def test_three_sidecars_on_redis_write_three_samples_per_queue_and_state_in_three_intervals_not_nine(
    postgres_url: URL,
    redis_broker: RedisBroker,
    unique_queue: Callable[[str], str],
    broker_module: Callable[[str], str],
    tmp_path: Path,
) -> None:
    upgrade(postgres_url)
    emails, reports, extra = unique_queue("emails"), unique_queue("reports"), unique_queue("extra")
    for _ in range(3):
        redis_broker.enqueue(message(emails))
    redis_broker.enqueue(message(reports), delay=600_000)
    heartbeats = f"{redis_broker.namespace}:__heartbeats__"
    heartbeats_before = redis_broker.client.zrange(heartbeats, 0, -1, withscores=True)
    spec = broker_module(redis_module_source(redis_broker.namespace, [emails, reports]))

    first = run_fleet_for_three_intervals(start_sidecars(spec, postgres_url, tmp_path, extra), tmp_path)

    expected = {(q, s): 0.0 for q in (emails, reports, extra) for s in ("ready", "delayed", "dead", "in_flight")}
    expected[(emails, "ready")] = 3
    expected[(reports, "delayed")] = 1
    assert_three_samples_per_queue_and_state(postgres_url, first, expected)
    # No sidecar ever registered as a worker: only the test's own enqueues left a heartbeat.
    assert redis_broker.client.zrange(heartbeats, 0, -1, withscores=True) == heartbeats_before


@pytest.mark.slow
def test_three_sidecars_on_rabbitmq_write_three_samples_per_queue_and_state_in_three_intervals_not_nine(
    postgres_url: URL,
    rabbitmq_broker: RabbitmqBroker,
    unique_queue: Callable[[str], str],
    broker_module: Callable[[str], str],
    tmp_path: Path,
) -> None:
    upgrade(postgres_url)
    emails, extra = unique_queue("emails"), unique_queue("extra")
    for _ in range(2):
        rabbitmq_broker.enqueue(message(emails))
    rabbitmq_broker.enqueue(message(emails), delay=600_000)
    spec = broker_module(
        "from dramatiq.brokers.rabbitmq import RabbitmqBroker\n"
        f"broker = RabbitmqBroker(url={RABBITMQ_URL!r})\n"
        f"broker.declare_queue({emails!r})\n"
    )

    first = run_fleet_for_three_intervals(start_sidecars(spec, postgres_url, tmp_path, extra), tmp_path)

    expected = {(q, s): 0.0 for q in (emails, extra) for s in ("ready", "delayed", "dead")}
    expected[(emails, "ready")] = 2
    expected[(emails, "delayed")] = 1
    assert_three_samples_per_queue_and_state(postgres_url, first, expected)
    checker = RabbitmqBroker(url=RABBITMQ_URL)
    try:
        channel = checker.channel
        for name in (extra, dq_name(extra), xq_name(extra)):
            with pytest.raises(Exception, match="NOT_FOUND"):
                channel.queue_declare(name, passive=True)
            channel = checker.connection.channel()
    finally:
        checker.close()


#: Seconds between folds of the recent tier in the sidecar test.
FOLD_INTERVAL_S = 0.5


@pytest.mark.slow
def test_sidecars_keep_the_recent_tier_current_together_unless_told_not_to(
    postgres_url: URL,
    redis_broker: RedisBroker,
    unique_queue: Callable[[str], str],
    broker_module: Callable[[str], str],
    tmp_path: Path,
) -> None:
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    now = dt.datetime.now(dt.UTC)
    samples = fleet_samples(now - dt.timedelta(minutes=30), 20, per_minute=6)
    insert_samples(engine, samples)
    spec = broker_module(redis_module_source(redis_broker.namespace, [unique_queue("q")]))
    env = {**os.environ, "OPMETRICS_RECENT_FOLD_INTERVAL_S": str(FOLD_INTERVAL_S)}

    def folded(expected: Counter[str]) -> bool:
        """Whether the tier counts ``expected`` (the sidecars' own queue samples aside)."""
        counts = tier_counts(engine)
        return all(counts[metric_type] == count for metric_type, count in expected.items())

    try:
        not_folding = start_sidecars(spec, postgres_url, tmp_path, unique_queue("x"), 1, ("--no-fold",), env)
        try:
            [output] = wait_for_sidecars(not_folding, tmp_path)
            time.sleep(4 * FOLD_INTERVAL_S)
        finally:
            stop_sidecars(not_folding, tmp_path)
        assert "folding" not in output
        assert tier_counts(engine) == Counter()

        folding = start_sidecars(spec, postgres_url, tmp_path, unique_queue("x"), 2, env=env, first_index=1)
        try:
            outputs = wait_for_sidecars(folding, tmp_path, first_index=1)
            assert all(f"folding the recent tier every {FOLD_INTERVAL_S:g} s" in output for output in outputs)
            expected = Counter(metric_type.value for metric_type, *_ in samples)
            wait_until(lambda: folded(expected), timeout_s=30, what="the sidecars' fold")
            # Rows written later are folded by a later interval, and two folders never count a row twice.
            later = fleet_samples(now - dt.timedelta(minutes=5), 3, seed=9, per_minute=6)
            insert_samples(engine, later)
            expected.update(metric_type.value for metric_type, *_ in later)
            wait_until(lambda: folded(expected), timeout_s=30, what="a later fold")
            # The sidecars' own samples are folded too, once their minute is over.
            wait_until(lambda: tier_counts(engine)["queue_depth"] > 0, timeout_s=75, what="their own samples")
        finally:
            stop_sidecars(folding, tmp_path, first_index=1)
        assert tier_counts(engine) == folded_raw_counts(engine)
    finally:
        engine.dispose()
