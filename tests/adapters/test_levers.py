"""Two levers the benchmark measures and no default uses: coupled prompts and training-image augmentation."""

from __future__ import annotations

import pytest
import torch

from adapters.features import PixelAugment
from adapters.prompted import PromptConfig, PromptedCLIP
from adapters.train import TrainConfig, train_adapter
from bench.world import generate, load_spec
from tests.support import tolerance

CAPTIONS = ["a red circle", "two blue squares"]
COUPLED = PromptConfig(text_tokens=2, visual_tokens=3, visual_start=1, visual_deep_from=1, text_deep=True, coupling_rank=2)


def test_untrained_coupling_changes_nothing_and_trained_ties_images_to_text_prompts(tiny, pixels):
    plain = PromptedCLIP.from_backbone(tiny, PromptConfig(**{**COUPLED.to_dict(), "coupling_rank": 0}))
    coupled = PromptedCLIP.from_backbone(tiny, COUPLED)
    assert coupled.num_parameters() == plain.num_parameters() + 1 * 2 * (64 * 2)  # one visual layer: down + up
    with torch.no_grad():
        assert torch.allclose(coupled.encode_image(pixels), plain.encode_image(pixels), atol=tolerance(tiny, 1e-6))
        for block in coupled.coupling:
            block.up.normal_(std=0.1)
    coupled.zero_grad(set_to_none=True)
    coupled.encode_image(pixels).sum().backward()
    # The image embedding now depends on the text prompts of the coupled block (and only through the map).
    assert coupled.text_deep_prompts.grad is not None and float(coupled.text_deep_prompts.grad.abs().sum()) > 0
    assert coupled.coupling[0].down.grad is not None


def test_coupling_needs_text_and_visual_prompts(tiny):
    with pytest.raises(ValueError, match="need both"):
        PromptedCLIP.from_backbone(tiny, PromptConfig(visual_tokens=2, visual_start=1, coupling_rank=2))
    assert TrainConfig(method="visual", coupling_rank=3).prompt_config().coupling_rank == 0


def test_augmentation_keeps_shape_and_range_is_seeded_and_is_the_identity_at_zero_strength(tiny, pixels):
    visual = tiny.model.visual
    a, b = PixelAugment.for_backbone(tiny, 3), PixelAugment.for_backbone(tiny, 3)
    out = a(pixels)
    assert out.shape == pixels.shape and out.dtype == pixels.dtype
    assert torch.equal(out, b(pixels))  # the same seed draws the same changes
    assert not torch.equal(out, a(pixels))  # and a fresh draw every step
    none = PixelAugment(visual.image_mean, visual.image_std, 0, gain=0.0, shift=0, noise=0.0)
    in_range = (torch.rand(pixels.shape) - none.mean) / none.std  # a real image's values: 0..1 before normalising
    assert torch.allclose(none(in_range), in_range, atol=1e-5)


def test_augmented_training_recomputes_every_batch_and_trains(tiny):
    items = generate(load_spec("style"), 16, seed=5)
    config = TrainConfig(text_tokens=2, visual_tokens=2, augment=True, epochs=1, batch_size=4, patience=None,
                         restore_best=False)
    result = train_adapter(tiny, items[:10], items[10:], config)
    assert result.steps == 3 and all(torch.isfinite(torch.tensor(result.history["loss"])))
    assert result.config.augment
