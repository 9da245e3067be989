"""The MCP client side of tool use: tool answers as text and the per-process connection pool,
against the real stdio clock server (tests/mcp_clock_server.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from mcp import types
from mcp_clock_server import PREFIX
from openai_server import eventually

from shared.errors import ToolServerError
from shared.tool_client import RESULT_MAX_CHARS, ToolOutcome, ToolServers, outcome_of
from shared.tool_config import ToolServerConfig

CLOCK = str(Path(__file__).resolve().parents[1] / "mcp_clock_server.py")


# -- outcome_of -------------------------------------------------------------------------------------


def _text(text: str) -> types.TextContent:
    return types.TextContent(type="text", text=text)


def test_outcome_of_a_text_answer_is_its_text():
    assert outcome_of(types.CallToolResult(content=[_text(f"{PREFIX} 42")])) == ToolOutcome(
        f"{PREFIX} 42", False
    )


def test_outcome_of_several_text_blocks_joins_them_line_by_line():
    result = types.CallToolResult(content=[_text("first"), _text("second"), _text("third")])
    assert outcome_of(result).text == "first\nsecond\nthird"


def test_outcome_of_an_image_describes_it_instead_of_pasting_base64():
    data = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    result = types.CallToolResult(
        content=[
            _text("here is the chart"),
            types.ImageContent(type="image", data=data, mime_type="image/png"),
        ]
    )
    outcome = outcome_of(result)
    assert outcome.text == "here is the chart\n[image image/png]"
    assert data not in outcome.text


def test_outcome_of_an_embedded_resource_gives_its_text_or_names_its_uri():
    text_resource = types.EmbeddedResource(
        type="resource", resource=types.TextResourceContents(uri="file:///notes.txt", text="the notes")
    )
    blob_resource = types.EmbeddedResource(
        type="resource", resource=types.BlobResourceContents(uri="file:///logo.png", blob="AAAA")
    )
    assert outcome_of(types.CallToolResult(content=[text_resource])).text == "the notes"
    assert outcome_of(types.CallToolResult(content=[blob_resource])).text == "[resource file:///logo.png]"


def test_outcome_of_structured_content_alone_is_its_json():
    result = types.CallToolResult(content=[], structured_content={"temperature": 21.5, "city": "Zürich"})
    outcome = outcome_of(result)
    assert json.loads(outcome.text) == {"temperature": 21.5, "city": "Zürich"}
    assert "Zürich" in outcome.text  # not \u-escaped for the model


def test_outcome_of_text_with_structured_content_keeps_the_text():
    result = types.CallToolResult(content=[_text("21.5 degrees")], structured_content={"temperature": 21.5})
    assert outcome_of(result).text == "21.5 degrees"


def test_outcome_of_an_error_result_is_an_error():
    result = types.CallToolResult(content=[_text("no such city")], is_error=True)
    assert outcome_of(result) == ToolOutcome("no such city", True)
    assert outcome_of(types.CallToolResult(content=[_text("ok")])).is_error is False


def test_outcome_of_a_huge_answer_is_cut_and_says_so():
    result = types.CallToolResult(content=[_text("y" * (RESULT_MAX_CHARS * 3))])
    text = outcome_of(result).text
    assert text.startswith("y" * RESULT_MAX_CHARS)
    assert text.count("y") == RESULT_MAX_CHARS
    assert text.endswith(f"[… cut at {RESULT_MAX_CHARS} characters]")
    assert len(text) < RESULT_MAX_CHARS + 100


def test_outcome_of_an_answer_of_exactly_the_limit_is_not_cut():
    result = types.CallToolResult(content=[_text("z" * RESULT_MAX_CHARS)])
    assert outcome_of(result).text == "z" * RESULT_MAX_CHARS


# -- ToolServers against the real stdio clock server ------------------------------------------------


def clock_config(log: Path) -> ToolServerConfig:
    return ToolServerConfig(command=sys.executable, args=[CLOCK], env={"CLOCK_CALL_LOG": str(log)})


def logged(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def running(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


@pytest.fixture
def call_log(tmp_path) -> Path:
    return tmp_path / "calls.jsonl"


@pytest.fixture
async def clock(call_log):
    servers = ToolServers({"clock": clock_config(call_log)}, call_timeout=20)
    yield servers
    await servers.aclose()


async def test_the_clock_servers_tools_are_listed_with_their_schemas(clock):
    async with asyncio.timeout(30):
        tools = {t.name: t for t in await clock.tools("clock")}
    assert set(tools) == {"now", "add", "broken", "reject", "sleep"}
    assert all(t.server == "clock" for t in tools.values())
    assert tools["add"].description == "Add two integers."
    assert tools["add"].input_schema["type"] == "object"
    assert tools["add"].input_schema["required"] == ["a", "b"]
    assert set(tools["add"].input_schema["properties"]) == {"a", "b"}
    assert "required" not in tools["now"].input_schema
    assert tools["now"].input_schema["properties"]["timezone_offset_hours"]["type"] == "integer"


async def test_a_tool_call_runs_on_the_server_and_returns_its_answer(clock, call_log):
    async with asyncio.timeout(30):
        added = await clock.call("clock", "add", {"a": 40, "b": 2})
        now = await clock.call("clock", "now", {"timezone_offset_hours": 2})
    assert added == ToolOutcome(f"{PREFIX} 42", False)
    assert now.text.startswith(f"{PREFIX} ") and now.text.endswith("+02:00") and not now.is_error
    assert [(c["tool"], c["arguments"]) for c in logged(call_log)] == [
        ("add", {"a": 40, "b": 2}),
        ("now", {"timezone_offset_hours": 2}),
    ]


async def test_a_tool_that_reports_an_error_gives_an_error_outcome(clock):
    async with asyncio.timeout(30):
        broken = await clock.call("clock", "broken", {})
        rejected = await clock.call("clock", "add", {"a": "forty"})
        missing = await clock.call("clock", "no_such_tool", {})
    assert broken.is_error and f"{PREFIX} the clock is broken" in broken.text
    assert rejected.is_error and "add" in rejected.text
    assert missing.is_error and "no_such_tool" in missing.text


async def test_concurrent_calls_from_a_fresh_pool_share_one_server_process(clock, call_log):
    async with asyncio.timeout(30):
        outcomes = await asyncio.gather(*(clock.call("clock", "add", {"a": i, "b": 1}) for i in range(8)))
    assert [o.text for o in outcomes] == [f"{PREFIX} {i + 1}" for i in range(8)]
    calls = logged(call_log)
    assert len(calls) == 8
    assert len({c["pid"] for c in calls}) == 1, calls


async def test_slow_calls_on_the_shared_connection_run_side_by_side(clock):
    async with asyncio.timeout(30):
        await clock.call("clock", "now", {})  # the server is up
        started = time.monotonic()
        outcomes = await asyncio.gather(*(clock.call("clock", "sleep", {"seconds": 1}) for _ in range(4)))
        elapsed = time.monotonic() - started
    assert [o.text for o in outcomes] == [f"{PREFIX} slept 1.0"] * 4
    assert elapsed < 3, f"four 1 s calls took {elapsed:.1f} s: they were run one after another"


async def test_a_call_past_the_timeout_is_an_error_and_the_next_call_still_works(call_log):
    servers = ToolServers({"clock": clock_config(call_log)}, call_timeout=0.5)
    try:
        async with asyncio.timeout(30):
            await servers.tools("clock")  # connect first: the timeout is about the call
            started = time.monotonic()
            slow = await servers.call("clock", "sleep", {"seconds": 10})
            waited = time.monotonic() - started
            after = await servers.call("clock", "add", {"a": 1, "b": 2})
    finally:
        await servers.aclose()
    assert slow.is_error
    assert slow.text == "Error: clock/sleep gave no answer within 0.5 s"
    assert waited < 5
    assert after == ToolOutcome(f"{PREFIX} 3", False)
    assert len({c["pid"] for c in logged(call_log)}) == 1  # a slow tool does not cost the connection


async def test_after_the_server_process_dies_one_call_fails_and_the_next_reconnects(clock, call_log):
    """What the pool guarantees: it finds out about a dead server on the first call after the death,
    which comes back as an error outcome (the connection is then dropped); the call after that
    starts a new server process and succeeds."""
    async with asyncio.timeout(60):
        assert not (await clock.call("clock", "now", {})).is_error
        (first,) = logged(call_log)
        os.kill(first["pid"], signal.SIGKILL)
        await eventually(lambda: not running(first["pid"]))

        failed = await clock.call("clock", "now", {})
        assert failed.is_error
        assert failed.text.startswith("Error: MCP server 'clock' failed during now:"), failed.text

        recovered = await clock.call("clock", "now", {})
        assert not recovered.is_error and recovered.text.startswith(PREFIX), recovered.text
    pids = [c["pid"] for c in logged(call_log)]
    assert len(pids) == 2 and pids[0] == first["pid"] and pids[1] != first["pid"]
    assert running(pids[1])


async def test_a_server_killed_during_a_call_fails_that_call_and_the_next_reconnects(clock, call_log):
    async with asyncio.timeout(60):
        slow = asyncio.create_task(clock.call("clock", "sleep", {"seconds": 30}))
        (started,) = await eventually(lambda: logged(call_log))
        os.kill(started["pid"], signal.SIGKILL)
        failed = await slow
        recovered = await clock.call("clock", "add", {"a": 2, "b": 2})
    assert failed.is_error and "sleep" in failed.text
    assert recovered == ToolOutcome(f"{PREFIX} 4", False)


async def test_an_unknown_server_name_names_the_configured_ones(clock):
    with pytest.raises(ToolServerError) as info:
        await clock.tools("calendar")
    assert str(info.value) == "unknown MCP server 'calendar'; configured servers: clock"
    with pytest.raises(ToolServerError, match="'calendar', 'mail'; configured servers: clock"):
        clock.check_names(["clock", "calendar", "mail"])
    # a call never raises: the model reads the error instead
    outcome = await clock.call("calendar", "today", {})
    assert outcome == ToolOutcome("Error: unknown MCP server 'calendar'; configured servers: clock", True)


async def test_with_no_servers_configured_the_error_says_how_to_configure_them():
    with pytest.raises(ToolServerError, match=r"configured servers: none \(set MCP_SERVERS\)"):
        await ToolServers({}).tools("clock")


async def test_a_command_that_does_not_exist_gives_a_clear_error(tmp_path):
    missing = str(tmp_path / "no-such-mcp-server")
    servers = ToolServers({"ghost": ToolServerConfig(command=missing, args=["--flag"])})
    try:
        async with asyncio.timeout(10):
            with pytest.raises(ToolServerError) as info:
                await servers.tools("ghost")
            outcome = await servers.call("ghost", "anything", {})
    finally:
        await servers.aclose()
    message = str(info.value)
    assert message.startswith(f"cannot connect to MCP server 'ghost' ({missing} --flag): ")
    assert "FileNotFoundError" in message and "\n" not in message
    assert outcome.is_error and outcome.text == f"Error: {message}"


async def test_a_command_that_exits_at_once_fails_fast_naming_the_command(tmp_path):
    """E.g. a mistyped script path: python starts, prints an error and exits with status 2."""
    script = str(tmp_path / "clokc_server.py")
    servers = ToolServers({"clock": ToolServerConfig(command=sys.executable, args=[script])})
    started = time.monotonic()
    try:
        async with asyncio.timeout(20):
            with pytest.raises(ToolServerError) as info:
                await servers.tools("clock")
    finally:
        await servers.aclose()
    assert time.monotonic() - started < 15  # not the 30 s connect timeout
    assert str(info.value).startswith(f"cannot connect to MCP server 'clock' ({sys.executable} {script}): ")
    assert str(info.value).endswith(
        f"; its stderr: {sys.executable}: can't open file {script!r}: [Errno 2] No such file or directory"
    )


async def test_a_stdio_servers_stderr_goes_to_the_log_tagged_with_its_name(caplog, call_log):
    caplog.set_level(logging.INFO, logger="mcpq.tool_servers")
    servers = ToolServers({"clock": clock_config(call_log)})
    try:
        outcome = await servers.call("clock", "broken", {})  # the server logs the failure on stderr
        await asyncio.sleep(0.5)
    finally:
        await servers.aclose()
    assert outcome.is_error
    assert any(r.getMessage().startswith("[clock] ") and "broken" in r.getMessage() for r in caplog.records)


async def test_aclose_stops_the_server_process(call_log):
    servers = ToolServers({"clock": clock_config(call_log)})
    async with asyncio.timeout(30):
        await servers.call("clock", "now", {})
        (call,) = logged(call_log)
        assert running(call["pid"])
        await servers.aclose()
        await eventually(lambda: not running(call["pid"]), timeout=10)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://bob:pw@host:8080/mcp?api_key=K", "http://host:8080/mcp"),
        ("https://docs.example.com/mcp", "https://docs.example.com/mcp"),
        ("https://[::1]:9000/mcp#frag", "https://[::1]:9000/mcp"),
    ],
)
async def test_a_url_server_is_named_in_errors_without_credentials_or_query(url, shown):
    config = ToolServerConfig(url=url)
    assert config.where == shown
    outcome = await ToolServers({"docs": config}, call_timeout=1).call("docs", "search", {})
    assert outcome.is_error and "pw" not in outcome.text and "api_key" not in outcome.text


async def test_a_servers_error_answer_keeps_the_shared_connection_for_everyone(clock, call_log):
    """A JSON-RPC error (the server refused one call) must not cut off other jobs' calls."""
    async with asyncio.timeout(30):
        await clock.call("clock", "now", {})
        slow = asyncio.create_task(clock.call("clock", "sleep", {"seconds": 1}))
        await asyncio.sleep(0.3)  # the sleep is in flight on the shared connection
        rejected = await clock.call("clock", "reject", {})
        slept = await slow
        after = await clock.call("clock", "now", {})
    assert rejected.is_error and "rejected" in rejected.text
    assert slept == ToolOutcome(f"{PREFIX} slept 1.0", False)
    assert not after.is_error
    assert len({c["pid"] for c in logged(call_log)}) == 1  # never reconnected


async def test_a_stuck_server_does_not_hold_up_calls_to_another(tmp_path, call_log):
    """Opening a server that never answers takes up to the connect timeout; others go on meanwhile."""
    stuck = tmp_path / "stuck.py"
    stuck.write_text("import time\ntime.sleep(60)\n")
    servers = ToolServers({"stuck": ToolServerConfig(command=sys.executable, args=[str(stuck)]),
                           "clock": clock_config(call_log)})  # fmt: skip
    try:
        await servers.call("clock", "now", {})  # connected
        opening = asyncio.create_task(servers.call("stuck", "x", {}))
        await asyncio.sleep(0.5)
        started = time.monotonic()
        async with asyncio.timeout(10):
            now = await servers.call("clock", "now", {})
        assert not now.is_error and time.monotonic() - started < 2
        opening.cancel()
    finally:
        await servers.aclose()


async def test_a_server_that_dies_at_start_up_is_reported_without_its_secrets(tmp_path):
    script = tmp_path / "leaky.py"
    script.write_text(
        "import sys\nprint('cannot log in with password=hunter2', file=sys.stderr)\nsys.exit(3)\n"
    )
    config = ToolServerConfig(command=sys.executable, args=[str(script), "postgresql://app:hunter2@db/prod"])
    servers = ToolServers({"db": config})
    try:
        outcome = await servers.call("db", "query", {})
    finally:
        await servers.aclose()
    assert outcome.is_error and "hunter2" not in outcome.text
    assert "postgresql://***@db/prod" in outcome.text and "password=***" in outcome.text
