"""Negatives a user named: images that must rank below a caption's own image (not-relevant marks).

The contrastive loss already treats every other image of a batch as a negative, but a random batch
rarely holds the few images a user said were wrong answers to a query. ``QueryNegatives`` gives
them per caption text; ``NegativeTerm`` adds, at every step, for each caption of the batch that has
any, the same form of loss against exactly those images:

    -log( e^{s(t, own image)} / (e^{s(t, own image)} + sum_{n in t's negatives} e^{s(t, n)}) )

A caption's negatives are used only when the caption trains (some training item has it): without
an image it describes there is nothing for them to rank below. Negative images need no captions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image

from .features import ImageSide, preprocess_images
from .losses import weighted_nce
from .prompted import PromptedCLIP


@dataclass
class QueryNegatives:
    """Images (each once) and, per caption text, the indices of the images that must rank below it."""

    images: list[Image.Image] = field(default_factory=list)
    of_caption: dict[str, list[int]] = field(default_factory=dict)

    def pairs(self) -> int:
        return sum(len(set(indices)) for indices in self.of_caption.values())

    def pairs_for(self, captions: Sequence[str]) -> int:
        """(caption, image) pairs whose caption is one of ``captions``: those that can train."""
        return sum(len(set(self.of_caption.get(text, []))) for text in set(captions))


class NegativeTerm:
    """The per-step loss over the batch captions' named negatives (at most ``per_step`` images a step)."""

    def __init__(self, backbone, prompted: PromptedCLIP, captions: Sequence[str], negatives: QueryNegatives,
                 per_step: int, cache: bool = True, seed: int = 0):
        self.images = ImageSide(prompted, preprocess_images(backbone, negatives.images), cache=cache)
        self.of_caption = [sorted(set(negatives.of_caption.get(text, []))) for text in captions]
        self.pairs_used = negatives.pairs_for(captions)
        self.per_step = max(1, per_step)
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, text_emb: torch.Tensor, image_emb: torch.Tensor, caption_index: torch.Tensor,
                 slot: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor | None:
        """None when no caption of this batch has negatives."""
        rows = [j for j, c in enumerate(caption_index.tolist()) if self.of_caption[c]]
        if not rows:
            return None
        wanted = sorted({n for j in rows for n in self.of_caption[int(caption_index[j])]})
        if len(wanted) > self.per_step:  # a bounded cost per step: a random subset, different each step
            keep = torch.randperm(len(wanted), generator=self.gen)[: self.per_step]
            wanted = sorted(wanted[i] for i in keep.tolist())
        column = {n: k for k, n in enumerate(wanted)}
        named = torch.zeros(len(rows), len(wanted), dtype=torch.bool)
        for r, j in enumerate(rows):
            for n in self.of_caption[int(caption_index[j])]:
                if n in column:
                    named[r, column[n]] = True
        text = text_emb[rows]
        own = (text * image_emb[slot[rows]]).sum(-1, keepdim=True)
        negative = text @ self.images(torch.tensor(wanted)).to(text.dtype).T
        logits = logit_scale * torch.cat([own, negative], dim=1).float()
        positive = torch.zeros_like(logits, dtype=torch.bool)
        positive[:, 0] = True
        weight = torch.cat([torch.ones(len(rows), 1), named.float()], dim=1)
        return weighted_nce(logits, positive, weight)
