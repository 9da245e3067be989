"""Settings from the environment (and `.env`), validated once at start-up.

A bad value stops start-up with one line that names the variable and what it accepts;
secret values are never echoed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import ssl
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError as PydanticSettingsError
from redis.asyncio.connection import parse_url

from shared.errors import SettingsError
from shared.logs import keep_secret, warn_at_start
from shared.sentinel import SCHEME as SENTINEL_SCHEME
from shared.sentinel import parse_sentinel_url
from shared.tool_config import SERVER_NAME, ToolServerConfig, unknown_servers_message

__all__ = ["MEMORY_URL", "ModelLimits", "Settings", "SettingsError", "TenantLimits", "load_settings"]

MEMORY_URL = "memory://"
DEFAULT_MODELS = {
    "mock": "mock-1",
    "openai": "gpt-4o-mini",
    "bedrock": "anthropic.claude-3-5-haiku-20241022-v1:0",
}
TENANT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # safe inside Redis key names: no ':' or spaces
OPERATOR = "operator"  # the operator's own name (MCP_ADMIN_KEY, stdio, the CLI); no tenant may take it
UNOWNED = "unowned"  # a queued job whose owner record is gone (evicted, deleted by hand): nobody's data
ALL_TENANTS = "*"  # in TENANT_LIMITS: the limits of every tenant without its own entry
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}$")  # what a request's `model` may be


class TenantLimits(BaseModel):
    """One tenant's limits (TENANT_LIMITS), on top of the global BUDGET_* caps."""

    model_config = ConfigDict(extra="forbid")

    per_request_usd: float | None = Field(None, gt=0)
    hourly_usd: float | None = Field(None, gt=0)
    daily_usd: float | None = Field(None, gt=0)
    requests_per_minute: int | None = Field(None, ge=1, le=1_000_000)


# MODEL_LIMITS (worker/capacity.py): a provider's limits per model, enforced across every worker
ALL_MODELS = "*"  # in MODEL_LIMITS: the limits of every model without its own entry


class ModelLimits(BaseModel):
    """One model's provider limits: requests and tokens a minute, calls at once."""

    model_config = ConfigDict(extra="forbid")

    rpm: int | None = Field(None, ge=1, le=10_000_000)
    tpm: int | None = Field(None, ge=1, le=10_000_000_000)
    concurrency: int | None = Field(None, ge=1, le=100_000)


def derived_tenant_name(token: str) -> str:
    """The tenant name of a token from the plain MCP_API_KEY list: `key-` + 8 hex of its SHA-256."""
    return "key-" + hashlib.sha256(token.encode()).hexdigest()[:8]


PROVIDER_KINDS = ("mock", "openai", "bedrock")


class ProviderConfig(BaseModel):
    """One entry of PROVIDERS: a provider a model names by prefix (`<name>/<model>`)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["mock", "openai", "bedrock"]
    base_url: str | None = None  # openai: the server (unset: the OpenAI API)
    api_key: SecretStr | None = None  # openai: the key itself ...
    api_key_env: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$"
    )  # ... or the variable holding it
    region: str | None = None  # bedrock: unset, AWS_REGION

    def key(self) -> str | None:
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        return os.environ.get(self.api_key_env) if self.api_key_env else None


SSL_FILES = (
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
)  # REDIS_URL query: files redis-py opens per connection
SSL_VALUES = (
    "ssl_cert_reqs",
    "ssl_check_hostname",
    "ssl_ciphers",
    "ssl_ca_data",
)  # what redis-py's asyncio TLS takes
CERT_REQS = ("none", "optional", "required")


def _check_tls_options(url: str, options: dict[str, Any]) -> None:
    """The ssl_* query parameters of REDIS_URL are checked now: redis-py would only fail at each connect."""
    given = [name for name in options if name.startswith("ssl_")]
    if given and not url.startswith("rediss://"):
        raise ValueError(f"{given[0]} needs rediss:// (TLS)")
    for name in given:
        if name not in (*SSL_FILES, *SSL_VALUES):
            raise ValueError(
                f"{name} is not a parameter it takes; TLS takes {', '.join((*SSL_FILES, *SSL_VALUES))}"
            )
    if options.get("ssl_cert_reqs", "required") not in CERT_REQS:
        raise ValueError(f"ssl_cert_reqs must be one of {', '.join(CERT_REQS)}")
    for name in SSL_FILES:
        if name in options and not (Path(options[name]).is_file() and os.access(options[name], os.R_OK)):
            raise ValueError(f"{name}={options[name]} is not a file this process can read")
    if "ssl_keyfile" in options and "ssl_certfile" not in options:
        raise ValueError("ssl_keyfile needs ssl_certfile (the client certificate it belongs to)")
    what = "ssl_ca_certs is not a PEM CA certificate"
    try:
        if "ssl_ca_certs" in options:
            ssl.create_default_context(cafile=options["ssl_ca_certs"])
        what = "ssl_certfile and ssl_keyfile are not a PEM certificate and its key"
        if "ssl_certfile" in options:
            ssl.create_default_context().load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile"))
        what = "ssl_ciphers is not an OpenSSL cipher list"
        if "ssl_ciphers" in options:
            ssl.create_default_context().set_ciphers(options["ssl_ciphers"])
    except ssl.SSLError as e:
        raise ValueError(f"{what} ({getattr(e, 'reason', None) or e})") from None


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
    aws_region: str | None = None  # AWS_REGION for Bedrock; unset: AWS_DEFAULT_REGION or the profile's
    mock_token_delay_ms: float = Field(20, ge=0, le=10_000)
    mcp_transport: Literal["stdio", "http", "sse"] = "stdio"
    mcp_host: str = "127.0.0.1"
    mcp_port: int = Field(8000, ge=1, le=65535)
    mcp_api_key: SecretStr | None = None  # comma-separated keys; each is a tenant named key-<8 hex>
    mcp_api_keys: dict[str, SecretStr] = {}  # JSON: {"tenant name": "key"}
    mcp_admin_key: SecretStr | None = None  # the operator: every tenant's data, the global defaults
    tenant_limits: dict[str, TenantLimits] = {}  # JSON: {"alice": {"daily_usd": 5}, "*": {...}}
    # comma-separated Host names that HTTP and SSE accept besides localhost; "*" = any
    mcp_allowed_hosts: str | None = None
    mcp_allow_unauthenticated: bool = False  # serve HTTP beyond loopback with no key (a proxy authenticates)
    # sessions (messenger.sessions): a 2025-11-25 session ends after this long without a request, on
    # every replica; its stored SSE events (for Last-Event-ID) expire the same long after the last one
    mcp_session_idle_seconds: float = Field(1800, ge=10, le=7 * 86_400)
    worker_concurrency: int = Field(10, ge=1, le=10_000)
    worker_lease_seconds: float = Field(10, ge=1, le=3600)
    worker_shutdown_grace_seconds: float = Field(30, ge=0, le=86_400)
    worker_metrics_port: int | None = Field(None, ge=0, le=65535)  # 0: any free port (logged)
    max_queue_depth: int = Field(10_000, ge=1, le=10_000_000)
    job_timeout_seconds: float = Field(300, gt=0, le=86_400)
    retry_attempts: int = Field(3, ge=1, le=100)
    history_max_turns: int = Field(20, ge=0, le=10_000)
    history_max_tokens: int = Field(8000, ge=0, le=2_000_000)
    history_ttl_seconds: int = Field(7 * 86_400, ge=60, le=365 * 86_400)
    budget_per_request_usd: float | None = Field(None, gt=0)
    budget_hourly_usd: float | None = Field(None, gt=0)
    budget_daily_usd: float | None = Field(None, gt=0)
    budget_reservation_seconds: float = Field(900, ge=1, le=86_400)
    rate_limit_per_minute: int | None = Field(None, ge=1, le=1_000_000)
    model_prices: dict[str, tuple[float, float]] | None = (
        None  # JSON: {"model": [input, output]} USD/1M tokens
    )
    prices_file: Path | None = None  # a JSON file of the same shape
    # JSON: {"name": {"command": "...", "args": [...], "env": {...}} or {"url": "...", "token": "..."}}
    mcp_servers: dict[str, ToolServerConfig] = {}
    mcp_expose_servers: str | None = (
        None  # comma-separated names (or "*") the messenger re-exports as name/tool
    )
    tool_max_rounds: int = Field(8, ge=1, le=100)  # model turns that may ask for tools, per job
    tool_call_timeout_seconds: float = Field(60, gt=0, le=3600)
    # human in the loop (worker/pause.py): which tool calls wait for the caller's approval
    tool_approval: Literal["none", "destructive", "all"] = "none"
    input_wait_seconds: float = Field(
        86_400, ge=1, le=30 * 86_400
    )  # a paused job waits this long for an answer
    # MCP prompts (messenger/prompts.py): a directory of *.toml prompt files; unset: the repo's prompts/
    prompts_dir: Path | None = None
    # MODEL_LIMITS: JSON {"gpt-4o-mini": {"rpm": 500, "tpm": 200000}, "*": {"concurrency": 8}}
    model_limits: dict[str, ModelLimits] = {}
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    # fallbacks and providers (worker/fallbacks.py, worker/providers/__init__.py)
    model_fallbacks: dict[str, list[str]] = {}  # JSON: {"gpt-4o": ["gpt-4o-mini", "mock/mock-1"], "*": [...]}
    providers: dict[str, ProviderConfig] = {}  # JSON: {"local": {"kind": "openai", "base_url": "..."}}

    @field_validator("redis_url")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        v = v.strip() or MEMORY_URL
        if not v.startswith(("memory://", "redis://", "rediss://", "unix://", SENTINEL_SCHEME)):
            raise ValueError("must start with memory://, redis://, rediss://, unix:// or redis+sentinel://")
        if v.startswith(SENTINEL_SCHEME):
            parse_sentinel_url(v)  # its own grammar: several Sentinel addresses and a master name
        elif v != MEMORY_URL:
            # a bad port or option fails here, with no credential in it
            _check_tls_options(v, dict(parse_url(v)))
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

    @model_validator(mode="after")
    def _read_prices_file(self) -> Settings:
        if self.prices_file is not None:
            try:
                table = json.loads(self.prices_file.read_text())
            except (OSError, ValueError) as e:
                raise ValueError(
                    f"PRICES_FILE {str(self.prices_file)!r} is not a readable JSON file: {e}"
                ) from None
            try:
                parsed = TypeAdapter(dict[str, tuple[float, float]]).validate_python(table)
            except ValidationError:
                raise ValueError(
                    'PRICES_FILE must hold {"model": [input, output], ...} in USD per 1M tokens'
                ) from None
            self.model_prices = {**parsed, **(self.model_prices or {})}
        return self

    @field_validator("model_fallbacks")
    @classmethod
    def _fallback_names(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for model, chain in v.items():
            for name in [model, *chain]:
                if name != ALL_TENANTS and not MODEL_NAME.fullmatch(name):
                    raise ValueError(f"{name!r} is not a model name (letters, digits and . _ : / @ + -)")
        return v

    @field_validator("providers")
    @classmethod
    def _provider_names(cls, v: dict[str, ProviderConfig]) -> dict[str, ProviderConfig]:
        for name, config in v.items():
            if not SERVER_NAME.fullmatch(name):
                raise ValueError(f"provider name {name!r} must be 1-32 letters, digits, - or _")
            if config.kind == "openai" and not (config.base_url or config.api_key or config.api_key_env):
                raise ValueError(f"provider {name!r} (openai) needs base_url, api_key or api_key_env")
        return v

    @field_validator("mcp_servers")
    @classmethod
    def _server_names(cls, v: dict[str, ToolServerConfig]) -> dict[str, ToolServerConfig]:
        for name in v:
            if not SERVER_NAME.fullmatch(name):
                raise ValueError(
                    f"server name {name!r} must be 1-32 letters, digits, - or single _, starting alphanumeric"
                )
        return v

    @model_validator(mode="after")
    def _exposed_are_configured(self) -> Settings:
        unknown = [n for n in self.exposed_servers if n not in self.mcp_servers]
        if unknown:
            raise ValueError(f"MCP_EXPOSE_SERVERS: {unknown_servers_message(unknown, self.mcp_servers)}")
        return self

    @model_validator(mode="after")
    def _tenants_are_sound(self) -> Settings:
        for name in self.mcp_api_keys:
            if not TENANT_NAME.fullmatch(name) or name in (OPERATOR, UNOWNED):
                raise ValueError(
                    f"MCP_API_KEYS: tenant name {name!r} must be 1-64 letters, digits, '.', '_' or '-', "
                    f"and not {OPERATOR!r} or {UNOWNED!r}"
                )
        listed = self.mcp_api_key.get_secret_value().split(",") if self.mcp_api_key else []
        for name in sorted(
            {derived_tenant_name(t.strip()) for t in listed if t.strip()} & set(self.mcp_api_keys)
        ):
            raise ValueError(  # else MCP_API_KEYS's key silently replaces it and takes over its data
                f"MCP_API_KEYS: tenant name {name!r} is already the name of a key in MCP_API_KEY; "
                "give it another name (or drop that key from MCP_API_KEY)"
            )
        owners: dict[str, str] = {}
        keyed = [(n, t) for n, t in self.tenant_tokens.items()]
        if self.mcp_admin_key is not None:
            keyed.append(("MCP_ADMIN_KEY", self.mcp_admin_key.get_secret_value()))
        for name, token in keyed:
            if not token.strip():
                raise ValueError(f"MCP_API_KEYS: the key of {name!r} is empty")
            if token in owners:
                raise ValueError(f"{owners[token]!r} and {name!r} have the same key; each needs its own")
            owners[token] = name
        unknown = sorted(set(self.tenant_limits) - set(self.tenant_tokens) - {ALL_TENANTS})
        if unknown and self.tenant_tokens:  # a worker may run without the keys; the messenger checks
            known = ", ".join(sorted(self.tenant_tokens)) or "none configured"
            raise ValueError(
                f"TENANT_LIMITS names {', '.join(map(repr, unknown))}, not a tenant of MCP_API_KEYS or "
                f'MCP_API_KEY (tenants: {known}; "*" means every tenant)'
            )
        return self

    @property
    def tenant_tokens(self) -> dict[str, str]:
        """Every tenant's name and key: MCP_API_KEY's tokens under derived names, then MCP_API_KEYS."""
        tokens: dict[str, str] = {}
        if self.mcp_api_key is not None:
            for token in (t.strip() for t in self.mcp_api_key.get_secret_value().split(",")):
                if token:
                    tokens[derived_tenant_name(token)] = token
        for name, secret in self.mcp_api_keys.items():
            tokens[name] = secret.get_secret_value()
        return tokens

    def limits_for(self, tenant: str) -> TenantLimits:
        """TENANT_LIMITS for this tenant, field by field over the "*" entry; RATE_LIMIT_PER_MINUTE
        is every caller's rate unless an entry sets requests_per_minute."""
        merged = {"requests_per_minute": self.rate_limit_per_minute}
        for entry in (self.tenant_limits.get(ALL_TENANTS), self.tenant_limits.get(tenant)):
            if entry is not None:
                merged |= entry.model_dump(exclude_none=True)
        return TenantLimits(**merged)

    def model_limits_for(self, model: str) -> ModelLimits | None:
        """MODEL_LIMITS for this model, field by field over the "*" entry; None: no limit at all."""
        merged: dict = {}
        for entry in (self.model_limits.get(ALL_MODELS), self.model_limits.get(model)):
            if entry is not None:
                merged |= entry.model_dump(exclude_none=True)
        return ModelLimits(**merged) if merged else None

    @property
    def exposed_servers(self) -> list[str]:
        names = [n.strip() for n in (self.mcp_expose_servers or "").split(",") if n.strip()]
        return sorted(self.mcp_servers) if names == ["*"] else names

    @property
    def allowed_hosts(self) -> list[str]:
        return [h.strip() for h in (self.mcp_allowed_hosts or "").split(",") if h.strip()]

    @property
    def embedded(self) -> bool:
        """No REDIS_URL: an in-memory Redis and one in-process worker."""
        return self.redis_url == MEMORY_URL

    @property
    def default_model(self) -> str:
        return self.openai_default_model or DEFAULT_MODELS[self.ai_provider]


# never echoed back (a mistyped URL may hold its password where no pattern can find it)
_SECRET_FIELDS = {"openai_api_key", "mcp_api_key", "mcp_api_keys", "mcp_admin_key", "mcp_servers", "redis_url",
                  "openai_base_url", "providers"}  # fmt: skip
_HINTS = {
    "model_prices": 'must be JSON like {"gpt-4o": [2.5, 10]} (USD per 1M prompt and completion tokens)',
    "mcp_api_keys": 'must be JSON like {"alice": "<key>", "bob": "<key>"} (tenant name to API key)',
}
_FALLBACKS_HINT = (
    'must be JSON like {"gpt-4o": ["gpt-4o-mini", "mock/mock-1"]} (a model to the models after it)'
)
_PROVIDERS_HINT = (
    'must be JSON like {"local": {"kind": "openai", "base_url": "http://...", "api_key_env": "LOCAL_KEY"}}'
)
_TENANT_LIMITS_HINT = (
    'must be JSON like {"alice": {"daily_usd": 5, "requests_per_minute": 60}, "*": {"hourly_usd": 1}} '
    "with per_request_usd, hourly_usd, daily_usd, requests_per_minute"
)
_MODEL_LIMITS_HINT = (
    'must be JSON like {"gpt-4o-mini": {"rpm": 500, "tpm": 200000}, "*": {"concurrency": 8}} '
    "with rpm, tpm, concurrency (whole numbers of at least 1)"
)
# variables that look like ours; a misspelt one is refused instead of silently meaning "no limit"
_CHECKED_PREFIXES = ("MCP_API", "MCP_ADMIN", "TENANT_", "BUDGET_", "RATE_LIMIT", "MODEL_LIMIT")


# the prefixes of the other settings: a variable under one that is no setting is most likely a
# misspelt one (ignored, so what it meant to set is not set), worth one WARNING at start
_WARNED_PREFIXES = ("MCP_", "AI_", "OPENAI_", "WORKER_", "REDIS_", "MOCK_", "JOB_", "RETRY_", "HISTORY_",
                    "TOOL_", "PROMPTS_", "PRICES_", "MODEL_", "MAX_QUEUE", "PROVIDER")  # fmt: skip
# read by the openai SDK itself, not by these settings
_OPENAI_SDK = {"OPENAI_ADMIN_KEY", "OPENAI_API_TYPE", "OPENAI_API_VERSION", "OPENAI_CUSTOM_HEADERS",
               "OPENAI_LOG", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID", "OPENAI_WEBHOOK_SECRET"}  # fmt: skip
# what Kubernetes (and Docker links) set in every pod for a Service named redis, mcp, …: not ours
_SERVICE_LINK = re.compile(r"_SERVICE_(HOST|PORT)(_\w+)?$|_PORT_\d+_(TCP|UDP|SCTP)(_\w+)?$")
_LINK_URL = re.compile(r"(tcp|udp|sctp)://", re.I)  # REDIS_PORT=tcp://10.0.0.7:6379
_warned: set[str] = set()  # each unknown variable is warned once per process
log = logging.getLogger("shared.settings")


def _unknown_setting(name: str) -> str:
    known = [field.upper() for field in Settings.model_fields]
    import difflib  # only for a misspelt variable

    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"{name} is not a setting mcp-queue knows{hint}"


def _misspelt_variables(environ: dict[str, str | None]) -> None:
    """Refuse an unknown variable where ignoring it would lift a limit or open access."""
    known = {field.upper() for field in Settings.model_fields}
    for name in sorted({name.upper() for name in environ} - known):
        if name.startswith(_CHECKED_PREFIXES):
            raise SettingsError(_unknown_setting(name))


def _warn_unknown_variables(environ: dict[str, str | None], settings: Settings) -> None:
    """One WARNING, once per process, for each variable under the other settings' prefixes that is
    neither a setting, nor the openai SDK's, nor a key a PROVIDERS entry names (api_key_env)."""
    known = {field.upper() for field in Settings.model_fields} | _OPENAI_SDK
    known |= {c.api_key_env.upper() for c in settings.providers.values() if c.api_key_env}
    values = {name.upper(): value or "" for name, value in environ.items()}
    for name in sorted(set(values) - known - _warned):
        link = _SERVICE_LINK.search(name) or (name.endswith("_PORT") and _LINK_URL.match(values[name]))
        if name.startswith(_WARNED_PREFIXES) and not link:
            _warned.add(name)
            warn_at_start(log, f"{_unknown_setting(name)} (ignored)")


_SERVERS_HINT = (
    'must be JSON like {"clock": {"command": "python", "args": ["clock.py"]}, '
    '"docs": {"url": "https://example.com/mcp", "token": "..."}}'
)


def _dotenv() -> dict[str, str | None]:
    """The variables of `.env` in the working directory, which Settings reads as well; one that
    cannot be read (not UTF-8, no permission) stops start-up with one line."""
    from dotenv import dotenv_values

    try:
        return dict(dotenv_values(".env")) if Path(".env").is_file() else {}
    except (OSError, UnicodeDecodeError) as e:
        raise SettingsError(
            f".env in {Path.cwd()} cannot be read ({type(e).__name__}): fix or remove it"
        ) from None


def load_settings(**overrides: Any) -> Settings:
    """Read the environment; raise SettingsError with one readable line on the first bad value."""
    environ = {**_dotenv(), **os.environ}
    _misspelt_variables(environ)
    try:
        settings = Settings(**overrides)
    except PydanticSettingsError as e:  # a JSON setting that is not JSON
        field = re.search(r'field "(\w+)"', str(e))
        name = field.group(1) if field else "?"
        hint = {
            "mcp_servers": _SERVERS_HINT,
            "tenant_limits": _TENANT_LIMITS_HINT,
            "model_fallbacks": _FALLBACKS_HINT,
            "providers": _PROVIDERS_HINT,
            "model_limits": _MODEL_LIMITS_HINT,
        }.get(name, _HINTS.get(name, "must be valid JSON"))
        raise SettingsError(f"{name.upper()}: {hint}") from None
    except ValidationError as e:
        err = e.errors()[0]
        msg = err["msg"].removeprefix("Value error, ")
        if not err["loc"]:  # a check across settings; its message names the variable
            raise SettingsError(msg) from None
        field = str(err["loc"][0])
        msg = _HINTS.get(field, msg)
        if field == "tenant_limits":
            where = ".".join(str(part) for part in err["loc"][1:])
            msg = _TENANT_LIMITS_HINT if len(err["loc"]) < 3 else f"{where}: {msg}"
        elif field == "model_limits":
            where = ".".join(str(part) for part in err["loc"][1:])
            if err["type"] == "extra_forbidden":
                msg = "not a limit; use rpm, tpm or concurrency"
            msg = _MODEL_LIMITS_HINT if len(err["loc"]) < 3 else f"{where}: {msg}"
        elif field == "mcp_servers" and err["type"] == "dict_type" and len(err["loc"]) == 1:
            msg = _SERVERS_HINT
        elif field in ("providers", "model_fallbacks"):
            where = ".".join(str(part) for part in err["loc"][1:])
            shape = err["type"] in ("dict_type", "list_type", "model_type", "string_type")
            if field == "model_fallbacks" and shape:
                msg = _FALLBACKS_HINT
            elif where:
                msg = f"{where}: {msg}"
        elif field == "mcp_servers" and len(err["loc"]) > 1:
            where = ".".join(str(part) for part in err["loc"][1:])
            msg = _SERVERS_HINT if err["type"] in ("dict_type", "model_type") else f"{where}: {msg}"
        if field in _SECRET_FIELDS:
            raise SettingsError(f"{field.upper()}: {msg}") from None
        raise SettingsError(f"{field.upper()}: {msg} (got {err.get('input')!r})") from None
    keep_secrets(settings)
    _warn_unknown_variables(environ, settings)
    return settings


_SECRET_NAME = re.compile(
    r"(?i)pass|token|secret|key|credential|auth"
)  # a stdio server's env entries to mask


def keep_secrets(settings: Settings) -> None:
    """Tell the log filter every configured secret, so no log line, error or page can show one."""
    values = list(settings.tenant_tokens.values())
    if settings.mcp_admin_key:
        values.append(settings.mcp_admin_key.get_secret_value())
    if settings.openai_api_key:
        values.append(settings.openai_api_key.get_secret_value())
    values += [c.token.get_secret_value() for c in settings.mcp_servers.values() if c.token]
    values += [key for c in settings.providers.values() if (key := c.key())]
    values += [v for c in settings.mcp_servers.values() for k, v in c.env.items() if _SECRET_NAME.search(k)]
    for url in (
        settings.redis_url,
        settings.openai_base_url,
        *(c.url for c in settings.mcp_servers.values()),
        *(c.base_url for c in settings.providers.values()),
    ):
        with contextlib.suppress(ValueError):
            values.append(urlsplit(url or "").password or "")
    keep_secret(*values)
