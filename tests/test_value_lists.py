"""``in_values``: one bound parameter for any number of values, on both dialects."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, insert, select

from dramatiq_opmetrics.models import LabelSet
from dramatiq_opmetrics.value_lists import in_values

#: Over PostgreSQL's 65,535 parameters per statement and SQLite's 32,766.
MANY = 100_000


@pytest.fixture
def stored(engine: Engine) -> dict[str, int]:
    """100 label sets stored: their ids by labels key."""
    with engine.begin() as connection:
        connection.execute(insert(LabelSet), [{"labels_key": f"k:{i}", "labels": {"k": str(i)}} for i in range(100)])
        return {key: id_ for key, id_ in connection.execute(select(LabelSet.labels_key, LabelSet.id))}


def test_a_list_of_100000_ids_or_keys_finds_exactly_the_stored_ones(engine: Engine, stored: dict[str, int]) -> None:
    wanted_keys = [f"k:{i}" for i in range(0, MANY, 2)]
    wanted_ids = [stored["k:3"], *range(10**6, 10**6 + MANY)]
    with engine.connect() as connection:
        keys = connection.execute(select(LabelSet.labels_key).where(in_values(LabelSet.labels_key, wanted_keys)))
        assert sorted(keys.scalars()) == sorted(f"k:{i}" for i in range(0, 100, 2))
        ids = connection.execute(select(LabelSet.id).where(in_values(LabelSet.id, wanted_ids))).scalars().all()
        assert ids == [stored["k:3"]]


def test_an_empty_list_matches_nothing_and_values_needing_quotes_match_as_they_are(engine: Engine) -> None:
    odd = ['a"b', "c,d", "{e}", "f\\g", "h'i", "NULL", " j "]
    with engine.begin() as connection:
        connection.execute(insert(LabelSet), [{"labels_key": key, "labels": {}} for key in [*odd, "other"]])
        assert connection.execute(select(LabelSet.id).where(in_values(LabelSet.labels_key, []))).all() == []
        found = connection.execute(select(LabelSet.labels_key).where(in_values(LabelSet.labels_key, odd)))
        assert sorted(found.scalars()) == sorted(odd)


def test_the_statement_is_the_same_whatever_the_number_of_values(engine: Engine) -> None:
    def sql(count: int) -> str:
        return str(select(LabelSet.id).where(in_values(LabelSet.id, range(count))).compile(engine))

    assert sql(1) == sql(MANY)
