"""The operator's dashboard: one self-contained page (`page.html`: no CDN, no build step, charts drawn
as inline SVG, works offline) and the routes it reads and acts through:

    GET  /dashboard                    the page
    GET  /dashboard/events             live stream: snapshots and tokens (stream.py)
    GET  /dashboard/jobs               the job list; ?status= &tenant= &model= &q= &limit=
    GET  /dashboard/jobs/<id>          one job whole: text, request, events timeline, attempts, usage
    POST /dashboard/jobs/<id>/cancel   stop it (JobClient.cancel)
    POST /dashboard/jobs/<id>/retry    run its request again as a new job (messenger.jobs.retry_job)
    GET  /dashboard/series             the charts' history; ?minutes= (shared/timeseries.py)
    POST /dashboard/submit             queue a message

Everything is read from Redis, so any replica shows the same picture. The dashboard is the
operator's: with keys configured every route needs MCP_ADMIN_KEY (a tenant key gets 403 before any
route runs; see messenger.guards). EventSource cannot send headers, so `?token=<key>` is accepted on
GET /dashboard and /dashboard/events only; the page sends the key as a header on every other call.
A POST a web page could forge is refused (`cross_site`).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from messenger.calls import unavailable
from messenger.dashboard import stream
from messenger.dashboard.views import ROWS_MAX, Filters, job_detail, job_rows, snapshot
from messenger.guards import verified_tenant
from messenger.jobs import retry_job
from messenger.runtime import Runtime
from shared import timeseries
from shared.errors import (
    InvalidRequest,
    JobNotFound,
    McpQueueError,
    QueueFull,
    QueueUnavailable,
    Refused,
    validation_message,
)
from shared.logs import redact
from shared.models import ChatRequest
from shared.settings import OPERATOR

__all__ = ["routes", "snapshot"]  # snapshot: the live picture, for tests and other readers

PAGE = (Path(__file__).parent / "page.html").read_text(encoding="utf-8")
PAGE_HEADERS = {  # no framing (clickjacking the buttons), no key in a Referer, nothing cached
    "content-security-policy": "frame-ancestors 'none'",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}
WINDOWS = {60: 1, 360: 5, 1440: 15}  # chart window in minutes -> bucket width in minutes


def routes(runtime: Runtime) -> list[Route]:
    async def page(_: Request) -> HTMLResponse:
        return HTMLResponse(PAGE, headers=PAGE_HEADERS)

    async def events(_: Request) -> Response:
        return stream.response(runtime)

    async def jobs(request: Request) -> JSONResponse:
        q = request.query_params
        filters = Filters(q.get("status", ""), q.get("tenant", ""), q.get("model", ""), q.get("q", "")[:200])
        limit = min(max(_int(q.get("limit"), 100), 1), ROWS_MAX)
        return await answer(runtime, job_rows(runtime.redis, filters, limit))

    async def job(request: Request) -> JSONResponse:
        return await answer(runtime, job_detail(runtime, request.path_params["job_id"]))

    async def cancel(request: Request) -> JSONResponse:
        async def cancelled() -> dict:
            result = await runtime.jobs.cancel(request.path_params["job_id"])
            return {"job_id": result.job_id, "status": result.status}

        return cross_site(request) or await answer(runtime, cancelled())

    async def retry(request: Request) -> JSONResponse:
        async def retried() -> dict:
            return {"job_id": await retry_job(runtime.jobs, request.path_params["job_id"])}

        return cross_site(request) or await answer(runtime, retried())

    async def series(request: Request) -> JSONResponse:
        minutes = _int(request.query_params.get("minutes"), 60)
        minutes = minutes if minutes in WINDOWS else 60
        return await answer(runtime, timeseries.read(runtime.redis, minutes, WINDOWS[minutes]))

    async def submit(request: Request) -> JSONResponse:
        refused = cross_site(request)
        if refused is not None:
            return refused
        try:
            body = await request.json()
            chat = ChatRequest(message=body.get("message", ""), model=body.get("model") or None)
        except ValidationError as e:
            return JSONResponse({"error": validation_message(e)}, status_code=400)
        except (ValueError, AttributeError, RecursionError):  # RecursionError: JSON nested too deep
            return JSONResponse(
                {"error": 'invalid request: send JSON {"message": "...", "model": "..."}'}, 400
            )
        tenant = verified_tenant(request)
        caller = tenant.name if tenant else OPERATOR
        return await answer(runtime, _submitted(runtime.queue.submit(chat, caller=caller)))

    return [
        Route("/dashboard", page, methods=["GET"]),
        Route("/dashboard/events", events, methods=["GET"]),
        Route("/dashboard/jobs", jobs, methods=["GET"]),
        Route("/dashboard/jobs/{job_id}", job, methods=["GET"]),
        Route("/dashboard/jobs/{job_id}/cancel", cancel, methods=["POST"]),
        Route("/dashboard/jobs/{job_id}/retry", retry, methods=["POST"]),
        Route("/dashboard/series", series, methods=["GET"]),
        Route("/dashboard/submit", submit, methods=["POST"]),
    ]


async def _submitted(submitting) -> dict:
    return {"job_id": await submitting}


async def answer(runtime: Runtime, work) -> JSONResponse:
    """Await a read or an action; its failure is one line of JSON with the status a client expects."""
    try:
        return JSONResponse(await work)
    except JobNotFound as e:
        return JSONResponse({"error": e.message}, status_code=404)
    except (QueueFull, Refused) as e:  # MAX_QUEUE_DEPTH, a budget, a rate limit
        return JSONResponse({"error": e.message}, status_code=429)
    except InvalidRequest as e:  # retry a job that is not failed or cancelled, say
        return JSONResponse({"error": e.message}, status_code=409)
    except QueueUnavailable as e:
        return JSONResponse({"error": e.message}, status_code=503)
    except McpQueueError as e:  # an unknown MCP server named, say
        return JSONResponse({"error": e.message}, status_code=400)
    except (RedisError, OSError) as e:
        return JSONResponse({"error": unavailable(e, runtime.settings).message}, status_code=503)
    except Exception as e:  # never a traceback to the page
        return JSONResponse({"error": redact(f"{type(e).__name__}: {e}")}, status_code=500)


def _int(raw: str | None, default: int) -> int:
    try:
        return int(raw) if raw is not None else default
    except ValueError:
        return default


def cross_site(request: Request) -> JSONResponse | None:
    """A POST a web page could forge is refused: it must be JSON (a cross-site page cannot send that
    without a CORS preflight, which this server never grants) and not marked cross-site by the
    browser. The Host/Origin check (messenger.guards) has already run."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        return JSONResponse({"error": "send the request as Content-Type: application/json"}, 415)
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return JSONResponse({"error": "cross-site requests may not change jobs"}, 403)
    return None
