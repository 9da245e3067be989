"""The client side of MCP tool use: one connection per configured server and process, opened on
first use and shared by every job (a stdio server is one child process per worker, not one per job).

Workers connect to run the tool calls a model asks for; the messenger connects only to list the tools
it re-exports (`name/tool`). A connection that breaks is dropped and opened again on the next use.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib
import json
import logging
import os
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.errors import ToolServerError
from shared.logs import redact
from shared.tool_config import ToolServerConfig, unknown_servers_message

if TYPE_CHECKING:
    from mcp import Client

log = logging.getLogger("mcpq.tool_servers")

IDEMPOTENCY_KEY = (
    "mcp-queue/idempotency-key"  # in a tools/call's `_meta`: "<job_id>:<step>", the same every attempt
)
RESULT_MAX_CHARS = 50_000  # of a tool's answer, kept for the model and the job's events
CONNECT_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class RemoteTool:
    server: str
    name: str
    description: str
    input_schema: dict[str, Any]
    read_only: bool | None = None  # the tool's MCP annotations (readOnlyHint, destructiveHint)
    destructive: bool | None = None


@dataclass(frozen=True)
class ToolOutcome:
    text: str
    is_error: bool


def outcome_of(result) -> ToolOutcome:
    """A CallToolResult as text for the model: text blocks joined, other blocks described."""
    parts: list[str] = []
    for block in result.content or []:
        kind = getattr(block, "type", "")
        if kind == "text":
            parts.append(block.text)
        elif kind == "resource":
            resource = block.resource
            parts.append(getattr(resource, "text", None) or f"[resource {resource.uri}]")
        else:
            parts.append(f"[{kind} {getattr(block, 'mime_type', '') or ''}]".replace(" ]", "]"))
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    text = "\n".join(parts)
    if len(text) > RESULT_MAX_CHARS:
        text = text[:RESULT_MAX_CHARS] + f"\n[… cut at {RESULT_MAX_CHARS} characters]"
    return ToolOutcome(text=text, is_error=bool(result.is_error))


class _Stderr:
    """A stdio server's stderr: every line goes to our log (tagged with the server's name), and the
    last few are kept so a server that dies at start-up can say why in the error."""

    def __init__(self, name: str):
        read_fd, write_fd = os.pipe()
        self.file = os.fdopen(write_fd, "w")  # the child's stderr
        self.lines: collections.deque[str] = collections.deque(maxlen=5)
        self._thread = threading.Thread(
            target=self._pump, args=(os.fdopen(read_fd, errors="replace"), name), daemon=True
        )
        self._thread.start()

    def _pump(self, stream, name: str) -> None:
        with stream:
            for line in stream:
                if line := line.rstrip():
                    self.lines.append(line)
                    log.info("[%s] %s", name, redact(line))

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


class _Connection:
    """One live MCP client, held open by its own task (anyio scopes must close where they opened)."""

    def __init__(self, name: str, config: ToolServerConfig, call_timeout: float):
        self.name = name
        self.config = config
        self.call_timeout = call_timeout
        self.client: Client | None = None
        self.tools: list[RemoteTool] | None = None
        self._task: asyncio.Task | None = None
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._error: BaseException | None = None
        self._stderr: _Stderr | None = None

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done() and self.client is not None

    @property
    def live_client(self) -> Client:
        """The open client; a connection that closed between opening and use says so."""
        if self.client is None:
            raise ToolServerError(f"MCP server {self.name!r} closed the connection")
        return self.client

    async def open(self) -> Client:
        if self._task is None or self._task.done():
            self._ready, self._stop, self._error, self.client, self.tools = (
                asyncio.Event(), asyncio.Event(), None, None, None,
            )  # fmt: skip
            self._task = asyncio.create_task(self._hold(), name=f"mcp-server-{self.name}")
        await self._ready.wait()
        if self.client is None:
            said = (
                f"; its stderr: {redact(self._stderr.lines[-1])[:300]}"
                if self._stderr and self._stderr.lines
                else ""
            )
            raise ToolServerError(
                f"cannot connect to MCP server {self.name!r} ({self.config.where}): {_describe(self._error)}{said}"
            )
        return self.client

    async def _hold(self) -> None:
        self._stderr = _Stderr(self.name) if self.config.command is not None else None
        try:
            async with _client(self.config, self._stderr, self.call_timeout) as client:
                self.client = client
                self._ready.set()
                await self._stop.wait()
        except Exception as e:  # a server that exits or a URL that refuses: reported by open()
            self._error = e
            if self.client is not None:
                log.warning("MCP server %r went away: %s", self.name, _describe(e))
        finally:
            self.client = None
            if self._stderr is not None:
                self._stderr.file.close()
                if self._error is not None:  # let the pump read what the exited server wrote, off the loop
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.to_thread(self._stderr.join, 1.0)
            self._ready.set()

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._stop.set()
            try:
                async with asyncio.timeout(5):
                    await asyncio.shield(self._task)
            except (TimeoutError, Exception):
                self._task.cancel()


class ToolServers:
    """This process's connections to the configured servers, by name."""

    def __init__(self, configs: dict[str, ToolServerConfig], call_timeout: float = 60.0):
        self.configs = configs
        self.call_timeout = call_timeout
        self._connections: dict[str, _Connection] = {}
        self._locks: dict[str, asyncio.Lock] = {}  # per server: a slow one never holds up the others

    def check_names(self, names: list[str]) -> None:
        unknown = [n for n in names if n not in self.configs]
        if unknown:
            raise ToolServerError(unknown_servers_message(unknown, self.configs))

    async def tools(self, name: str) -> list[RemoteTool]:
        """The server's tools, listed once per connection."""
        connection = await self._open(name)
        if connection.tools is None:
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
                    listed, cursor = [], None
                    while True:
                        page = await connection.live_client.list_tools(cursor=cursor)
                        listed += page.tools
                        cursor = page.next_cursor
                        if not cursor:
                            break
            except Exception as e:
                await self._drop(connection)
                raise ToolServerError(f"MCP server {name!r} did not list its tools: {_describe(e)}") from None
            connection.tools = [
                RemoteTool(
                    name,
                    t.name,
                    t.description or "",
                    dict(t.input_schema or {"type": "object"}),
                    t.annotations.read_only_hint if t.annotations else None,
                    t.annotations.destructive_hint if t.annotations else None,
                )
                for t in listed
            ]
        return connection.tools

    async def call(
        self, name: str, tool: str, arguments: dict[str, Any], idempotency_key: str | None = None
    ) -> ToolOutcome:
        """Run one tool; every failure comes back as an error outcome (the model reads it), never raised.
        `idempotency_key` goes in the request's `_meta`, so a server can tell a call sent again (by a
        job re-run after its worker died mid-call) from a new one."""
        connection = None
        meta: Any = {IDEMPOTENCY_KEY: idempotency_key} if idempotency_key else None  # RequestParamsMeta
        try:
            connection = await self._open(name)
            async with asyncio.timeout(self.call_timeout):
                result = await connection.live_client.call_tool(tool, arguments, meta=meta)
        except TimeoutError:
            return ToolOutcome(f"Error: {name}/{tool} gave no answer within {self.call_timeout:g} s", True)
        except ToolServerError as e:
            return ToolOutcome(f"Error: {e}", True)
        except Exception as e:
            if _connection_lost(e):  # the next call reconnects; a server's error answer keeps the connection
                await self._drop(connection)
            return ToolOutcome(f"Error: MCP server {name!r} failed during {tool}: {_describe(e)}", True)
        return outcome_of(result)

    async def aclose(self) -> None:
        for connection in list(self._connections.values()):
            await connection.close()
        self._connections.clear()

    async def _open(self, name: str) -> _Connection:
        self.check_names([name])
        connection = self._connections.get(name)
        if connection is not None and connection.alive:
            return connection
        async with self._locks.setdefault(name, asyncio.Lock()):
            connection = self._connections.get(name)
            if connection is None or not connection.alive:
                connection = self._connections[name] = connection or _Connection(
                    name, self.configs[name], self.call_timeout
                )
                try:
                    async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
                        await connection.open()
                except TimeoutError:
                    await connection.close()
                    raise ToolServerError(
                        f"MCP server {name!r} ({connection.config.where}) did not answer within "
                        f"{CONNECT_TIMEOUT_SECONDS:g} s"
                    ) from None
        return connection

    async def _drop(self, connection: _Connection | None) -> None:
        """Close a connection that failed, unless another call already replaced it."""
        if connection is None:
            return
        if self._connections.get(connection.name) is connection:
            del self._connections[connection.name]
        await connection.close()


@contextlib.asynccontextmanager
async def _client(config: ToolServerConfig, stderr: _Stderr | None, call_timeout: float):
    # `mcp` takes a second or more to import: off the event loop, so a worker's first tool call does
    # not hold up its heartbeat (a lease of 1 s lapsed, and another worker ran the job at once)
    await asyncio.to_thread(importlib.import_module, "mcp.client.streamable_http")
    await asyncio.to_thread(importlib.import_module, "mcp.client.stdio")
    from mcp import Client, StdioServerParameters
    from mcp.client.stdio import stdio_client

    if config.url is None:
        params = StdioServerParameters(
            command=config.command or "", args=config.args, env=config.env or None, cwd=config.cwd
        )
        async with Client(stdio_client(params, errlog=stderr.file if stderr else sys.stderr)) as client:
            yield client
        return
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {config.token.get_secret_value()}"} if config.token else {}
    timeout = httpx2.Timeout(30, read=max(300.0, call_timeout + 10))  # the call's own timeout decides
    async with httpx2.AsyncClient(headers=headers, timeout=timeout) as http:
        async with Client(streamable_http_client(config.url, http_client=http)) as client:
            yield client


def _connection_lost(e: BaseException) -> bool:
    """Whether an exception from a call means the connection is gone (not just an error answer)."""
    from mcp.shared.exceptions import MCPError
    from mcp_types.jsonrpc import CONNECTION_CLOSED

    if isinstance(e, MCPError):
        return e.error.code == CONNECTION_CLOSED
    return True


def _describe(e: BaseException | None) -> str:
    """An exception as one line; exception groups (anyio task groups) show their first cause."""
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    if e is None:
        return "it closed the connection"
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
