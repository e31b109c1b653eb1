from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import Field, StrictInt, model_validator

from virtualq.auth.principal import Role, Scope
from virtualq.kit.schemas import InputModel, Name, OutputModel


class ApiKeyCreate(InputModel):
    name: Name = Field(examples=["Front counter tablet"])
    scope: Scope
    role: Role
    account_id: uuid.UUID | None = Field(
        default=None, description="Required for account scope (platform keys)."
    )
    tenant_id: uuid.UUID | None = Field(default=None, description="Required for tenant scope.")
    employee_id: uuid.UUID | None = Field(default=None, description="Attributes a tenant key's actions.")
    rate_limit_per_minute: RatePerMinute = None
    rate_limit_burst: RateBurst = None

    @model_validator(mode="after")
    def _shape_matches_scope(self) -> ApiKeyCreate:
        if self.scope is Scope.PLATFORM and (self.account_id or self.tenant_id):
            raise ValueError("a platform key takes neither account_id nor tenant_id")
        if self.scope is Scope.ACCOUNT and self.tenant_id:
            raise ValueError("an account key takes no tenant_id")
        if self.employee_id and self.scope is not Scope.TENANT:
            raise ValueError("employee_id is only for tenant-scoped keys")
        return self


RatePerMinute = Annotated[
    StrictInt | None,
    Field(
        default=None,
        ge=0,
        le=1_000_000,
        description="Sustained requests per minute for this key (platform admins only); 0: not limited; "
        "null: the server's RATE_LIMIT_PER_MINUTE.",
    ),
]
RateBurst = Annotated[
    StrictInt | None,
    Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="Requests this key may send at once (the bucket size; platform admins only); null: the "
        "server's RATE_LIMIT_BURST, or twice the key's own per-minute limit when only that is set.",
    ),
]


class ApiKeyLimits(InputModel):
    """Change a key's rate limits (platform admins only). A field left out is unchanged; null resets it."""

    rate_limit_per_minute: RatePerMinute = None
    rate_limit_burst: RateBurst = None


class ApiKey(OutputModel):
    id: uuid.UUID
    name: str
    key_prefix: str = Field(description="The first characters of the key, to recognise it.")
    scope: Scope
    role: Role
    account_id: uuid.UUID | None
    tenant_id: uuid.UUID | None
    employee_id: uuid.UUID | None
    revoked_at: datetime | None
    rate_limit_per_minute: int | None
    rate_limit_burst: int | None
    created_at: datetime
    updated_at: datetime


class ApiKeyCreated(ApiKey):
    key: str = Field(description="The secret key. Shown only in this response; store it now.")


class MeEmployee(OutputModel):
    id: uuid.UUID
    fname: str
    lname: str
    queue_ids: list[uuid.UUID] = Field(description="The queues this person serves (their call-next's).")


class Me(OutputModel):
    key_id: uuid.UUID | None = Field(description="Null for the ADMIN_API_KEY of the environment.")
    scope: Scope
    role: Role
    account_id: uuid.UUID | None
    tenant_id: uuid.UUID | None
    employee: MeEmployee | None = Field(
        description="The employee a staff key acts as (call-next assigns them), if it is bound to one."
    )
