"""`worker [--concurrency N] [--burst]`: run one worker process against REDIS_URL."""

from __future__ import annotations

import argparse
import asyncio
import sys

from shared.errors import ProviderError, SettingsError
from shared.logs import setup_logging
from shared.settings import load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="worker", description="Run an mcp-queue worker (arq) against REDIS_URL."
    )
    parser.add_argument("--concurrency", type=int, help="jobs at once (default: WORKER_CONCURRENCY)")
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    args = parser.parse_args(argv)
    try:
        overrides = {"worker_concurrency": args.concurrency} if args.concurrency else {}
        settings = load_settings(**overrides)
    except SettingsError as e:
        print(f"worker: {e}", file=sys.stderr)
        return 2
    if settings.embedded:
        print(
            "worker: REDIS_URL is not set; a separate worker needs a shared Redis (e.g. redis://localhost:6379). "
            "Without one, `messenger` runs its own embedded worker.",
            file=sys.stderr,
        )
        return 2
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
    except ProviderError as e:
        print(f"worker: {e.message}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
