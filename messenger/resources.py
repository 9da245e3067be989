"""MCP resources: a job as `job://<id>`, usage as `stats://usage`, health as `health://status` (all JSON)."""

from __future__ import annotations

import json
from collections.abc import Callable

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError
from redis.exceptions import RedisError

from messenger import usage
from messenger.calls import current_tenant, unavailable
from messenger.health import health, seen_by_tenant
from messenger.runtime import Runtime
from messenger.tenants import Tenant
from shared.errors import JobNotFound, McpQueueError

JSON = "application/json"


def add_resources(mcp: MCPServer, runtime: Runtime, tenant_of: Callable[[Context], Tenant]) -> None:
    def unreachable(e: Exception) -> ResourceError:
        return ResourceError(unavailable(e, runtime.settings).message)

    @mcp.resource("job://{job_id}", name="job", mime_type=JSON)
    async def job(job_id: str, ctx: Context) -> str:
        """A job's status, its text so far, and its result once it has ended (as get_job returns it)."""
        try:
            found = await runtime.jobs.get(job_id, tenant_of(ctx).reader)
        except JobNotFound as e:
            raise ResourceNotFoundError(str(e)) from None
        except McpQueueError as e:
            raise ResourceError(e.message) from None
        except (RedisError, OSError) as e:
            raise unreachable(e) from None
        return found.model_dump_json()

    @mcp.resource("stats://usage", name="usage", mime_type=JSON)
    async def usage_stats() -> str:
        """Requests, tokens, cost (USD) per model and per day, and latency, summed over every worker:
        the caller's own (the operator's has every tenant's)."""
        try:
            return json.dumps(await usage.usage_stats(runtime.redis, tenant=current_tenant(runtime.settings)))
        except (RedisError, OSError) as e:
            raise unreachable(e) from None

    @mcp.resource("health://status", name="health", mime_type=JSON)
    async def health_status() -> str:
        """Redis, live workers, jobs waiting and running, and provider reachability."""
        report = await health(runtime)
        return json.dumps(report if current_tenant(runtime.settings).operator else seen_by_tenant(report))
