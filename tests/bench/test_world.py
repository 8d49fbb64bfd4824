"""The miniature world generator: determinism, specs, item validity, caption length."""

from __future__ import annotations

import json

import numpy as np
import open_clip
import pytest

from adapters.backbone import register_model_configs
from adapters.data import PairedItem
from bench import world
from bench.world import generate, list_specs, load_spec, split

SHIFTS = ("composition", "fine_grained", "style", "vocabulary")


def _pixels(item: PairedItem) -> np.ndarray:
    return np.asarray(item.image)


def test_shipped_specs_are_listed():
    names = list_specs()
    assert "broad" in names
    for shift in SHIFTS:
        assert shift in names


def test_same_seed_same_items_and_prefix_stable():
    spec = load_spec("broad")
    a, b = generate(spec, 40, seed=3), generate(spec, 60, seed=3)
    for x, y in zip(a, b[:40], strict=True):  # item i depends only on (spec, seed, i)
        assert np.array_equal(_pixels(x), _pixels(y))
        assert x.captions == y.captions
        assert x.category == y.category
        assert x.attributes == y.attributes
    c = generate(spec, 40, seed=4)
    assert sum(np.array_equal(_pixels(x), _pixels(y)) for x, y in zip(a, c, strict=True)) == 0


def test_load_spec_by_name_or_path_and_by_string_in_generate():
    by_name = load_spec("broad")
    by_path = load_spec(world.SPEC_DIR / "broad.json")
    assert by_name == by_path
    assert by_name.name == "broad"
    assert generate("broad", 3, 0)[0].captions == generate(by_name, 3, 0)[0].captions
    with pytest.raises(FileNotFoundError):
        load_spec("no_such_world")


def test_invalid_spec_is_rejected(tmp_path):
    data = json.loads((world.SPEC_DIR / "broad.json").read_text())
    data["textures"]["wavy"] = {"pattern": "wavy-lines"}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="wavy"):
        load_spec(path)


@pytest.mark.parametrize("name", list_specs())
def test_every_spec_generates_valid_items(name):
    spec = load_spec(name)
    items = generate(spec, 60, seed=0)
    assert len(items) == 60
    keys = set()
    for item in items:
        assert isinstance(item, PairedItem)
        assert item.image.mode == "RGB"
        assert item.image.size == (spec.image_size, spec.image_size)
        assert item.captions
        assert all(isinstance(c, str) and c.strip() == c and c for c in item.captions)
        assert all("{" not in c and "  " not in c for c in item.captions)
        assert isinstance(item.category, str)
        assert item.category
        assert item.attributes
        assert all(isinstance(a, str) and a for a in item.attributes)
        keys.add(item.key)
    assert len(keys) == 60
    # The world is not degenerate: images and categories vary.
    assert len({item.category for item in items}) > 3
    assert np.std(np.stack([_pixels(i) for i in items]).astype(np.float32)) > 10


@pytest.mark.parametrize("name", list_specs())
def test_captions_fit_the_context_with_room_for_prompts(name):
    register_model_configs()
    tokenizer = open_clip.get_tokenizer("miniworld-vit")
    captions = [c for item in generate(name, 200, seed=1) for c in item.captions]
    lengths = (tokenizer(captions) != 0).sum(dim=1)  # includes start and end tokens
    assert int(lengths.max()) <= 40, captions[int(lengths.argmax())]


def test_clean_spec_gives_complete_captions():
    spec = load_spec("broad").clean()
    for item in generate(spec, 50, seed=2):
        colour = item.attributes[0]
        synonyms = spec.caption["words"].get("colors", {}).get(colour, [colour])
        assert all(any(s in c for s in synonyms) for c in item.captions), (colour, item.captions)


@pytest.mark.parametrize("name", SHIFTS)
def test_shifts_are_pure_data_and_differ_from_broad(name):
    path = world.SPEC_DIR / f"{name}.json"
    data = json.loads(path.read_text())  # plain JSON: no code, no references outside the spec dir
    assert isinstance(data, dict)
    assert "description" in data
    spec = load_spec(name)
    broad = load_spec("broad")
    assert spec.to_dict() != broad.to_dict()


def _words(items) -> set[str]:
    return {w.strip(",.:()-") for item in items for c in item.captions for w in c.split()}


def test_vocabulary_shift_uses_words_broad_never_does_and_style_does_not():
    broad = _words(generate(load_spec("broad").clean(), 2000, seed=0))
    style_items, vocab_items = generate("style", 300, seed=1), generate("vocabulary", 300, seed=1)
    # The vocabulary shift draws broad-world scenes (attributes named in the corpus's own words)...
    assert {w for item in vocab_items for a in item.attributes for w in a.split()} <= broad
    attribute_words = lambda items: {w for item in items for a in item.attributes for w in a.split()}  # noqa: E731
    assert attribute_words(style_items) <= broad  # style's attribute words are the pretraining vocabulary
    unseen = _words(vocab_items) - broad
    assert {"crimson", "orb", "chequered", "lozenge"} <= unseen


def test_fine_grained_categories_share_shapes_and_differ_in_fine_attributes():
    items = generate("fine_grained", 200, seed=0)
    by_category = {}
    for item in items:
        by_category.setdefault(item.category, set()).add(tuple(item.attributes[1:3]))  # texture, size
    assert len(by_category) >= 8
    assert all(len(v) == 1 for v in by_category.values())  # a category fixes texture and size


def test_split_partitions_deterministically():
    items = list(range(103))
    train, val, test = split(items, [0.7, 0.15, 0.15], seed=1)
    assert sorted(train + val + test) == items
    assert (len(train), len(val)) == (72, 15)
    assert split(items, [0.7, 0.15, 0.15], seed=1) == [train, val, test]
    assert split(items, [0.7, 0.15, 0.15], seed=2) != [train, val, test]
