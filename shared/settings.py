"""Settings from the environment (and `.env`), validated once at start-up.

A bad value stops start-up with one line that names the variable and what it accepts;
secret values are never echoed.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MEMORY_URL = "memory://"
DEFAULT_MODELS = {
    "mock": "mock-1",
    "openai": "gpt-4o-mini",
    "bedrock": "anthropic.claude-3-5-haiku-20241022-v1:0",
}


class SettingsError(Exception):
    """A setting has a value we cannot run with; the message is one line meant for a person."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", case_sensitive=False, env_ignore_empty=True
    )

    redis_url: str = MEMORY_URL
    ai_provider: Literal["mock", "openai", "bedrock"] = "mock"
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    openai_default_model: str | None = None
    openai_temperature: float = Field(0.7, ge=0, le=2)
    openai_max_tokens: int = Field(1024, ge=1, le=200_000)
    mock_token_delay_ms: float = Field(20, ge=0, le=10_000)
    mcp_transport: Literal["stdio", "http", "sse"] = "stdio"
    mcp_host: str = "127.0.0.1"
    mcp_port: int = Field(8000, ge=1, le=65535)
    mcp_api_key: SecretStr | None = None
    worker_concurrency: int = Field(10, ge=1, le=10_000)
    worker_lease_seconds: float = Field(10, ge=1, le=3600)
    worker_shutdown_grace_seconds: float = Field(30, ge=0, le=86_400)
    max_queue_depth: int = Field(10_000, ge=1, le=10_000_000)
    job_timeout_seconds: float = Field(300, gt=0, le=86_400)
    retry_attempts: int = Field(3, ge=1, le=100)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"

    @field_validator("redis_url")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        v = v.strip() or MEMORY_URL
        if not v.startswith(("memory://", "redis://", "rediss://", "unix://")):
            raise ValueError("must start with memory://, redis://, rediss:// or unix://")
        return v

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, v: object) -> object:
        return v.upper() if isinstance(v, str) else v

    @model_validator(mode="before")
    @classmethod
    def _blank_is_unset(cls, values: object) -> object:
        if isinstance(values, dict):
            return {k: v for k, v in values.items() if not (isinstance(v, str) and not v.strip())}
        return values

    @property
    def embedded(self) -> bool:
        """No REDIS_URL: an in-memory Redis and one in-process worker."""
        return self.redis_url == MEMORY_URL

    @property
    def default_model(self) -> str:
        return self.openai_default_model or DEFAULT_MODELS[self.ai_provider]


_SECRET_FIELDS = {"openai_api_key", "mcp_api_key"}


def load_settings(**overrides: object) -> Settings:
    """Read the environment; raise SettingsError with one readable line on the first bad value."""
    try:
        return Settings(**overrides)
    except ValidationError as e:
        err = e.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else "settings"
        msg = err["msg"].removeprefix("Value error, ")
        if field in _SECRET_FIELDS:
            raise SettingsError(f"{field.upper()}: {msg}") from None
        raise SettingsError(f"{field.upper()}: {msg} (got {err.get('input')!r})") from None
