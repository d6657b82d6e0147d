"""Write throughput and worker memory with 100,000 label sets next to 60, with and without the label-set cap.

Usage: python benchmarks/bench_cardinality.py [--calls 100000] [--chunk 20000]

Each scenario runs in a fresh Python process on a scratch schema of its own in $OPMETRICS_TEST_DATABASE_URL
(default: the local ``test`` database): a real ``OpMetrics`` and its ``BackgroundWriter`` on PostgreSQL take
``--calls`` calls of ``record_token_usage`` (two samples each) whose ``user_id`` label cycles through the
scenario's label sets, flushed every ``--chunk`` calls. Write throughput is the samples written per second
of flushing (recording is not timed); memory is the growth of the process's resident set from before the
first call to after the last flush. Scenarios:

- ``60``: 60 label sets, the default cap (nothing is folded);
- ``100k uncapped``: 100,000 label sets with the cap out of the way, as before the cap existed (every label
  set is kept in every cache and inserted into the label-set table);
- ``100k capped``: 100,000 label sets with the default cap (10,000 per metric type): the rest are folded
  into the overflow label set.

It prints the scenarios side by side with the throughput and memory ratios to the ``60`` scenario.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time

from _scratch import database_url, scratch_schema

#: Scenario name: (label sets, max_label_sets_per_metric or None for the default).
SCENARIOS: dict[str, tuple[int, int | None]] = {
    "60": (60, None),
    "100k uncapped": (100_000, 10**9),
    "100k capped": (100_000, None),
}


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def run_scenario(name: str, calls: int, chunk: int) -> dict[str, float]:
    """Run one scenario in this process; return its figures."""
    from dramatiq_opmetrics import OpMetrics, record_token_usage

    label_sets, cap = SCENARIOS[name]
    with scratch_schema(database_url()) as url:
        opmetrics = OpMetrics(
            url, flush_interval_s=3600, batch_size=5_000, buffer_capacity=4 * chunk, max_label_sets_per_metric=cap
        )
        opmetrics.writer.start()
        gc.collect()
        before = rss_bytes()
        flushing_s = 0.0
        for start in range(0, calls, chunk):
            for call in range(start, min(calls, start + chunk)):
                record_token_usage("gpt-4o-mini", 100, 20, user_id=f"user-{call % label_sets}")
            flush_started = time.perf_counter()
            assert opmetrics.writer.flush(timeout_s=600)
            flushing_s += time.perf_counter() - flush_started
        gc.collect()
        grown = rss_bytes() - before
        written = opmetrics.writer.written_total
        assert opmetrics.writer.stop(timeout_s=60)
    return {"samples_per_s": written / flushing_s, "rss_growth_mb": grown / 1e6, "written": written}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--chunk", type=int, default=20_000)
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scenario:
        print(json.dumps(run_scenario(args.scenario, args.calls, args.chunk)))
        return
    results = {}
    for name in SCENARIOS:
        command = [sys.executable, __file__, "--scenario", name, "--calls", str(args.calls), "--chunk", str(args.chunk)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[name] = json.loads(output.strip().splitlines()[-1])
    base = results["60"]
    print(f"{args.calls:,} record_token_usage calls ({2 * args.calls:,} samples) per scenario, PostgreSQL")
    print(f"{'scenario':<16}{'samples/s':>12}{'vs 60':>8}{'RSS growth':>13}{'vs 60':>8}")
    for name, found in results.items():
        print(
            f"{name:<16}{found['samples_per_s']:>12,.0f}{base['samples_per_s'] / found['samples_per_s']:>7.1f}x"
            f"{found['rss_growth_mb']:>10.1f} MB{found['rss_growth_mb'] / max(base['rss_growth_mb'], 0.1):>7.1f}x"
        )
    print("('vs 60': times slower, times more memory than with 60 label sets)")


if __name__ == "__main__":
    main()
