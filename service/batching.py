"""Opportunistic batching of concurrent query encodes.

While one request's texts go through the text encoder, others for the same encoder queue up; the
next request to get the encoder takes the whole queue and encodes it in one forward pass. A lone
request never waits for company, and under load one batched pass replaces many small ones.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from service.encoders import Encoder


@dataclass
class _Pending:
    texts: Sequence[str]
    result: np.ndarray | None = None
    error: BaseException | None = None
    done: bool = field(default=False)


class TextBatcher:
    def __init__(self, max_batch: int = 256):
        self.max_batch = max_batch
        self._guard = threading.Lock()
        self._queues: dict[int, list[_Pending]] = defaultdict(list)
        self._locks: dict[int, threading.Lock] = defaultdict(threading.Lock)

    def encode_texts(self, encoder: Encoder, texts: Sequence[str]) -> np.ndarray:
        key = id(encoder)
        mine = _Pending(texts)
        with self._guard:
            self._queues[key].append(mine)
            lock = self._locks[key]
        while not mine.done:
            with lock:
                if mine.done:  # another request encoded ours while we waited
                    break
                with self._guard:
                    queue = self._queues[key]
                    batch: list[_Pending] = []
                    taken = 0
                    while queue and (not batch or taken + len(queue[0].texts) <= self.max_batch):
                        batch.append(queue.pop(0))
                        taken += len(batch[-1].texts)
                self._run(encoder, batch)
        if mine.error is not None:
            raise mine.error
        assert mine.result is not None  # done without an error means encoded
        return mine.result

    @staticmethod
    def _run(encoder: Encoder, batch: list[_Pending]) -> None:
        try:
            vectors = encoder.encode_texts([t for p in batch for t in p.texts])
        except BaseException as exc:  # every waiter learns of the failure, none hangs
            for pending in batch:
                pending.error, pending.done = exc, True
            return
        start = 0
        for pending in batch:
            pending.result = vectors[start : start + len(pending.texts)]
            start += len(pending.texts)
            pending.done = True
