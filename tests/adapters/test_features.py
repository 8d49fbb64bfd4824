"""Cached frozen computation gives the same loss and gradients as recomputing it."""

from __future__ import annotations

import pytest
import torch

from adapters.features import FrozenWork, ImageSide, TextSide
from adapters.losses import contrastive_loss
from adapters.prompted import PromptConfig, PromptedCLIP
from tests.support import tolerance

CAPTIONS = ["a red circle", "a blue square", "two green stars", "a small ring", "a striped oval"]


def _loss_and_grads(prompted, images: ImageSide, texts: TextSide):
    prompted.zero_grad(set_to_none=True)
    index = torch.tensor([3, 0, 4, 1])
    ids = index.clone()
    loss = contrastive_loss(images(index), texts(index), 14.0, ids, ids)
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in prompted.named_parameters()}


@pytest.mark.parametrize(
    "config",
    [
        PromptConfig(text_tokens=2, visual_tokens=3),  # shallow: the embedding output is cached
        PromptConfig(text_tokens=2, visual_tokens=3, visual_start=1),  # prompts enter at block 1
        PromptConfig(visual_tokens=3, visual_start=1, visual_deep_from=1),  # deep from block 1
        PromptConfig(visual_tokens=3, visual_deep_from=1),  # deep from the input: nothing beyond embeddings
    ],
)
def test_cached_path_equals_uncached(tiny, pixels, config):
    prompted = PromptedCLIP.from_backbone(tiny, config)
    texts = TextSide(prompted, CAPTIONS)
    cached = ImageSide(prompted, pixels, cache=True)
    uncached = ImageSide(prompted, pixels, cache=False)
    assert cached.prefix is not None
    assert uncached.prefix is None
    assert cached.cached_layer == config.visual_start
    loss_c, grads_c = _loss_and_grads(prompted, cached, texts)
    loss_u, grads_u = _loss_and_grads(prompted, uncached, texts)
    assert abs(loss_c - loss_u) < tolerance(tiny, 1e-6)
    for name in grads_u:
        assert torch.allclose(grads_c[name], grads_u[name], atol=tolerance(tiny, 1e-7), rtol=tolerance(tiny, 1e-5)), name


def test_frozen_sides_are_encoded_once(tiny, pixels):
    prompted = PromptedCLIP.from_backbone(tiny, PromptConfig(text_tokens=2))  # text-only
    images = ImageSide(prompted, pixels)
    assert images.features is not None
    assert images.prefix is None
    expected = tiny.model.encode_image(pixels, normalize=True).float()
    assert torch.allclose(images(torch.arange(5)), expected, atol=tolerance(tiny, 1e-6))
    visual_only = PromptedCLIP.from_backbone(tiny, PromptConfig(visual_tokens=2))
    texts = TextSide(visual_only, CAPTIONS)
    assert texts.features is not None
    assert torch.allclose(texts.all(), tiny.encode_texts(CAPTIONS), atol=tolerance(tiny, 1e-6))
    assert not texts(torch.tensor([0])).requires_grad


def test_frozen_work_caches_each_prefix_layer_once_for_every_adapter(tiny, pixels):
    from PIL import Image

    images = [Image.new("RGB", (40, 40), colour) for colour in ("red", "blue", "green", "white", "black")]
    frozen = FrozenWork(tiny, images, images[:2], ["a red square", "a blue square"])
    first = PromptedCLIP.from_backbone(tiny, PromptConfig(visual_tokens=3, visual_start=1))
    second = PromptedCLIP.from_backbone(tiny, PromptConfig(visual_tokens=2, visual_start=1, block_adapter_rank=2))
    shallow = PromptedCLIP.from_backbone(tiny, PromptConfig(visual_tokens=2, visual_start=0))
    a, b, c = frozen.train_images(first), frozen.train_images(second), frozen.train_images(shallow)
    assert b.prefix is a.prefix  # reused, not recomputed
    assert c.prefix is not a.prefix and c.cached_layer == 0  # another layer, its own activations
    fresh = ImageSide(second, frozen.train_pixels)
    assert torch.equal(b.prefix, fresh.prefix)
    assert torch.allclose(b.all(), fresh.all(), atol=tolerance(tiny, 1e-6))
    assert frozen.train_images(first, cache=False).prefix is None
    zero = tiny.model.encode_image(frozen.val_pixels.to(tiny.device), normalize=True).float().cpu()
    assert torch.allclose(frozen.zero_val_image, zero, atol=tolerance(tiny, 1e-6))
    assert torch.allclose(frozen.zero_val_text, tiny.encode_texts(["a red square", "a blue square"]).cpu(), atol=tolerance(tiny, 1e-6))
