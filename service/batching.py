"""Opportunistic batching of concurrent query encodes, across adapters.

While one forward pass runs, other requests queue up; the next request to get the text tower takes
the whole queue (up to ``max_batch`` texts) and encodes it in one pass (``service.grouping``). A
lone request never waits for company, and under load one batched pass replaces many small ones.

Requests for different adapters (different collections) share that pass: an encoder that exposes
its prompts (``text_adapter``: a ``PromptedCLIP``, or None for the zero-shot backbone) joins a
mixed batch (``adapters.mixed_text``); any other encoder, or a backbone whose text tower takes no
spliced prompts, is encoded on its own, one encoder after the other, in the same turn.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from adapters.mixed_text import MixedTextEncoder
from service.encoders import Encoder
from service.grouping import Grouper

_NOT_MIXABLE = object()  # an encoder without ``text_adapter``

Request = tuple[Encoder, Sequence[str]]


class TextBatcher:
    def __init__(self, mixer: MixedTextEncoder | None = None, max_batch: int = 256):
        self.mixer = mixer
        self.max_batch = max_batch
        self._grouper: Grouper[Request, np.ndarray] = Grouper(self._run, size=lambda request: len(request[1]),
                                                              max_size=max_batch)

    def encode_texts(self, encoder: Encoder, texts: Sequence[str]) -> np.ndarray:
        return self._grouper.submit((encoder, texts))

    def _run(self, batch: list[Request]) -> list[np.ndarray | BaseException]:
        """One mixed pass for the mixable encoders, one pass per other encoder; each request its rows."""
        by_encoder: dict[int, list[int]] = {}
        for position, (encoder, _) in enumerate(batch):
            by_encoder.setdefault(id(encoder), []).append(position)
        groups = list(by_encoder.values())
        out: list[np.ndarray | BaseException] = [RuntimeError("not encoded")] * len(batch)
        mixed = [g for g in groups if self._mixable(batch[g[0]][0])]
        alone = [g for g in groups if not self._mixable(batch[g[0]][0])]
        if mixed:
            assert self.mixer is not None  # _mixable says so
            mixer = self.mixer
            self._settle(batch, mixed, out, lambda: [v.numpy() for v in mixer.encode(
                [(batch[g[0]][0].text_adapter, [t for p in g for t in batch[p][1]]) for g in mixed])])  # type: ignore[attr-defined]
        for group in alone:
            self._settle(batch, [group], out,
                         lambda group=group: [batch[group[0]][0].encode_texts([t for p in group for t in batch[p][1]])])
        return out

    def _mixable(self, encoder: Encoder) -> bool:
        return self.mixer is not None and getattr(encoder, "text_adapter", _NOT_MIXABLE) is not _NOT_MIXABLE

    @staticmethod
    def _settle(batch: list[Request], groups: list[list[int]], out: list, encode) -> None:
        """Run one encode of ``groups`` and give each request its rows (or the failure, to the groups'
        requests alone: the other encoders' requests of the batch still get theirs)."""
        try:
            outputs = encode()
        except Exception as exc:
            for group in groups:
                for position in group:
                    out[position] = exc
            return
        for group, vectors in zip(groups, outputs, strict=True):
            start = 0
            for position in group:
                n = len(batch[position][1])
                out[position] = vectors[start : start + n]
                start += n
