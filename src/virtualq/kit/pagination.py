"""The one pagination helper: `page`/`limit` parameters and the {"data", "pagination"} envelope."""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import Depends, Query
from pydantic import BaseModel

from virtualq.db import Connection, Record
from virtualq.kit.sql import Where

MAX_LIMIT = 100


class PageParams(BaseModel):
    page: int
    limit: int

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.limit


# async: FastAPI runs a plain `def` dependency in a worker thread, a thread hand-off on every list request.
async def _page_params(
    page: Annotated[int, Query(ge=1, le=1_000_000, description="1-based page number.")] = 1,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Items per page (1-100).")] = 20,
) -> PageParams:
    return PageParams(page=page, limit=limit)


PageQuery = Annotated[PageParams, Depends(_page_params)]


async def fetch_page(
    conn: Connection, select_from: str, where: Where, order_by: str, params: PageParams
) -> tuple[list[Record], int]:
    """One round trip for the page and its total; a second only when the page is past the end."""
    limit_param = len(where.args) + 1
    sql = (
        f"SELECT *, count(*) OVER () AS _total FROM ({select_from} {where.sql}) AS q "
        f"ORDER BY {order_by} LIMIT ${limit_param} OFFSET ${limit_param + 1}"
    )
    rows = await conn.fetch(sql, *where.args, params.limit, params.offset)
    if rows:
        return rows, int(rows[0]["_total"])
    total = await conn.fetchval(f"SELECT count(*) FROM ({select_from} {where.sql}) AS q", *where.args)
    return rows, int(total)


def page_envelope(data: list[Any], total: int, params: PageParams) -> dict[str, Any]:
    return {
        "data": data,
        "pagination": {
            "page": params.page,
            "limit": params.limit,
            "total": total,
            "total_pages": math.ceil(total / params.limit) if total else 0,
        },
    }
