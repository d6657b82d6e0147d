"""Map label sets to the ids that raw rows reference, inserting the ones not stored yet.

Label sets are never deleted, so an id once read is valid for good. Insertion is race-free across
processes: ``INSERT ... ON CONFLICT DO NOTHING`` then a read of what is stored.

And deadlock-free. An insert of a key that another transaction inserted and has not committed yet waits for
that transaction; two processes inserting the same new label sets in different orders (a fleet that
restarts together registers the same actors and queues, each in the order its messages come) each wait for
the other, and PostgreSQL aborts one as a deadlock after ``deadlock_timeout`` (1 s). So every insertion goes
in one global order, by ``labels_key``: a transaction only ever waits for one that is further along that
order, which never waits back. The writer registers label sets in a short transaction of their own before
it writes a batch (:class:`~dramatiq_opmetrics.writer.BackgroundWriter`); :func:`resolve_label_set_ids`
itself runs at the start of the caller's transaction.
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

    Runs inside the caller's transaction on ``executor`` and neither commits nor flushes a session. The label
    sets not stored yet are inserted sorted by ``labels_key``, whatever the order of ``label_sets``, so that
    concurrent callers never deadlock (see the module documentation). An insert holds its rows' locks until
    the caller's transaction ends: call it first in a short transaction, or on a connection of its own.
    """
    wanted = {label_set.labels_key: label_set for label_set in label_sets}
    if not wanted:
        return {}
    ids = _read_ids(executor, wanted)
    missing = [wanted[key] for key in sorted(wanted) if key not in ids]
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
