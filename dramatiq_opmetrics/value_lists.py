"""``in_values``: ``column IN (values)`` with one bound parameter, however many values there are.

SQLAlchemy's ``column.in_(values)`` binds one parameter per value, and databases cap the parameters of a
statement: 65,535 on PostgreSQL (its wire protocol counts them in 16 bits), 32,766 on SQLite since 3.32
and 999 before. A filter on label sets has one value per label set, and nothing bounds how many label sets
a day has, so every query that filters on a list of ids or labels keys uses :func:`in_values` instead,
which passes the whole list as one parameter:

- PostgreSQL: ``column = ANY(:values)``, an array parameter (its index is used as for ``IN``);
- SQLite: ``column IN (SELECT value FROM json_each(:values))``, the list as one JSON array (the JSON
  functions are built into SQLite since 3.38 and into nearly every build before).

The statement is the same whatever the number of values, so it is compiled and cached once.

Example::

    ids = connection.execute(select(LabelSet.id).where(in_values(LabelSet.labels_key, keys))).scalars()
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Boolean, String, TypeDecorator, bindparam
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import QueryableAttribute
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeEngine


class _ValueList(TypeDecorator[list[Any]]):
    """A list of values bound as one parameter: an array of the column's type on PostgreSQL, else JSON."""

    impl = String
    cache_ok = True

    def __init__(self, item_type: TypeEngine[Any]) -> None:
        super().__init__()
        self.item_type = item_type

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.ARRAY(self.item_type))
        return dialect.type_descriptor(String())

    def process_bind_param(self, value: list[Any] | None, dialect: Dialect) -> Any:
        if value is None or dialect.name == "postgresql":
            return value
        return json.dumps(value)


class _InValues(FunctionElement[bool]):
    """``column IN (values)`` with the values in one parameter; rendered per dialect below."""

    name = "in_values"
    type = Boolean()
    inherit_cache = True
    # A condition in itself: SQLite (no boolean type) must not get "= 1" appended to it.
    _is_implicitly_boolean = True


def in_values(column: ColumnElement[Any] | QueryableAttribute[Any], values: Iterable[Any]) -> ColumnElement[bool]:
    """The condition ``column IN (values)``, with ``values`` bound as one parameter (any number of them).

    ``values`` are plain numbers or strings of ``column``'s type (label-set ids, labels keys).
    """
    expression = column.expression if isinstance(column, QueryableAttribute) else column
    return _InValues(expression, bindparam(None, list(values), type_=_ValueList(expression.type)))


@compiles(_InValues, "postgresql")
def _in_values_postgresql(element: _InValues, compiler: SQLCompiler, **kw: Any) -> str:
    column, values = element.clauses
    return f"{compiler.process(column, **kw)} = ANY({compiler.process(values, **kw)})"


@compiles(_InValues)
def _in_values_json(element: _InValues, compiler: SQLCompiler, **kw: Any) -> str:
    column, values = element.clauses
    return f"{compiler.process(column, **kw)} IN (SELECT value FROM json_each({compiler.process(values, **kw)}))"
