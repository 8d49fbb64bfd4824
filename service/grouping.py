"""Opportunistic grouping of concurrent requests into one call (the leader pattern).

Callers queue their item; whoever gets the turn takes the whole queue (up to ``max_size``) and
runs it in one call. A lone caller never waits for company, and under load one call replaces many:
one forward pass for many query texts (``service.batching``), one transaction and one commit for
many stored searches (``service.search_log``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class _Waiting(Generic[Item, Result]):
    item: Item
    result: Result | None = None
    error: BaseException | None = None
    done: bool = False


class Grouper(Generic[Item, Result]):
    """``run(items)`` returns one result per item, or raises (then every item of the group fails);
    it may also return an exception in an item's place, which fails that item alone."""

    def __init__(self, run: Callable[[list[Item]], list[Result | BaseException]],
                 size: Callable[[Item], int] = lambda item: 1, max_size: int = 256):
        self.run = run
        self.size = size
        self.max_size = max_size
        self._guard = threading.Lock()  # the queue
        self._turn = threading.Lock()  # one group at a time
        self._queue: list[_Waiting[Item, Result]] = []

    def submit(self, item: Item) -> Result:
        mine: _Waiting[Item, Result] = _Waiting(item)
        with self._guard:
            self._queue.append(mine)
        while not mine.done:
            with self._turn:
                if mine.done:  # another caller ran ours while we waited
                    break
                with self._guard:
                    group: list[_Waiting[Item, Result]] = []
                    taken = 0
                    while self._queue and (not group or taken + self.size(self._queue[0].item) <= self.max_size):
                        group.append(self._queue.pop(0))
                        taken += self.size(group[-1].item)
                self._settle(group)
        if mine.error is not None:
            raise mine.error
        return mine.result  # type: ignore[return-value]  # done without an error means it has its result

    def _settle(self, group: list[_Waiting[Item, Result]]) -> None:
        try:
            results = self.run([w.item for w in group])
        except BaseException as exc:  # every waiter learns of the failure, none hangs
            for waiting in group:
                waiting.error, waiting.done = exc, True
            return
        for waiting, result in zip(group, results, strict=True):
            if isinstance(result, BaseException):
                waiting.error = result
            else:
                waiting.result = result
            waiting.done = True
