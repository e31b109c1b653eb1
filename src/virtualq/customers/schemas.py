from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import Field

from virtualq.kit.schemas import Email, Flag, InputModel, Name, OutputModel, PatchModel, Phone


class CustomerCreate(InputModel):
    id: uuid.UUID | None = Field(
        default=None, description="Bring your own id (any UUID); minted (v7) if absent."
    )
    account_id: uuid.UUID | None = Field(
        default=None, description="Defaults to the key's (or tenant's) account."
    )
    fname: Name | None = Field(default=None, examples=["John"])
    lname: Name | None = Field(default=None, examples=["Smith"])
    email: Email | None = None
    phone: Phone | None = Field(default=None, examples=["+1 206 555 0100"])


class CustomerUpdate(PatchModel):
    not_nullable = frozenset({"is_active"})

    fname: Name | None = None
    lname: Name | None = None
    email: Email | None = None
    phone: Phone | None = None
    is_active: Flag | None = None


class Customer(OutputModel):
    id: uuid.UUID
    account_id: uuid.UUID
    fname: str | None
    lname: str | None
    email: str | None
    phone: str | None
    is_active: bool
    created_at: datetime
    updated_at: datetime
