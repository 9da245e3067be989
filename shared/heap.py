"""A busy messenger or worker spends its CPU on tokens, not in Python's cyclic garbage collector.

`settle_heap()`, called once a process has started, moves everything start-up allocated out of the
collector's sight (`gc.freeze`): a full collection over a server-sized heap took tens of
milliseconds, which showed as token latency spikes. It also collects the young generation every
20,000 new objects instead of every 700: each relayed token allocates dozens of short-lived objects
(events, notifications, futures), and with the default thresholds a messenger relaying 300 streams
spent 29 % of its CPU collecting (bench/callers.py: CPU per relayed token −37 %). A worker collects
every 5,000: what survives there is every job's coroutines, timers and contexts, and with 1,000
streams in flight a young collection of 20,000 took 19-22 ms of CPU, a pause every token due then
waited out; at 5,000 they take 4-8 ms for the same total (bench/streams.py, gc callbacks). The
middle generation is collected after about a million new objects either way. Garbage caught in
reference cycles waits a little longer; nothing else changes.
"""

from __future__ import annotations

import gc

YOUNG_OBJECTS = 20_000  # new objects between young collections (Python's default: 700)
WORKER_YOUNG_OBJECTS = 5_000  # a worker's: shorter pauses between its tokens, the same total
MIDDLE_AFTER = 1_000_000  # new objects between middle collections (Python's default: 7,000)
FULL_EVERY = 1_000  # middle collections per full one (Python's default: 10)


def settle_heap(young: int = YOUNG_OBJECTS) -> None:
    """Freeze what start-up left alive and collect the young generation every `young` new objects."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(young, MIDDLE_AFTER // young, FULL_EVERY)
