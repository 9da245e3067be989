"""Who is calling: a tenant (an API key with a name) or the operator.

Every job, task, conversation, received message, usage counter, model default, rate and budget
belongs to one tenant, and a tenant reads and changes only its own. The operator (MCP_ADMIN_KEY, and
every local caller: stdio, the CLI, or HTTP with no key configured) sees every tenant's data and alone
changes the global model defaults.

Keys are held only as SHA-256 digests and compared in constant time against every digest, so neither
a key nor which tenant's key was nearly right can be learned from timing. A request offering more
than one credential (two Authorization headers, Authorization and X-Api-Key, a header and ?token=) is
refused: one request, one identity.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from shared.errors import InvalidRequest, SettingsError
from shared.settings import OPERATOR, TENANT_NAME, Settings, derived_tenant_name

__all__ = ["LOCAL_OPERATOR", "OPERATOR", "TENANT_NAME", "Tenant", "Tenants", "TooManyCredentials", "credentials",
           "derived_tenant_name", "tenants_for"]  # fmt: skip

CREDENTIAL_HEADERS = (b"authorization", b"x-api-key")


@dataclass(frozen=True)
class Tenant:
    name: str
    operator: bool = False

    @property
    def reader(self) -> str | None:
        """Whose data a read may return: this tenant's, or None for the operator (everyone's)."""
        return None if self.operator else self.name


LOCAL_OPERATOR = Tenant(OPERATOR, operator=True)


class TooManyCredentials(InvalidRequest):
    """More than one credential in one request (HTTP 400): which one counts would be a guess."""

    def __init__(self, count: int):
        super().__init__(
            f"this request carries {count} credentials; send exactly one "
            "(Authorization: Bearer <key>, or X-Api-Key: <key>, or ?token=<key> where allowed)"
        )


def _digest(token: str | bytes) -> bytes:
    return hashlib.sha256(token if isinstance(token, bytes) else token.encode()).digest()


class Tenants:
    """The configured keys, as digests. `required`: HTTP callers must present one."""

    def __init__(self, tokens: Mapping[str, str], admin: str | None = None):
        """`tokens`: tenant name -> key (validated by shared.settings); `admin`: the operator's key."""
        pairs = [(Tenant(name), token) for name, token in tokens.items()]
        pairs += [(Tenant(OPERATOR, operator=True), admin)] if admin else []
        self._digests = [(_digest(token.strip()), tenant) for tenant, token in pairs]
        if len({digest for digest, _ in self._digests}) < len(self._digests):
            raise SettingsError("two tenants (or a tenant and MCP_ADMIN_KEY) have the same key")
        self.names = sorted(name for name in tokens)

    @classmethod
    def from_settings(cls, settings: Settings) -> Tenants:
        admin = settings.mcp_admin_key.get_secret_value() if settings.mcp_admin_key else None
        return cls(settings.tenant_tokens, admin)

    @property
    def required(self) -> bool:
        """Any key configured: an HTTP caller without a valid one is refused."""
        return bool(self._digests)

    def identify(self, token: str | bytes) -> Tenant | None:
        """The tenant (or operator) this key belongs to, or None; compares against every digest."""
        offered = _digest(token)
        found: Tenant | None = None
        for digest, tenant in self._digests:
            if hmac.compare_digest(offered, digest) and found is None:
                found = tenant
        return found if token else None

    def from_request(
        self, headers: Any, query_string: bytes | str = b"", *, allow_query: bool = False
    ) -> Tenant | None:
        """The caller of an HTTP request, None if its key is missing or wrong, or TooManyCredentials.

        `headers`: ASGI header pairs, starlette Headers or a plain mapping; `headers=None` (stdio)
        is the local operator. A `?token=` counts only where `allow_query` (the dashboard's
        EventSource cannot send headers), but a header plus a query token is refused anywhere.
        """
        if headers is None:
            return LOCAL_OPERATOR
        offered = credentials(headers, query_string)
        if len(offered) > 1:
            raise TooManyCredentials(len(offered))
        if not self.required:
            return LOCAL_OPERATOR
        if not offered or (offered[0][0] == "query" and not allow_query):
            return None
        return self.identify(offered[0][1])


def tenants_for(settings: Settings) -> Tenants:
    """The Tenants of these settings, built once per distinct key configuration."""
    admin = settings.mcp_admin_key.get_secret_value() if settings.mcp_admin_key else None
    return _tenants(tuple(sorted(settings.tenant_tokens.items())), admin)


@functools.lru_cache(maxsize=8)
def _tenants(tokens: tuple[tuple[str, str], ...], admin: str | None) -> Tenants:
    return Tenants(dict(tokens), admin)


def credentials(headers: Any, query_string: bytes | str = b"") -> list[tuple[str, bytes]]:
    """Every credential a request offers, as (where, token): each Authorization and X-Api-Key
    header and each `token` query parameter. A non-Bearer Authorization offers an empty token."""
    found: list[tuple[str, bytes]] = []
    for name, value in _header_pairs(headers):
        if name == b"x-api-key":
            found.append(("x-api-key", value.strip()))
        elif name == b"authorization":
            found.append(("authorization", value[7:].strip() if value[:7].lower() == b"bearer " else b""))
    query = query_string.decode("latin-1") if isinstance(query_string, bytes) else query_string
    found += [("query", v.encode()) for k, v in parse_qsl(query, keep_blank_values=True) if k == "token"]
    return found


def _header_pairs(headers: Any) -> Iterable[tuple[bytes, bytes]]:
    raw = getattr(headers, "raw", None)  # starlette Headers keeps every repeated header here
    if raw is not None:
        pairs = raw
    elif isinstance(headers, Mapping):
        pairs = headers.items()
    else:
        pairs = headers
    for name, value in pairs:
        name = name if isinstance(name, bytes) else name.encode("latin-1")
        value = value if isinstance(value, bytes) else value.encode("latin-1")
        if name.lower() in CREDENTIAL_HEADERS:
            yield name.lower(), value
