"""Measure what fleet-wide queue depth sampling costs on Redis: round trips and time per pass and per sample.

Usage: python benchmarks/bench_queue_depth.py [--queues 1 10 100] [--passes 300]

Against $OPMETRICS_TEST_REDIS_URL (default redis://127.0.0.1:6379/0), in a key namespace of its own that
is deleted afterwards: declares N queues holding a few ready, delayed and dead messages each, then times,
side by side in one run,

- one ``PING`` (a bare round trip to this Redis),
- the read alone (one ``EVAL`` of the read-only script for all N queues: depths and the head message),
- a whole sampling pass as each fleet process runs it every interval: the ``SET NX PX`` claim, the read and
  building the 5 x N samples (4 queue depth states and the oldest-message age per queue; the sink does
  nothing here; in a worker it appends to the in-memory buffer).

Round trips are counted on the client's connection (one command send = one round trip). Times are medians
on the client (mostly redis-py packing commands and parsing replies, and decoding each head message).
Server time per pass is Redis's own ``INFO commandstats`` time for the commands a pass sends (``SET`` and
``EVAL``, whose time includes the commands the script calls), summed over the timed passes and divided by
their number (other clients of a shared server running the same commands at the same time would inflate
it). It also checks that sampling left the broker's heartbeat set untouched.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

from redis_round_trips import CountingConnection, counting_client

from dramatiq_opmetrics.queue_depth import RedisDepthReader
from dramatiq_opmetrics.queue_depth_sampler import QueueDepthSampler
from dramatiq_opmetrics.samples import Sample

DEFAULT_URL = "redis://127.0.0.1:6379/0"


def median_s(run: Callable[[], object], repeat: int) -> float:
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def round_trips(run: Callable[[], object]) -> int:
    before = CountingConnection.sends
    run()
    return CountingConnection.sends - before


#: The commands a sampling pass sends to Redis (``EVAL``'s time includes the commands its script calls).
PASS_COMMANDS = ("set", "eval")


def server_usec(client: redis.Redis) -> int:
    """Redis's own time spent in :data:`PASS_COMMANDS` so far, in microseconds."""
    stats = client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("usec", 0)) for name in PASS_COMMANDS)


#: Samples of one queue per pass: four queue depth states and the oldest-message age.
SAMPLES_PER_QUEUE = 5


def discard(_samples: Sequence[Sample]) -> None:
    pass


def measure(client: redis.Redis, namespace: str, count: int, passes: int) -> str:
    """Time PING, the read and a whole pass for ``count`` queues; return the table row."""
    broker = RedisBroker(client=client, namespace=namespace)
    queues = [f"bench-{count}-{index}" for index in range(count)]
    for queue in queues:
        broker.declare_queue(queue)
        message = dramatiq.Message(queue_name=queue, actor_name="noop", args=(), kwargs={}, options={})
        broker.enqueue(message)
        broker.enqueue(message, delay=600_000)
    heartbeats = f"{namespace}:__heartbeats__"
    heartbeats_before = client.zrange(heartbeats, 0, -1, withscores=True)
    reader = RedisDepthReader(client, namespace)
    sampler = QueueDepthSampler(broker, discard, interval_s=1)
    starts = iter(dt.datetime(2030, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=i) for i in range(10**9))

    def read() -> object:
        return reader.read(queues)

    def one_pass() -> object:
        made = sampler.sample(next(starts))  # a new interval each time: every pass claims and reads
        assert made is not None and len(made) == SAMPLES_PER_QUEUE * count
        return made

    for _ in range(20):  # warm up
        client.ping()
        read()
        one_pass()
    ping_s = median_s(client.ping, passes)
    read_s = median_s(read, passes)
    server_before = server_usec(client)
    pass_s = median_s(one_pass, passes)
    server_pass_us = (server_usec(client) - server_before) / passes
    trips = round_trips(one_pass)
    assert round_trips(read) == 1
    assert client.zrange(heartbeats, 0, -1, withscores=True) == heartbeats_before, "heartbeats changed"
    samples = SAMPLES_PER_QUEUE * count
    return (
        f"{count:>6} {samples:>7} {ping_s * 1e6:>8.0f} {read_s * 1e6:>8.0f} {pass_s * 1e6:>8.0f}"
        f" {pass_s / ping_s:>9.1f} {pass_s * 1e6 / samples:>9.1f} {trips:>7} {trips / samples:>9.3f}"
        f" {server_pass_us:>10.1f} {server_pass_us / samples:>10.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queues", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--passes", type=int, default=300)
    args = parser.parse_args()

    url = os.environ.get("OPMETRICS_TEST_REDIS_URL", DEFAULT_URL)
    namespace = f"opm-bench-{uuid.uuid4().hex[:8]}"
    client = counting_client(url)
    try:
        print(f"Redis {client.info('server')['redis_version']}, {args.passes} passes each, medians")
        print(
            f"{'queues':>6} {'samples':>7} {'PING µs':>8} {'read µs':>8} {'pass µs':>8} {'pass/PING':>9}"
            f" {'µs/sample':>9} {'RT/pass':>7} {'RT/sample':>9} {'server µs':>10} {'srv µs/smp':>10}"
        )
        for count in args.queues:
            print(measure(client, f"{namespace}-{count}", count, args.passes))
        print("heartbeats: unchanged by sampling")
    finally:
        keys = list(client.scan_iter(match=f"{namespace}-*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


if __name__ == "__main__":
    main()
