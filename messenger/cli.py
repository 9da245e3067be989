"""`messenger serve | ask | submit | job | tail | jobs | cancel | retry | respond | dead | top | stats |
health | install`: a thin shell over the job client.

Whatever goes wrong ends in one line on stderr and an exit code (EXIT_CODES), never a traceback; a
Redis that cannot be used says so within seconds, naming REDIS_URL. Only `serve` (and embedded mode)
loads the MCP server: the other commands import what they use and start in a fraction of the time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from shared.arguments import Parser, Version, positive

if TYPE_CHECKING:
    from messenger.jobs import JobClient
    from shared.settings import Settings

EXIT_CODES = """exit codes:
  0    done (ask, tail: the job completed; cancel: the job is cancelled; health: everything is ok)
  1    the job failed or was cancelled (ask, tail: or waits for an answer: `respond`); the queue refused the request (full, a budget or rate limit,
       an unknown MCP server); no such job; Redis cannot be reached or refuses the password or user;
       health found a problem
  2    a setting or an argument is wrong, or the provider cannot be used as configured
  130  interrupted (Ctrl-C, or SIGTERM during `ask`, which cancels its job first)"""

NEEDS_REDIS = {"submit", "job", "tail", "jobs", "cancel", "retry", "respond", "dead", "top", "stats"}


def _request_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("text")
    p.add_argument("--model")
    p.add_argument("--temperature", type=float, help="0 to 2")
    p.add_argument("--max-tokens", type=positive(int))
    p.add_argument("--conversation")
    p.add_argument("--priority", choices=["high", "normal", "low"], help="default: normal")
    p.add_argument(
        "--mcp-server",
        action="append",
        metavar="NAME",
        help="let the model use this MCP_SERVERS entry's tools",
    )


def _parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="messenger",
        description="mcp-queue: LLM calls as jobs on a Redis queue. A job ID may be cut to its first 6+ "
        "characters when that names one job.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action=Version)
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the MCP server")
    serve.add_argument(
        "--transport", choices=["stdio", "http", "sse"], help="default: MCP_TRANSPORT or stdio"
    )
    serve.add_argument("--host", help="default: MCP_HOST or 127.0.0.1")
    serve.add_argument("--port", type=positive(int), help="default: MCP_PORT or 8000")
    ask = sub.add_parser("ask", help="send one message through the queue and stream the answer")
    _request_options(ask)
    ask.add_argument("--json", action="store_true", help="print the result as JSON instead of streaming")
    _request_options(sub.add_parser("submit", help="queue one message and print its job id"))
    for name, text in (
        ("job", "show a job: status, text so far, result"),
        ("tail", "print a job's tokens from the start, then live until it ends"),
        ("cancel", "cancel a queued or running job"),
        ("retry", "queue a failed, cancelled or dead job again; prints the new job id"),
    ):
        sub.add_parser(name, help=text).add_argument("job_id")
    respond = sub.add_parser("respond", help="answer a job that waits for approval of a tool call")
    respond.add_argument("job_id")
    respond.add_argument("answer", choices=["yes", "no"], help="yes: run the call; no: the model is told")
    respond.add_argument("--note", help="said to the model with the answer")
    jobs = sub.add_parser("jobs", help="list recent jobs")
    jobs.add_argument(
        "--status", choices=["queued", "running", "input_required", "completed", "failed", "cancelled"]
    )
    jobs.add_argument("--limit", type=positive(int), default=50)
    jobs.add_argument("--json", action="store_true")
    dead = sub.add_parser("dead", help="queue entries no worker could run (mcpq:dead); requeue or drop one")
    dead.add_argument("action", nargs="?", choices=["list", "requeue", "drop"], default="list")
    dead.add_argument("job_id", nargs="?")
    dead.add_argument("--json", action="store_true")
    top = sub.add_parser("top", help="live monitor: queue, workers, jobs in flight with tokens/s, cost")
    top.add_argument("--interval", type=positive(float), default=2.0, help="seconds between frames")
    top.add_argument("--once", action="store_true", help="print one frame and exit")
    st = sub.add_parser("stats", help="requests, tokens, cost and latency per model, from all workers")
    st.add_argument("--json", action="store_true")
    st.add_argument(
        "--by", choices=["model", "tenant"], default="model", help="one row per model (default) or per tenant"
    )
    hl = sub.add_parser("health", help="Redis, workers, queue (waiting and running), provider")
    hl.add_argument("--json", action="store_true")
    install = sub.add_parser("install", help="add this messenger to an MCP client's configuration")
    install.add_argument("client", choices=["claude-desktop"])
    install.add_argument("--config", help="the config file (default: Claude Desktop's, for this OS)")
    install.add_argument("--name", default="mcp-queue", help="the server's name in the config")
    install.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="set for the server (repeatable)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "install":
        from messenger.install import install

        return install(args)
    from shared.errors import SettingsError
    from shared.exits import INTERRUPTED, WRONG_INPUT, failure
    from shared.logs import setup_logging
    from shared.settings import load_settings

    try:
        overrides = {}
        if args.command == "serve":
            given = (("mcp_transport", args.transport), ("mcp_host", args.host), ("mcp_port", args.port))
            overrides = {k: v for k, v in given if v is not None}
        settings = load_settings(**overrides)
        if args.command == "serve":
            from messenger.serve import refuse_open_network

            refuse_open_network(settings)  # before anything starts
    except SettingsError as e:
        print(f"messenger: {e.message}", file=sys.stderr)
        return WRONG_INPUT
    setup_logging(settings.log_level if args.command == "serve" else "WARNING", settings.log_format)
    if settings.embedded and args.command in NEEDS_REDIS:
        print(
            "messenger: REDIS_URL is not set, so jobs live inside each process (embedded mode) and another "
            "process cannot see them. Set REDIS_URL=redis://… to share jobs.",
            file=sys.stderr,
        )
        return WRONG_INPUT
    try:
        return asyncio.run(_run(args, settings))
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C; SIGTERM during `ask`
        return INTERRUPTED
    except Exception as e:  # every failure is one line; LOG_LEVEL=DEBUG adds the traceback
        import logging

        logging.getLogger("messenger").debug("messenger %s failed", args.command, exc_info=True)
        line, code = failure(e, settings.redis_url)
        print(f"messenger: {line}", file=sys.stderr)
        return code


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "serve":
        from messenger.runtime import open_runtime
        from messenger.serve import serve

        async with open_runtime(settings) as runtime:
            await serve(runtime, settings.mcp_transport, settings.mcp_host, settings.mcp_port)
        return 0
    from messenger import commands

    async with _job_client(settings, follow=args.command in ("ask", "tail", "cancel")) as jobs:
        return await getattr(commands, args.command)(jobs, args)


@contextlib.asynccontextmanager
async def _job_client(settings: Settings, follow: bool) -> AsyncIterator[JobClient]:
    """A job client on Redis, checked first (one line within COMMAND.give_up if it cannot be used); in
    embedded mode, the messenger's whole runtime with its in-process worker."""
    if settings.embedded:
        from messenger.runtime import open_runtime

        async with open_runtime(settings) as runtime:
            yield runtime.jobs
        return
    from messenger.hub import EventHub
    from messenger.jobs import JobClient
    from messenger.queue import JobQueue
    from shared import prices
    from shared.connection import COMMAND, connect, probe_access

    prices.configure(settings.model_prices)
    redis = connect(settings.redis_url, COMMAND)
    hub = EventHub(redis, COMMAND)
    try:
        async with asyncio.timeout(COMMAND.give_up):
            await probe_access(redis)  # NOPERM now, not halfway through a command
        if follow:
            await hub.start()
        yield JobClient(redis, hub, settings, JobQueue(redis, settings))
    finally:
        await hub.close()
        await redis.aclose()


def run() -> None:
    """The `messenger` command. What the process built lives until it exits, so it is frozen out of
    the garbage collector: the interpreter's collections at exit would walk every pydantic schema
    (≈ 90 ms, a third of a command's whole run)."""
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    run()
