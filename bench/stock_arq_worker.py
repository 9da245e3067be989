"""A stock arq Worker running mcp-queue's job function: the baseline every figure is compared with.

Same functions, serializer, concurrency and start-up hook as `worker`, but arq's own class: no
wake-up, arq's four-round-trip claim, and a ZRANGEBYSCORE poll every `poll_delay` (0.5 s, arq's
default). Run as `python -m bench.stock_arq_worker` with REDIS_URL (and the usual worker settings).
"""

from __future__ import annotations

import asyncio
import contextlib

from arq.connections import RedisSettings
from arq.worker import Worker

from shared.logs import setup_logging
from shared.settings import load_settings
from worker.runner import worker_options

STOCK_POLL_DELAY = 0.5  # arq's default


async def main() -> None:
    settings = load_settings()
    setup_logging(settings.log_level, settings.log_format)
    options = {**worker_options(settings), "poll_delay": STOCK_POLL_DELAY}
    worker = Worker(**options, redis_settings=RedisSettings.from_dsn(settings.redis_url))
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await worker.async_run()
    finally:
        await worker.close()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
