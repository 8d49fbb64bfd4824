"""Texts of many adapters in one forward pass give each adapter's own embeddings."""

from __future__ import annotations

import pytest
import torch

from adapters.backbone import load_backbone
from adapters.mixed_text import MixedTextEncoder
from adapters.prompted import PromptConfig, PromptedCLIP, collection_words
from tests.support import perturb, tolerance

CONFIGS = [
    PromptConfig(text_tokens=2, seed=1),  # shallow prompts
    PromptConfig(text_tokens=4, text_deep=True, residual_rank=3, zero_shot_mix=True, seed=2),  # every head at once
    PromptConfig(residual_rank=2, zero_shot_mix=True, seed=3),  # no prompts, heads only
    PromptConfig(text_tokens=3, zero_shot_mix=True, seed=4),
    PromptConfig(text_tokens=1, text_deep=True, seed=5),
    PromptConfig(text_tokens=2, word_tokens=3, zero_shot_mix=True, seed=6),  # prompts and collection words
    PromptConfig(word_tokens=2, residual_rank=2, zero_shot_mix=True, seed=7),  # collection words, no prompts
    PromptConfig(text_tokens=2, text_block_adapter_rank=2, zero_shot_mix=True, seed=8),  # text block adapters
    PromptConfig(text_tokens=2, text_deep=True, text_block_adapter_rank=3, seed=9),  # ... with deep prompts
]
TEXTS = [
    ["a red circle", "two blue squares on the left of a long caption " * 6],  # the second is truncated
    ["x"],
    ["green", "a", "b c d"],
    ["yellow star"],
    ["one", "two three four"],
    ["a zebra disc", "two plaid tiles"],
    ["zebra", "no word of its table"],
    ["a small red circle", "blue"],
    ["two tiles", "a zebra disc on the left"],
]


def trained_looking(backbone, config: PromptConfig, texts: list[str]) -> PromptedCLIP:
    """An adapter whose every tensor moved away from its initial value (an untrained map is the identity)."""
    prompted = PromptedCLIP.from_backbone(backbone, config)
    if config.word_tokens:
        prompted.set_words(collection_words(backbone.tokenizer, texts, config.word_tokens))
    perturb(prompted, torch.Generator().manual_seed(config.seed), 0.3)
    if config.zero_shot_mix:
        prompted.set_adapted_weight(0.6)
    return prompted.eval()


@pytest.fixture(scope="module")
def adapters(tiny):
    return [trained_looking(tiny, c, texts) for c, texts in zip(CONFIGS, TEXTS, strict=True)]


@torch.no_grad()
def test_a_mixed_batch_equals_each_adapter_alone(tiny, adapters):
    groups = [*zip(adapters, TEXTS, strict=True), (None, ["zero shot", "a photo of a dog"])]
    mixed = MixedTextEncoder.for_backbone(tiny).encode(groups)
    bound = tolerance(tiny, 1e-5)
    for (prompted, texts), got in zip(groups, mixed, strict=True):  # the mixed encoder answers on the CPU
        alone = prompted.encode_text(texts).cpu() if prompted is not None else tiny.encode_texts(texts)
        assert got.shape == alone.shape
        torch.testing.assert_close(got, alone, atol=bound, rtol=bound)


@torch.no_grad()
def test_adapters_really_differ_so_the_comparison_can_fail(tiny, adapters):
    """The rows of one text through different adapters are not the same vector."""
    out = MixedTextEncoder.for_backbone(tiny).encode([(a, ["a red circle"]) for a in adapters] + [(None, ["a red circle"])])
    rows = torch.cat(out)
    distances = torch.cdist(rows, rows) + torch.eye(len(rows), device=rows.device)
    assert float(distances.min()) > 1e-3


@torch.no_grad()
def test_one_adapter_twice_and_empty_groups(tiny, adapters):
    encoder = MixedTextEncoder.for_backbone(tiny)
    first, empty, second = encoder.encode([(adapters[1], ["a"]), (adapters[0], []), (adapters[1], ["a", "b"])])
    assert empty.shape[0] == 0
    bound = tolerance(tiny, 1e-5)
    torch.testing.assert_close(first[0], second[0], atol=bound, rtol=bound)


def test_an_adapter_of_another_backbone_is_refused(tiny):
    other = load_backbone(tiny.identity.model_name, device=tiny.device.type)  # same config, another model object
    foreign = PromptedCLIP.from_backbone(other, PromptConfig(text_tokens=2))
    with pytest.raises(ValueError, match="another backbone"):
        MixedTextEncoder.for_backbone(tiny).encode([(foreign, ["a"])])
