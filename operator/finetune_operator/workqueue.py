"""An asyncio work queue of resource keys, in the manner of client-go's workqueue.

A key waits in the queue at most once however often it is added; a key being processed is never handed to a
second worker, and an add that arrives meanwhile re-queues it once the first worker is done. `add_after`
schedules a delayed add (the earliest pending delay for a key wins). Everything runs on one event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable


class WorkQueue:
    """Deduplicating FIFO of keys with per-key exclusivity and delayed re-adds."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Hashable] = asyncio.Queue()
        self._waiting: set[Hashable] = set()  # in the queue
        self._active: set[Hashable] = set()  # handed to a worker, not yet done
        self._dirty: set[Hashable] = set()  # added while active: re-queue when done
        self._delayed: dict[Hashable, asyncio.TimerHandle] = {}
        self._closed = False

    def add(self, key: Hashable) -> None:
        if self._closed or key in self._waiting:
            return
        if key in self._active:
            self._dirty.add(key)
            return
        self._waiting.add(key)
        self._queue.put_nowait(key)

    def add_after(self, key: Hashable, delay: float) -> None:
        """Add `key` in `delay` seconds, unless an earlier delayed add is already pending."""
        if delay <= 0:
            self.add(key)
            return
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        pending = self._delayed.get(key)
        if pending is not None and not pending.cancelled():
            if pending.when() <= when:
                return
            pending.cancel()
        self._delayed[key] = loop.call_at(when, self._fire, key)

    def _fire(self, key: Hashable) -> None:
        self._delayed.pop(key, None)
        self.add(key)

    def forget(self, key: Hashable) -> None:
        """Drop a pending delayed add (the resource is gone)."""
        pending = self._delayed.pop(key, None)
        if pending is not None:
            pending.cancel()

    async def get(self) -> Hashable:
        """The next key; the caller must call `done(key)` when it has finished with it."""
        key = await self._queue.get()
        self._waiting.discard(key)
        self._active.add(key)
        return key

    def done(self, key: Hashable) -> None:
        self._active.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    def close(self) -> None:
        """Refuse further adds and cancel every delayed add."""
        self._closed = True
        for handle in self._delayed.values():
            handle.cancel()
        self._delayed.clear()

    def __len__(self) -> int:
        return len(self._waiting)

    @property
    def delayed(self) -> int:
        return len(self._delayed)
