"""Adapter files: round trip, metadata without a backbone, refusal of another backbone."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load as load_raw
from safetensors.torch import save as save_raw

from adapters.artifact import (
    AdapterError,
    AdapterIncompatible,
    _header_metadata,
    load_adapter,
    read_adapter_info,
    save_adapter,
    serialize_adapter,
)
from adapters.prompted import PromptConfig, PromptedCLIP
from adapters.train import TrainConfig
from tests.support import noise_like, tolerance

CONFIG = PromptConfig(text_tokens=3, visual_tokens=2, visual_deep_from=1, text_init="random", seed=5)


def _trained_looking(tiny) -> PromptedCLIP:
    prompted = PromptedCLIP.from_backbone(tiny, CONFIG)
    with torch.no_grad():  # move off the initialisation so a lost tensor would show
        for p in prompted.parameters():
            p.add_(noise_like(p, torch.Generator().manual_seed(9)))
    return prompted


def test_save_then_load_gives_the_same_embeddings_up_to_float16_rounding(tiny, pixels, tmp_path):
    prompted = _trained_looking(tiny)
    path = tmp_path / "a" / "adapter.safetensors"
    info = save_adapter(path, prompted, TrainConfig(method="dual", epochs=2), {"val": {"t2i_r1": 0.5}})
    loaded = load_adapter(path, tiny)
    for name, value in loaded.prompt_state_dict().items():  # exactly the float16 values, back in float32
        assert value.dtype == torch.float32
        assert torch.equal(value, prompted.prompt_state_dict()[name].half().float()), name
    captions = ["a red circle", "two blue stars"]
    with torch.no_grad():
        assert (loaded.encode_image(pixels) - prompted.encode_image(pixels)).abs().max() < tolerance(tiny, 1e-3)
        assert (loaded.encode_text(captions) - prompted.encode_text(captions)).abs().max() < tolerance(tiny, 1e-3)
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


def test_tensors_are_stored_in_float16_and_float32_files_still_load(tiny, tmp_path):
    prompted = _trained_looking(tiny)
    prompted_words = PromptedCLIP.from_backbone(tiny, PromptConfig(text_tokens=2, word_tokens=4, zero_shot_mix=True))
    prompted_words.set_words([10, 11, 12, 13])
    prompted_words.set_adapted_weight(0.3)
    assert stored_dtypes(serialize_adapter(prompted_words)) == {"text_prompts": torch.float16, "word_deltas": torch.float16, "word_ids": torch.int64,
                                                            "adapted_weight": torch.float32}
    assert float(load_adapter(serialize_adapter(prompted_words), tiny).adapted_weight) == pytest.approx(0.3, abs=1e-7)

    blob = serialize_adapter(prompted)
    header = read_adapter_info(blob)
    old = save_raw(prompted.prompt_state_dict(), metadata=_header_metadata(blob))  # a float32 file, as written before
    assert len(old) > len(blob)
    loaded = load_adapter(old, tiny)
    assert loaded.num_parameters() == header.num_parameters
    assert torch.equal(loaded.prompt_state_dict()["text_prompts"], prompted.prompt_state_dict()["text_prompts"])


def test_a_value_float16_cannot_hold_is_kept_in_float32(tiny):
    prompted = _trained_looking(tiny)
    with torch.no_grad():
        prompted.text_prompts[0, 0] = 1e6
    dtypes = stored_dtypes(serialize_adapter(prompted))
    assert dtypes["text_prompts"] == torch.float32 and dtypes["visual_prompts"] == torch.float16
    assert float(load_adapter(serialize_adapter(prompted), tiny).text_prompts.detach()[0, 0]) == 1e6


def stored_dtypes(blob: bytes) -> dict[str, torch.dtype]:
    return {name: t.dtype for name, t in load_raw(blob).items()}


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
