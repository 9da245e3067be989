"""The MCP tools called as plain methods of QueueTools, with no MCP server or client in between."""

from __future__ import annotations

import anyio
import pytest
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import SecretStr

from messenger.tools import QueueTools
from shared.connection import connect

UNKNOWN_JOB = "0123456789abcdef0123456789abcdef"


class FakeContext:
    """What the tools read of an MCP Context: the HTTP headers, and a progress sink."""

    def __init__(self, headers: dict[str, str] | None = None):
        self.headers = headers
        self.progress: list[str] = []

    async def report_progress(self, progress: float, total: float | None, message: str | None) -> None:
        self.progress.append(message or "")


async def test_a_tool_runs_a_job_without_a_server(embedded_runtime):
    tools = QueueTools(embedded_runtime)
    ctx = FakeContext()
    with anyio.fail_after(30):
        answer = await tools.send_message_to_ai("hello tools", ctx)  # type: ignore[arg-type]
        again = await tools.get_job(answer.job_id, ctx)  # type: ignore[arg-type]
    assert answer.status == "completed" and "hello tools" in answer.ai_response
    assert "".join(ctx.progress) == answer.ai_response
    assert again.ai_response == answer.ai_response


async def test_a_queue_error_is_one_line_tool_error(embedded_runtime):
    tools = QueueTools(embedded_runtime)
    with pytest.raises(ToolError) as raised:
        await tools.get_job(UNKNOWN_JOB, FakeContext())  # type: ignore[arg-type]
    assert "never existed" in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize("job_id", ["x" * 5000, UNKNOWN_JOB + "\n", "../../etc/passwd"])
async def test_an_odd_job_id_is_not_found_and_not_echoed_whole(embedded_runtime, job_id):
    tools = QueueTools(embedded_runtime)
    with pytest.raises(ToolError) as raised:
        await tools.get_job(job_id, FakeContext())  # type: ignore[arg-type]
    message = str(raised.value)
    assert "never existed" in message and "\n" not in message and len(message) < 300


async def test_an_invalid_argument_is_named_in_one_line(embedded_runtime):
    tools = QueueTools(embedded_runtime)
    with pytest.raises(ToolError, match=r"^invalid message: ") as raised:
        await tools.submit_message("", FakeContext())  # type: ignore[arg-type]
    assert "Value error" not in str(raised.value)
    with pytest.raises(ToolError, match=r"^invalid temperature: "):
        await tools.configure_ai_model(FakeContext(), temperature=9)  # type: ignore[arg-type]


async def test_redis_unreachable_reads_as_queue_unavailable(embedded_runtime):
    embedded_runtime.jobs.redis = connect("redis://127.0.0.1:1/0")  # nothing listens on port 1
    tools = QueueTools(embedded_runtime)
    with pytest.raises(
        ToolError, match=r"^the queue is unreachable \(Redis at memory://\): ConnectionError$"
    ):
        await tools.get_job(UNKNOWN_JOB, FakeContext())  # type: ignore[arg-type]
    await embedded_runtime.jobs.redis.aclose()


async def test_callers_see_only_their_own_jobs_over_http_with_keys(embedded_runtime):
    embedded_runtime.settings.mcp_api_key = SecretStr("one-key,other-key")
    tools = QueueTools(embedded_runtime)
    mine = FakeContext({"authorization": "Bearer one-key"})
    theirs = FakeContext({"authorization": "Bearer other-key"})
    submitted = await tools.submit_message("mine", mine)  # type: ignore[arg-type]
    assert tools.identity(mine).reader == tools.identity(mine).name != "operator"
    assert (await tools.get_job(submitted.job_id, mine)).job_id == submitted.job_id  # type: ignore[arg-type]
    with pytest.raises(ToolError, match="never existed"):
        await tools.get_job(submitted.job_id, theirs)  # type: ignore[arg-type]
