"""Small helpers for building parameterised SQL: WHERE clauses and partial UPDATEs.

Column names only ever come from our code (never from the request); values always travel as parameters.
"""

from __future__ import annotations

from typing import Any


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
