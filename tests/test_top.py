"""``dramatiq-opmetrics top``: the numbers against the samples written, the layout, and a clean Ctrl-C."""

from __future__ import annotations

import datetime as dt
import fcntl
import io
import os
import re
import select
import signal
import struct
import subprocess
import termios
import time

import numpy as np
import pytest
from command_line import BIN, url_text
from raw_samples import RawSample, insert_samples
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL

from dramatiq_opmetrics.cli import main
from dramatiq_opmetrics.interval_claims import interval_start
from dramatiq_opmetrics.metric_types import MetricType
from dramatiq_opmetrics.recent_tier import fold
from dramatiq_opmetrics.top import (
    CLEAR_SCREEN,
    CLEAR_SCREEN_END,
    CURSOR_HOME,
    ActorLine,
    QueueLine,
    Snapshot,
    render,
    run_top,
    take_snapshot,
)

#: The queue depth interval of the synthetic fleet, in seconds.
INTERVAL_S = 15.0
LONG_ACTOR = "resize_every_uploaded_image_to_the_four_thumbnail_sizes_we_serve"
LONG_QUEUE = "images_from_the_customer_upload_pipeline"


def message_samples(
    actor: str, queue: str, first: dt.datetime, last: dt.datetime, every_s: float, seed: int
) -> list[RawSample]:
    """Processing and wait times of one actor every ``every_s`` seconds from ``first`` to ``last``; every
    seventh attempt also failed. Values are multiples of 1/64 ms (sums exact in any order)."""
    rng = np.random.default_rng(seed)
    labels = {"actor": actor, "queue": queue}
    found: list[RawSample] = []
    at, index = first, 0
    while at <= last:
        found.append((MetricType.PROCESSING_TIME, labels, float(np.round(rng.lognormal(3, 0.7) * 64) / 64), at))
        found.append((MetricType.WAIT_TIME, labels, float(np.round(rng.lognormal(5, 0.5) * 64) / 64), at))
        if index % 7 == 0:
            found.append((MetricType.ERROR, {**labels, "error_type": "TimeoutError", "outcome": "retried"}, 1.0, at))
        at += dt.timedelta(seconds=every_s)
        index += 1
    return found


def interval_samples(
    first: dt.datetime, last: dt.datetime, make: object, interval_s: float = INTERVAL_S
) -> list[RawSample]:
    """``make(at)``'s samples at each interval start from ``first`` to ``last`` (50 ms after it, as a sampler)."""
    assert callable(make)
    found: list[RawSample] = []
    at = interval_start(first, interval_s)
    while at <= last:
        found += make(at + dt.timedelta(milliseconds=50))
        at += dt.timedelta(seconds=interval_s)
    return found


def fleet(now: dt.datetime) -> list[RawSample]:
    """Five minutes of a small fleet up to ``now`` (its samplers also a minute past it, so that whenever the
    command runs its latest complete interval has them):

    - ``send_email`` on ``emails`` finishes a message every 2 s (until 30 s ago), the long-named actor on
      the long-named queue every 5 s; ``emails`` has 7 ready messages;
    - ``stuck`` has 42 ready messages, an oldest message 600 s old, no consumer and nothing finished;
    - two processes (web-1, web-2) consume ``emails`` and the long-named queue, 4 threads each, 1 and 2
      busy; a third (web-3, ``emails``) died two minutes ago.
    """
    start, until = now - dt.timedelta(minutes=4), now - dt.timedelta(seconds=30)
    samples = message_samples("send_email", "emails", start, until, 2.0, seed=1)
    samples += message_samples(LONG_ACTOR, LONG_QUEUE, start, until, 5.0, seed=2)

    def sampled(at: dt.datetime) -> list[RawSample]:
        found: list[RawSample] = [
            (MetricType.QUEUE_DEPTH, {"queue": "emails", "state": "ready"}, 7.0, at),
            (MetricType.QUEUE_DEPTH, {"queue": "emails", "state": "delayed"}, 3.0, at),
            (MetricType.QUEUE_DEPTH, {"queue": "stuck", "state": "ready"}, 42.0, at),
            (MetricType.OLDEST_MESSAGE_AGE, {"queue": "stuck"}, 600.0, at),
            (MetricType.OLDEST_MESSAGE_AGE, {"queue": "emails"}, 0.5, at),
        ]
        for host, busy in (("web-1", 1.0), ("web-2", 2.0)):
            labels = {"host": host, "queues": f"emails,{LONG_QUEUE}"}
            found += [(MetricType.WORKER_THREADS, labels, 4.0, at), (MetricType.BUSY_THREADS, labels, busy, at)]
        if at < now - dt.timedelta(minutes=2):
            labels = {"host": "web-3", "queues": "emails"}
            found += [(MetricType.WORKER_THREADS, labels, 2.0, at), (MetricType.BUSY_THREADS, labels, 2.0, at)]
        return found

    # From six minutes back: the window's first whole minute has samples however close to a minute ``now`` is.
    return samples + interval_samples(now - dt.timedelta(minutes=6), now + dt.timedelta(minutes=1), sampled)


def test_top_once_shows_the_right_actors_and_queues_in_80_columns(
    engine: Engine, migrated_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    now = dt.datetime.now(dt.UTC)
    samples = fleet(now)
    insert_samples(engine, samples[: len(samples) // 2])
    fold(engine)  # half of it in the recent tier, half only in raw rows
    insert_samples(engine, samples[len(samples) // 2 :])

    assert main(["top", "--once", "--database-url", url_text(migrated_url)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert lines[0].startswith("dramatiq-opmetrics top: ") and lines[0].endswith(" UTC, last 5m")
    assert lines[1] == "workers online: 2 processes, 8 threads, 3 busy (37.5%)"

    def row(first: str) -> list[str]:
        return next(line.split() for line in lines if line.split()[:1] == [first])

    emails = [s for s in samples if s[0] is MetricType.PROCESSING_TIME and s[1]["actor"] == "send_email"]
    errors = [s for s in samples if s[0] is MetricType.ERROR and s[1]["actor"] == "send_email"]
    assert row("send_email")[:4] == [
        "send_email",
        "emails",
        f"{len(emails) / 300:.2f}",
        f"{100 * len(errors) / len(emails):.1f}%",
    ]
    long_row = next(line for line in lines if line.startswith(LONG_ACTOR[:10]))
    assert "…" in long_row and LONG_ACTOR not in long_row  # cut to fit, with an ellipsis
    assert row("queue") == ["queue", "ready", "oldest", "s", "workers", "stalled"]
    assert row("emails") == ["emails", "7", "0.5", "2", "-"]
    assert row("stuck") == ["stuck", "42", "600", "0", "5m+"]
    long_queue = next(line.split() for line in lines if line.startswith(LONG_QUEUE[:20]))
    assert long_queue[1:] == ["-", "-", "2", "-"]


NOW = dt.datetime(2026, 11, 20, 12, 0, 30, tzinfo=dt.UTC)


def test_the_snapshot_holds_the_numbers_of_the_samples_written(engine: Engine) -> None:
    samples = fleet(NOW)
    # The stuck queue was served until three whole minutes before the last complete minute.
    last_minute_end = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)
    served_until = last_minute_end - dt.timedelta(minutes=3, seconds=1)
    samples += message_samples("unstick", "stuck", NOW - dt.timedelta(minutes=6), served_until, 10.0, seed=3)
    # A later ready count and oldest-message age, sampled after the interval start: the latest is shown.
    samples += [
        (MetricType.QUEUE_DEPTH, {"queue": "stuck", "state": "ready"}, 44.0, NOW - dt.timedelta(seconds=1)),
        (MetricType.OLDEST_MESSAGE_AGE, {"queue": "stuck"}, 629.0, NOW - dt.timedelta(seconds=1)),
    ]
    insert_samples(engine, samples[: len(samples) // 3])
    fold(engine, now=NOW)
    insert_samples(engine, samples[len(samples) // 3 :])
    window = dt.timedelta(minutes=5)

    snapshot = take_snapshot(engine, window=window, queue_depth_interval_s=INTERVAL_S, now=NOW)

    start = NOW - window
    in_window = [s for s in samples if start <= s[3] < NOW]
    for line in snapshot.actors:
        labels = {"actor": line.actor, "queue": line.queue}
        done = np.array([s[2] for s in in_window if s[0] is MetricType.PROCESSING_TIME and s[1] == labels])
        waits = np.array([s[2] for s in in_window if s[0] is MetricType.WAIT_TIME and s[1] == labels])
        failed = [s for s in in_window if s[0] is MetricType.ERROR and s[1]["actor"] == line.actor]
        assert (line.messages, line.rate_per_s) == (len(done), len(done) / 300)
        assert line.error_rate == len(failed) / len(done)
        for estimate, values in ((line.p95_processing_ms, done), (line.p95_wait_ms, waits)):
            exact = np.percentile(values, 95, method="lower")
            assert estimate is not None and abs(estimate - exact) <= 0.01 * exact
    assert [line.actor for line in snapshot.actors] == ["send_email", LONG_ACTOR, "unstick"]  # busiest first
    assert list(snapshot.queues) == [
        QueueLine("emails", ready=7.0, oldest_age_s=0.5, workers_online=2, stalled_minutes=0),
        QueueLine(LONG_QUEUE, ready=None, oldest_age_s=None, workers_online=2, stalled_minutes=0),
        QueueLine("stuck", ready=44.0, oldest_age_s=629.0, workers_online=0, stalled_minutes=3),
    ]
    assert (snapshot.processes, snapshot.threads, snapshot.busy_threads) == (2, 8, 3)
    assert snapshot.stall_minutes_checked == 5

    # Two minutes earlier web-3 was still online: the latest complete interval then counts it.
    earlier = take_snapshot(engine, window=window, now=NOW - dt.timedelta(minutes=2, seconds=15))
    assert (earlier.processes, earlier.threads, earlier.busy_threads) == (3, 10, 5)
    assert next(line for line in earlier.queues if line.queue == "emails").workers_online == 3


def test_without_worker_samples_workers_show_a_dash_and_an_empty_window_says_so(engine: Engine) -> None:
    insert_samples(engine, message_samples("a", "q", NOW - dt.timedelta(hours=2), NOW - dt.timedelta(hours=1), 60.0, 4))
    snapshot = take_snapshot(engine, now=NOW)
    assert (snapshot.actors, snapshot.queues, snapshot.processes) == ([], [], None)
    lines = render(snapshot)
    assert lines[1] == "workers online: - (no worker_threads samples in the last 5m)"
    assert "no message finished or started in the last 5m" in lines
    assert "no queue sampled or served in the last 5m" in lines


def test_an_empty_database_says_how_to_get_metrics(engine: Engine) -> None:
    lines = render(take_snapshot(engine, now=NOW))
    assert lines[1].startswith("No metrics recorded yet")


def test_long_tables_are_cut_to_the_rows_asked_for_and_every_line_fits() -> None:
    actors = [ActorLine(f"actor_{index}_{'x' * 70}", "q", 10 - index, 1.0, 0.0, 1.0, 2.0) for index in range(10)]
    queues = [QueueLine(f"queue_{index}", 1.0, 2.0, 1, 0) for index in range(4)]
    snapshot = Snapshot(NOW, dt.timedelta(minutes=5), actors, queues, 1, 4, 1, 5)
    lines = render(snapshot, width=72, max_rows=4, refresh_interval_s=5, ellipsis="~")
    assert max(len(line) for line in lines) <= 72
    assert lines[0].endswith(", every 5s (Ctrl-C quits)")
    assert "~ and 7 more actors" in lines
    assert sum(1 for line in lines if line.startswith("actor_")) == 3
    assert sum(1 for line in lines if line.startswith("queue_")) == 4


def test_an_output_without_the_ellipsis_character_gets_a_tilde(engine: Engine, migrated_url: URL) -> None:
    now = dt.datetime.now(dt.UTC)
    insert_samples(engine, message_samples(LONG_ACTOR, LONG_QUEUE, now - dt.timedelta(minutes=3), now, 5.0, 6))
    buffer = io.BytesIO()
    out = io.TextIOWrapper(buffer, encoding="ascii")
    assert run_top(url_text(migrated_url), once=True, out=out) == 0
    out.flush()
    printed = buffer.getvalue().decode("ascii")
    assert any(line.startswith(LONG_ACTOR[:10]) and "~" in line for line in printed.splitlines())


def test_a_database_error_after_the_first_refresh_is_shown_and_retried(sqlite_url: URL) -> None:
    from dramatiq_opmetrics.database import make_engine
    from dramatiq_opmetrics.migrate import upgrade

    upgrade(sqlite_url)
    out = io.StringIO()
    naps: list[float] = []

    def sleep(seconds: float) -> None:
        naps.append(seconds)
        if len(naps) == 1:  # the table goes away between the first and the second refresh
            engine = make_engine(sqlite_url)
            with engine.begin() as connection:
                connection.execute(text("DROP TABLE opmetrics_recent_state"))
            engine.dispose()
        if len(naps) == 3:
            raise KeyboardInterrupt

    assert run_top(url_text(sqlite_url), refresh_interval_s=1.0, out=out, sleep=sleep) == 0
    assert len(naps) == 3 and 0 <= naps[0] <= 1.0
    printed = out.getvalue().splitlines()
    assert printed[0].startswith("dramatiq-opmetrics top: ")
    errors = [line for line in printed if "database error, retrying" in line]
    assert len(errors) == 2 and "no such table: opmetrics_recent_state" in errors[0]
    # Each failed refresh shows the last numbers read, with the error under them.
    assert sum(1 for line in printed if line.startswith("dramatiq-opmetrics top: ")) == 3


def read_until(fd: int, pattern: bytes, deadline_s: float, seen: bytearray) -> None:
    """Read ``fd`` into ``seen`` until ``pattern`` occurs in it (or fail after ``deadline_s`` seconds)."""
    deadline = time.monotonic() + deadline_s
    while pattern not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{pattern!r} never came; got {bytes(seen)!r}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 65536)
            assert chunk, f"the output ended before {pattern!r}; got {bytes(seen)!r}"
            seen += chunk


def as_if_in_the_foreground() -> None:
    """Give the child Ctrl-C's default disposition, as a shell gives a command run in the foreground: a suite
    run in the background (``nohup ./dev test &``) ignores SIGINT, and so would every process it starts."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_top_in_a_subprocess_exits_0_without_a_traceback_on_sigint(engine: Engine, migrated_url: URL) -> None:
    insert_samples(engine, fleet(dt.datetime.now(dt.UTC)))
    command = [str(BIN / "dramatiq-opmetrics"), "top", "--interval", "1", "--database-url", url_text(migrated_url)]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=as_if_in_the_foreground
    )
    try:
        assert process.stdout is not None
        seen = bytearray()
        read_until(process.stdout.fileno(), b"queues (latest", 30, seen)
        read_until(process.stdout.fileno(), b"\n\ndramatiq-opmetrics top: ", 30, seen)  # a second refresh
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    assert stderr == b""
    assert b"\x1b[" not in seen  # not a terminal: no escape sequences


def test_top_on_a_terminal_redraws_in_place_and_restores_it_on_ctrl_c(engine: Engine, migrated_url: URL) -> None:
    insert_samples(engine, fleet(dt.datetime.now(dt.UTC)))
    controller, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 80, 0, 0))  # 30 lines of 80 columns
    environment = {key: value for key, value in os.environ.items() if key not in ("COLUMNS", "LINES")}
    command = [str(BIN / "dramatiq-opmetrics"), "top", "--interval", "1", "--database-url", url_text(migrated_url)]
    process = subprocess.Popen(
        command,
        stdin=terminal,
        stdout=terminal,
        stderr=subprocess.PIPE,
        env=environment,
        preexec_fn=as_if_in_the_foreground,
    )
    os.close(terminal)
    seen = bytearray()
    try:
        read_until(controller, b"stuck", 30, seen)
        read_until(controller, (CLEAR_SCREEN_END + CURSOR_HOME + "dramatiq-opmetrics top: ").encode(), 30, seen)
        attributes = termios.tcgetattr(controller)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
        assert termios.tcgetattr(controller) == attributes  # the terminal's settings are as they were
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(controller)
    assert process.returncode == 0, stderr
    assert stderr == b""
    output = seen.decode()
    assert output.startswith(CLEAR_SCREEN + CURSOR_HOME) and output.count(CLEAR_SCREEN) == 1
    visible = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", output).replace("\r", "")
    assert max(len(line) for line in visible.splitlines()) <= 80
    assert "(Ctrl-C quits)" in visible
