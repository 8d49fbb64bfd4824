"""Contrastive objectives for prompt learning, and the choice of what counts as a negative.

One primitive, ``weighted_nce``, covers all the variants: for every positive pair (r, c)

    loss = -log( e^{s_rc} / (e^{s_rc} + sum_k w_rk e^{s_rk}) ),   k over r's negatives

- symmetric InfoNCE (CLIP): w = 1 for every non-positive;
- several captions per image: columns sharing the row's image id are positives, never negatives;
- DCAR's category matching: w_rk depends on whether k shares r's category, so a same-category
  non-paired item can be pushed away less (or more) than one of another category.

Negatives also come from outside the batch's random draw: ``mine_hard_negatives`` finds, once,
from zero-shot embeddings, each item's nearest neighbours of other categories in two views
(image-image and caption-caption); the sampler puts them in the same batch. ``attribute_weights``
scores attribute phrases by how well they single out their own image, for composing captions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class CategoryWeights:
    """Weights of negatives by category relation; 1.0 / 1.0 is plain InfoNCE."""

    same: float = 1.0  # a negative of the anchor's category (similar sub-category, hardest to tell apart)
    other: float = 1.0  # a negative of another (or unknown) category


def negative_weights(row_cats: torch.Tensor | None, col_cats: torch.Tensor | None, weights: CategoryWeights) -> torch.Tensor | None:
    """Per-pair negative weights from integer category codes (-1: unknown, counted as other)."""
    if row_cats is None or col_cats is None or weights.same == weights.other:
        return None if weights.other == 1.0 else torch.tensor(weights.other)
    same = (row_cats[:, None] == col_cats[None, :]) & (row_cats[:, None] >= 0)
    w = torch.full(same.shape, weights.other, dtype=torch.float32, device=same.device)
    return w.masked_fill(same, weights.same)


def weighted_nce(logits: torch.Tensor, positive: torch.Tensor, negative_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over positive pairs of -log(e^pos / (e^pos + sum_neg w e^neg)); rows are anchors."""
    logits = logits.float()
    positive = positive.to(device=logits.device, dtype=torch.bool)  # ids and categories live on the CPU
    weight = torch.ones_like(logits)
    if negative_weight is not None:
        weight = weight * negative_weight.to(logits.device).float().clamp_min(0)
    negative = ~positive & (weight > 0)
    neg_logits = (logits + torch.log(weight)).masked_fill(~negative, float("-inf"))
    # A row with no negative at all would give logsumexp(-inf...) = -inf and NaN gradients; give
    # it a finite dummy row and set its result to -inf afterwards (its pair losses are then 0).
    has_neg = negative.any(dim=1, keepdim=True)
    neg_lse = torch.logsumexp(neg_logits.masked_fill(~has_neg, 0.0), dim=1, keepdim=True)
    neg_lse = neg_lse.masked_fill(~has_neg, float("-inf"))
    # log(e^s + e^n) - s = softplus(n - s): stable, and 0 when there is nothing to contrast with.
    pair_loss = F.softplus(neg_lse - logits)
    return pair_loss[positive].mean()


def contrastive_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor | float,
    image_ids: torch.Tensor,
    text_image_ids: torch.Tensor,
    image_cats: torch.Tensor | None = None,
    text_cats: torch.Tensor | None = None,
    weights: CategoryWeights = CategoryWeights(),
) -> torch.Tensor:
    """Symmetric text->image / image->text loss over a batch.

    ``image_emb`` (n_i, d) and ``text_emb`` (n_t, d) are L2-normalised. ``image_ids`` (n_i) and
    ``text_image_ids`` (n_t) say which image each row shows / describes: equal ids are positives.
    ``logit_scale`` is the *exponentiated* scale (CLIP's ``logit_scale.exp()``).
    """
    logits = logit_scale * text_emb.float() @ image_emb.float().T  # (n_t, n_i)
    positive = text_image_ids[:, None].to(image_ids.device) == image_ids[None, :]
    t2i = weighted_nce(logits, positive, negative_weights(text_cats, image_cats, weights))
    i2t = weighted_nce(logits.T, positive.T, negative_weights(image_cats, text_cats, weights))
    return (t2i + i2t) / 2


def frozen_logit_scale(model: torch.nn.Module, default: float = 100.0) -> torch.Tensor:
    """CLIP's own temperature (exponentiated, capped at 100 as in training), detached."""
    scale = getattr(model, "logit_scale", None)
    if scale is None:
        return torch.tensor(default)
    return scale.detach().float().exp().clamp(max=100.0).reshape(())


# ------------------------------------------------------------------ hard negatives
def mine_hard_negatives(
    image_bank: torch.Tensor,
    text_bank: torch.Tensor,
    k: int,
    categories: torch.Tensor | None = None,
    image_ids: torch.Tensor | None = None,
    chunk: int = 2048,
) -> dict[str, torch.Tensor]:
    """Each item's k nearest neighbours in two zero-shot views, excluding same-image items.

    ``image_bank`` (n, d): one image embedding per item; ``text_bank`` (n, d): one text embedding
    per item (e.g. the mean of its captions). With categories, neighbours must be of another
    category: a same-category neighbour may well be a true match the labels do not record.
    Returns {"image": (n, k), "text": (n, k)} item indices, -1 where too few candidates exist.
    """
    n = len(image_bank)
    ids = image_ids if image_ids is not None else torch.arange(n)
    kk = min(k, n)
    out = {}
    for view, bank in (("image", image_bank), ("text", text_bank)):
        bank = F.normalize(bank.float(), dim=-1)
        index = torch.full((n, k), -1, dtype=torch.long)
        for start in range(0, n, chunk):  # rows in chunks: an n x n matrix may not fit in memory
            rows = slice(start, start + chunk)
            excluded = ids[rows, None] == ids[None, :]
            if categories is not None:
                excluded |= (categories[rows, None] == categories[None, :]) & (categories[rows, None] >= 0)
            sims = (bank[rows] @ bank.T).masked_fill(excluded, float("-inf"))
            values, nearest = sims.topk(kk, dim=1)
            index[rows, :kk] = nearest.masked_fill(torch.isinf(values), -1)
        out[view] = index
    return out


# ------------------------------------------------------------------ attribute reweighting
def attribute_margins(attr_emb: torch.Tensor, own_image: torch.Tensor, image_bank: torch.Tensor, rivals: torch.Tensor) -> torch.Tensor:
    """How much better each attribute phrase matches its own image than its rivals, on average.

    ``attr_emb`` (a, d) phrase embeddings; ``own_image`` (a,) index of the image each phrase
    belongs to; ``rivals`` (a, n) bool, the images each phrase should be told apart from.
    """
    sims = F.normalize(attr_emb.float(), dim=-1) @ F.normalize(image_bank.float(), dim=-1).T  # (a, n)
    own = sims[torch.arange(len(sims)), own_image]
    counts = rivals.sum(1).clamp_min(1)
    rival_mean = (sims * rivals).sum(1) / counts
    return own - rival_mean


def attribute_weights(margins: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """Softmax weights over one item's attribute margins: discriminative phrases are drawn more."""
    return torch.softmax(margins.float() / temperature, dim=0)
