"""Adapter files: round trip, metadata without a backbone, refusal of another backbone."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from adapters.artifact import (
    AdapterError,
    AdapterIncompatible,
    load_adapter,
    read_adapter_info,
    save_adapter,
    serialize_adapter,
)
from adapters.prompted import PromptConfig, PromptedCLIP
from adapters.train import TrainConfig

CONFIG = PromptConfig(text_tokens=3, visual_tokens=2, visual_deep_from=1, text_init="random", seed=5)


def _trained_looking(tiny) -> PromptedCLIP:
    prompted = PromptedCLIP.from_backbone(tiny, CONFIG)
    with torch.no_grad():  # move off the initialisation so a lost tensor would show
        for p in prompted.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(9)))
    return prompted


def test_save_then_load_gives_identical_embeddings(tiny, pixels, tmp_path):
    prompted = _trained_looking(tiny)
    path = tmp_path / "a" / "adapter.safetensors"
    info = save_adapter(path, prompted, TrainConfig(method="dual", epochs=2), {"val": {"t2i_r1": 0.5}})
    loaded = load_adapter(path, tiny)
    captions = ["a red circle", "two blue stars"]
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(pixels), prompted.encode_image(pixels))
        assert torch.equal(loaded.encode_text(captions), prompted.encode_text(captions))
    assert info.num_bytes == path.stat().st_size
    assert info.num_parameters == prompted.num_parameters() == 3 * 64 + 2 * 2 * 64
    assert info.prompt_shapes == {"text_prompts": [3, 64], "visual_prompts": [2, 2, 64]}
    assert info.visual_layers == [0, 1]
    assert info.prompt_config == CONFIG
    assert info.train_config["method"] == "dual"
    assert info.metrics == {"val": {"t2i_r1": 0.5}}
    assert info.backbone == tiny.identity
    json.dumps(info.to_dict())  # the service can return it as JSON as is


def test_info_from_bytes_needs_no_backbone(tiny):
    blob = serialize_adapter(_trained_looking(tiny))
    info = read_adapter_info(blob)
    assert info.num_bytes == len(blob)
    assert info.format_version == 1
    assert info.created_at
    assert load_adapter(blob, tiny).num_parameters() == info.num_parameters


@pytest.mark.slow
def test_mismatched_backbone_is_refused_naming_fields(tiny, vitb32, tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_adapter(path, _trained_looking(tiny))
    with pytest.raises(AdapterIncompatible) as caught:
        load_adapter(path, vitb32)
    assert {"model_name", "embed_dim", "image_size", "context_length"} <= set(caught.value.fields)
    assert "model_name" in str(caught.value)
    assert "tiny-vit-test" in str(caught.value)
    # Same architecture, different weights: still refused, on the weight fields.
    other = dataclasses.replace(tiny, identity=dataclasses.replace(tiny.identity, pretrained="random-init:seed=1"))
    with pytest.raises(AdapterIncompatible, match="pretrained"):
        load_adapter(path, other)


def test_garbage_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not an adapter at all")
    with pytest.raises(AdapterError):
        read_adapter_info(bad)
    with pytest.raises(AdapterError):
        read_adapter_info(b"\x00")


@pytest.mark.slow
def test_vit_b_32_text_and_visual_adapter_is_tens_of_kb(vitb32, tmp_path):
    prompted = PromptedCLIP.from_backbone(vitb32, PromptConfig(text_tokens=8, visual_tokens=8))
    info = save_adapter(tmp_path / "b32.safetensors", prompted)
    assert info.num_parameters == 8 * 512 + 8 * 768
    assert 10_000 < info.num_bytes < 100_000, info.num_bytes
