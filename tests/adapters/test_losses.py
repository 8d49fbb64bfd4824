"""The contrastive objectives: InfoNCE equivalence, positives, category weights, mining."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from adapters.losses import (
    CategoryWeights,
    attribute_margins,
    attribute_weights,
    contrastive_loss,
    mine_hard_negatives,
    negative_weights,
    weighted_nce,
)


def _unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_plain_case_is_clip_symmetric_cross_entropy():
    img, txt = _unit(6, 16, seed=1), _unit(6, 16, seed=2)
    ids = torch.arange(6)
    logits = 10.0 * txt @ img.T
    expected = (F.cross_entropy(logits, ids) + F.cross_entropy(logits.T, ids)) / 2
    assert torch.allclose(contrastive_loss(img, txt, 10.0, ids, ids), expected, atol=1e-6)


def test_captions_of_the_same_image_are_not_negatives():
    img = _unit(3, 8, seed=3)
    cap = img[torch.tensor([0, 0, 1, 2])]  # two perfect captions for image 0
    image_ids, text_ids = torch.arange(3), torch.tensor([0, 0, 1, 2])
    with_ids = contrastive_loss(img, cap, 50.0, image_ids, text_ids)
    # If the second caption of image 0 were counted as a negative for it, the loss would rise.
    logits = 50.0 * img @ cap.T
    naive = F.cross_entropy(logits, torch.tensor([0, 2, 3]))
    assert weighted_nce(logits, text_ids[None, :] == image_ids[:, None]) < naive
    assert with_ids < 0.01  # all pairs are perfect and no positive is treated as negative


def test_same_category_negatives_are_pushed_less():
    # Anchor text 0 matches image 0; images 1 (same category) and 2 (other) are equally similar.
    img = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.6, 0.0, 0.8]])
    txt = torch.tensor([[1.0, 0.0, 0.0]], requires_grad=True)
    cats = torch.tensor([0, 0, 1])
    logits = 10.0 * txt @ img.T
    loss = weighted_nce(logits, torch.tensor([[True, False, False]]), negative_weight=None)
    weights = CategoryWeights(same=0.25, other=1.0)
    w = negative_weights(cats[:1], cats, weights)
    assert w.tolist() == [[0.25, 0.25, 1.0]]  # (the positive's own weight is never used)
    grad = torch.autograd.grad(weighted_nce(logits, torch.tensor([[True, False, False]]), w), logits, retain_graph=True)[0][0]
    assert grad[0] < 0  # the positive is pulled in
    assert 0 < grad[1] < grad[2]  # the same-category negative is pushed less than the other one
    assert abs(float(grad[1] / grad[2]) - 0.25) < 1e-5
    assert weighted_nce(logits, torch.tensor([[True, False, False]]), w) < loss
    # Through the full symmetric loss, the weighted version is smaller too.
    ids = torch.arange(3)
    plain = contrastive_loss(img, img, 10.0, ids, ids, cats, cats)
    weighted = contrastive_loss(img, img, 10.0, ids, ids, cats, cats, weights)
    assert weighted < plain


def test_row_without_negatives_is_finite():
    logits = torch.tensor([[3.0, 1.0]], requires_grad=True)
    loss = weighted_nce(logits, torch.tensor([[True, True]]))
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert torch.isfinite(logits.grad).all()


def test_hard_negatives_come_from_other_categories_in_two_views():
    # Items 0,1 category A; items 2,3 category B. Image view: 0 is nearest to 1, then 2, then 3.
    image_bank = torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.9, 0.4], [0.0, 1.0]])
    text_bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.2, 1.0], [0.95, 0.3]])
    cats = torch.tensor([0, 0, 1, 1])
    nn = mine_hard_negatives(image_bank, text_bank, 1, cats)
    assert nn["image"][:, 0].tolist() == [2, 2, 1, 1]
    assert nn["text"][:, 0].tolist() == [3, 2, 1, 0]
    chunked = mine_hard_negatives(image_bank, text_bank, 1, cats, chunk=3)
    assert all(torch.equal(nn[v], chunked[v]) for v in nn)
    # Without categories only the item itself (and its duplicates) is excluded.
    nn = mine_hard_negatives(image_bank, text_bank, 5, None, image_ids=torch.tensor([0, 0, 1, 2]))
    assert nn["image"][0].tolist() == [2, 3, -1, -1, -1]


def test_attribute_weights_favour_discriminative_phrases():
    images = torch.eye(3)
    # Phrase 0 points at image 0 only; phrase 1 is equally close to all images.
    attrs = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    rivals = torch.tensor([[False, True, True], [False, True, True]])
    margins = attribute_margins(attrs, torch.tensor([0, 0]), images, rivals)
    assert margins[0] > margins[1]
    w = attribute_weights(margins, temperature=0.1)
    assert w[0] > 0.9
    assert abs(float(w.sum()) - 1) < 1e-6
