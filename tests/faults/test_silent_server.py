"""Against a server that accepts connections and never answers, nothing of ours hangs: every engine the
package makes gives up after its connect timeout."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from command_line import BIN, run_command, url_text
from dramatiq.brokers.stub import StubBroker
from sqlalchemy.exc import OperationalError
from werkzeug.test import Client

from dramatiq_opmetrics import QueueDepthSampler, samples
from dramatiq_opmetrics.buffer import SampleBuffer
from dramatiq_opmetrics.dashboard import create_app
from dramatiq_opmetrics.database import make_engine
from dramatiq_opmetrics.writer import BackgroundWriter
from faults.silent_server import SilentServer

FAULTS = Path(__file__).parent
#: The connect timeout of these tests (libpq's smallest).
CONNECT_TIMEOUT_S = 2
#: How much later than its connect timeout a client may hang up (a thread scheduled late on busy cores).
HANG_UP_SLACK_S = 1.0


@pytest.mark.parametrize(
    "arguments",
    [["report"], ["rollup"], ["prune"], ["migrate"], ["sample-queues", "--broker", "fault_app:broker", "--once"]],
    ids=lambda arguments: arguments[0],
)
def test_each_command_against_a_silent_server_fails_within_the_connect_timeout(
    silent_server: SilentServer, arguments: Sequence[str]
) -> None:
    env = {**os.environ, "OPMETRICS_CONNECT_TIMEOUT_S": str(CONNECT_TIMEOUT_S)}
    command = [str(BIN / "dramatiq-opmetrics"), *arguments, "--database-url", url_text(silent_server.url)]
    started = time.monotonic()
    result = run_command(command, env=env, cwd=FAULTS, timeout_s=30)
    elapsed = time.monotonic() - started
    assert result.returncode != 0, result.stdout
    assert silent_server.accepted >= 1
    assert elapsed >= CONNECT_TIMEOUT_S, result.stderr
    # Timed at the server, from the first connection to the last hang-up: what starting the command costs (a
    # few seconds on busy cores) is not part of it.
    connections = silent_server.connections()
    hung_up = [hung_up_at for _, hung_up_at in connections]
    assert None not in hung_up, connections
    waited_s = max(hung_up) - connections[0][0]  # type: ignore[type-var]
    assert waited_s < CONNECT_TIMEOUT_S + HANG_UP_SLACK_S, (connections, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr


def test_a_dashboard_page_on_a_silent_server_fails_within_the_connect_timeout(silent_server: SilentServer) -> None:
    client = Client(create_app(engine=make_engine(silent_server.url, connect_timeout_s=CONNECT_TIMEOUT_S)))
    started = time.monotonic()
    with pytest.raises(OperationalError, match="timeout"):
        client.get("/")
    assert time.monotonic() - started < CONNECT_TIMEOUT_S + 1.0


def test_the_queue_depth_sampler_on_a_silent_database_skips_the_interval_within_the_connect_timeout(
    silent_server: SilentServer, caplog: pytest.LogCaptureFixture
) -> None:
    broker = StubBroker()
    broker.declare_queue("default")
    engine = make_engine(silent_server.url, connect_timeout_s=CONNECT_TIMEOUT_S)
    sampler = QueueDepthSampler(broker, lambda samples: None, interval_s=1, engine=engine)
    started = time.monotonic()
    assert sampler.sample_logging_errors() is None
    assert time.monotonic() - started < CONNECT_TIMEOUT_S + 1.0
    assert "Queue depth sampling skipped the interval" in caplog.text
    engine.dispose()


def test_the_writer_on_a_silent_database_stops_within_its_shutdown_timeout(
    silent_server: SilentServer, caplog: pytest.LogCaptureFixture
) -> None:
    buffer = SampleBuffer()
    key = buffer.register_label_set(samples.message_labels("a", queue="q"))
    buffer.extend([("wait_time", 1.0, key, time.time())] * 3)
    # The connect timeout is longer than the shutdown timeout: stop() must not wait for the attempt to end.
    writer = BackgroundWriter(
        silent_server.url, buffer, flush_interval_s=0.05, shutdown_timeout_s=1.0, connect_timeout_s=10
    )
    writer.start()
    time.sleep(0.3)  # the thread is connecting
    started = time.monotonic()
    assert not writer.stop()
    assert time.monotonic() - started < 1.0 + 1.0
    assert "Gave up writing 3 buffered metric samples" in caplog.text
