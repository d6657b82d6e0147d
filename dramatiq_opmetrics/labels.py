"""Validation and canonical form of the labels that segment every metric.

Labels are a small mapping of strings, such as ``{"actor": "send_email", "queue": "default"}``.
Each distinct set is identified by its *labels key*: the pairs sorted by key, written ``key:value`` and
joined by ``|``::

    >>> make_label_set({"queue": "default", "actor": "send_email"}).labels_key
    'actor:send_email|queue:default'

Keys are identifiers (letters, digits, ``_``, ``.`` and ``-``, starting with a letter or ``_``), so they
never contain ``:`` or ``|``. In values, ``\\``, ``|`` and ``:`` are escaped with a backslash, so two
different label sets can never share a key.

Labels must stay few and bounded: never put message ids, process ids or host names in them, or the
number of distinct label sets (and rows in the daily table) grows without limit.

Every label set that passes :func:`make_label_set` can be stored and indexed by PostgreSQL and SQLite:
values are valid Unicode (no lone surrogates, which UTF-8 cannot encode) without NUL characters, and the
whole ``labels_key`` takes at most :data:`MAX_LABEL_SET_BYTES` bytes in UTF-8. That bound exists because
``labels_key`` is a btree index entry twice (the unique index of ``opmetrics_label_sets`` and the primary
key of ``operational_metrics_daily``) and PostgreSQL refuses an index entry above 2,704 bytes: measured
here, a single incompressible text column fits up to 2,692 bytes, and the daily key's two other columns
take 8 more. The ``labels`` JSON copy is not indexed, so its escaping does not count.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

#: The most labels one sample may carry.
MAX_LABELS = 16
#: The longest label key, in characters.
MAX_KEY_LENGTH = 64
#: The longest label value, in characters.
MAX_VALUE_LENGTH = 200
#: The largest ``labels_key`` of a label set, in UTF-8 bytes (separators and escapes included): well under
#: PostgreSQL's 2,704-byte limit of a btree index entry, with room for the daily key's other columns.
MAX_LABEL_SET_BYTES = 2_048

_KEY_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*\Z")
_VALUE_ESCAPES = str.maketrans({"\\": "\\\\", "|": "\\|", ":": "\\:"})


@dataclass(frozen=True, slots=True)
class LabelSet:
    """A validated, canonical set of labels.

    Attributes:
      labels_key(str): the canonical string form; equal label sets have equal keys and different ones
        different keys.
      labels(Mapping[str, str]): the labels, sorted by key, read-only.
    """

    labels_key: str
    labels: Mapping[str, str] = field(compare=False)


EMPTY_LABEL_SET = LabelSet("", MappingProxyType({}))


def make_label_set(labels: Mapping[str, object]) -> LabelSet:
    """Validate ``labels`` and return their canonical :class:`LabelSet`.

    Raises:
      ValueError: naming the offending key, when there are more than :data:`MAX_LABELS` labels, a key is
        not an identifier of at most :data:`MAX_KEY_LENGTH` characters, or a value is not a non-empty
        string of at most :data:`MAX_VALUE_LENGTH` characters of valid Unicode (no lone surrogate) without
        NUL characters; or, naming the size, when the ``labels_key`` takes more than
        :data:`MAX_LABEL_SET_BYTES` bytes in UTF-8.
    """
    if len(labels) > MAX_LABELS:
        raise ValueError(f"too many labels: {len(labels)} given, at most {MAX_LABELS} allowed")
    for key, value in labels.items():
        _check_label(key, value)
    ordered = {key: labels[key] for key in sorted(labels)}
    labels_key = "|".join(f"{key}:{str(value).translate(_VALUE_ESCAPES)}" for key, value in ordered.items())
    # Values are checked encodable above, so this cannot fail; ASCII keys skip the encoding.
    size = len(labels_key) if labels_key.isascii() else len(labels_key.encode("utf-8"))
    if size > MAX_LABEL_SET_BYTES:
        raise ValueError(
            f"labels too large: their labels key takes {size:,} bytes in UTF-8 (escapes included), at most"
            f" {MAX_LABEL_SET_BYTES:,} allowed (PostgreSQL indexes it); use fewer or shorter labels"
        )
    return LabelSet(labels_key, MappingProxyType(ordered))  # type: ignore[arg-type]


def _check_label(key: object, value: object) -> None:
    if not isinstance(key, str) or not key:
        raise ValueError(f"label key {key!r} must be a non-empty string")
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"label key {key[:20]!r}... is longer than {MAX_KEY_LENGTH} characters")
    if not _KEY_PATTERN.match(key):
        raise ValueError(
            f"label key {key!r} must start with a letter or '_' and contain only letters, digits, '_', '.', '-'"
        )
    if not isinstance(value, str):
        raise ValueError(f"label {key!r} must have a string value, got {type(value).__name__}")
    if not value:
        raise ValueError(f"label {key!r} has an empty value")
    if len(value) > MAX_VALUE_LENGTH:
        raise ValueError(f"label {key!r} has a value longer than {MAX_VALUE_LENGTH} characters")
    if "\x00" in value:
        raise ValueError(f"label {key!r} has a value containing a NUL character")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(
                f"label {key!r} has a value that is not valid Unicode (a lone surrogate at position {error.start})"
            ) from None
