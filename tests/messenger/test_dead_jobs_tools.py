"""The dead-letter tools: the operator lists the jobs no worker could run and requeues one; a tenant
may do neither."""

from __future__ import annotations

import anyio
import pytest
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import SecretStr

from messenger.tools import QueueTools
from shared import dead_letter, keys

RAW = b'{"f":"chat","a":[{"message":"requeued by the operator"}],"k":{},"t":null,"et":0}'


class FakeContext:
    def __init__(self, headers: dict[str, str] | None = None):
        self.headers = headers

    async def report_progress(self, *args) -> None:
        pass


async def test_the_operator_lists_a_dead_job_and_a_requeue_runs_it(embedded_runtime):
    tools = QueueTools(embedded_runtime)
    redis = embedded_runtime.redis
    await redis.zadd(keys.QUEUE, {"dead1": 0})
    await dead_letter.bury(
        redis, b"dead1", RAW, "function 'chat' was unknown to an old worker", function="chat"
    )
    listed = await tools.list_dead_jobs(FakeContext())  # type: ignore[arg-type]
    assert [(j["job_id"], j["raw"]) for j in listed["jobs"]] == [("dead1", RAW.decode())]

    assert (await tools.requeue_dead_job("dead1", FakeContext()))["status"] == "queued"  # type: ignore[arg-type]
    with anyio.fail_after(20):
        done = await tools.wait_for_job("dead1", FakeContext(), timeout_seconds=15)  # type: ignore[arg-type]
    assert done.status == "completed" and "requeued by the operator" in done.ai_response
    assert (await tools.list_dead_jobs(FakeContext()))["jobs"] == []  # type: ignore[arg-type]
    with pytest.raises(ToolError, match="no dead-letter entry"):
        await tools.requeue_dead_job("dead1", FakeContext())  # type: ignore[arg-type]


async def test_a_tenant_may_not_see_or_requeue_dead_jobs(embedded_runtime):
    embedded_runtime.settings.mcp_api_key = SecretStr("acme-key-0123456789")
    tools = QueueTools(embedded_runtime)
    tenant = FakeContext({"authorization": "Bearer acme-key-0123456789"})
    with pytest.raises(ToolError, match="only the operator"):
        await tools.list_dead_jobs(tenant)  # type: ignore[arg-type]
    with pytest.raises(ToolError, match="only the operator"):
        await tools.requeue_dead_job("dead1", tenant)  # type: ignore[arg-type]
