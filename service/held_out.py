"""A job's test pairs through one model: embedded once, every metric derived from those embeddings.

The summary metrics (R@K, median rank, and category P@10 / mAP when categories exist) and the
per-query values the activation decision resamples come from the same image and text vectors, so
no frozen computation is repeated for a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from adapters.data import PairedItem
from adapters.evaluate import (
    Metrics,
    embed_items,
    image_ids_of,
    per_query_category,
    per_query_t2i_ranks,
    retrieval_metrics,
)


@dataclass(frozen=True)
class HeldOut:
    metrics: Metrics  # with cat_p10 and cat_map where the items have categories
    per_query: dict[str, np.ndarray]  # "t2i_r1" (hits as 0/1), and "cat_p10" with categories (NaN: none)


def measure(backbone, items: Sequence[PairedItem], adapter=None) -> HeldOut:
    """``items`` through the backbone alone (adapter=None) or with a PromptedCLIP."""
    image_emb, text_emb, owner = embed_items(backbone, items, adapter)
    ids = image_ids_of(items)
    metrics = retrieval_metrics(text_emb, image_emb, owner, ids)
    ranks = per_query_t2i_ranks(text_emb, image_emb, owner, ids)
    per_query = {"t2i_r1": (ranks <= 1).double().numpy()}
    categories = [item.category for item in items]
    if any(category is not None for category in categories):
        per = per_query_category(text_emb, image_emb, [categories[int(i)] for i in owner], categories)
        metrics["cat_p10"] = float(torch.nanmean(per["cat_p10"]))
        metrics["cat_map"] = float(torch.nanmean(per["cat_map"]))
        per_query["cat_p10"] = per["cat_p10"].double().numpy()
    return HeldOut(metrics, per_query)
