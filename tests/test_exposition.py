"""The exposition text kept per series between scrapes (dramatiq_opmetrics.exposition)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from dramatiq_opmetrics.exposition import ExpositionCache, Family, SampleValues, Series

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


class Families:
    """A collector of the families a test describes (what a registry would read)."""

    def __init__(self, families: list[Family]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return (family.metric() for family in self.families)


def histogram(counts: dict[str, int], made: list[str]) -> Family:
    family = Family("job_duration_seconds", "Time jobs took.", "histogram")
    for job, count in counts.items():

        def samples(job: str = job, count: int = count) -> list[SampleValues]:
            made.append(job)
            return [
                ("job_duration_seconds_bucket", {"job": job, "le": "1.0"}, float(count // 2)),
                ("job_duration_seconds_bucket", {"job": job, "le": "+Inf"}, float(count)),
                ("job_duration_seconds_count", {"job": job}, float(count)),
                ("job_duration_seconds_sum", {"job": job}, count * 0.75),
            ]

        family.series.append(Series(job, count, samples))
    return family


def counter(values: dict[str, float]) -> Family:
    family = Family("jobs", "Jobs done.", "counter")
    for job, done in values.items():
        family.add_sample("jobs_total", {"job": job, "quote": 'a "b"\n'}, done)
    return family


def test_only_series_whose_version_changed_are_written_again() -> None:
    cache = ExpositionCache()
    made: list[str] = []
    cache.exposition([histogram({"a": 4, "b": 6}, made)], "")
    assert made == ["a", "b"]
    made.clear()
    cache.exposition([histogram({"a": 4, "b": 7, "c": 1}, made)], "")
    assert made == ["b", "c"]
    made.clear()
    cache.exposition([histogram({"a": 4, "b": 7, "c": 1}, made)], OPENMETRICS)  # each format is kept apart
    assert made == ["a", "b", "c"]


def test_the_text_is_what_prometheus_client_writes_for_the_same_families_in_both_formats() -> None:
    cache = ExpositionCache()
    for counts, done in (({"a": 4}, {"x": 1.0}), ({"a": 5, "b": 2}, {"x": 1.0, "y": 2.5}), ({"b": 3}, {})):
        families = [histogram(counts, []), counter(done), Family("empty", "Nothing yet.", "gauge")]
        body, content_type = cache.exposition(families, "")
        assert body == generate_latest(Families(families))  # type: ignore[arg-type]
        assert content_type.startswith("text/plain")
        body, content_type = cache.exposition(families, OPENMETRICS)
        assert body == generate_openmetrics(Families(families))  # type: ignore[arg-type]
        assert content_type.startswith("application/openmetrics-text")
