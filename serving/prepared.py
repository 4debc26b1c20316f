"""ORM queries compiled to SQL once per process, then run with new values: the prediction API's hot path.

Turning a queryset into SQL costs Django about a millisecond of CPU for a query with joins
or subqueries (2–3 ms on a loaded machine), several times what PostgreSQL takes to answer
it; the prediction API runs the same three statements on every request. A `Prepared` query
is written as a normal queryset (so it stays portable between PostgreSQL and SQLite and
follows the models), compiled on first use per database connection alias, and then only
executed: the parameters are the compiled ones with the placeholders swapped for this call's
values, and the rows go through the same converters the ORM would apply (SQLite datetimes,
booleans). `insert_rows` does the same for an INSERT of model instances.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from django.db import connections, models


def _placeholder(kind: type, index: int) -> Any:
    """A value that stands for parameter `index` when the query is compiled, one no real row has."""
    return -7_340_001 - index if kind is int else f"\x1fprepared-placeholder-{index}"


class Prepared:
    """A `values_list` queryset built by `build(*placeholders)`, compiled once, run as `rows(*values)`.

    `kinds` gives the type of each parameter (int or str). The placeholders must reach the SQL
    as parameters unchanged (ids and keys compared with `=`); a query whose compiled parameters
    do not contain each placeholder exactly once is refused when it is first compiled, so a
    misuse shows at once rather than as wrong rows.
    """

    def __init__(self, build: Callable[..., models.QuerySet[Any]], kinds: tuple[type, ...] = (int,)) -> None:
        self._build = build
        self._kinds = kinds
        self._compiled: dict[str, tuple[str, list[Any], list[int], dict[int, tuple[list[Any], Any]]]] = {}
        self._lock = threading.Lock()

    def _compile(self, using: str) -> tuple[str, list[Any], list[int], dict[int, tuple[list[Any], Any]]]:
        with self._lock:
            compiled = self._compiled.get(using)
            if compiled is None:
                marks = [_placeholder(kind, i) for i, kind in enumerate(self._kinds)]
                compiler = self._build(*marks).query.get_compiler(using)
                sql, params = compiler.as_sql()
                params = list(params)
                positions = []
                for mark in marks:
                    found = [i for i, p in enumerate(params) if type(p) is type(mark) and p == mark]
                    if len(found) != 1:
                        raise ValueError(f"parameter {mark!r} appears {len(found)} times in {sql}")
                    positions.append(found[0])
                converters = compiler.get_converters([expression for expression, _, _ in compiler.select])
                compiled = (sql, params, positions, converters)
                self._compiled[using] = compiled
        return compiled

    def rows(self, *values: Any, using: str = "default") -> list[tuple[Any, ...]]:
        sql, params, positions, converters = self._compile(using)
        run = list(params)
        for position, value in zip(positions, values, strict=True):
            run[position] = value
        connection = connections[using]
        with connection.cursor() as cursor:
            cursor.execute(sql, run)
            rows = cursor.fetchall()
        if not converters:
            return [tuple(row) for row in rows]
        # What SQLCompiler.apply_converters does, with this thread's connection.
        out = []
        for row in rows:
            values_ = list(row)
            for position, (functions, expression) in converters.items():
                value = values_[position]
                for function in functions:
                    value = function(value, expression, connection)
                values_[position] = value
            out.append(tuple(values_))
        return out

    def first(self, *values: Any, using: str = "default") -> tuple[Any, ...] | None:
        rows = self.rows(*values, using=using)
        return rows[0] if rows else None


_inserts: dict[tuple[type[models.Model], str], tuple[str, str, list[models.Field[Any, Any]]]] = {}


def insert_rows(objs: Sequence[models.Model], *, using: str = "default") -> None:
    """INSERT model instances whose primary key is set already (UUIDs): `bulk_create` without the compiling.

    Values are prepared by each field as the ORM prepares them (`pre_save`, `get_db_prep_save`).
    """
    if not objs:
        return
    model = type(objs[0])
    connection = connections[using]
    key = (model, connection.vendor)
    if key not in _inserts:
        fields = [f for f in model._meta.concrete_fields if not f.generated]
        quote = connection.ops.quote_name
        columns = ", ".join(quote(str(f.column)) for f in fields)
        head = f"INSERT INTO {quote(model._meta.db_table)} ({columns}) VALUES "
        _inserts[key] = (head, "(" + ", ".join(["%s"] * len(fields)) + ")", fields)
    head, group, fields = _inserts[key]
    params: list[Any] = []
    for obj in objs:
        params.extend(f.get_db_prep_save(f.pre_save(obj, True), connection) for f in fields)
    with connection.cursor() as cursor:
        cursor.execute(head + ", ".join([group] * len(objs)), params)
    for obj in objs:
        obj._state.adding = False
        obj._state.db = using
