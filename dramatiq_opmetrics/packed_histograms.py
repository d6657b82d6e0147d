"""Packed histograms: the bucket counts of a :class:`~dramatiq_opmetrics.sketch.Histogram` as a few bytes that
merge without parsing.

A year of daily rows holds tens of millions of histogram buckets. In their JSON form (the permanent stored
format, :mod:`~dramatiq_opmetrics.sketch`) each bucket is a key string and a number to parse: PostgreSQL's
``jsonb_each_text`` expansion of them took 81% of a 365-day report. Packed, a histogram is one run of
counts per side, starting at its lowest key. The daily rows carry this form next to their JSON
(``histogram_packed``), and the monthly rows (:mod:`~dramatiq_opmetrics.rollup`) carry only it.

Format (version 1; little-endian; every field unsigned unless said)::

    version: u8 = 1      width: u8 (bytes per count: 1, 2, 4 or 8, the fewest that hold the largest count)
    positive_offset: i32  positive_length: u32   (the key of the first positive count; how many counts)
    zero_count: u64
    negative_offset: i32  negative_length: u32   (the same for negative values, by key of their magnitude)
    positive counts, then negative counts: ``width`` bytes each

The counts run without gaps from the lowest to the highest key that counts anything (a key between them
counting nothing holds 0). Keys of finite values lie within about +-36,000, so even a histogram of a
subnormal and a huge value stays below 300 KB; real ones take a few hundred bytes.

How :class:`HistogramSum` adds them without a Python operation per bucket: the counts of a side are the
64-bit "lanes" of one Python integer (count ``i`` times ``2**(64 * i)``), so adding a histogram is adding
two integers, which Python does in C over the whole run at once. A packed run becomes such an integer by
spreading its counts to 8 bytes each (strided byte copies) and reading them with :meth:`int.from_bytes`.
A lane never overflows into the next: a count of more than ``2**64`` values is out of reach. About 3 us per
daily histogram, four times faster than adding counts one by one (``map(operator.add, ...)``). Quantiles
are read from the sum exactly as :meth:`Histogram.quantiles <dramatiq_opmetrics.sketch.Histogram.quantiles>`
reads them (the same value, bit for bit: tested).
"""

from __future__ import annotations

import bisect
import itertools
import struct
import sys
from array import array
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from .sketch import Histogram, bucket_value

#: The version byte of the packed format.
PACKED_VERSION = 1
_HEADER = struct.Struct("<BBiIQiI")
_LANE = 8
_WIDTHS = (1, 2, 4, 8)
_BIG_ENDIAN = sys.byteorder == "big"


def _width(largest: int) -> int:
    for width in (1, 2, 4):
        if largest < 1 << (8 * width):
            return width
    return 8


def _widen(data: bytes | memoryview, width: int, length: int) -> bytes | bytearray | memoryview:
    """``length`` little-endian counts of ``width`` bytes as counts of 8 bytes."""
    if width == _LANE:
        return data
    counts = bytes(data)  # slicing bytes with a step is twice as fast as slicing a memoryview
    lanes = bytearray(_LANE * length)
    for byte in range(width):
        lanes[byte::_LANE] = counts[byte::width]
    return lanes


def _narrow(lanes: bytes, width: int) -> bytes | bytearray:
    """Counts of 8 little-endian bytes as counts of ``width`` bytes (each fits)."""
    if width == _LANE:
        return lanes
    counts = bytearray(width * (len(lanes) // _LANE))
    for byte in range(width):
        counts[byte::width] = lanes[byte::_LANE]
    return counts


class _Side:
    """The counts of one side (positive or negative values): lane ``i`` of ``total`` counts key
    ``offset + i``."""

    __slots__ = ("offset", "total")

    def __init__(self, offset: int = 0, total: int = 0) -> None:
        self.offset = offset
        self.total = total

    def copy(self) -> _Side:
        return _Side(self.offset, self.total)

    def add(self, offset: int, total: int) -> None:
        """Add the counts whose lane ``i`` counts key ``offset + i``."""
        if not total:
            return
        if not self.total:
            self.offset, self.total = offset, total
        elif offset >= self.offset:
            self.total += total << (64 * (offset - self.offset))
        else:
            self.total = (self.total << (64 * (self.offset - offset))) + total
            self.offset = offset

    def add_bins(self, bins: Mapping[int, int]) -> None:
        """Add counts by key (a :class:`~dramatiq_opmetrics.sketch.Histogram`'s bins)."""
        if not bins:
            return
        if 0 in bins.values():
            bins = {key: count for key, count in bins.items() if count}
            if not bins:
                return
        # One pass over the keys that count (a first read of a day's tier makes ten thousand of these): a
        # third faster than filtering them first, and than filling every key of the run with map(bins.get).
        low = min(bins)
        dense = [0] * (max(bins) - low + 1)
        for key, count in bins.items():
            dense[key - low] = count
        self.add(low, _from_counts(dense))

    def trimmed_lanes(self) -> tuple[int, bytes]:
        """The offset and the counts as 8 little-endian bytes each, without leading and trailing zeros."""
        total = self.total
        if total <= 0:
            return self.offset, b""
        lanes = total.to_bytes(_LANE * ((total.bit_length() + 63) // 64), "little")
        # The zero lanes at the start found on the bytes: twice as fast as on the integer (``total & -total``).
        skipped = (len(lanes) - len(lanes.lstrip(b"\0"))) // _LANE
        return self.offset + skipped, lanes[_LANE * skipped :]

    def trimmed(self) -> tuple[int, list[int]]:
        """The offset and the counts, without leading and trailing zeros."""
        offset, lanes = self.trimmed_lanes()
        return offset, _counts_of(lanes).tolist()

    def cumulative(self) -> tuple[int, list[int]]:
        """The offset and the running counts (a key counting 0 is never the one a rank finds)."""
        offset, counts = self.trimmed()
        return offset, list(itertools.accumulate(counts))


def _lane_bytes(counts: Sequence[int]) -> bytes:
    """``counts`` (non-negative, each below ``2**64``) as 8 little-endian bytes each."""
    lanes = array("Q", counts)
    if _BIG_ENDIAN:  # pragma: no cover - big-endian platforms
        lanes.byteswap()
    return lanes.tobytes()


def _counts_of(lanes: bytes) -> array[int]:
    """The counts of 8 little-endian bytes each in ``lanes``."""
    counts = array("Q")
    counts.frombytes(lanes)
    if _BIG_ENDIAN:  # pragma: no cover - big-endian platforms
        counts.byteswap()
    return counts


def _from_counts(counts: Sequence[int]) -> int:
    """The lanes integer of ``counts`` (non-negative, each below ``2**64``)."""
    return int.from_bytes(_lane_bytes(counts), "little")


def _key_at_rank(side: tuple[int, list[int]], rank: float, *, lower: bool) -> int:
    """As :func:`dramatiq_opmetrics.sketch._key_at_rank`, over running counts from an offset."""
    offset, running = side
    index = bisect.bisect_right(running, rank) if lower else bisect.bisect_left(running, rank + 1)
    return offset + min(index, len(running) - 1)


class HistogramSum:
    """A sum of histograms, packed or not: add with :meth:`add_packed`, :meth:`add_histogram` or :meth:`add`,
    read with :meth:`quantiles`, :meth:`pack` or :meth:`histogram`."""

    __slots__ = ("negative", "positive", "zero_count")

    def __init__(self) -> None:
        self.positive = _Side()
        self.negative = _Side()
        self.zero_count = 0

    def copy(self) -> HistogramSum:
        """An independent copy."""
        twin = HistogramSum()
        twin.positive, twin.negative, twin.zero_count = self.positive.copy(), self.negative.copy(), self.zero_count
        return twin

    def add_packed(self, data: bytes) -> None:
        """Add a packed histogram (see the module documentation).

        Raises:
          ValueError: ``data`` is not a packed histogram of a version this package reads.
        """
        if len(data) < _HEADER.size or data[0] != PACKED_VERSION:
            raise ValueError(f"not a packed histogram of version {PACKED_VERSION} ({len(data)} bytes)")
        _, width, positive_offset, positive_length, zero_count, negative_offset, negative_length = _HEADER.unpack_from(
            data
        )
        if width not in _WIDTHS or len(data) != _HEADER.size + width * (positive_length + negative_length):
            raise ValueError(f"a packed histogram of {len(data)} bytes does not match its header")
        self.zero_count += zero_count
        view = memoryview(data)
        split = _HEADER.size + width * positive_length
        if positive_length:
            lanes = _widen(view[_HEADER.size : split], width, positive_length)
            self.positive.add(positive_offset, int.from_bytes(lanes, "little"))
        if negative_length:
            lanes = _widen(view[split:], width, negative_length)
            self.negative.add(negative_offset, int.from_bytes(lanes, "little"))

    def add_histogram(self, histogram: Histogram) -> None:
        """Add a :class:`~dramatiq_opmetrics.sketch.Histogram`."""
        self.positive.add_bins(histogram.bins)
        self.negative.add_bins(histogram.negative_bins)
        self.zero_count += histogram.zero_count

    def add(self, other: HistogramSum) -> None:
        """Add another sum (left unchanged)."""
        self.positive.add(other.positive.offset, other.positive.total)
        self.negative.add(other.negative.offset, other.negative.total)
        self.zero_count += other.zero_count

    @property
    def count(self) -> int:
        """How many values the sum holds."""
        return sum(self.positive.trimmed()[1]) + sum(self.negative.trimmed()[1]) + self.zero_count

    def quantiles_within(self, fractions: Sequence[float], low: float, high: float) -> tuple[float | None, ...]:
        """:meth:`quantiles`, each clamped to ``[low, high]`` (the extremes of the values counted: a bucket's
        representative value may lie just outside them)."""
        return tuple(None if value is None else min(max(value, low), high) for value in self.quantiles(fractions))

    def quantiles(self, fractions: Sequence[float]) -> list[float | None]:
        """The values at ``fractions`` (0 to 1), as :meth:`Histogram.quantiles
        <dramatiq_opmetrics.sketch.Histogram.quantiles>` reads them from the same counts; None if empty.

        The running counts are exact integers here (floats there, exact below 2**53 values), so every rank
        compares the same way and the same bucket is found.
        """
        for fraction in fractions:
            if not 0 <= fraction <= 1:
                raise ValueError(f"a quantile fraction must be within [0, 1], got {fraction!r}")
        positive, negative = self.positive.cumulative(), self.negative.cumulative()
        negative_count = negative[1][-1] if negative[1] else 0
        count = negative_count + self.zero_count + (positive[1][-1] if positive[1] else 0)
        values: list[float | None] = []
        for fraction in fractions:
            if count == 0:
                values.append(None)
                continue
            rank = fraction * (float(count) - 1)
            if rank < negative_count:
                values.append(-bucket_value(_key_at_rank(negative, negative_count - rank - 1, lower=False)))
            elif rank < self.zero_count + negative_count:
                values.append(0.0)
            else:
                key = _key_at_rank(positive, rank - self.zero_count - negative_count, lower=True)
                values.append(bucket_value(key))
        return values

    def pack(self) -> bytes:
        """The packed form of the sum."""
        positive_offset, positive = self.positive.trimmed_lanes()
        negative_offset, negative = self.negative.trimmed_lanes()
        width = _width(max(_counts_of(positive + negative), default=0))
        header = _HEADER.pack(
            PACKED_VERSION,
            width,
            positive_offset,
            len(positive) // _LANE,
            self.zero_count,
            negative_offset,
            len(negative) // _LANE,
        )
        return header + _narrow(positive, width) + _narrow(negative, width)

    def histogram(self) -> Histogram:
        """The sum as a :class:`~dramatiq_opmetrics.sketch.Histogram`."""
        return Histogram(bins=_bins(self.positive), zero_count=self.zero_count, negative_bins=_bins(self.negative))


def _bins(side: _Side) -> Counter[int]:
    offset, counts = side.trimmed()
    return Counter({offset + index: count for index, count in enumerate(counts) if count})


def pack(histogram: Histogram) -> bytes:
    """The packed form of ``histogram``."""
    total = HistogramSum()
    total.add_histogram(histogram)
    return total.pack()


def unpack(data: bytes) -> Histogram:
    """The :class:`~dramatiq_opmetrics.sketch.Histogram` of a packed histogram.

    Raises:
      ValueError: ``data`` is not a packed histogram of a version this package reads.
    """
    total = HistogramSum()
    total.add_packed(data)
    return total.histogram()


def sum_of_packed(packed: Iterable[bytes]) -> HistogramSum:
    """The sum of packed histograms."""
    total = HistogramSum()
    for data in packed:
        total.add_packed(data)
    return total
