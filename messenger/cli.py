"""`messenger serve | ask | job | tail | jobs | stats | health`: a thin shell over the Runtime.

Whatever goes wrong ends in one line on stderr and an exit code (EXIT_CODES), never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

from messenger.calls import tool_notice
from messenger.collector import Transcript
from messenger.health import health
from messenger.runtime import Runtime, open_runtime
from shared.errors import SettingsError
from shared.events import Event, ToolCallEvent, ToolResultEvent
from shared.exits import INTERRUPTED, WRONG_INPUT, failure
from shared.logs import setup_logging
from shared.models import ChatRequest, JobResult
from shared.settings import Settings, load_settings

log = logging.getLogger("messenger")

EXIT_CODES = """exit codes:
  0    done (ask, tail: the job completed; health: everything is ok)
  1    the job failed or was cancelled; the queue refused the request (full, a budget or rate limit,
       an unknown MCP server); no such job; Redis cannot be reached; health found a problem
  2    a setting or an argument is wrong, or the provider cannot be used as configured
  130  interrupted (Ctrl-C)"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="messenger",
        description="mcp-queue: LLM calls as jobs on a Redis queue.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the MCP server")
    serve.add_argument(
        "--transport", choices=["stdio", "http", "sse"], help="default: MCP_TRANSPORT or stdio"
    )
    serve.add_argument("--host", help="default: MCP_HOST or 127.0.0.1")
    serve.add_argument("--port", type=int, help="default: MCP_PORT or 8000")

    ask = sub.add_parser("ask", help="send one message through the queue and stream the answer")
    ask.add_argument("text")
    ask.add_argument("--model")
    ask.add_argument("--temperature", type=float)
    ask.add_argument("--max-tokens", type=int)
    ask.add_argument("--conversation")
    ask.add_argument("--priority", choices=["high", "normal", "low"], help="default: normal")
    ask.add_argument(
        "--mcp-server",
        action="append",
        metavar="NAME",
        help="let the model use this MCP_SERVERS entry's tools",
    )
    ask.add_argument("--json", action="store_true", help="print the result as JSON instead of streaming")

    job = sub.add_parser("job", help="show a job: status, text so far, result")
    job.add_argument("job_id")
    tail = sub.add_parser("tail", help="print a job's tokens from the start, then live until it ends")
    tail.add_argument("job_id")
    jobs = sub.add_parser("jobs", help="list recent jobs")
    jobs.add_argument("--status", choices=["queued", "running", "completed", "failed", "cancelled"])
    jobs.add_argument("--json", action="store_true")
    st = sub.add_parser("stats", help="requests, tokens, cost and latency per model, from all workers")
    st.add_argument("--json", action="store_true")
    st.add_argument(
        "--by", choices=["model", "tenant"], default="model", help="one row per model (default) or per tenant"
    )
    hl = sub.add_parser("health", help="Redis, workers, queue depth, provider")
    hl.add_argument("--json", action="store_true")
    dead = sub.add_parser("dead", help="queue entries no worker could run (mcpq:dead); requeue or drop one")
    dead.add_argument("action", nargs="?", choices=["list", "requeue", "drop"], default="list")
    dead.add_argument("job_id", nargs="?")
    dead.add_argument("--json", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        overrides = {}
        if args.command == "serve":
            overrides = {
                k: v
                for k, v in (
                    ("mcp_transport", args.transport),
                    ("mcp_host", args.host),
                    ("mcp_port", args.port),
                )
                if v is not None
            }
        settings = load_settings(**overrides)
        if args.command == "serve":
            from messenger.serve import refuse_open_network

            refuse_open_network(settings)  # before anything starts
    except SettingsError as e:
        print(f"messenger: {e.message}", file=sys.stderr)
        return WRONG_INPUT
    setup_logging(settings.log_level if args.command == "serve" else "WARNING", settings.log_format)
    if settings.embedded and args.command in ("job", "tail", "jobs", "stats", "dead"):
        print(
            "messenger: REDIS_URL is not set, so jobs live inside each process (embedded mode) and another "
            "process cannot see them. Set REDIS_URL=redis://… to share jobs.",
            file=sys.stderr,
        )
        return WRONG_INPUT
    try:
        return asyncio.run(_run(args, settings))
    except KeyboardInterrupt:
        return INTERRUPTED
    except Exception as e:  # every failure is one line; LOG_LEVEL=DEBUG adds the traceback
        log.debug("messenger %s failed", args.command, exc_info=True)
        line, code = failure(e, settings.redis_url)
        print(f"messenger: {line}", file=sys.stderr)
        return code


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    async with open_runtime(settings) as runtime:
        return await COMMANDS[args.command](runtime, args)


async def _serve(runtime: Runtime, args) -> int:
    from messenger.serve import serve

    s = runtime.settings
    await serve(runtime, s.mcp_transport, s.mcp_host, s.mcp_port)
    return 0


def _printer(out=sys.stdout):
    midline = False  # the last thing written did not end a line

    def notice(text: str) -> None:
        nonlocal midline
        out.write(("\n" if midline else "") + text + "\n")
        midline = False

    async def on_event(event: Event | None, transcript: Transcript) -> None:
        nonlocal midline
        if event is None:
            return
        if event.type == "start" and event.attempt > 1:
            notice(f"[re-run on another worker, attempt {event.attempt}]")
        elif event.type == "token":
            out.write(event.text)
            midline = not event.text.endswith("\n")
        elif isinstance(event, ToolCallEvent | ToolResultEvent):
            notice(tool_notice(event))
        out.flush()

    return on_event


def _summary(result: JobResult) -> str:
    u = result.usage
    cost = "unpriced" if u.estimated_cost is None else f"${u.estimated_cost:.6f}"
    took = f"{result.processing_time:.2f}s" if result.processing_time is not None else "?"
    return (
        f"model {result.model} · {u.total_tokens} tokens ({u.prompt_tokens} prompt + {u.completion_tokens} "
        f"completion) · {cost} · {took} · job {result.job_id}"
    )


async def _ask(runtime: Runtime, args) -> int:
    request = ChatRequest(
        message=args.text,
        model=args.model,
        temperature=args.temperature,
        max_tokens=args.max_tokens,
        conversation_id=args.conversation,
        mcp_servers=args.mcp_server,
        priority=args.priority,
    )
    result = await runtime.jobs.run(request, None if args.json else _printer())
    return _finish(result, args.json)


def _finish(result: JobResult, as_json: bool) -> int:
    if as_json:
        print(result.model_dump_json(indent=2))
    else:
        print()
        if result.status == "completed":
            print(_summary(result), file=sys.stderr)
        else:
            print(f"job {result.job_id} {result.status}: {result.error}", file=sys.stderr)
    return 0 if result.status == "completed" else 1


async def _job(runtime: Runtime, args) -> int:
    print((await runtime.jobs.get(args.job_id)).model_dump_json(indent=2))
    return 0


async def _tail(runtime: Runtime, args) -> int:
    result = await runtime.jobs.wait(args.job_id, None, on_event=_printer())
    return _finish(result, False)


async def _jobs(runtime: Runtime, args) -> int:
    found = await runtime.jobs.list(args.status)
    if args.json:
        print(json.dumps([j.model_dump(mode="json") for j in found], indent=2))
        return 0
    print(f"{'JOB ID':32}  {'STATUS':9}  {'MODEL':14}  {'TOKENS':>6}  TEXT")
    for j in found:
        preview = (j.error or j.ai_response).replace("\n", " ")[:50]
        print(
            f"{j.job_id:32}  {j.status:9}  {(j.model or '-')[:14]:14}  {j.usage.total_tokens:>6}  {preview}"
        )
    return 0


async def _health(runtime: Runtime, args) -> int:
    report = await health(runtime)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        r = report["redis"]
        print(f"status     {report['status']}")
        print(
            f"redis      {r['url']}  {'ok ' + str(r.get('latency_ms')) + ' ms' if r['ok'] else r.get('error')}"
        )
        print(f"queue      {report.get('queue_depth', '?')} waiting")
        print(
            f"provider   {report['provider']}  {'reachable' if report.get('provider_reachable') else 'NOT reachable'}"
        )
        for w in report.get("workers", []):
            running = ", ".join(w["running_jobs"]) or "idle"
            print(f"worker     {w['worker_id']}  beat {w['heartbeat_age_s']}s ago  {running}")
        for model, c in (report.get("capacity") or {}).items():
            cool = f"  cooling down {c['cool_down_s']:g} s" if c["cool_down_s"] else ""
            print(f"capacity   {model}  {c['waiting']} waiting  {c['upstream_429s']} upstream 429s{cool}")
        if report.get("problem"):
            print(f"problem    {report['problem']}")
    return 0 if report["status"] == "ok" else 1


async def _stats(runtime: Runtime, args) -> int:
    from messenger.health import capacity, live_workers
    from messenger.usage import usage_stats

    stats = await usage_stats(runtime.redis)
    models = await capacity(runtime.redis, runtime.settings, await live_workers(runtime.redis))
    if args.json:
        print(json.dumps({**stats, "capacity": models}, indent=2))
        return 0

    def cost(v) -> str:
        return "unpriced" if v is None else f"${v:.6f}"

    def ms(v) -> str:
        return "-" if v is None else f"{v:.0f} ms"

    header = f"{'MODEL':24} {'REQ':>6} {'OK':>6} {'FAIL':>5} {'CANC':>5} {'PROMPT':>9} {'COMPL':>9} {'COST':>12} {'AVG':>8} {'P95':>8}  PRICE FROM"
    if args.by == "tenant":
        header = header.replace("MODEL ", "TENANT")
        rows = [*((name, t["totals"]) for name, t in stats["tenants"].items()), ("TOTAL", stats["totals"])]
    else:
        rows = [*stats["models"].items(), ("TOTAL", stats["totals"])]
    print(header)
    for name, r in rows:
        print(
            f"{name[:24]:24} {r['requests']:>6} {r['completed']:>6} {r['failed']:>5} {r['cancelled']:>5} "
            f"{r['prompt_tokens']:>9} {r['completion_tokens']:>9} {cost(r['cost_usd']):>12} "
            f"{ms(r['avg_latency_ms']):>8} {ms(r['p95_latency_ms']):>8}  {r.get('price_source') or '-'}"
        )
    if models:
        print(f"\n{'CAPACITY':24} {'LIMITS':32} {'WAITING':>7} {'429s':>6} {'COOL-DOWN':>10}")
    for name, c in models.items():
        limits = " ".join(f"{k}={v}" for k, v in c["limits"].items()) or "-"
        cool = f"{c['cool_down_s']:g} s" if c["cool_down_s"] else "-"
        print(f"{name[:24]:24} {limits[:32]:32} {c['waiting']:>7} {c['upstream_429s']:>6} {cool:>10}")
    return 0


async def _dead(runtime: Runtime, args) -> int:
    from shared import dead_letter
    from shared.errors import McpQueueError

    if args.action == "list":
        entries = [e.as_dict() for e in await dead_letter.list_dead(runtime.redis)]
        if args.json:
            print(json.dumps(entries, indent=2, ensure_ascii=False))
        for e in [] if args.json else entries:
            print(f"{e['job_id'][:32]:32}  {e['function'] or '-':10}  {e['reason'][:100]}")
        return 0
    if not args.job_id:
        print(f"messenger: dead {args.action} needs a job id (see `messenger dead`)", file=sys.stderr)
        return 2
    try:
        await getattr(dead_letter, args.action)(runtime.redis, args.job_id)
    except McpQueueError as e:
        print(f"messenger: {e.message}", file=sys.stderr)
        return 1
    print(f"{args.job_id} {'queued again' if args.action == 'requeue' else 'dropped'}")
    return 0


COMMANDS = {
    "serve": _serve,
    "ask": _ask,
    "job": _job,
    "tail": _tail,
    "jobs": _jobs,
    "stats": _stats,
    "health": _health,
    "dead": _dead,
}


if __name__ == "__main__":
    sys.exit(main())
