"""Opportunistic batching of concurrent query encodes, across adapters.

While one forward pass runs, other requests queue up; the next request to get the text tower takes
the whole queue (up to ``max_batch`` texts) and encodes it in one pass. A lone request never waits
for company, and under load one batched pass replaces many small ones.

Requests for different adapters (different collections) share that pass: an encoder that exposes
its prompts (``text_adapter``: a ``PromptedCLIP``, or None for the zero-shot backbone) joins a
mixed batch (``adapters.mixed_text``); any other encoder, or a backbone whose text tower takes no
spliced prompts, is encoded on its own, one encoder after the other, in the same turn.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from adapters.mixed_text import MixedTextEncoder
from service.encoders import Encoder

_NOT_MIXABLE = object()  # an encoder without ``text_adapter``


@dataclass
class _Pending:
    encoder: Encoder
    texts: Sequence[str]
    result: np.ndarray | None = None
    error: BaseException | None = None
    done: bool = field(default=False)


class TextBatcher:
    def __init__(self, mixer: MixedTextEncoder | None = None, max_batch: int = 256):
        self.mixer = mixer
        self.max_batch = max_batch
        self._guard = threading.Lock()  # the queue
        self._turn = threading.Lock()  # the text tower: one forward pass at a time
        self._queue: list[_Pending] = []

    def encode_texts(self, encoder: Encoder, texts: Sequence[str]) -> np.ndarray:
        mine = _Pending(encoder, texts)
        with self._guard:
            self._queue.append(mine)
        while not mine.done:
            with self._turn:
                if mine.done:  # another request encoded ours while we waited
                    break
                with self._guard:
                    batch: list[_Pending] = []
                    taken = 0
                    while self._queue and (not batch or taken + len(self._queue[0].texts) <= self.max_batch):
                        batch.append(self._queue.pop(0))
                        taken += len(batch[-1].texts)
                self._run(batch)
        if mine.error is not None:
            raise mine.error
        assert mine.result is not None  # done without an error means encoded
        return mine.result

    def _run(self, batch: list[_Pending]) -> None:
        by_encoder: dict[int, list[_Pending]] = {}
        for pending in batch:
            by_encoder.setdefault(id(pending.encoder), []).append(pending)
        groups = list(by_encoder.values())
        mixed = [g for g in groups if self._mixable(g[0].encoder)]
        alone = [g for g in groups if not self._mixable(g[0].encoder)]
        if mixed:
            assert self.mixer is not None  # _mixable says so
            mixer = self.mixer
            self._settle(mixed, lambda: [v.numpy() for v in mixer.encode(
                [(g[0].encoder.text_adapter, [t for p in g for t in p.texts]) for g in mixed])])  # type: ignore[attr-defined]
        for group in alone:
            self._settle([group], lambda group=group: [group[0].encoder.encode_texts([t for p in group for t in p.texts])])

    def _mixable(self, encoder: Encoder) -> bool:
        return self.mixer is not None and getattr(encoder, "text_adapter", _NOT_MIXABLE) is not _NOT_MIXABLE

    @staticmethod
    def _settle(groups: list[list[_Pending]], encode) -> None:
        """Run one encode of ``groups`` and hand each request its rows (or the failure)."""
        try:
            outputs = encode()
        except BaseException as exc:  # every waiter learns of the failure, none hangs
            for group in groups:
                for pending in group:
                    pending.error, pending.done = exc, True
            return
        for group, vectors in zip(groups, outputs, strict=True):
            start = 0
            for pending in group:
                pending.result = vectors[start : start + len(pending.texts)]
                start += len(pending.texts)
                pending.done = True
