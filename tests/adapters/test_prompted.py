"""PromptedCLIP: identity without prompts, exact prompt splicing, pooling, frozen backbone."""

from __future__ import annotations

import open_clip
import pytest
import torch
from open_clip.model import CLIP, CustomTextCLIP

from adapters.prompted import PromptConfig, PromptedCLIP, PromptsUnsupported
from tests.support import tolerance

CAPTIONS = ["a small red striped circle on the left", "two blue squares", "word " * 60]


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


@torch.no_grad()
def _assert_identity(model, tokenizer, image_size: int):
    prompted = PromptedCLIP(model, PromptConfig(), tokenizer)
    weight = next(model.parameters())  # inputs go where the model lives, in its dtype
    tokens = tokenizer(CAPTIONS).to(weight.device)
    pixels = torch.randn(3, 3, image_size, image_size, generator=torch.Generator().manual_seed(1)).to(weight)
    bound = tolerance(model, 1e-6)
    assert _max_diff(prompted.encode_text(tokens), model.encode_text(tokens, normalize=True)) < bound
    assert _max_diff(prompted.encode_text(CAPTIONS), model.encode_text(tokens, normalize=True)) < bound
    assert _max_diff(prompted.encode_image(pixels), model.encode_image(pixels, normalize=True)) < bound


def test_identity_tiny(tiny):
    _assert_identity(tiny.model, tiny.tokenizer, tiny.identity.image_size)


@pytest.mark.slow
def test_identity_random_vit_b_32(vitb32):
    _assert_identity(vitb32.model, vitb32.tokenizer, 224)


def _small_clip(cls=CLIP, vision=None, text=None):
    torch.manual_seed(0)
    vision_cfg = {**dict(image_size=32, layers=2, width=64, head_width=32, patch_size=8), **(vision or {})}
    text_cfg = {**dict(context_length=32, width=64, heads=2, layers=2), **(text or {})}
    return cls(32, vision_cfg, text_cfg).eval()


@pytest.mark.parametrize(
    "vision,text",
    [
        ({"pool_type": "avg"}, {}),
        ({"attentional_pool": True, "attn_pooler_queries": 4, "attn_pooler_heads": 2}, {}),
        ({"final_ln_after_pool": True, "no_ln_pre": True}, {"proj_bias": True}),
        ({"patch_dropout": 0.5, "qk_norm": True}, {"no_causal_mask": True}),
        ({}, {"pool_type": "eos", "eos_id": 49407}),
    ],
)
def test_identity_open_clip_variants(vision, text):
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=32)
    _assert_identity(_small_clip(vision=vision, text=text), tokenizer, 32)


def test_identity_custom_text_clip():
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=32)
    _assert_identity(_small_clip(cls=CustomTextCLIP), tokenizer, 32)


@pytest.mark.parametrize("vision", [{"pool_type": "avg"}, {"attentional_pool": True, "attn_pooler_queries": 4, "attn_pooler_heads": 2}, {}])
def test_visual_prompts_change_features_but_are_not_pooled(vision):
    model = _small_clip(vision=vision)
    base = PromptedCLIP(model, PromptConfig())
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    prompted = PromptedCLIP(model, PromptConfig(visual_tokens=3, visual_deep_from=1))
    # Pooling sees only image tokens: the output of the last block restricted to them.
    seen = {}

    def record(module, inputs, output):
        seen["n"] = inputs[0].shape[-2]

    model.visual.ln_post.register_forward_hook(record)
    with torch.no_grad():
        out = prompted.encode_image(pixels)
        ref = base.encode_image(pixels)
    if not vision.get("attentional_pool"):
        assert seen["n"] == model.visual.grid_size[0] * model.visual.grid_size[1] + 1
    assert out.shape == ref.shape
    assert _max_diff(out, ref) > 1e-4  # the prompts took part in attention


def test_text_prompts_initialised_from_phrase_equal_the_phrase(tiny):
    """Prompts holding the embeddings of "a photo of a" must encode exactly like that prefix."""
    prompted = PromptedCLIP.from_backbone(tiny, PromptConfig(text_tokens=4, text_init="a photo of a"))
    with torch.no_grad():
        ours = prompted.encode_text(["red circle", "two blue squares"])
        ref = tiny.model.encode_text(tiny.tokenize(["a photo of a red circle", "a photo of a two blue squares"]), normalize=True)
    assert _max_diff(ours, ref) < tolerance(tiny, 1e-5)


def test_long_captions_are_cut_keeping_end_token(tiny):
    prompted = PromptedCLIP.from_backbone(tiny, PromptConfig(text_tokens=6))
    full = tiny.tokenize(CAPTIONS)
    fitted = prompted.fit_tokens(full)
    eot = tiny.tokenizer.eot_token_id
    assert fitted.shape[1] == tiny.context_length - 6
    assert (fitted == eot).sum(1).tolist() == [1, 1, 1]
    assert fitted[2, -1] == eot  # the long caption now ends at the last kept position
    assert torch.equal(fitted[:2], full[:2, : fitted.shape[1]])
    assert torch.equal(fitted, prompted.tokenize(CAPTIONS))  # same as tokenizing short
    with torch.no_grad():
        assert _max_diff(prompted.encode_text(full), prompted.encode_text(CAPTIONS)) == 0


def test_only_prompts_are_parameters_and_get_gradients(tiny, pixels):
    prompted = PromptedCLIP.from_backbone(tiny, PromptConfig(text_tokens=3, visual_tokens=2, visual_deep_from=1))
    names = {name for name, _ in prompted.named_parameters()}
    assert names == {"text_prompts", "visual_prompts"}
    assert set(prompted.state_dict()) == names  # the backbone is not a submodule
    assert prompted.num_parameters() == 3 * 64 + 2 * 2 * 64
    loss = prompted.encode_image(pixels).sum() + prompted.encode_text(["a red circle"]).sum()
    loss.backward()
    assert prompted.text_prompts.grad is not None
    assert prompted.text_prompts.grad.abs().sum() > 0
    assert prompted.visual_prompts.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in tiny.model.parameters())


def test_visual_layer_schedules():
    assert PromptConfig(visual_tokens=4).visual_layers(12) == [0]
    assert PromptConfig(visual_tokens=4, visual_deep_from=0).visual_layers(4) == [0, 1, 2, 3]
    assert PromptConfig(visual_tokens=4, visual_start=2, visual_deep_from=2).visual_layers(4) == [2, 3]
    assert PromptConfig(visual_tokens=4, visual_start=3).visual_layers(4) == [3]
    assert PromptConfig(visual_tokens=0, visual_deep_from=0).visual_layers(4) == []
    with pytest.raises(ValueError):
        PromptConfig(visual_tokens=4, visual_start=4).visual_layers(4)


def test_resnet_tower_refuses_visual_prompts_but_takes_text_prompts():
    model = _small_clip(vision={"layers": (1, 1, 1, 1), "width": 16})
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=32)
    with pytest.raises(PromptsUnsupported, match="textual prompts only"):
        PromptedCLIP(model, PromptConfig(visual_tokens=4), tokenizer)
    prompted = PromptedCLIP(model, PromptConfig(text_tokens=4), tokenizer)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert _max_diff(prompted.encode_image(pixels), model.encode_image(pixels, normalize=True)) < 1e-6
        assert prompted.encode_text(["a red circle"]).shape == (1, 32)
