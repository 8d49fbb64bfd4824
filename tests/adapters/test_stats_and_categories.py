"""Bootstrap intervals, category metrics and templated captions (the pieces the service reports with)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adapters.captions import templated_captions
from adapters.evaluate import category_metrics, per_query_category, per_query_t2i_ranks
from adapters.stats import bootstrap_mean, paired_bootstrap_gain


def test_paired_gain_of_a_tie_includes_zero():
    hits = (np.arange(400) % 5 == 0).astype(float)
    gain = paired_bootstrap_gain(hits, hits.copy())
    assert gain.mean == 0.0
    assert gain.low <= 0.0 <= gain.high


def test_paired_gain_of_a_consistent_improvement_excludes_zero():
    base = np.zeros(300)
    better = (np.arange(300) % 4 == 0).astype(float)  # 25 % of queries fixed, none broken
    gain = paired_bootstrap_gain(base, better)
    assert gain.mean == pytest.approx(0.25)
    assert gain.low > 0.15


def test_paired_gain_drops_queries_without_a_value():
    base = np.array([0.0, 1.0, np.nan, 0.0])
    cand = np.array([1.0, 1.0, 1.0, np.nan])
    assert paired_bootstrap_gain(base, cand).mean == pytest.approx(0.5)


def test_paired_gain_refuses_unpaired_lengths():
    with pytest.raises(ValueError):
        paired_bootstrap_gain(np.zeros(3), np.zeros(4))


def test_bootstrap_interval_brackets_the_mean():
    values = np.random.default_rng(0).random(500)
    ci = bootstrap_mean(values)
    assert ci.low < ci.mean < ci.high


def test_category_precision_and_average_precision_by_hand():
    # Query 0 (cat a) scores image 0 (a) highest, then ties image 1 (b) and image 2 (a).
    text = torch.eye(3)
    images = torch.eye(3)
    per = per_query_category(text, images, ["a", "b", "a"], ["a", "b", "a"], k=2)
    assert per["cat_p10"].tolist() == [0.5, 0.5, 0.5]
    # The tie goes against the query: a, b, a -> AP = (1/1 + 2/3) / 2.
    assert per["cat_map"][0].item() == pytest.approx((1 + 2 / 3) / 2)
    assert per["cat_map"][1].item() == pytest.approx(1.0)


def test_category_metrics_skip_queries_without_a_category():
    text, images = torch.eye(2), torch.eye(2)
    means = category_metrics(text, images, ["a", None], ["a", "b"], k=1)
    assert means["cat_p10"] == pytest.approx(1.0)


def test_per_query_ranks_count_ties_against_the_query():
    text = torch.tensor([[1.0, 0.0]])
    images = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # target (image 0) ties with image 1
    assert per_query_t2i_ranks(text, images, torch.tensor([0])).tolist() == [2]


def test_templated_captions_name_attributes_then_category():
    caps = templated_captions("apple", ["orange", "small"])
    assert caps[0] == "a photo of an orange small apple"
    assert len(set(caps)) == len(caps)


def test_templated_captions_need_a_category():
    with pytest.raises(ValueError):
        templated_captions("  ")
