"""The word table: learned offsets on the token embeddings of a collection's own words."""

from __future__ import annotations

import pytest
import torch

from adapters.artifact import AdapterError, load_adapter, serialize_adapter
from adapters.data import PairedItem
from adapters.prompted import PromptConfig, PromptedCLIP, collection_words
from adapters.train import TrainConfig, train_adapter
from bench.world import generate, load_spec
from tests.support import noise_like, tolerance


def _ids(tokenizer, word: str) -> list[int]:
    row = tokenizer([word])[0]
    return row[1 : int(row.argmax())].tolist()


def test_collection_words_are_the_most_used_tokens_without_special_ones(tiny):
    tok = tiny.tokenizer
    captions = ["zebra disc", "zebra tile", "zebra", "plaid tile"]
    words = collection_words(tok, captions, 2)
    assert words == [_ids(tok, "zebra")[0], _ids(tok, "tile")[0]]
    everything = collection_words(tok, captions, 100)
    assert len(everything) == 4  # zebra, tile, disc, plaid: no start, end or padding token
    assert collection_words(tok, captions, 0) == [] and collection_words(tok, [], 5) == []


@torch.no_grad()
def test_an_offset_changes_exactly_the_captions_that_use_its_word(tiny):
    prompted = PromptedCLIP.from_backbone(tiny, PromptConfig(word_tokens=3))
    zebra = _ids(tiny.tokenizer, "zebra")[0]
    prompted.set_words([zebra])
    captions = ["a zebra disc", "a plaid tile"]
    zero = tiny.encode_texts(captions)  # on the CPU
    # torch.testing.assert_close's own float32 bounds, looser in half precision
    bounds = {"atol": tolerance(tiny, 1e-5), "rtol": tolerance(tiny, 1.3e-6)}
    torch.testing.assert_close(prompted.encode_text(captions).cpu(), zero, **bounds)  # offsets start at zero
    # Random, not constant, offsets: LayerNorm removes an offset that is the same on every dimension.
    prompted.word_deltas += noise_like(prompted.word_deltas, torch.Generator().manual_seed(0))
    moved = prompted.encode_text(captions).cpu()  # rows 1 and 2 are unused: no token may pick them up
    assert float((moved[0] - zero[0]).abs().max()) > 1e-2
    torch.testing.assert_close(moved[1], zero[1], **bounds)
    torch.testing.assert_close(prompted.text_features(prompted.tokenize(captions), prompts=False),
                               PromptedCLIP.from_backbone(tiny, PromptConfig()).text_features(prompted.tokenize(captions)))


def test_bad_word_ids_are_refused(tiny):
    prompted = PromptedCLIP.from_backbone(tiny, PromptConfig(word_tokens=2))
    vocab = tiny.model.token_embedding.weight.shape[0]
    for bad in ([1, 2, 3], [vocab], [-2], [5, 5], [-1, 7]):
        with pytest.raises(ValueError):
            prompted.set_words(bad)
    with pytest.raises(ValueError):
        PromptedCLIP.from_backbone(tiny, PromptConfig()).set_words([1])


def test_a_file_round_trip_keeps_the_words_and_refuses_forged_ids(tiny):
    prompted = PromptedCLIP.from_backbone(tiny, PromptConfig(text_tokens=2, word_tokens=2))
    prompted.set_words(_ids(tiny.tokenizer, "zebra")[:1])
    with torch.no_grad():
        prompted.word_deltas.add_(noise_like(prompted.word_deltas, torch.Generator().manual_seed(3)))
    loaded = load_adapter(serialize_adapter(prompted), tiny)
    assert torch.equal(loaded.word_ids, prompted.word_ids)
    with torch.no_grad():
        assert (loaded.encode_text(["a zebra"]) - prompted.encode_text(["a zebra"])).abs().max() \
            < tolerance(tiny, 1e-3)  # float16 storage
    forged = prompted.prompt_state_dict()
    forged["word_ids"] = torch.tensor([10**7, -1])
    with pytest.raises(ValueError):
        prompted.load_prompt_state_dict(forged)
    prompted.word_ids = torch.tensor([3, 3])  # what a hand-made file could hold
    with pytest.raises(AdapterError):
        load_adapter(serialize_adapter(prompted), tiny)


def test_training_learns_the_words_of_the_training_captions_only(tiny):
    """A new word ("zebra") names one half of the pictures; training moves its embedding."""
    items = generate(load_spec("broad"), 24, seed=2)
    named = [PairedItem(it.image, [f"a zebra {c}" if i % 2 else c for c in it.captions])
             for i, it in enumerate(items)]
    config = TrainConfig(method="text", epochs=2, batch_size=8, patience=None, text_tokens=2, word_tokens=512,
                         residual_rank=0, zero_shot_mix=False, restore_best=False, lr=3e-2)
    result = train_adapter(tiny, named[:16], named[16:], config)
    table = dict(zip(result.prompted.word_ids.tolist(), result.prompted.word_deltas.detach(), strict=True))
    assert list(table) == collection_words(tiny.tokenizer, [c for it in named[:16] for c in it.captions], 512)
    zebra = _ids(tiny.tokenizer, "zebra")[0]
    assert float(table[zebra].abs().max()) > 1e-3  # the new word's embedding moved
    assert result.prompted.config.word_tokens == len(table) < 512  # sized to the words the captions have
    assert "zebra" in result.summary()["collection_words"]  # the job report names the words it learned
