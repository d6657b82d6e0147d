"""The exposition text of metric families, written by ``prometheus_client``'s encoders and kept per series
between scrapes.

A scrape of the exporter is 9,000 samples and more (a histogram is 21 of them per label set), and
``prometheus_client`` writes each sample's line anew at every scrape (escaping its name and every label, about
5 µs a sample in the text format, twice that in OpenMetrics): a third of a scrape, though between two
scrapes most series have not changed. So families are described here series by series, each with a version
(equal versions: equal samples, such as a histogram's count and sum), and :class:`ExpositionCache` keeps the
text of each series, per format: a scrape has the encoder write only the series whose version changed.

The text is always the encoder's own: a series' text is what the encoder writes for a family holding only
that series, without the family's header and the format's trailer (both also written by the encoder, and
checked to be there); the encoders write a family as its header then one line per sample, independently of
the other samples, so the body of a scrape is byte for byte what the encoder writes for the whole registry
(tested against :meth:`Family.metric` through ``generate_latest``, in both formats).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import Metric
from prometheus_client.exposition import choose_encoder

#: A sample as a family is built from: its name, its labels and its value.
SampleValues = tuple[str, Mapping[str, str], float]
#: Formats (content types) whose series' texts are kept at once.
KEPT_FORMATS = 4


@dataclass(frozen=True)
class Series:
    """One series of a family: what identifies it in the family, its version and how to make its samples.

    Parameters:
      key(Hashable): the series within its family (its labels).
      version(Hashable): equal versions of the same series have equal samples.
      samples(Callable[[], Sequence[SampleValues]]): the series' samples, called only when they are needed.
    """

    key: Hashable
    version: Hashable
    samples: Callable[[], Sequence[SampleValues]]


class Family:
    """A metric family described series by series.

    Parameters:
      name(str): the family's name (as ``prometheus_client.core.Metric`` takes it).
      documentation(str): its help text.
      kind(str): its type (``counter``, ``gauge``, ``histogram``).
    """

    def __init__(self, name: str, documentation: str, kind: str) -> None:
        self.name, self.documentation, self.kind = name, documentation, kind
        self.series: list[Series] = []

    def add_sample(self, name: str, labels: Mapping[str, str], value: float, *, key: Hashable = None) -> None:
        """Add a series of one sample (its version: its value); ``key`` identifies it among the family's samples
        of that name (default: its labels, sorted)."""
        sample = (name, labels, value)
        if key is None:
            key = tuple(sorted(labels.items()))
        self.series.append(Series((name, key), value, lambda: (sample,)))

    def header(self) -> Metric:
        """The family without samples."""
        return Metric(self.name, self.documentation, self.kind)

    def metric(self) -> Metric:
        """The family with every sample of every series, as a collector yields it."""
        metric = self.header()
        for series in self.series:
            for name, labels, value in series.samples():
                metric.add_sample(name, dict(labels), value)
        return metric


class _Metrics:
    """A collector of given metrics (what an encoder reads)."""

    def __init__(self, metrics: Iterable[Metric]) -> None:
        self.metrics = list(metrics)

    def collect(self) -> Iterator[Metric]:
        return iter(self.metrics)


class ExpositionCache:
    """The text of families in the format a request accepts, each series' text kept from the scrape before
    while its version is unchanged (see the module documentation). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: dict[str, dict[tuple[str, Hashable], tuple[Hashable, bytes]]] = {}

    def exposition(self, families: Iterable[Family], accept: str) -> tuple[bytes, str]:
        """The text of ``families`` in the format ``accept`` (a request's ``Accept`` header) asks for, as
        ``prometheus_client`` negotiates it, and its content type."""
        encoder, content_type = choose_encoder(accept)
        families = list(families)
        with self._lock:
            kept = self._kept.pop(content_type, {})
            texts: dict[tuple[str, Hashable], tuple[Hashable, bytes]] = {}
            body = _encode(encoder, families, kept, texts)
            self._kept[content_type] = texts
            while len(self._kept) > KEPT_FORMATS:
                del self._kept[next(iter(self._kept))]
        return body, content_type


def _encode(
    encoder: Callable[[Any], bytes],
    families: Sequence[Family],
    kept: Mapping[tuple[str, Hashable], tuple[Hashable, bytes]],
    texts: dict[tuple[str, Hashable], tuple[Hashable, bytes]],
) -> bytes:
    trailer = encoder(_Metrics(()))
    parts = []
    for family in families:
        header = _without(encoder(_Metrics([family.header()])), b"", trailer)
        parts.append(header)
        for series in family.series:
            key = (family.name, series.key)
            found = kept.get(key)
            if found is None or found[0] != series.version:
                metric = family.header()
                for name, labels, value in series.samples():
                    metric.add_sample(name, dict(labels), value)
                found = (series.version, _without(encoder(_Metrics([metric])), header, trailer))
            texts[key] = found
            parts.append(found[1])
    parts.append(trailer)
    return b"".join(parts)


def _without(text: bytes, header: bytes, trailer: bytes) -> bytes:
    """``text`` without ``header`` before and ``trailer`` after, both of which must be there."""
    if not text.startswith(header) or not text.endswith(trailer) or len(text) < len(header) + len(trailer):
        raise RuntimeError("prometheus_client's encoder no longer writes a family as its header then its samples")
    return text[len(header) : len(text) - len(trailer)]
