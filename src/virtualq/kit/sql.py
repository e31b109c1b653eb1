"""Small helpers for building parameterised SQL: WHERE clauses, partial UPDATEs, and deleting the oldest rows
of a table a batch at a time.

Column names only ever come from our code (never from the request); values always travel as parameters.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from asyncpg import Connection


class Where:
    def __init__(self) -> None:
        self._clauses: list[str] = []
        self.args: list[Any] = []

    def add(self, clause: str, value: Any) -> Where:
        """`clause` holds one `{}` that becomes the next positional parameter."""
        self.args.append(value)
        self._clauses.append(clause.format(f"${len(self.args)}"))
        return self

    def add_constant(self, clause: str) -> Where:
        self._clauses.append(clause)
        return self

    def add_if(self, clause: str, value: Any) -> Where:
        if value is not None:
            self.add(clause, value)
        return self

    @property
    def sql(self) -> str:
        return "WHERE " + " AND ".join(self._clauses) if self._clauses else ""


def set_clause(changes: dict[str, Any], first_param: int) -> tuple[str, list[Any]]:
    """`SET a = $n, b = $n+1, updated_at = now()` for the given column → value changes."""
    assignments = [f"{column} = ${index}" for index, column in enumerate(changes, start=first_param)]
    assignments.append("updated_at = now()")
    return ", ".join(assignments), list(changes.values())


def oldest_first_delete(
    table: str, age: str, condition: str = "true", returning: str = "", then: str = ""
) -> str:
    """A statement deleting up to `$3` rows of `table` whose `age` is from `$1` until before `$2` (and that
    meet `condition`), oldest first, skipping rows another transaction holds (each server process prunes).
    It deletes by the rows' address: the rows the sub-select locked are the rows deleted, at 0.8 µs a row
    where a join on a primary key cost 7. It answers how many it deleted and the last one's age, where the
    next batch starts, so that its index scan does not walk again over the entries this one left dead
    (docs/performance.md "Table upkeep"); `age` needs an index (with `condition` as its predicate).
    `returning` names more columns of the deleted rows for `then`, further CTEs that read them from
    `pruned` in the same statement."""
    columns = f"{age}, {returning}" if returning else age
    more = f", {then}" if then else ""
    return f"""
WITH pruned AS (
    DELETE FROM {table} WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM {table} WHERE {condition} AND {age} >= $1 AND {age} < $2
         ORDER BY {age} LIMIT $3 FOR UPDATE SKIP LOCKED))
    RETURNING {columns}
){more}
SELECT count(*) AS deleted, max({age}) AS last FROM pruned
"""


async def delete_oldest(
    conn: Connection, statement: str, since: datetime, before: datetime, limit: int
) -> tuple[int, datetime]:
    """Run an `oldest_first_delete` statement: how many rows it deleted, and where the next batch starts."""
    row = await conn.fetchrow(statement, since, before, limit)
    assert row is not None
    return row["deleted"], row["last"] or since
