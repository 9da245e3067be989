"""settle_heap: young collections every `young` new objects, middle ones after about a million."""

from __future__ import annotations

import gc

from shared.heap import MIDDLE_AFTER, WORKER_YOUNG_OBJECTS, YOUNG_OBJECTS, settle_heap


def test_a_worker_collects_its_young_generation_more_often_with_the_same_middle_cadence():
    """A worker's young pauses stay short (its jobs' coroutines survive into every collection);
    the messenger keeps its larger young generation; both reach a middle collection after the
    same number of new objects."""
    before = gc.get_threshold()
    try:
        for young in (YOUNG_OBJECTS, WORKER_YOUNG_OBJECTS):
            settle_heap(young)
            first, middle, _ = gc.get_threshold()
            assert first == young
            assert first * middle == MIDDLE_AFTER
        assert WORKER_YOUNG_OBJECTS < YOUNG_OBJECTS
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
