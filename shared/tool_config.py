"""MCP servers that jobs may use as tools, as configured by name in MCP_SERVERS, and the names they
go by: `server__tool` for the model, `server/tool` for MCP clients. No connection lives here
(shared/tool_client.py holds those), so settings and request models can import it cheaply.
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, SecretStr, model_validator

from shared.logs import redact

SERVER_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]|_(?!_)){0,31}$")  # no "__": it joins server and tool


class ToolServerConfig(BaseModel):
    """One entry of MCP_SERVERS: a command to start over stdio, or a streamable-HTTP URL."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    command: str | None = None
    args: list[str] = []
    env: dict[str, str] = {}
    cwd: str | None = None
    url: str | None = None
    token: SecretStr | None = None  # sent as `Authorization: Bearer <token>` to the URL

    @model_validator(mode="after")
    def _one_transport(self) -> ToolServerConfig:
        if (self.command is None) == (self.url is None):
            raise ValueError('each server needs either "command" (stdio) or "url" (streamable HTTP)')
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError('"url" must start with http:// or https://')
        if self.token is not None and self.url is None:
            raise ValueError('"token" is only for "url" servers; give a stdio server its secrets in "env"')
        return self

    @property
    def where(self) -> str:
        """How the server is reached, for errors and logs: a URL loses its user:password and query
        (either may hold a key); a command shows its arguments with anything secret-looking masked,
        never its env."""
        if self.url:
            parts = urlsplit(self.url)
            return urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[-1], parts.path, "", ""))
        return redact(" ".join([self.command or "", *self.args]))[:200]


def function_name(server: str, tool: str) -> str:
    """`server__tool` as a function name every provider accepts: [A-Za-z0-9_-], at most 64."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", f"{server}__{tool}")
    if len(name) > 64:
        name = name[:55] + "_" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return name


def unknown_servers_message(unknown: list[str], configs: dict[str, ToolServerConfig]) -> str:
    known = ", ".join(sorted(configs)) if configs else "none (set MCP_SERVERS)"
    return f"unknown MCP server {', '.join(map(repr, unknown))}; configured servers: {known}"
