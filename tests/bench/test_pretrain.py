"""The backbone card's zero-shot figures: recall and its interval over queries."""

import torch

from bench.pretrain import recall_at_k


def test_recall_counts_the_own_image_and_bounds_r1_by_a_bootstrap_interval():
    torch.manual_seed(0)
    n = 400
    images = torch.nn.functional.normalize(torch.randn(n, 16), dim=-1)
    # Half the captions sit on their own image, half on the next one: R@1 is exactly 50 %.
    texts = torch.where(torch.arange(n)[:, None] % 2 == 0, images, images.roll(-1, dims=0))
    out = recall_at_k(texts, images)
    assert out["R@1"] == 50.0
    low, high = out["R@1 95% interval"]
    assert 40.0 < low < 50.0 < high < 60.0  # about +-5 points for 400 queries
    perfect = recall_at_k(images, images)
    assert perfect["R@1"] == 100.0 and perfect["R@1 95% interval"] == [100.0, 100.0]
    assert perfect["median_rank"] == 1
