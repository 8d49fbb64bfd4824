"""Retrieval metrics on hand-made cases whose ranks are known."""

from __future__ import annotations

import pytest
import torch

from adapters.evaluate import CategoryMetrics, Metrics, category_metrics, evaluate, retrieval_metrics


def test_known_ranks_with_several_captions_per_image():
    # Three images on the axes; four captions, two for image 0.
    images = torch.eye(3)
    captions = torch.tensor([
        [1.0, 0.0, 0.0],  # image 0: rank 1
        [0.1, 0.9, 0.0],  # image 0: rank 2 (image 1 scores higher)
        [0.0, 0.2, 0.8],  # image 1: rank 2 (image 2 higher)
        [0.0, 0.0, 1.0],  # image 2: rank 1
    ])
    owner = torch.tensor([0, 0, 1, 2])
    m = retrieval_metrics(captions, images, owner)
    assert m["t2i_r1"] == pytest.approx(0.5)
    assert m["t2i_r5"] == 1.0
    assert m["t2i_medr"] == pytest.approx(1.5)
    # image->text: image 0's best caption is caption 0 (rank 1); image 1: caption 1 (0.9) is a
    # wrong caption above caption 2 (0.2) -> rank 2; image 2: caption 3 (1.0) rank 1.
    assert m["i2t_r1"] == pytest.approx(2 / 3)
    assert m["i2t_medr"] == 1.0
    assert m["n_images"] == 3
    assert m["n_captions"] == 4


def test_the_metrics_carry_exactly_the_keys_their_types_declare():
    # Metrics is what mypy checks callers against; the dicts at run time must not drift from it.
    m = retrieval_metrics(torch.eye(3), torch.eye(3), torch.arange(3))
    assert set(m) == Metrics.__required_keys__
    assert Metrics.__optional_keys__ == CategoryMetrics.__required_keys__ == {"cat_p10", "cat_map"}
    assert set(category_metrics(torch.eye(2), torch.eye(2), ["a", "b"], ["a", "b"])) == set(CategoryMetrics.__required_keys__)
    assert m["rsum"] == pytest.approx(sum(m[k] for k in ("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10")))


def test_ties_count_against_the_query():
    images = torch.ones(4, 2)
    captions = torch.ones(4, 2)
    m = retrieval_metrics(captions, images, torch.arange(4))
    assert m["t2i_r1"] == 0.0
    assert m["t2i_medr"] == 4.0


def test_duplicate_images_are_all_correct_targets():
    images = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    captions = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    m = retrieval_metrics(captions, images, torch.tensor([1, 2]), image_ids=torch.tensor([7, 7, 8]))
    assert m["t2i_r1"] == 1.0


def test_evaluate_with_and_without_adapter_agree_at_identity(tiny):
    from PIL import Image

    from adapters.data import PairedItem
    from adapters.prompted import PromptConfig, PromptedCLIP

    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    items = [PairedItem(Image.new("RGB", (40, 40), c), [f"colour {i}", f"shade {i}"]) for i, c in enumerate(colours)]
    zero = evaluate(tiny, items)
    same = evaluate(tiny, items, PromptedCLIP.from_backbone(tiny, PromptConfig()))
    assert zero == same
