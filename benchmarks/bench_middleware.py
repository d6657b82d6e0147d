"""The three performance figures of the OpMetrics middleware, each measured side by side in one run.

Usage: python benchmarks/bench_middleware.py [--hook-messages 10000] [--drain-messages 20000] [--drain-runs 5]
                                             [--writer-samples 200000] [--only hooks|drain|writer]

1. Hook cost: ``before_process_message`` + ``after_process_message`` driven directly on a broker with no
   middleware, with an empty middleware (what Dramatiq's dispatch to any middleware costs), with
   ``OpMetrics`` alone and with Dramatiq's ``Prometheus`` alone (median of alternating
   rounds, in CPU time of the benchmarking thread so that other processes on a shared machine do not
   count). The writer thread is not started here: its work is part of figure 2.
2. End to end: a ``dramatiq.Worker`` (8 threads) draining no-op messages from the real Redis broker, with
   and without ``OpMetrics`` writing to PostgreSQL, alternating, median of ``--drain-runs`` runs each.
3. Writer: samples per second that ``BackgroundWriter`` writes into PostgreSQL from one process, against a
   bare psycopg COPY of the same rows, prepared in advance, in the same transactions and the same (binary)
   format, in the same scratch schema; a bare text-format COPY is shown too.

Needs PostgreSQL ($OPMETRICS_TEST_DATABASE_URL, default the local ``test`` database; a scratch schema is
made and dropped) and Redis ($OPMETRICS_TEST_REDIS_URL; keys under a unique namespace, deleted after).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable

import psycopg
import redis
from sqlalchemy.engine import URL

os.environ.setdefault("dramatiq_prom_db", tempfile.mkdtemp(prefix="opmetrics-bench-prom-"))

import dramatiq
from _scratch import database_url, libpq, scratch_schema
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware.prometheus import Prometheus

from dramatiq_opmetrics import OpMetrics
from dramatiq_opmetrics.buffer import DEFAULT_BATCH_SIZE, MessageEntry, SampleBuffer
from dramatiq_opmetrics.samples import message_labels
from dramatiq_opmetrics.writer import BackgroundWriter

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
HOOK_ROUNDS = 31
DRAIN_WORKER_THREADS = 8


# 1. Hook cost ------------------------------------------------------------------------------------------


class EmptyMiddleware(dramatiq.Middleware):
    """Both hooks and nothing in them: what dispatching to any middleware costs."""

    def before_process_message(self, broker: dramatiq.Broker, message: object) -> None:
        pass

    def after_process_message(
        self, broker: dramatiq.Broker, message: object, *, result: object = None, exception: object = None
    ) -> None:
        pass


def hook_cost(url: URL, messages: int) -> None:
    def make_broker(middleware: list[dramatiq.Middleware]) -> StubBroker:
        broker = StubBroker(middleware=middleware)
        broker.emit_after("process_boot")
        return broker

    opmetrics = OpMetrics(url, buffer_capacity=2 * messages)
    brokers = {
        "no middleware": make_broker([]),
        "empty middleware": make_broker([EmptyMiddleware()]),
        "OpMetrics": make_broker([opmetrics]),
        "Prometheus": make_broker([Prometheus()]),
    }
    proxies = [
        MessageProxy(dramatiq.Message(queue_name="default", actor_name="noop", args=(), kwargs={}, options={}))
        for _ in range(1000)
    ]

    def drive(broker: StubBroker) -> float:
        emit_before, emit_after = broker.emit_before, broker.emit_after
        # CPU time of this thread: the other processes of a shared machine do not count.
        started = time.thread_time()
        for i in range(messages):
            message = proxies[i % 1000]
            emit_before("process_message", message)
            emit_after("process_message", message, result=None)
        elapsed = time.thread_time() - started
        opmetrics.buffer.reset_after_fork()  # empties the buffer between rounds (nothing is written here)
        return elapsed / messages * 1e6

    timings: dict[str, list[float]] = {name: [] for name in brokers}
    for _ in range(HOOK_ROUNDS):
        for name, broker in brokers.items():
            timings[name].append(drive(broker))
    print(
        "  hooks: before_process_message + after_process_message, us of CPU per message"
        f" (median and min of {HOOK_ROUNDS} alternating rounds of {messages:,} messages)"
    )
    base_median = statistics.median(timings["no middleware"])
    base_min = min(timings["no middleware"])
    added = {}
    for name, values in timings.items():
        median, least = statistics.median(values), min(values)
        added[name] = (median - base_median, least - base_min)
        print(
            f"    {name:<18} {median:6.2f} (min {least:6.2f})   adds {added[name][0]:6.2f} (min {added[name][1]:6.2f})"
        )
    ours, prometheus = added["OpMetrics"], added["Prometheus"]
    print(
        f"    OpMetrics adds {ours[0]:.2f} us = {ours[0] / prometheus[0]:.3f}x what Prometheus adds"
        f" (min: {ours[1]:.2f} us = {ours[1] / prometheus[1]:.3f}x); targets <= 3 us and <= 0.15x"
    )


# 2. End-to-end drain -----------------------------------------------------------------------------------


def drain_once(redis_url: str, url: URL | None, messages: int) -> float:
    namespace = f"opmetrics-bench-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_url)
    broker = RedisBroker(client=client, namespace=namespace)
    opmetrics = None
    if url is not None:
        opmetrics = OpMetrics(url)
        broker.add_middleware(opmetrics)
    broker.emit_after("process_boot")
    done = threading.Event()
    processed = [0]
    lock = threading.Lock()

    def noop() -> None:
        with lock:
            processed[0] += 1
            if processed[0] == messages:
                done.set()

    actor = dramatiq.actor(noop, broker=broker, actor_name="noop", queue_name="bench")
    try:
        for _ in range(messages):
            actor.send()
        worker = dramatiq.Worker(broker, worker_threads=DRAIN_WORKER_THREADS, worker_timeout=100)
        started = time.perf_counter()
        worker.start()
        if not done.wait(600):
            raise RuntimeError(f"only {processed[0]} of {messages} messages were processed")
        elapsed = time.perf_counter() - started
        worker.stop()
        if opmetrics is not None and opmetrics.writer.written_total < 2 * messages:  # + any queue depth samples
            raise RuntimeError(f"the writer wrote {opmetrics.writer.written_total} samples, not {2 * messages}+")
        return messages / elapsed
    finally:
        broker.close()
        keys = list(client.scan_iter(match=f"{namespace}:*"))
        if keys:
            client.delete(*keys)
        client.close()


def drain(redis_url: str, url: URL, messages: int, runs: int) -> None:
    without: list[float] = []
    with_ops: list[float] = []
    for _ in range(runs):
        without.append(drain_once(redis_url, None, messages))
        with_ops.append(drain_once(redis_url, url, messages))
    a, b = statistics.median(without), statistics.median(with_ops)
    print(f"  end to end: Worker ({DRAIN_WORKER_THREADS} threads) draining {messages:,} no-op messages from Redis")
    print(f"    without OpMetrics     {a:9,.0f} messages/s   runs: {', '.join(f'{x:,.0f}' for x in without)}")
    print(f"    with OpMetrics        {b:9,.0f} messages/s   runs: {', '.join(f'{x:,.0f}' for x in with_ops)}")
    print(f"    ratio with / without = {b / a:.3f}   (target >= 0.97, medians of {runs} alternating runs)")


# 3. Writer throughput ----------------------------------------------------------------------------------


def writer_throughput(url: URL, samples: int) -> None:
    # What workers buffer: one entry per processed message, holding its wait and processing time.
    label_sets = [message_labels(f"actor_{i}", queue=f"queue_{i % 4}") for i in range(20)]
    keys = [label_set.labels_key for label_set in label_sets]
    now_s, now_ms = time.perf_counter(), time.time() * 1000.0
    entries: list[MessageEntry] = [
        (None, keys[i % 20], now_ms - 5.0, now_s + i * 1e-4, now_s + i * 1e-4 + (i % 97) * 1e-5)
        for i in range(samples // 2)
    ]

    def timed(run: Callable[[], None]) -> float:
        started = time.perf_counter()
        run()
        return samples / (time.perf_counter() - started)

    buffer = SampleBuffer(capacity=len(entries), batch_size=DEFAULT_BATCH_SIZE)
    for label_set in label_sets:
        buffer.register_label_set(label_set)
    writer = BackgroundWriter(url, buffer)

    def run_writer() -> None:
        for entry in entries:
            buffer.append_message(entry)
        if not writer.flush(timeout_s=600) or len(buffer):
            raise RuntimeError("the writer did not write everything")

    # Warm up: connect and store the label sets once, as a running worker has.
    for entry in entries[:100]:
        buffer.append_message(entry)
    writer.flush(timeout_s=60)

    with psycopg.connect(libpq(url)) as conn:
        ids = {key: id_ for key, id_ in conn.execute("SELECT labels_key, id FROM opmetrics_label_sets")}
        # The rows the writer sends, made in advance: recorded_at as binary COPY carries a timestamptz
        # (microseconds since 2000-01-01 UTC), for the binary COPY; as datetimes for the text COPY.
        offset_s = time.time() - time.perf_counter()
        pg_epoch_s = dt.datetime(2000, 1, 1, tzinfo=dt.UTC).timestamp()
        rows, text_rows = [], []
        for _, key, due_ms, started_s, ended_s in entries:
            started, ended = started_s + offset_s, ended_s + offset_s
            for at, value, metric_type in (
                (started, started * 1000.0 - due_ms, "wait_time"),
                (ended, (ended - started) * 1000.0, "processing_time"),
            ):
                rows.append((round((at - pg_epoch_s) * 1e6), value, ids[key], metric_type))
                text_rows.append((dt.datetime.fromtimestamp(at, dt.UTC), value, ids[key], metric_type))
        rows_per_batch = 2 * DEFAULT_BATCH_SIZE

        def run_copy(binary: bool) -> None:
            sql = "COPY operational_metrics (recorded_at, value, label_set_id, metric_type) FROM STDIN"
            for start in range(0, len(rows), rows_per_batch):
                with (
                    conn.transaction(),
                    conn.cursor() as cursor,
                    cursor.copy(sql + (" (FORMAT BINARY)" if binary else "")) as copy,
                ):
                    if binary:
                        copy.set_types(["int8", "float8", "int4", "text"])
                    for row in (rows if binary else text_rows)[start : start + rows_per_batch]:
                        copy.write_row(row)

        writer_rates, copy_rates, text_rates = [], [], []
        for _ in range(3):
            writer_rates.append(timed(run_writer))
            copy_rates.append(timed(lambda: run_copy(binary=True)))
            text_rates.append(timed(lambda: run_copy(binary=False)))
    writer.stop()
    w, c = statistics.median(writer_rates), statistics.median(copy_rates)
    print(
        f"  writer: {samples:,} samples ({len(entries):,} processed messages) into PostgreSQL, one process,"
        f" {rows_per_batch:,} rows per transaction (median of 3 alternating runs)"
    )
    print(f"    BackgroundWriter      {w:9,.0f} samples/s   runs: {', '.join(f'{x:,.0f}' for x in writer_rates)}")
    print(f"    bare psycopg COPY     {c:9,.0f} rows/s      runs: {', '.join(f'{x:,.0f}' for x in copy_rates)}")
    t = statistics.median(text_rates)
    print(f"    (bare text COPY       {t:9,.0f} rows/s      runs: {', '.join(f'{x:,.0f}' for x in text_rates)})")
    print(
        f"    writer / bare COPY = {w / c:.3f}, writer / bare text COPY = {w / t:.3f}   (target >= 100,000 samples/s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hook-messages", type=int, default=10_000)
    parser.add_argument("--drain-messages", type=int, default=20_000)
    parser.add_argument("--drain-runs", type=int, default=5)
    parser.add_argument("--writer-samples", type=int, default=200_000)
    parser.add_argument("--only", choices=["hooks", "drain", "writer"], help="run one figure only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("dramatiq").setLevel(logging.ERROR)

    redis_url = os.environ.get("OPMETRICS_TEST_REDIS_URL", DEFAULT_REDIS_URL)
    print(f"dramatiq {dramatiq.__version__}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    with scratch_schema(database_url()) as url:
        if args.only in (None, "hooks"):
            hook_cost(url, args.hook_messages)
        if args.only in (None, "drain"):
            drain(redis_url, url, args.drain_messages, args.drain_runs)
        if args.only in (None, "writer"):
            writer_throughput(url, args.writer_samples)


if __name__ == "__main__":
    main()
