"""Results kept between requests: reused for a while, then rechecked by fingerprint, recomputed only on change."""

from __future__ import annotations

from dramatiq_opmetrics.dashboard.kept import KeptResults


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_result_is_reused_without_reading_its_fingerprint_until_the_recheck() -> None:
    clock, calls = Clock(), {"fingerprint": 0, "compute": 0}

    def fingerprint() -> int:
        calls["fingerprint"] += 1
        return 1

    def compute() -> str:
        calls["compute"] += 1
        return "result"

    kept = KeptResults(recheck_s=60, clock=clock)
    assert kept.get("k", fingerprint, compute) == "result"
    clock.now += 59
    assert kept.get("k", fingerprint, compute) == "result"
    assert calls == {"fingerprint": 1, "compute": 1}
    clock.now += 2
    assert kept.get("k", fingerprint, compute) == "result"
    assert calls == {"fingerprint": 2, "compute": 1}


def test_a_changed_fingerprint_recomputes_the_result() -> None:
    clock = Clock()
    kept = KeptResults(recheck_s=60, clock=clock)
    assert kept.get("k", lambda: 1, lambda: "old") == "old"
    clock.now += 61
    assert kept.get("k", lambda: 2, lambda: "new") == "new"
    assert kept.get("k", lambda: 3, lambda: "newer") == "new"


def test_only_the_most_recently_used_results_are_kept() -> None:
    kept = KeptResults(max_entries=2, clock=Clock())
    kept.get("a", lambda: 0, lambda: "a")
    kept.get("b", lambda: 0, lambda: "b")
    kept.get("a", lambda: 0, lambda: "a again")
    kept.get("c", lambda: 0, lambda: "c")
    assert kept.get("a", lambda: 0, lambda: "a third") == "a"
    assert kept.get("b", lambda: 0, lambda: "b again") == "b again"
