"""Map label sets to the ids that raw rows reference, inserting the ones not stored yet.

Label sets are never deleted, so an id once read is valid for good. Insertion is race-free across
processes: ``INSERT ... ON CONFLICT DO NOTHING`` then a read of what is stored.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from .labels import LabelSet
from .models import LabelSet as LabelSetRow
from .value_lists import in_values


def resolve_label_set_ids(executor: Connection | Session, label_sets: Iterable[LabelSet]) -> dict[str, int]:
    """Return ``{labels_key: id}`` for ``label_sets``, inserting those not stored yet.

    Runs inside the caller's transaction on ``executor`` and neither commits nor flushes a session.
    """
    wanted = {label_set.labels_key: label_set for label_set in label_sets}
    if not wanted:
        return {}
    ids = _read_ids(executor, wanted)
    missing = [wanted[key] for key in wanted if key not in ids]
    if missing:
        dialect = executor.get_bind().dialect.name if isinstance(executor, Session) else executor.dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        rows = [{"labels_key": ls.labels_key, "labels": dict(ls.labels)} for ls in missing]
        executor.execute(insert(LabelSetRow).on_conflict_do_nothing(index_elements=["labels_key"]), rows)
        ids.update(_read_ids(executor, {ls.labels_key: ls for ls in missing}))
    return ids


def _read_ids(executor: Connection | Session, wanted: dict[str, LabelSet]) -> dict[str, int]:
    query = select(LabelSetRow.labels_key, LabelSetRow.id).where(in_values(LabelSetRow.labels_key, wanted))
    return {key: id_ for key, id_ in executor.execute(query)}
