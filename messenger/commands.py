"""The `messenger` commands other than `serve` and `install`, one function each (named as typed),
over a job client: what they print and the exit code they end with (messenger/cli.py parses,
connects and turns errors into one line)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys

from messenger import approvals
from messenger.collector import Transcript
from messenger.health import NO_WORKER, capacity, live_workers, report
from messenger.job_ids import full_id
from messenger.jobs import JobClient, retry_job
from messenger.queue import ANONYMOUS
from shared.events import Event, ToolCallEvent, ToolResultEvent
from shared.models import ChatRequest, JobResult

NO_WORKER_CHECK_SECONDS = 1.0  # how often `ask` looks for a live worker while its job waits


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
            notice(_tool_notice(event))
        out.flush()

    return on_event


def _tool_notice(event: ToolCallEvent | ToolResultEvent) -> str:
    """A tool call or result as one bracketed line between the answer's tokens."""
    if isinstance(event, ToolCallEvent):
        arguments = event.arguments
        if isinstance(arguments, dict):
            arguments = json.dumps(arguments, ensure_ascii=False)
        return f"[tool call {event.server}/{event.tool} {arguments[:300]}]"
    outcome = "error" if event.is_error else "result"
    return f"[tool {outcome} {event.server}/{event.tool}: {event.result[:300]}]"


def _request(args) -> ChatRequest:
    return ChatRequest(
        message=args.text,
        model=args.model,
        temperature=args.temperature,
        max_tokens=args.max_tokens,
        conversation_id=args.conversation,
        mcp_servers=args.mcp_server,
        priority=args.priority,
    )


def _summary(result: JobResult) -> str:
    u = result.usage
    cost = "unpriced" if u.estimated_cost is None else f"${u.estimated_cost:.6f}"
    took = f"{result.processing_time:.2f}s" if result.processing_time is not None else "?"
    return (
        f"model {result.model} · {u.total_tokens} tokens ({u.prompt_tokens} prompt + {u.completion_tokens} "
        f"completion) · {cost} · {took} · job {result.job_id}"
    )


def _finish(result: JobResult, as_json: bool, embedded: bool = False) -> int:
    if as_json:
        print(result.model_dump_json(indent=2))
    else:
        print()
        if result.status == "completed":
            print(_summary(result), file=sys.stderr)
        elif result.input_request is not None:
            how = (
                "in embedded mode it ends with this command: set REDIS_URL to answer it"
                if embedded
                else f"messenger respond {result.job_id} yes|no"
            )
            print(
                f"job {result.job_id} waits for your answer: {result.input_request.question} ({how})",
                file=sys.stderr,
            )
        else:
            print(f"job {result.job_id} {result.status}: {result.error}", file=sys.stderr)
    return 0 if result.status == "completed" else 1


async def ask(jobs: JobClient, args) -> int:
    """Submit, stream and wait; says so when no worker is alive to take the job, and Ctrl-C cancels
    the job rather than leave it queued for nobody."""
    printer = None if args.json else _printer()
    job_id: list[str] = []
    watch: asyncio.Task | None = None

    async def on_event(event: Event | None, transcript: Transcript) -> None:
        nonlocal watch
        if not job_id:
            job_id.append(transcript.job_id)
            watch = asyncio.create_task(_say_when_no_worker(jobs, transcript.job_id))
        elif event is not None and event.type == "start" and watch:
            watch.cancel()
        if printer:
            await printer(event, transcript)

    task = asyncio.current_task()
    with contextlib.suppress(NotImplementedError, AttributeError):  # no signal handlers on Windows
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)  # pyright: ignore[reportOptionalMemberAccess]
    try:
        result = await jobs.run(_request(args), on_event)
    except asyncio.CancelledError:  # Ctrl-C or SIGTERM
        if job_id:
            print(f"\njob {job_id[0]} {await _cancel_quickly(jobs, job_id[0])}", file=sys.stderr)
        raise
    finally:
        if watch:
            watch.cancel()
    return _finish(result, args.json, jobs.settings.embedded)


async def _cancel_quickly(jobs: JobClient, job_id: str) -> str:
    """Cancel on the way out of Ctrl-C: a queued job at once; a running one is asked to stop and
    waited for a few seconds at most."""
    try:
        async with asyncio.timeout(5):
            return (await jobs.cancel(job_id)).status
    except Exception as e:  # leaving anyway: say what is known
        return f"asked to cancel ({type(e).__name__})"


async def _say_when_no_worker(jobs: JobClient, job_id: str) -> None:
    """One line on stderr if no live worker is there to take the queued job (checked every second
    until it starts); the job stays queued and `ask` keeps waiting."""
    if jobs.settings.embedded:
        return
    while True:
        if not await live_workers(jobs.redis):
            print(f"messenger: {NO_WORKER} (job {job_id}; Ctrl-C cancels it)", file=sys.stderr)
            return
        await asyncio.sleep(NO_WORKER_CHECK_SECONDS)


async def submit(jobs: JobClient, args) -> int:
    job_id = await jobs.queue.submit(_request(args), caller=ANONYMOUS)
    print(job_id)
    if not await live_workers(jobs.redis):
        print(f"messenger: {NO_WORKER}", file=sys.stderr)
    return 0


async def job(jobs: JobClient, args) -> int:
    print((await jobs.get(await full_id(jobs, args.job_id))).model_dump_json(indent=2))
    return 0


async def tail(jobs: JobClient, args) -> int:
    result = await jobs.wait(await full_id(jobs, args.job_id), None, on_event=_printer())
    return _finish(result, False)


async def cancel(jobs: JobClient, args) -> int:
    job_id = await full_id(jobs, args.job_id)
    before = (await jobs.get(job_id)).status
    result = await jobs.cancel(job_id)
    if before in ("completed", "failed", "cancelled"):
        print(f"messenger: job {job_id} had already ended: {before}", file=sys.stderr)
        return 1
    print(f"job {job_id} {result.status}")
    return 0 if result.status == "cancelled" else 1


async def respond(jobs: JobClient, args) -> int:
    """Answer the question a paused job waits on (human in the loop); it goes on at once."""
    job_id = await full_id(jobs, args.job_id)
    key = await approvals.respond(jobs, job_id, approve=args.answer == "yes", note=args.note)
    print(f"job {job_id}: answered {args.answer} to {key}")
    return 0


async def retry(jobs: JobClient, args) -> int:
    print(await retry_job(jobs, await full_id(jobs, args.job_id)))
    return 0


async def jobs(jobs: JobClient, args) -> int:
    found = await jobs.list(args.status, limit=args.limit)
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


async def health(jobs: JobClient, args) -> int:
    found = await report(jobs.settings, jobs.redis)
    if args.json:
        print(json.dumps(found, indent=2))
        return 0 if found["status"] == "ok" else 1
    r = found["redis"]
    print(f"status     {found['status']}")
    print(f"redis      {r['url']}  {'ok ' + str(r.get('latency_ms')) + ' ms' if r['ok'] else r.get('error')}")
    if not r["ok"]:
        return 1
    paused = f", {found['paused']} paused for an answer" if found.get("paused") else ""
    print(f"queue      {found['queue_depth']} waiting, {found['running']} running{paused}")
    if not found["workers"]:
        print("provider   unknown: no live worker to call it")
    for name, p in found["providers"].items():
        state = "reachable" if p["reachable"] else f"NOT reachable: {p['error']}"
        ago = (
            f" (last call {p['seen_s_ago']:g} s ago, worker {p['worker_id']})"
            if p["seen_s_ago"] is not None
            else ""
        )
        print(f"provider   {name}  {state}{ago}")
    for w in found["workers"]:
        running = ", ".join(w["running_jobs"]) or "idle"
        print(f"worker     {w['worker_id']}  beat {w['heartbeat_age_s']}s ago  {running}")
    for model, c in (found.get("capacity") or {}).items():
        cool = f"  cooling down {c['cool_down_s']:g} s" if c["cool_down_s"] else ""
        print(f"capacity   {model}  {c['waiting']} waiting  {c['upstream_429s']} upstream 429s{cool}")
    if found.get("problem"):
        print(f"problem    {found['problem']}")
    return 0 if found["status"] == "ok" else 1


def _cost(v) -> str:
    return "unpriced" if v is None else f"${v:.6f}"


def _ms(v) -> str:
    return "-" if v is None else f"{v:.0f} ms"


async def stats(jobs: JobClient, args) -> int:
    from messenger.usage import usage_stats

    found = await usage_stats(jobs.redis)
    models = await capacity(jobs.redis, jobs.settings, await live_workers(jobs.redis))
    if args.json:
        print(json.dumps({**found, "capacity": models}, indent=2))
        return 0
    header = f"{'MODEL':24} {'REQ':>6} {'OK':>6} {'FAIL':>5} {'CANC':>5} {'PROMPT':>9} {'COMPL':>9} {'COST':>12} {'AVG':>8} {'P95':>8}  PRICE FROM"
    if args.by == "tenant":
        header = header.replace("MODEL ", "TENANT")
        rows = [*((name, t["totals"]) for name, t in found["tenants"].items()), ("TOTAL", found["totals"])]
    else:
        rows = [*found["models"].items(), ("TOTAL", found["totals"])]
    print(header)
    for name, r in rows:
        print(
            f"{name[:24]:24} {r['requests']:>6} {r['completed']:>6} {r['failed']:>5} {r['cancelled']:>5} "
            f"{r['prompt_tokens']:>9} {r['completion_tokens']:>9} {_cost(r['cost_usd']):>12} "
            f"{_ms(r['avg_latency_ms']):>8} {_ms(r['p95_latency_ms']):>8}  {r.get('price_source') or '-'}"
        )
    if models:
        print(f"\n{'CAPACITY':24} {'LIMITS':32} {'WAITING':>7} {'429s':>6} {'COOL-DOWN':>10}")
    for name, c in models.items():
        limits = " ".join(f"{k}={v}" for k, v in c["limits"].items()) or "-"
        cool = f"{c['cool_down_s']:g} s" if c["cool_down_s"] else "-"
        print(f"{name[:24]:24} {limits[:32]:32} {c['waiting']:>7} {c['upstream_429s']:>6} {cool:>10}")
    return 0


async def dead(jobs: JobClient, args) -> int:
    from shared import dead_letter

    if args.action == "list":
        entries = [e.as_dict() for e in await dead_letter.list_dead(jobs.redis)]
        if args.json:
            print(json.dumps(entries, indent=2, ensure_ascii=False))
        for e in [] if args.json else entries:
            print(f"{e['job_id'][:32]:32}  {e['function'] or '-':10}  {e['reason'][:100]}")
        return 0
    if not args.job_id:
        print(f"messenger: dead {args.action} needs a job id (see `messenger dead`)", file=sys.stderr)
        return 2
    job_id = await full_id(jobs, args.job_id)
    await getattr(dead_letter, args.action)(jobs.redis, job_id)
    print(f"{job_id} {'queued again' if args.action == 'requeue' else 'dropped'}")
    return 0


async def top(jobs: JobClient, args) -> int:
    from messenger.top import monitor

    return await monitor(jobs, args.interval, args.once)
