from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import Field, StrictStr, StringConstraints

from virtualq.kit.schemas import Email, Flag, IdList, InputModel, Name, OutputModel, PatchModel

JobRole = Annotated[StrictStr, StringConstraints(min_length=1, max_length=50)]


class EmployeeCreate(InputModel):
    tenant_id: uuid.UUID | None = Field(default=None, description="Must match the tenant context if given.")
    fname: Name = Field(examples=["Ana"])
    lname: Name = Field(examples=["Lopez"])
    email: Email
    role: JobRole = Field(
        default="staff", examples=["barista"], description="Job title; not an API key role."
    )


class EmployeeUpdate(PatchModel):
    not_nullable = frozenset({"fname", "lname", "email", "role", "is_active"})

    fname: Name | None = None
    lname: Name | None = None
    email: Email | None = None
    role: JobRole | None = None
    is_active: Flag | None = None


class Employee(OutputModel):
    id: uuid.UUID
    tenant_id: uuid.UUID
    fname: str
    lname: str
    email: str
    role: str
    queue_ids: list[uuid.UUID]
    is_active: bool
    created_at: datetime
    updated_at: datetime


class EmployeeQueues(InputModel):
    queue_ids: IdList = Field(description="The queues this employee serves (replaces the current set).")
