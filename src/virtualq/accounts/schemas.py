from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import Field

from virtualq.kit.schemas import Email, Flag, InputModel, LongText, Name, OutputModel, PatchModel


class AccountCreate(InputModel):
    name: Name
    billing_email: Email | None = None
    billing_address: LongText | None = None


class AccountUpdate(PatchModel):
    not_nullable = frozenset({"name", "is_active"})

    name: Name | None = None
    billing_email: Email | None = None
    billing_address: LongText | None = None
    is_active: Flag | None = None


class Account(OutputModel):
    id: uuid.UUID
    name: str = Field(examples=["Seattle Coffee Co."])
    billing_email: str | None
    billing_address: str | None
    is_active: bool
    created_at: datetime
    updated_at: datetime
