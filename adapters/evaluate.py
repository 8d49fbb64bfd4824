"""Retrieval metrics: text->image and image->text Recall@K and median rank.

COCO-style with several captions per image: every caption is a text->image query whose target
is its image; for image->text an image's rank is that of its best-ranked correct caption.
Ties count against the query (a wrong item scoring equal to the target ranks above it), so a
collapsed embedding cannot look perfect.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .data import PairedItem
from .features import preprocess_images

KS = (1, 5, 10)


def _ranks(sims: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """1-based rank of each row's best correct column among all columns."""
    best = sims.masked_fill(~correct, float("-inf")).max(dim=1, keepdim=True).values
    wrong_above = ((sims >= best) & ~correct).sum(dim=1)
    return wrong_above + 1


def retrieval_metrics(
    text_emb: torch.Tensor,
    image_emb: torch.Tensor,
    text_to_image: torch.Tensor,
    image_ids: torch.Tensor | None = None,
    ks: Sequence[int] = KS,
    chunk: int = 1024,
) -> dict[str, float]:
    """Metrics from precomputed L2-normalised embeddings.

    ``text_to_image[j]`` is the row of ``image_emb`` that caption j describes. ``image_ids``
    (optional) marks rows that show the same image (duplicates are then all correct targets).
    Recalls are fractions in [0, 1].
    """
    text_emb, image_emb = text_emb.float().cpu(), image_emb.float().cpu()
    text_to_image = torch.as_tensor(text_to_image).long().cpu()
    ids = torch.arange(len(image_emb)) if image_ids is None else torch.as_tensor(image_ids).cpu()
    text_ids = ids[text_to_image]

    t2i = []
    for start in range(0, len(text_emb), chunk):
        sims = text_emb[start : start + chunk] @ image_emb.T
        correct = text_ids[start : start + chunk, None] == ids[None, :]
        t2i.append(_ranks(sims, correct))
    i2t = []
    for start in range(0, len(image_emb), chunk):
        sims = image_emb[start : start + chunk] @ text_emb.T
        correct = ids[start : start + chunk, None] == text_ids[None, :]
        i2t.append(_ranks(sims, correct))

    out: dict[str, float] = {"n_images": len(image_emb), "n_captions": len(text_emb)}
    for name, ranks in (("t2i", torch.cat(t2i)), ("i2t", torch.cat(i2t))):
        for k in ks:
            out[f"{name}_r{k}"] = float((ranks <= k).float().mean())
        out[f"{name}_medr"] = float(ranks.float().quantile(0.5))
    out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("t2i", "i2t") for k in ks)
    return out


def flatten_captions(items: Sequence[PairedItem]) -> tuple[list[str], torch.Tensor]:
    """All captions in item order, and for each the index of its item."""
    captions, owner = [], []
    for index, item in enumerate(items):
        captions.extend(item.captions)
        owner.extend([index] * len(item.captions))
    return captions, torch.tensor(owner, dtype=torch.long)


def image_ids_of(items: Sequence[PairedItem]) -> torch.Tensor:
    """Items with the same key show the same image; items without a key are all distinct."""
    codes: dict[str, int] = {}
    out = []
    for index, item in enumerate(items):
        if item.key is None:
            out.append(-(index + 1))  # unique negative code, never equal to a key's code
        else:
            out.append(codes.setdefault(item.key, len(codes)))
    return torch.tensor(out, dtype=torch.long)


@torch.no_grad()
def embed_items(backbone, items: Sequence[PairedItem], adapter=None, batch_size: int = 64):
    """(image_emb, text_emb, text_to_image) for items, with an adapter's prompts or zero-shot."""
    captions, owner = flatten_captions(items)
    if adapter is None:
        image_emb = backbone.encode_images([item.image for item in items], batch_size=batch_size)
        text_emb = backbone.encode_texts(captions)
    else:
        pixels = preprocess_images(backbone, [item.image for item in items])
        image_emb = torch.cat([
            adapter.encode_image(pixels[s : s + batch_size]).float().cpu() for s in range(0, len(pixels), batch_size)
        ])
        text_emb = torch.cat([
            adapter.encode_text(captions[s : s + 256]).float().cpu() for s in range(0, len(captions), 256)
        ])
    return image_emb, text_emb, owner


def evaluate(backbone, items: Sequence[PairedItem], adapter=None, batch_size: int = 64) -> dict[str, float]:
    """Retrieval metrics of the backbone alone (adapter=None) or with a PromptedCLIP."""
    image_emb, text_emb, owner = embed_items(backbone, items, adapter, batch_size)
    return retrieval_metrics(text_emb, image_emb, owner, image_ids_of(items))
