"""`worker [--concurrency N] [--burst]`: run one worker process against REDIS_URL.

A worker outlives Redis outages (it retries and logs); what ends it with an error is one line on
stderr and an exit code (EXIT_CODES), never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from shared.arguments import Parser, Version, positive
from shared.errors import SettingsError
from shared.exits import WRONG_INPUT, failure
from shared.logs import setup_logging
from shared.settings import load_settings

log = logging.getLogger("worker")

EXIT_CODES = """exit codes:
  0    stopped (SIGTERM, SIGINT, or --burst found the queue empty)
  1    Redis could not be reached when the worker had to stop cleanly, or an unexpected error
  2    a setting is wrong, or the provider cannot be used as configured"""


def main(argv: list[str] | None = None) -> int:
    parser = Parser(
        prog="worker",
        description="Run an mcp-queue worker (arq) against REDIS_URL.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=Version)
    parser.add_argument(
        "--concurrency", type=positive(int), help="jobs at once (default: WORKER_CONCURRENCY)"
    )
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    args = parser.parse_args(argv)
    try:
        overrides = {"worker_concurrency": args.concurrency} if args.concurrency is not None else {}
        settings = load_settings(**overrides)
    except SettingsError as e:
        print(f"worker: {e.message}", file=sys.stderr)
        return WRONG_INPUT
    if settings.embedded:
        print(
            "worker: REDIS_URL is not set; a separate worker needs a shared Redis (e.g. redis://localhost:6379). "
            "Without one, `messenger` runs its own embedded worker.",
            file=sys.stderr,
        )
        return WRONG_INPUT
    setup_logging(settings.log_level, settings.log_format)
    from worker.runner import build_worker

    async def run() -> None:
        worker = build_worker(settings, burst=args.burst)
        try:
            await worker.async_run()
        finally:
            await worker.close()

    try:
        asyncio.run(run())
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass
    except Exception as e:  # one line; LOG_LEVEL=DEBUG adds the traceback
        log.debug("worker stopped on an error", exc_info=True)
        line, code = failure(e, settings.redis_url)
        print(f"worker: {line}", file=sys.stderr)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
