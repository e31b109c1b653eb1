"""The one settings object, read from the environment (PRODUCT §7)."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Environment = Literal["development", "staging", "production"]
LogLevel = Literal["debug", "info", "warning", "error"]


class ConfigError(Exception):
    """Invalid configuration; the message is one line naming the variable."""


_DEFAULT_PORTS = {"http": 80, "https": 443}
_LABEL = r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?"
_HOST_NAME = re.compile(rf"{_LABEL}(\.{_LABEL})*\.?")


def _origin(entry: str) -> str:
    """A CORS_ORIGINS entry in the form a browser's Origin header takes (scheme://host[:port], lower case,
    no default port, an IPv6 address compressed), or `*`. An entry no Origin could equal (a path, a trailing
    slash, no scheme, a bad host or port) is refused: it would leave CORS off for that site without a word."""
    if entry == "*":
        return entry
    parts = urlsplit(entry)
    refused = ValueError(
        f"{entry!r} is not an origin: write scheme://host[:port], with no path or trailing slash "
        "(e.g. https://shop.example.com), or * for any"
    )
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or parts.path or parts.query or parts.fragment or entry[-1] in "?#":
        raise refused
    host = parts.hostname
    if "@" in parts.netloc or not host:
        raise refused
    try:
        port = parts.port
    except ValueError:
        raise refused from None
    if not host.isascii():  # browsers send the ASCII form, by rules (UTS 46) the standard library lacks
        raise ValueError(f"{entry!r}: write the host in its ASCII form (xn--...), as browsers send it")
    if "[" in parts.netloc:
        try:
            host = f"[{ipaddress.IPv6Address(host).compressed}]"
        except ValueError:
            raise refused from None
    elif not _HOST_NAME.fullmatch(host):
        raise refused
    return f"{scheme}://{host}" if port in (None, _DEFAULT_PORTS[scheme]) else f"{scheme}://{host}:{port}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    database_url: str | None = None
    virtualq_data_dir: Path = Path(".virtualq")
    redis_url: str | None = None
    log_level: LogLevel = "info"
    env: Environment = "development"
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Where customers reach this server ("https://q.example.com"): makes `customer_page` a whole link.
    public_base_url: str | None = None
    admin_api_key: SecretStr | None = None
    web_concurrency: int = Field(default=1, ge=1, le=64)
    rate_limit_per_minute: int = Field(default=100, ge=0)
    rate_limit_burst: int = Field(default=200, ge=0)
    # Self-service joins (no API key) per client address and join link: a kiosk is one address (0: no limit).
    self_join_rate_per_minute: int = Field(default=20, ge=0)
    self_join_rate_burst: int = Field(default=20, ge=1)
    db_pool_min_size: int = Field(default=2, ge=0, le=100)
    db_pool_max_size: int = Field(default=20, ge=1, le=100)
    # A pooled connection older than this is replaced when next given back or found idle (0: never).
    db_pool_max_lifetime_seconds: float = Field(default=1800.0, ge=0, le=86_400)
    db_command_timeout_seconds: float = Field(default=30.0, gt=0)
    auto_migrate: bool = True
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    sweeper_interval_seconds: float = Field(default=5.0, ge=0, le=3600)
    auth_cache_seconds: float = Field(default=1.0, ge=0, le=60)
    feed_cache_seconds: float = Field(default=1.0, ge=0, le=60)
    # Creates into one queue arriving together share one statement, up to this many (1: one each).
    create_batch_max: int = Field(default=64, ge=1, le=1000)
    # Reads of one ticket of a tenant arriving together share one statement, up to this many (1: one each).
    read_batch_max: int = Field(default=64, ge=1, le=1000)
    # The hottest endpoints' plain requests skip FastAPI's per-request machinery (kit/fastpath.py).
    fast_paths: bool = True
    event_retention_days: float = Field(default=7.0, gt=0, le=3650)
    event_poll_seconds: float = Field(default=1.0, gt=0, le=60)
    stream_buffer_events: int = Field(default=1000, ge=10, le=100_000)
    webhook_delivery: bool = True
    webhook_allow_private_targets: bool = False
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    webhook_retry_base_seconds: float = Field(default=10.0, gt=0, le=3600)
    webhook_retry_max_seconds: float = Field(default=3600.0, gt=0, le=86400)
    webhook_retry_window_seconds: float = Field(default=86400.0, gt=0, le=30 * 86400)

    @field_validator("log_level", "env", mode="before")
    @classmethod
    def _lowercase(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("cors_origins")
    @classmethod
    def _check_origins(cls, value: list[str]) -> list[str]:
        return [_origin(entry) for entry in value]

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if urlsplit(value).scheme not in ("postgres", "postgresql"):
            raise ValueError("must start with postgresql:// or postgres://")
        return value

    @field_validator("public_base_url")
    @classmethod
    def _check_public_base_url(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        parts = urlsplit(value.strip())
        try:
            parts.port  # noqa: B018 - a port that is not a number raises
        except ValueError:
            raise ValueError("must be http(s)://host[:port][/path] with a numeric port") from None
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or "@" in parts.netloc
            or parts.query
            or parts.fragment
        ):
            raise ValueError(
                "must be http(s)://host[:port][/path], without credentials, a query or a fragment"
            )
        return value.strip().rstrip("/")

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if urlsplit(value).scheme not in ("redis", "rediss", "unix", "valkey"):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("admin_api_key")
    @classmethod
    def _check_admin_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or value.get_secret_value() == "":
            return None
        if len(value.get_secret_value()) < 24:
            raise ValueError("must be at least 24 characters")
        return value

    @model_validator(mode="after")
    def _check_pool(self) -> Settings:
        if self.db_pool_min_size > self.db_pool_max_size:
            raise ValueError("DB_POOL_MIN_SIZE must not exceed DB_POOL_MAX_SIZE")
        return self

    @property
    def is_production(self) -> bool:
        return self.env == "production"


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; raise ConfigError with one readable line."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        error = exc.errors()[0]
        message = error["msg"].removeprefix("Value error, ")
        if not error["loc"]:  # a rule spanning several variables names them itself
            raise ConfigError(f"invalid configuration: {message}") from None
        variable = str(error["loc"][0]).upper()
        got = error.get("input")
        shown = "" if variable == "ADMIN_API_KEY" else f" (got {got!r})"
        raise ConfigError(f"invalid configuration: {variable}: {message}{shown}") from None
