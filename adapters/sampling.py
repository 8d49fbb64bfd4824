"""What each training step sees: which items form a batch, which caption stands for each.

- ``TrainingSet`` flattens items into captions with owners, image ids and category codes.
- ``BatchSampler`` draws anchors from a running permutation and, when hard negatives were
  mined, fills the rest of the batch with the anchors' neighbours; every epoch has the same
  number of steps and batch size with or without mining, so runs cost the same.
- ``compose_attribute_captions`` adds captions built from an item's category and attribute
  phrases, drawing the phrases that best single out the item's image more often.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .data import PairedItem
from .evaluate import image_ids_of


def category_codes(items: Sequence[PairedItem]) -> torch.Tensor | None:
    """Integer category per item (-1: none); None when no item has a category."""
    if all(item.category is None for item in items):
        return None
    codes: dict[str, int] = {}
    return torch.tensor(
        [-1 if item.category is None else codes.setdefault(item.category, len(codes)) for item in items],
        dtype=torch.long,
    )


@dataclass
class TrainingSet:
    captions: list[str]
    caption_owner: torch.Tensor  # (n_captions,) item index of each caption
    captions_of: list[torch.Tensor]  # per item, its caption indices
    image_ids: torch.Tensor  # (n_items,) equal ids: the same image
    categories: torch.Tensor | None  # (n_items,) codes, -1 unknown

    @classmethod
    def build(cls, items: Sequence[PairedItem], extra_captions: Sequence[Sequence[str]] | None = None) -> TrainingSet:
        captions, owner = [], []
        for index, item in enumerate(items):
            texts = list(item.captions) + (list(extra_captions[index]) if extra_captions else [])
            if not texts:
                raise ValueError(f"item {index} ({item.key}) has no caption to train on")
            captions.extend(texts)
            owner.extend([index] * len(texts))
        owner_t = torch.tensor(owner, dtype=torch.long)
        captions_of = [torch.nonzero(owner_t == i).flatten() for i in range(len(items))]
        return cls(captions, owner_t, captions_of, image_ids_of(items), category_codes(items))

    def __len__(self) -> int:
        return len(self.captions_of)


class BatchSampler:
    """Item and caption indices for each step, reproducible from a seed."""

    def __init__(
        self,
        data: TrainingSet,
        batch_size: int,
        neighbours: dict[str, torch.Tensor] | None = None,
        captions_per_item: int = 1,
        seed: int = 0,
    ):
        self.data = data
        self.batch_size = max(2, min(batch_size, len(data)))
        self.neighbours = neighbours
        self.captions_per_item = captions_per_item
        self.gen = torch.Generator().manual_seed(seed)
        self._stream = torch.empty(0, dtype=torch.long)
        per_anchor = 1 + (sum(n.shape[1] for n in neighbours.values()) if neighbours else 0)
        self.anchors_per_batch = max(1, self.batch_size // per_anchor)

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.data) // self.batch_size)

    def _next_anchors(self, k: int) -> torch.Tensor:
        while len(self._stream) < k:
            self._stream = torch.cat([self._stream, torch.randperm(len(self.data), generator=self.gen)])
        out, self._stream = self._stream[:k], self._stream[k:]
        return out

    def items(self) -> torch.Tensor:
        anchors = self._next_anchors(self.anchors_per_batch)
        if not self.neighbours:
            return anchors
        # Anchors first, then each view's neighbours (nearest first); duplicates keep their first slot.
        parts = [anchors] + [self.neighbours[view][anchors].T.flatten() for view in sorted(self.neighbours)]
        order: dict[int, None] = {}
        for index in torch.cat(parts).tolist():
            if index >= 0:
                order.setdefault(index, None)
        return torch.tensor(list(order)[: self.batch_size], dtype=torch.long)

    def captions(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Up to ``captions_per_item`` distinct random captions per item, and their item position."""
        chosen, position = [], []
        for slot, item in enumerate(items.tolist()):
            own = self.data.captions_of[item]
            pick = own[torch.randperm(len(own), generator=self.gen)[: self.captions_per_item]]
            chosen.append(pick)
            position.append(torch.full((len(pick),), slot, dtype=torch.long))
        return torch.cat(chosen), torch.cat(position)

    def epoch(self):
        """Yields (item indices, caption indices, caption's slot in the item batch) per step."""
        for _ in range(self.steps_per_epoch):
            items = self.items()
            caption_index, slot = self.captions(items)
            yield items, caption_index, slot


def compose_attribute_captions(
    items: Sequence[PairedItem],
    weights: Sequence[torch.Tensor | None],
    per_item: int = 2,
    phrases: int = 2,
    seed: int = 0,
) -> list[list[str]]:
    """Captions "<category>, <attr>, <attr>" with attributes drawn by weight, without replacement."""
    gen = torch.Generator().manual_seed(seed)
    out: list[list[str]] = []
    for item, w in zip(items, weights, strict=True):
        if not item.attributes or w is None:
            out.append([])
            continue
        k = min(phrases, len(item.attributes))
        texts = []
        for _ in range(per_item):
            picked = torch.multinomial(w.float(), k, replacement=False, generator=gen).tolist()
            # Keep the item's own order of phrases so captions read the same way each time.
            words = [item.attributes[i] for i in sorted(picked)]
            texts.append(", ".join(([item.category] if item.category else []) + words))
        out.append(texts)
    return out
