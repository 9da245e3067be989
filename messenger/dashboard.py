"""The live dashboard: one self-contained page (`GET /dashboard`), a server-sent-events stream of
snapshots and tokens (`GET /dashboard/events`), and a form to submit a message (`POST /dashboard/submit`).

Everything shown is read from Redis, so any messenger replica shows the same picture. Once a second
the stream sends a `snapshot` (queue depth, workers, jobs in flight with their text so far, recent
results and errors, cost per model); between snapshots, every job in flight is followed through the
event hub and each new token sends a `text` event carrying that job's whole text so far (idempotent:
a late or repeated event cannot garble the page).

The dashboard is the operator's: with keys configured every route needs MCP_ADMIN_KEY (a tenant key
gets 403; see messenger.guards). EventSource cannot send headers, so `?token=<key>` is accepted on
GET /dashboard and /dashboard/events; the submit form sends the key as a header, as JSON, and a
submit a web page could forge is refused (`cross_site`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator

from pydantic import ValidationError
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.routing import Route

from messenger import usage
from messenger.calls import unavailable
from messenger.collector import Transcript, follow_events
from messenger.guards import verified_tenant
from messenger.health import capacity, live_workers, worker_rows
from messenger.runtime import Runtime
from shared.errors import QueueFull, validation_message
from shared.logs import redact
from shared.models import FINAL_STATUSES, ChatRequest
from shared.settings import OPERATOR

SNAPSHOT_SECONDS = 1.0  # how often the whole picture is re-read from Redis
JOBS_SHOWN = 25  # recent jobs read per snapshot (in flight first, then finished)
FOLLOWED_MAX = 20  # jobs in flight whose tokens are streamed live, per open page
TEXT_SHOWN = 4000  # characters of a job's text sent to the page


PAGE_HEADERS = {  # no framing (clickjacking the form), no key in a Referer, nothing cached
    "content-security-policy": "frame-ancestors 'none'",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


def routes(runtime: Runtime) -> list[Route]:
    async def page(_: Request) -> HTMLResponse:
        return HTMLResponse(PAGE, headers=PAGE_HEADERS)

    async def events(_: Request) -> StreamingResponse:
        return StreamingResponse(
            event_stream(runtime),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

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
        try:
            job_id = await runtime.queue.submit(chat, caller=tenant.name if tenant else OPERATOR)
        except QueueFull as e:
            return JSONResponse({"error": e.message}, status_code=429)
        except Exception as e:  # admission refusals, Redis down: say so on the page
            return JSONResponse({"error": redact(f"{type(e).__name__}: {e}")}, status_code=503)
        return JSONResponse({"job_id": job_id})

    return [
        Route("/dashboard", page, methods=["GET"]),
        Route("/dashboard/events", events, methods=["GET"]),
        Route("/dashboard/submit", submit, methods=["POST"]),
    ]


def cross_site(request: Request) -> JSONResponse | None:
    """A submit a web page could forge is refused: it must be JSON (a cross-site page cannot send
    that without a CORS preflight, which this server never grants) and not marked cross-site by the
    browser. The Host/Origin check (messenger.guards) has already run."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        return JSONResponse({"error": "send the message as Content-Type: application/json"}, 415)
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return JSONResponse({"error": "cross-site requests may not submit jobs"}, 403)
    return None


async def snapshot(runtime: Runtime) -> dict:
    """The whole picture, from Redis, as one JSON-able dict."""
    now = time.time()
    beats = await live_workers(runtime.redis)
    workers = worker_rows(beats)
    jobs = [job_row(j) for j in await runtime.jobs.list(None, JOBS_SHOWN)]
    stats = await usage.usage_stats(runtime.redis, days=1)
    return {
        "time": now,
        "queue_depth": await runtime.jobs.queue_depth(),
        "workers": workers,
        "in_flight": [j for j in jobs if j["status"] not in FINAL_STATUSES],
        "recent": [j for j in jobs if j["status"] in FINAL_STATUSES],
        "cost": {"totals": stats["totals"], "models": stats["models"]},
        "capacity": await capacity(runtime.redis, runtime.settings, beats),
    }


def job_row(job) -> dict:
    return {
        "job_id": job.job_id,
        "status": job.status,
        "model": job.model,
        "worker_id": job.worker_id,
        "text": job.ai_response[-TEXT_SHOWN:],
        "tokens": job.usage.completion_tokens,
        "cost": job.usage.estimated_cost,
        "error": job.error,
        "attempt": job.attempt,
    }


async def event_stream(runtime: Runtime) -> AsyncIterator[str]:
    """`snapshot` once a second; `text` for each token of a job in flight. Ends when the page closes."""
    texts: asyncio.Queue[dict] = asyncio.Queue()
    followed: dict[str, asyncio.Task] = {}
    try:
        yield "retry: 2000\n\n"
        while True:
            try:
                shot = await snapshot(runtime)
            except (RedisError, OSError) as e:
                yield sse("problem", {"error": unavailable(e, runtime.settings).message})
            else:
                yield sse("snapshot", shot)
                for job in shot["in_flight"]:
                    if job["job_id"] not in followed and len(followed) < FOLLOWED_MAX:
                        followed[job["job_id"]] = asyncio.create_task(follow(runtime, job["job_id"], texts))
            for job_id in [j for j, task in followed.items() if task.done()]:
                del followed[job_id]
            deadline = time.monotonic() + SNAPSHOT_SECONDS
            while (left := deadline - time.monotonic()) > 0:
                try:
                    async with asyncio.timeout(left):
                        latest = {(u := await texts.get())["job_id"]: u}
                except TimeoutError:
                    break
                while not texts.empty():  # coalesce: only each job's newest text is worth sending
                    u = texts.get_nowait()
                    latest[u["job_id"]] = u
                for update in latest.values():
                    yield sse("text", update)
    finally:
        for task in followed.values():
            task.cancel()


async def follow(runtime: Runtime, job_id: str, out: asyncio.Queue) -> None:
    """Put a job's whole text so far into `out` after each of its events, until it ends."""
    transcript = Transcript(job_id)
    with contextlib.suppress(RedisError, OSError, TimeoutError):
        async with runtime.hub.follow(job_id) as live:
            async for event in follow_events(runtime.redis, transcript, live):
                if event is not None:
                    out.put_nowait(
                        {"job_id": job_id, "status": transcript.status, "text": transcript.text[-TEXT_SHOWN:],
                         "tokens": transcript.tokens, "worker_id": transcript.worker_id}
                    )  # fmt: skip


def sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mcp-queue dashboard</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
:root { --bg:#f6f7f9; --card:#fff; --ink:#1d2330; --dim:#6b7385; --ok:#1a7f37; --bad:#c62828; --line:#e3e6eb; }
* { box-sizing:border-box } body { margin:0; font:14px/1.4 system-ui,sans-serif; background:var(--bg); color:var(--ink) }
header { display:flex; gap:24px; align-items:baseline; padding:12px 20px; background:var(--ink); color:#fff }
header h1 { font-size:18px; margin:0 } header .stat b { font-size:20px } #conn.ok { color:#7ee787 } #conn.bad { color:#ff8a80 }
main { display:grid; grid-template-columns:1fr 1fr; gap:16px; padding:16px 20px }
section { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:12px 14px; min-width:0 }
section.wide { grid-column:1 / -1 } h2 { font-size:14px; margin:0 0 8px; color:var(--dim); text-transform:uppercase }
table { width:100%; border-collapse:collapse } td, th { text-align:left; padding:4px 6px; border-top:1px solid var(--line); vertical-align:top }
th { border-top:none; color:var(--dim); font-weight:600 } code { font-size:12px }
.job { border-top:1px solid var(--line); padding:6px 0 } .job:first-child { border-top:none }
.text { white-space:pre-wrap; font-family:ui-monospace,monospace; font-size:12px; margin:4px 0 0 }
.failed, .err { color:var(--bad) } .completed { color:var(--ok) } .empty { color:var(--dim) }
form { display:flex; gap:8px } form input[name=message] { flex:1 } input, button { font:inherit; padding:6px 8px }
</style></head><body>
<header><h1>mcp-queue</h1>
<span class="stat">queue <b id="depth">–</b></span><span class="stat">workers <b id="nworkers">–</b></span>
<span class="stat">in flight <b id="nflight">–</b></span><span class="stat">cost <b id="cost">–</b></span>
<span id="conn">connecting…</span></header>
<main>
<section class="wide"><h2>Send a message</h2>
<form id="submit"><input name="message" placeholder="Ask the model…" required>
<input name="model" placeholder="model (default)" size="14"><button>Submit</button></form>
<div id="submitted" class="empty"></div></section>
<section class="wide"><h2>Jobs in flight</h2><div id="flight"></div></section>
<section><h2>Workers</h2><table id="workers"></table></section>
<section><h2>Cost per model</h2><table id="models"></table></section>
<section><h2>Provider capacity</h2><table id="capacity"></table></section>
<section class="wide"><h2>Recent results and errors</h2><table id="recent"></table></section>
</main>
<script>
"use strict";
const token = new URLSearchParams(location.search).get("token");
const q = token ? "?token=" + encodeURIComponent(token) : "";
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => "&#" + c.charCodeAt(0) + ";");
const short = (id) => esc(String(id || "").slice(0, 8));
const usd = (v) => v == null ? "n/a" : "$" + Number(v).toFixed(v < 0.01 ? 6 : 4);
const live = {};  // job id -> newest text event: tokens that came after the last snapshot

function row(cells, tag = "td") { return "<tr>" + cells.map((c) => `<${tag}>${c}</${tag}>`).join("") + "</tr>"; }
function flightJob(j) {
  const l = live[j.job_id]; const text = l && l.text.length >= j.text.length ? l.text : j.text;
  return `<div class="job" data-job="${esc(j.job_id)}"><code>${short(j.job_id)}</code> `
    + `<span class="status">${esc(j.status)}</span> ${esc(j.model || "")} `
    + `<span class="empty">${esc(j.worker_id || "")}</span><div class="text">${esc(text)}</div></div>`;
}
function render(s) {
  $("depth").textContent = s.queue_depth; $("nworkers").textContent = s.workers.length;
  $("nflight").textContent = s.in_flight.length; $("cost").textContent = usd(s.cost.totals.cost_usd);
  $("flight").innerHTML = s.in_flight.map(flightJob).join("") || '<span class="empty">nothing running</span>';
  $("workers").innerHTML = row(["worker", "host", "heartbeat", "current jobs", "done"], "th") + (s.workers.map((w) => row([
    `<code>${esc(w.worker_id)}</code>`, esc(w.host), esc(w.heartbeat_age_s) + " s ago",
    w.running_jobs.map((id) => `<code>${short(id)}</code>`).join(" ") || '<span class="empty">idle</span>',
    esc(w.jobs_done) + (w.provider_error ? ` <span class="err">${esc(w.provider_error)}</span>` : "")])).join("")
    || row(['<span class="err">no live workers: queued jobs wait</span>', "", "", "", ""]));
  const models = Object.entries(s.cost.models);
  $("models").innerHTML = row(["model", "requests", "failed", "tokens", "cost", "p95 latency"], "th") + (models.map(([m, r]) => row([
    esc(m), r.requests, r.failed, r.total_tokens, usd(r.cost_usd), r.p95_latency_ms == null ? "" : r.p95_latency_ms + " ms"])).join("")
    || row(['<span class="empty">no usage yet</span>', "", "", "", "", ""]));
  const caps = Object.entries(s.capacity || {});
  $("capacity").innerHTML = row(["model", "limits", "waiting", "429s", "cool-down"], "th") + (caps.map(([m, c]) => row([
    esc(m), esc(Object.entries(c.limits).map(([k, v]) => k + "=" + v).join(" ") || "-"), c.waiting, c.upstream_429s,
    c.cool_down_s ? `<span class="err">${esc(c.cool_down_s)} s</span>` : ""])).join("")
    || row(['<span class="empty">no MODEL_LIMITS, no 429s</span>', "", "", "", ""]));
  $("recent").innerHTML = row(["job", "status", "model", "worker", "tokens", "cost", "answer or error"], "th") + (s.recent.map((j) => row([
    `<code>${short(j.job_id)}</code>`, `<span class="${esc(j.status)}">${esc(j.status)}</span>`, esc(j.model || ""),
    esc(j.worker_id || ""), j.tokens, usd(j.cost),
    j.error ? `<span class="err">${esc(j.error)}</span>` : `<div data-job="${esc(j.job_id)}"><div class="text">${esc(j.text)}</div></div>`])).join("")
    || row(['<span class="empty">none yet</span>', "", "", "", "", "", ""]));
  for (const id of Object.keys(live)) if (!s.in_flight.some((j) => j.job_id === id)) delete live[id];
}
function onText(t) {
  live[t.job_id] = t;
  const el = document.querySelector(`#flight [data-job="${CSS.escape(t.job_id)}"]`);
  if (!el) return;
  const text = el.querySelector(".text");
  if (t.text.length >= text.textContent.length) text.textContent = t.text;
  el.querySelector(".status").textContent = t.status;
}
function connect() {
  const es = new EventSource("/dashboard/events" + q);
  es.addEventListener("snapshot", (e) => { $("conn").textContent = "live"; $("conn").className = "ok"; render(JSON.parse(e.data)); });
  es.addEventListener("text", (e) => onText(JSON.parse(e.data)));
  es.addEventListener("problem", (e) => { $("conn").textContent = JSON.parse(e.data).error; $("conn").className = "bad"; });
  es.onerror = () => { $("conn").textContent = "reconnecting…"; $("conn").className = "bad"; };
}
$("submit").addEventListener("submit", async (e) => {
  e.preventDefault();
  const f = e.target, out = $("submitted");
  const headers = { "content-type": "application/json" };
  if (token) headers.authorization = "Bearer " + token;
  const r = await fetch("/dashboard/submit", { method: "POST", headers,
    body: JSON.stringify({ message: f.message.value, model: f.model.value }) });
  const body = await r.json();
  out.className = r.ok ? "" : "err";
  out.innerHTML = r.ok ? `submitted job <code id="submitted-id">${esc(body.job_id)}</code>` : esc(body.error);
  if (r.ok) f.message.value = "";
});
connect();
</script></body></html>
"""
