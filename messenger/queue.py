"""One way into the queue: `JobQueue.submit` admits a request (known MCP servers, budgets, rate
limit), writes the job with one atomic script and wakes the workers. The MCP tools, MCP tasks,
forwarded `server/tool` calls, the dashboard and the CLI all submit through it; reading, following,
listing and cancelling are the JobClient's (messenger/jobs.py).
"""

from __future__ import annotations

import time
import uuid

from arq.jobs import serialize_job

from messenger import admission, usage
from shared import keys, tracing
from shared.errors import InvalidRequest, QueueFull, ToolServerError
from shared.models import ChatRequest, ToolCallRequest
from shared.serializer import serialize
from shared.settings import OPERATOR, Settings
from shared.tool_config import unknown_servers_message

# arq's enqueue (WATCH, EXISTS, MULTI PSETEX ZADD EXEC: three round trips) as one atomic script, which
# also records the job as recent and wakes the workers with its id, so one round trip enqueues.
ENQUEUE_LUA = """
-- KEYS: arq:job:<id>, arq:result:<id>, arq:queue, mcpq:jobs:recent, mcpq:wakeup, mcpq:owner:<id>
-- ARGV: job id, serialized job, enqueue time ms, job expiry ms, recent jobs kept, max queue depth,
--       caller, owner record lifetime s
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 0 end
local depth = redis.call('ZCARD', KEYS[3])
if depth >= tonumber(ARGV[6]) then return -depth end
redis.call('SET', KEYS[6], ARGV[7], 'EX', ARGV[8])
redis.call('PSETEX', KEYS[1], ARGV[4], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[4], 0, -tonumber(ARGV[5]) - 1)
redis.call('PUBLISH', KEYS[5], ARGV[1])
return 1
"""
JOB_EXPIRES_MS = 86_400_000  # arq's expires_extra_ms: a job not started within a day fails as expired
ANONYMOUS = OPERATOR  # a request without an API key (stdio, the CLI) is the local operator's


def new_job_id() -> str:
    """122 random bits: unguessable, so a job id is also a handle only its holder knows."""
    return uuid.uuid4().hex


class JobQueue:
    def __init__(self, redis, settings: Settings):
        self.redis = redis
        self.settings = settings

    async def submit(
        self, request: ChatRequest | ToolCallRequest, *, caller: str, job_id: str | None = None
    ) -> str:
        """Queue `request` for `caller` and return its job id (`job_id` when the caller chose one, to
        subscribe to its events first). A ToolCallRequest (one downstream tool call) becomes a
        `call_tool` job: no model, no budget. Raises QueueFull, Refused, ToolServerError."""
        job_id = job_id or new_job_id()
        if isinstance(request, ToolCallRequest):
            await self._write(job_id, "call_tool", request.model_dump(), caller)
            return job_id
        if request.mcp_servers:
            unknown = [n for n in request.mcp_servers if n not in self.settings.mcp_servers]
            if unknown:
                raise ToolServerError(unknown_servers_message(unknown, self.settings.mcp_servers))
        admitting = admission.enabled(self.settings)
        if admitting:  # one more round trip, only when budgets or rate limits are set
            request = admission.pinned(request, await usage.model_defaults(self.redis, caller), self.settings)
            await admission.admit(self.redis, self.settings, request, job_id=job_id, caller=caller)
        try:
            await self._write(job_id, "chat", request.model_dump(exclude_none=True), caller)
        except BaseException:
            if admitting:
                await admission.release(self.redis, job_id)
            raise
        return job_id

    async def _write(self, job_id: str, function: str, request: dict, caller: str) -> None:
        now_ms = int(time.time() * 1000)
        trace = tracing.current_carrier()  # the caller's trace, when there is one, goes with the job
        payload = serialize_job(
            function, (request,), {"trace": trace} if trace else {}, None, now_ms, serializer=serialize
        )
        # the owner record lives as long as the job can: a day in the queue, its run, its kept result
        owner_ttl = JOB_EXPIRES_MS // 1000 + int(self.settings.job_timeout_seconds) + keys.KEEP_RESULT_SECONDS
        added = await self.redis.register_script(ENQUEUE_LUA)(
            keys=[
                keys.job(job_id), keys.result(job_id), keys.QUEUE, keys.RECENT_JOBS,
                keys.WAKEUP_CHANNEL, keys.owner(job_id),
            ],
            args=[
                job_id, payload, now_ms, JOB_EXPIRES_MS, keys.RECENT_JOBS_KEPT,
                self.settings.max_queue_depth, caller, owner_ttl,
            ],
        )  # fmt: skip
        if added < 0:
            raise QueueFull(-added, self.settings.max_queue_depth)
        if not added:  # the same id twice: never run a job twice
            raise InvalidRequest(f"job {job_id} already exists")
