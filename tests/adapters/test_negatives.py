"""Named negatives (a user's not-relevant marks): the per-step term, and that training honours it."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from adapters.features import preprocess_images
from adapters.negatives import NegativeTerm, QueryNegatives
from adapters.prompted import PromptConfig, PromptedCLIP
from adapters.train import TrainConfig, train_adapter
from bench.world import generate, load_spec


@pytest.fixture(scope="module")
def items():
    return generate(load_spec("broad"), 36, seed=5)


def test_the_term_is_the_contrastive_loss_against_exactly_the_named_images(tiny, items):
    prompted = PromptedCLIP.from_backbone(tiny, PromptConfig(text_tokens=2, visual_tokens=2))
    negatives = QueryNegatives(images=[i.image for i in items[10:14]], of_caption={"cap a": [0, 2], "elsewhere": [1]})
    term = NegativeTerm(tiny, prompted, ["cap a", "cap b", "cap c"], negatives, per_step=8)
    assert term.pairs_used == 2  # "elsewhere" trains no item: its mark cannot be used
    with torch.no_grad():
        named = term.images(torch.tensor([0, 2]))
    gen = torch.Generator().manual_seed(0)  # the batch's embeddings live where the model's do, as in training
    text, own = (F.normalize(torch.randn(3, named.shape[1], generator=gen), dim=-1).to(named) for _ in range(2))
    caption_index, slot = torch.tensor([1, 0, 2]), torch.tensor([0, 1, 2])
    with torch.no_grad():
        value = term(text, own, caption_index, slot, torch.tensor(10.0))
    # Only batch row 1 (caption 0, "cap a") has negatives: images 0 and 2, its own image is own[1].
    pos = 10.0 * float(text[1] @ own[1])
    neg = [10.0 * float(text[1] @ named[k]) for k in range(2)]
    expected = -pos + math.log(math.exp(pos) + sum(math.exp(n) for n in neg))
    assert float(value) == pytest.approx(expected, rel=1e-4)

    assert term(text, own, torch.tensor([1, 2]), torch.tensor([0, 1]), torch.tensor(10.0)) is None


def _margin(prompted, tiny, caption: str, own, negatives) -> float:
    """The caption's score of its own image minus its mean score of the named negatives."""
    with torch.no_grad():
        text = prompted.encode_text([caption])
        images = prompted.encode_image(preprocess_images(tiny, [own, *negatives]))
    scores = (text @ images.T)[0]
    return float(scores[0] - scores[1:].mean())


def test_training_with_named_negatives_ranks_them_lower(tiny, items):
    train, val = items[:24], items[24:30]
    outsiders = [i.image for i in items[30:]]  # negatives that are no training item and have no caption
    anchors = [0, 1, 2, 3]
    negatives = QueryNegatives(images=outsiders + [train[5].image],
                               of_caption={train[a].captions[0]: list(range(len(outsiders) + 1)) for a in anchors})
    config = TrainConfig(method="dual", epochs=4, batch_size=8, patience=None, text_tokens=2, visual_tokens=2,
                         lr=3e-2, residual_rank=0, zero_shot_mix=False, restore_best=False, seed=1)
    plain = train_adapter(tiny, train, val, config)
    marked = train_adapter(tiny, train, val, config, negatives=negatives)
    assert plain.negative_pairs_used == 0
    assert marked.negative_pairs_used == len(anchors) * (len(outsiders) + 1)
    gains = [_margin(marked.prompted, tiny, train[a].captions[0], train[a].image, negatives.images)
             - _margin(plain.prompted, tiny, train[a].captions[0], train[a].image, negatives.images) for a in anchors]
    assert sum(gains) / len(gains) > 0, gains


def test_negatives_of_captions_that_do_not_train_change_nothing(tiny, items):
    train, val = items[:16], items[16:20]
    config = TrainConfig(method="text", epochs=1, batch_size=8, patience=None, text_tokens=2, residual_rank=0,
                         zero_shot_mix=False, seed=2)
    plain = train_adapter(tiny, train, val, config)
    unused = train_adapter(tiny, train, val, config,
                           negatives=QueryNegatives(images=[items[30].image], of_caption={"no such caption": [0]}))
    assert unused.negative_pairs_used == 0
    assert plain.history["loss"] == unused.history["loss"]
