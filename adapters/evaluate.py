"""Retrieval metrics: text->image and image->text Recall@K and median rank; category metrics.

COCO-style with several captions per image: every caption is a text->image query whose target
is its image; for image->text an image's rank is that of its best-ranked correct caption.
Ties count against the query (a wrong item scoring equal to the target ranks above it), so a
collapsed embedding cannot look perfect.

Where items have categories, exact-pair recall is not the whole story (a collection captioned
from class names has many equally right images per query): ``category_metrics`` gives category
precision@10 and mAP of text->image retrieval, relevant = an image of the query's category.
The ``per_query_*`` functions return one value per text query, for paired bootstrap intervals
(``adapters.stats``). ``Metrics`` names every key these functions return, so a type checker
catches a misspelt one; at run time it is a plain dict.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# typing_extensions' TypedDict (not typing's): pydantic models in service/ validate these on Python < 3.12.
from typing_extensions import TypedDict

from .data import PairedItem
from .features import preprocess_images

KS = (1, 5, 10)


class CategoryMetrics(TypedDict):
    """Category metrics of text->image retrieval (NaN when no query has a category that an image has)."""

    cat_p10: float  # mean precision@10, relevant = an image of the query's category
    cat_map: float  # mean average precision over the full ranking


class RetrievalMetrics(TypedDict):
    """The keys every ``retrieval_metrics`` result has; recalls are fractions in [0, 1], ranks 1-based."""

    n_images: int
    n_captions: int
    t2i_r1: float
    t2i_r5: float
    t2i_r10: float
    t2i_medr: float  # median rank of each caption's image
    i2t_r1: float
    i2t_r5: float
    i2t_r10: float
    i2t_medr: float
    rsum: float  # the six recalls summed


class Metrics(RetrievalMetrics, total=False):
    """Retrieval metrics of one model on held-out pairs, with ``CategoryMetrics``' keys where items have categories."""

    cat_p10: float
    cat_map: float


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
    chunk: int = 1024,
) -> Metrics:
    """Metrics from precomputed L2-normalised embeddings (recall at each of ``KS``).

    ``text_to_image[j]`` is the row of ``image_emb`` that caption j describes. ``image_ids``
    (optional) marks rows that show the same image (duplicates are then all correct targets).
    Recalls are fractions in [0, 1].
    """
    text_emb, image_emb = text_emb.float().cpu(), image_emb.float().cpu()
    text_to_image = torch.as_tensor(text_to_image).long().cpu()
    ids = torch.arange(len(image_emb)) if image_ids is None else torch.as_tensor(image_ids).cpu()
    text_ids = ids[text_to_image]

    t2i = per_query_t2i_ranks(text_emb, image_emb, text_to_image, ids, chunk)
    i2t = []
    for start in range(0, len(image_emb), chunk):
        sims = image_emb[start : start + chunk] @ text_emb.T
        correct = ids[start : start + chunk, None] == text_ids[None, :]
        i2t.append(_ranks(sims, correct))
    i2t_ranks = torch.cat(i2t)

    def recall(ranks: torch.Tensor, k: int) -> float:
        return float((ranks <= k).float().mean())

    r1, r5, r10 = (recall(t2i, k) for k in KS)
    i_r1, i_r5, i_r10 = (recall(i2t_ranks, k) for k in KS)
    return {
        "n_images": len(image_emb), "n_captions": len(text_emb),
        "t2i_r1": r1, "t2i_r5": r5, "t2i_r10": r10, "t2i_medr": float(t2i.float().quantile(0.5)),
        "i2t_r1": i_r1, "i2t_r5": i_r5, "i2t_r10": i_r10, "i2t_medr": float(i2t_ranks.float().quantile(0.5)),
        "rsum": r1 + r5 + r10 + i_r1 + i_r5 + i_r10,
    }


def per_query_t2i_ranks(text_emb: torch.Tensor, image_emb: torch.Tensor, text_to_image: torch.Tensor,
                        image_ids: torch.Tensor | None = None, chunk: int = 1024) -> torch.Tensor:
    """1-based text->image rank of each caption's image (ties against the query), one per caption."""
    text_emb, image_emb = text_emb.float().cpu(), image_emb.float().cpu()
    text_to_image = torch.as_tensor(text_to_image).long().cpu()
    ids = torch.arange(len(image_emb)) if image_ids is None else torch.as_tensor(image_ids).cpu()
    text_ids = ids[text_to_image]
    out = []
    for start in range(0, len(text_emb), chunk):
        sims = text_emb[start : start + chunk] @ image_emb.T
        out.append(_ranks(sims, text_ids[start : start + chunk, None] == ids[None, :]))
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def per_query_category(text_emb: torch.Tensor, image_emb: torch.Tensor, query_categories: Sequence,
                       image_categories: Sequence, k: int = 10, chunk: int = 512) -> dict[str, torch.Tensor]:
    """Per text query: category precision@k and average precision over the full image ranking.

    Relevant = an image whose category equals the query's. Queries without a category (None) or
    whose category no image has get NaN and are left out of the means. Ties are broken against
    the query (relevant images sort after equal-scoring irrelevant ones).
    """
    codes: dict = {}
    img_cat = torch.tensor([-1 if c is None else codes.setdefault(c, len(codes)) for c in image_categories])
    q_cat = torch.tensor([-2 if c is None else codes.get(c, -3) for c in query_categories])
    text_emb, image_emb = text_emb.float().cpu(), image_emb.float().cpu()
    p_at_k, ap = [], []
    kk = min(k, len(image_emb))
    for start in range(0, len(text_emb), chunk):
        sims = text_emb[start : start + chunk] @ image_emb.T
        rel = q_cat[start : start + chunk, None] == img_cat[None, :]
        # Stable sort by score with irrelevant images placed first: among equal scores a relevant
        # image never wins the tie.
        pre = torch.argsort(rel.int(), dim=1, stable=True)
        order = torch.gather(pre, 1, torch.argsort(torch.gather(sims, 1, pre), dim=1, descending=True, stable=True))
        rel_sorted = torch.gather(rel, 1, order).float()
        n_rel = rel_sorted.sum(1)
        p_at_k.append(rel_sorted[:, :kk].sum(1) / kk)
        hits = rel_sorted.cumsum(1)
        prec = hits / torch.arange(1, rel_sorted.shape[1] + 1)
        ap.append((prec * rel_sorted).sum(1) / n_rel.clamp_min(1))
        missing = n_rel == 0
        p_at_k[-1][missing] = float("nan")
        ap[-1][missing] = float("nan")
    return {"cat_p10": torch.cat(p_at_k), "cat_map": torch.cat(ap)}


def category_metrics(text_emb: torch.Tensor, image_emb: torch.Tensor, query_categories: Sequence,
                     image_categories: Sequence, k: int = 10) -> CategoryMetrics:
    """Mean category precision@k (key ``cat_p10``) and mAP (``cat_map``) over queries with a category."""
    per = per_query_category(text_emb, image_emb, query_categories, image_categories, k)

    def mean(values: torch.Tensor) -> float:
        return float(torch.nanmean(values)) if (~values.isnan()).any() else float("nan")

    return {"cat_p10": mean(per["cat_p10"]), "cat_map": mean(per["cat_map"])}


def item_category_metrics(backbone, items: Sequence[PairedItem], adapter=None, k: int = 10) -> CategoryMetrics | None:
    """Category P@k and mAP of text->image retrieval on ``items``; None when no item has a category."""
    if all(item.category is None for item in items):
        return None
    image_emb, text_emb, owner = embed_items(backbone, items, adapter)
    cats = [item.category for item in items]
    return category_metrics(text_emb, image_emb, [cats[int(i)] for i in owner], cats, k)


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


def evaluate(backbone, items: Sequence[PairedItem], adapter=None, batch_size: int = 64) -> Metrics:
    """Retrieval metrics of the backbone alone (adapter=None) or with a PromptedCLIP."""
    image_emb, text_emb, owner = embed_items(backbone, items, adapter, batch_size)
    return retrieval_metrics(text_emb, image_emb, owner, image_ids_of(items))
