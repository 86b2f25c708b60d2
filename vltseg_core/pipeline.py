"""The queues and threads of a staged pipeline (decode -> infer -> publish), ROS-free so it is tested on its own.

Each queue between two stages keeps one FIFO per key (a camera) and hands out batches round robin over the keys,
so cameras sharing one model are served fairly. Two policies, one per node mode:

- live (`drop_oldest=True`): a put never blocks; a key already holding `bound` items loses its oldest one to the
  new one (reported to `on_drop`, so the caller counts it). No stage ever waits for a slower one, and nothing older
  than the newest frame of a camera waits in any queue: no backlog.
- evaluation (`drop_oldest=False`): a put blocks while its key holds `bound` items (None: unbounded), so every item
  goes through, in order per key, and a slow stage paces the ones before it.

`close()` wakes every waiting put and take (they return False / None) and forgets what was queued, so the stage
threads end after the item they are working on and can be joined.
"""
from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class StageQueue:
    def __init__(self, keys: int, bound: int | None, drop_oldest: bool,
                 on_drop: Callable[[Any], None] | None = None) -> None:
        if bound is not None and bound < 1:
            raise ValueError(f"bound must be at least 1 or None, got {bound}")
        if drop_oldest and bound is None:
            raise ValueError("a queue that drops its oldest item needs a bound")
        self.bound, self.drop_oldest, self._on_drop = bound, drop_oldest, on_drop
        self._fifos: list[deque] = [deque() for _ in range(keys)]
        self._next = 0  # key the next take starts with (round robin)
        self._closed = False
        self._cond = threading.Condition()
        self.high_water = 0  # most items one key ever held: never above `bound`

    def put(self, key: int, item: Any) -> bool:
        """Queue `item` under `key`; False (item not queued) once the queue is closed."""
        with self._cond:
            fifo = self._fifos[key]
            while not self.drop_oldest and self.bound is not None and len(fifo) >= self.bound and not self._closed:
                self._cond.wait()
            if self._closed:
                return False
            if self.drop_oldest and len(fifo) >= self.bound:
                dropped = fifo.popleft()
                if self._on_drop is not None:
                    self._on_drop(dropped)
            fifo.append(item)
            self.high_water = max(self.high_water, len(fifo))
            self._cond.notify_all()
            return True

    def take(self, limit: int) -> list[Any] | None:
        """Wait for items, then the oldest item of up to `limit` keys, starting after the key served last (none
        starves when there are more keys than `limit`); None once closed."""
        with self._cond:
            while not self._closed and not any(self._fifos):
                self._cond.wait()
            if self._closed:
                return None
            batch, count, start = [], len(self._fifos), self._next
            for step in range(count):
                index = (start + step) % count
                if len(batch) < limit and self._fifos[index]:
                    batch.append(self._fifos[index].popleft())
                    self._next = (index + 1) % count
            self._cond.notify_all()  # room for blocked puts
            return batch

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for fifo in self._fifos:
                fifo.clear()
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return sum(len(fifo) for fifo in self._fifos)


@dataclass
class Stage:
    """A stage thread's work: take a batch of at most `batch()` items from `source`, `handle` it; an exception
    goes to `on_error` with the batch (the stage carries on). `handle` hands items to the next queue last, so the
    items `on_error` gets are this stage's only."""
    name: str
    source: StageQueue
    handle: Callable[[list], None]
    on_error: Callable[[list, Exception], None]
    batch: Callable[[], int] = lambda: 1


class StageThreads:
    """One daemon thread per stage, each ending when its source queue is closed."""

    def __init__(self, stages: list[Stage]) -> None:
        self._threads = [threading.Thread(target=self._loop, args=(stage,), name=stage.name, daemon=True)
                         for stage in stages]

    @staticmethod
    def _loop(stage: Stage) -> None:
        while (items := stage.source.take(stage.batch())) is not None:
            try:
                stage.handle(items)
            except Exception as exc:  # noqa: BLE001 - one failing batch must not end the stage for good
                stage.on_error(items, exc)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self) -> None:
        for thread in self._threads:
            thread.join()

    def alive(self) -> bool:
        return all(thread.is_alive() for thread in self._threads)
