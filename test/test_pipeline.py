"""vltseg_core.pipeline on its own (no ROS): live queues drop the oldest item per key and never block, evaluation
queues block and keep every item in order, batches are taken round robin, close() ends every waiting stage, and a
stage survives a failing batch."""
import threading
import time

import pytest

from vltseg_core.pipeline import Stage, StageQueue, StageThreads


def test_live_queue_replaces_the_oldest_per_key_and_reports_it():
    dropped = []
    queue = StageQueue(keys=2, bound=1, drop_oldest=True, on_drop=dropped.append)
    for item in ("a1", "a2", "a3"):
        assert queue.put(0, item)  # never blocks
    assert queue.put(1, "b1")
    assert dropped == ["a1", "a2"] and len(queue) == 2 and queue.high_water == 1
    assert queue.take(limit=4) == ["a3", "b1"]


def test_evaluation_queue_blocks_when_full_and_keeps_order():
    queue = StageQueue(keys=1, bound=1, drop_oldest=False)
    taken: list = []

    def producer():
        for i in range(20):
            assert queue.put(0, i)

    thread = threading.Thread(target=producer)
    thread.start()
    while len(taken) < 20:
        taken += queue.take(limit=4)
    thread.join(timeout=10)
    assert taken == list(range(20)) and queue.high_water == 1


def test_take_is_round_robin_over_keys():
    queue = StageQueue(keys=3, bound=None, drop_oldest=False)
    for key in range(3):
        for i in range(2):
            queue.put(key, (key, i))
    assert queue.take(limit=2) == [(0, 0), (1, 0)]
    assert queue.take(limit=2) == [(2, 0), (0, 1)]  # starts after the key served last
    assert queue.take(limit=2) == [(1, 1), (2, 1)]


def test_close_wakes_waiting_puts_and_takes():
    full = StageQueue(keys=1, bound=1, drop_oldest=False)
    full.put(0, "x")
    empty = StageQueue(keys=1, bound=1, drop_oldest=True)
    results = {}
    threads = [threading.Thread(target=lambda: results.__setitem__("put", full.put(0, "y"))),
               threading.Thread(target=lambda: results.__setitem__("take", empty.take(1)))]
    for thread in threads:
        thread.start()
    time.sleep(0.1)
    full.close()
    empty.close()
    for thread in threads:
        thread.join(timeout=10)
        assert not thread.is_alive()
    assert results == {"put": False, "take": None} and len(full) == 0


@pytest.mark.parametrize("bound, drop_oldest", [(0, False), (None, True)])
def test_bad_bounds_are_refused(bound, drop_oldest):
    with pytest.raises(ValueError):
        StageQueue(keys=1, bound=bound, drop_oldest=drop_oldest)


def test_stage_threads_carry_on_after_a_failing_batch_and_join_on_close():
    source, sink = StageQueue(1, None, False), StageQueue(1, None, False)
    errors = []

    def handle(items):
        if items == [3]:
            raise RuntimeError("boom")
        sink.put(0, items[0] * 10)

    threads = StageThreads([Stage("double", source, handle, lambda items, exc: errors.append((items, str(exc))))])
    threads.start()
    for i in range(6):
        source.put(0, i)
    out: list = []
    while len(out) < 5:
        out += sink.take(10)
    assert out == [0, 10, 20, 40, 50] and errors == [([3], "boom")] and threads.alive()
    source.close()
    threads.join()
    assert not threads.alive()
