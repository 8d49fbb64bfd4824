"""The adapter's output-side pieces: deep text prompts, the residual map, zero-shot mixing.

Everything lives inside PromptedCLIP (its state dict and encode path), so an index built with
``encode_image`` and a query from ``encode_text`` need nothing else from the service.
"""

from __future__ import annotations

import pytest
import torch

from adapters.artifact import load_adapter, save_adapter
from adapters.candidates import CANDIDATES, candidate_configs
from adapters.prompted import PromptConfig, PromptedCLIP
from adapters.train import TrainConfig, train_adapter
from bench.world import generate, load_spec
from tests.support import half_precision, noise_like, tolerance

CAPTIONS = ["a small red striped circle on the left", "two blue squares"]


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


@torch.no_grad()
def test_untrained_residual_map_is_the_identity(tiny, pixels):
    plain = PromptedCLIP.from_backbone(tiny, PromptConfig(text_tokens=2))
    with_map = PromptedCLIP.from_backbone(tiny, PromptConfig(text_tokens=2, residual_rank=4))
    assert _diff(with_map.encode_image(pixels), plain.encode_image(pixels)) < tolerance(tiny, 1e-6)
    assert _diff(with_map.encode_text(CAPTIONS), plain.encode_text(CAPTIONS)) < tolerance(tiny, 1e-6)


@torch.no_grad()
def test_adapted_weight_zero_is_exactly_zero_shot(tiny, pixels):
    prompted = PromptedCLIP.from_backbone(tiny, PromptConfig(text_tokens=2, visual_tokens=2, residual_rank=4, zero_shot_mix=True))
    prompted.text_prompts.add_(0.5)  # make the adapted side differ from zero-shot
    prompted.residual["image"].up.add_(0.1)
    prompted.set_adapted_weight(0.0)
    assert _diff(prompted.encode_image(pixels), tiny.model.encode_image(pixels, normalize=True)) < tolerance(tiny, 1e-5)
    assert _diff(prompted.encode_text(CAPTIONS), tiny.model.encode_text(tiny.tokenize(CAPTIONS), normalize=True)) \
        < tolerance(tiny, 1e-5)


@torch.no_grad()
def test_adapted_weight_one_ignores_zero_shot(tiny, pixels):
    mixed = PromptedCLIP.from_backbone(tiny, PromptConfig(text_tokens=2, zero_shot_mix=True))
    plain = PromptedCLIP.from_backbone(tiny, PromptConfig(text_tokens=2))
    assert _diff(mixed.encode_text(CAPTIONS), plain.encode_text(CAPTIONS)) < 1e-6


def test_adapted_weight_outside_unit_interval_is_refused(tiny):
    prompted = PromptedCLIP.from_backbone(tiny, PromptConfig(text_tokens=2, zero_shot_mix=True))
    with pytest.raises(ValueError):
        prompted.set_adapted_weight(1.5)


def test_deep_text_prompts_get_gradients_at_every_block(tiny):
    prompted = PromptedCLIP.from_backbone(tiny, PromptConfig(text_tokens=2, text_deep=True))
    depth = len(tiny.model.transformer.resblocks)
    assert tuple(prompted.text_deep_prompts.shape) == (depth - 1, 2, tiny.model.token_embedding.weight.shape[1])
    prompted.encode_text(CAPTIONS).sum().backward()
    assert prompted.text_deep_prompts.grad is not None
    assert bool((prompted.text_deep_prompts.grad.abs().sum(dim=(1, 2)) > 0).all())


@torch.no_grad()
def test_untrained_block_adapters_change_nothing_and_need_visual_prompts(tiny, pixels):
    plain = PromptedCLIP.from_backbone(tiny, PromptConfig(visual_tokens=2, visual_deep_from=0))
    adapted = PromptedCLIP.from_backbone(tiny, PromptConfig(visual_tokens=2, visual_deep_from=0, block_adapter_rank=3))
    assert len(adapted.block_adapters) == len(adapted.visual_layers) == len(tiny.model.visual.transformer.resblocks)
    assert _diff(adapted.encode_image(pixels), plain.encode_image(pixels)) < tolerance(tiny, 1e-6)
    adapted.block_adapters[-1].up.add_(noise_like(adapted.block_adapters[-1].up, torch.Generator().manual_seed(0)))
    assert _diff(adapted.encode_image(pixels), plain.encode_image(pixels)) > 1e-3
    assert _diff(adapted.image_tower(pixels, prompts=False), plain.image_tower(pixels, prompts=False)) == 0
    with pytest.raises(ValueError, match="need visual prompts"):
        PromptedCLIP.from_backbone(tiny, PromptConfig(text_tokens=2, block_adapter_rank=3))
    assert TrainConfig(method="text", block_adapter_rank=3).prompt_config().block_adapter_rank == 0


@torch.no_grad()
def test_untrained_text_block_adapters_change_nothing_until_trained(tiny):
    plain = PromptedCLIP.from_backbone(tiny, PromptConfig(text_tokens=2))
    adapted = PromptedCLIP.from_backbone(tiny, PromptConfig(text_tokens=2, text_block_adapter_rank=3))
    assert adapted.text_block_adapters is not None
    assert len(adapted.text_block_adapters) == len(tiny.model.transformer.resblocks)
    assert _diff(adapted.encode_text(CAPTIONS), plain.encode_text(CAPTIONS)) < tolerance(tiny, 1e-6)
    first = adapted.text_block_adapters[0]
    first.up.add_(noise_like(first.up, torch.Generator().manual_seed(0)))
    assert _diff(adapted.encode_text(CAPTIONS), plain.encode_text(CAPTIONS)) > 1e-3
    tokens = plain.tokenize(CAPTIONS)
    assert _diff(adapted.text_tower(tokens, prompts=False), plain.text_tower(tokens, prompts=False)) == 0
    assert TrainConfig(method="visual", text_block_adapter_rank=3).prompt_config().text_block_adapter_rank == 0


def test_block_adapters_train_at_the_residual_rate(tiny):
    items = generate(load_spec("style"), 12, seed=5)
    # In half precision training scales its loss (a GradScaler), and the first steps, whose scaled gradients
    # overflow float16, are skipped while the scale comes down: give it steps enough to take one.
    epochs = 8 if half_precision(tiny) else 1
    config = TrainConfig(text_tokens=2, visual_tokens=2, block_adapter_rank=2, text_block_adapter_rank=2,
                         residual_rank=0, word_tokens=0, zero_shot_mix=False, epochs=epochs, batch_size=4,
                         patience=None, restore_best=False)
    trained = train_adapter(tiny, items[:8], items[8:], config).prompted
    assert all(float(block.up.detach().abs().sum()) > 0 for block in trained.block_adapters)
    assert all(float(block.up.detach().abs().sum()) > 0 for block in trained.text_block_adapters)


def test_every_learned_tensor_survives_an_artifact_round_trip(tiny, pixels, tmp_path):
    config = PromptConfig(text_tokens=2, visual_tokens=2, text_deep=True, residual_rank=4, zero_shot_mix=True,
                          block_adapter_rank=2, text_block_adapter_rank=2, coupling_rank=2)
    prompted = PromptedCLIP.from_backbone(tiny, config)
    with torch.no_grad():
        for p in prompted.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    prompted.set_adapted_weight(0.25)
    save_adapter(tmp_path / "a.safetensors", prompted)
    loaded = load_adapter(tmp_path / "a.safetensors", tiny)
    assert float(loaded.adapted_weight) == 0.25
    with torch.no_grad():
        assert _diff(loaded.encode_image(pixels), prompted.encode_image(pixels)) < tolerance(tiny, 1e-3)  # float16 storage
        assert _diff(loaded.encode_text(CAPTIONS), prompted.encode_text(CAPTIONS)) < tolerance(tiny, 1e-3)
        assert _diff(loaded.encode_image(pixels), PromptedCLIP.from_backbone(tiny, config).encode_image(pixels)) > 1e-2


@pytest.mark.slow
def test_every_candidate_of_the_default_method_fits_one_megabyte_on_vit_b_32(vitb32, tmp_path):
    sizes = {}
    for name, config in candidate_configs(TrainConfig()):
        info = save_adapter(tmp_path / "b32.safetensors", PromptedCLIP.from_backbone(vitb32, config.prompt_config()))
        sizes[name] = info.num_bytes
    assert len(sizes) == len(CANDIDATES) and max(sizes.values()) <= 1_000_000, sizes


def test_mixing_weight_chosen_on_val_is_never_worse_than_zero_shot_there(tiny):
    items = generate(load_spec("broad"), 60, seed=3)
    cfg = TrainConfig(method="dual", epochs=2, batch_size=16, patience=None, text_tokens=2, visual_tokens=2,
                      lr=5e-2, residual_rank=4, zero_shot_mix=True)
    result = train_adapter(tiny, items[:40], items[40:], cfg)
    chosen = (result.best_metrics["t2i_r1"], result.best_metrics["rsum"])
    zero = (result.zero_shot_metrics["t2i_r1"], result.zero_shot_metrics["rsum"])
    assert chosen >= zero
    if result.best_epoch > 0:
        assert [m["adapted_weight"] for m in result.history["mix"]] == sorted(cfg.mix_grid)
    else:  # nothing beat the initial prompts: no weight was tried, and none of them ships
        assert result.history["mix"] == [] and float(result.prompted.adapted_weight) == 0.0


def test_untrained_prompts_never_ship(tiny):
    """With nothing learned (lr 0) the initial, random prompts stay best: the adapter is exactly zero-shot."""
    items = generate(load_spec("broad"), 60, seed=3)
    cfg = TrainConfig(method="dual", epochs=2, batch_size=16, patience=None, text_tokens=2, visual_tokens=2,
                      lr=0.0, residual_lr=0.0, residual_rank=4, zero_shot_mix=True)
    result = train_adapter(tiny, items[:40], items[40:], cfg)
    assert result.best_epoch == 0
    assert float(result.prompted.adapted_weight) == 0.0
    assert result.best_metrics == result.zero_shot_metrics
    captions = [c for item in items[40:] for c in item.captions]
    assert torch.allclose(result.prompted.encode_text(captions).cpu(), tiny.encode_texts(captions).float(),
                          atol=tolerance(tiny, 1e-5))
