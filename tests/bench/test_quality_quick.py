"""The quality benchmark's quick core: the default adapter on held-out test pairs of one shift.

Runs ``bench.quality.quick_core`` (the core of ``python -m bench.quality --quick``) with the
shipped miniature-world checkpoint on the ``style`` shift: 600 train / 200 val / 300 test pairs
from independent world seeds, ``TrainConfig()`` (the service's default recipe), one seed. Test
pairs are never used for training, early stopping or the zero-shot mixing weight. Nothing here
asserts on time.

Margins: not below zero-shot (the val-chosen mixing weight can fall back to it); to be tightened
from a measured run of this core on the shipped checkpoint.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest

from adapters.backbone import OFFLINE_CHECKPOINT

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not OFFLINE_CHECKPOINT.exists(),
    reason=f"shipped backbone checkpoint {OFFLINE_CHECKPOINT} is missing: adapters on a random model prove nothing",
)]


MARGIN_RSUM = 0.0  # R@1 + R@5 + R@10 of the adapter minus zero-shot's, at least
MARGIN_CAT = 0.01  # category P@10 may not drop by more than this (style, 1,000 test images: -0.3 [-0.8, +0.2] points)


@pytest.fixture(scope="module")
def core():
    from adapters.backbone import load_backbone
    from bench.quality import QUICK_SHIFT, quick_core

    return quick_core(load_backbone(), QUICK_SHIFT, seed=0)


def _rsum(result: dict) -> float:
    s = result["summary"]
    return s["t2i_r1"] + s["t2i_r5"] + s["t2i_r10"]


def test_both_are_measured_on_the_same_held_out_queries(core):
    assert len(core["adapter"]["per_query"]["rank"]) == len(core["zero_shot"]["per_query"]["rank"])


def test_val_choice_is_never_below_zero_shot_on_val(core):
    adapter = core["adapter"]
    assert (adapter["val"]["t2i_r1"], adapter["val"]["rsum"]) >= (adapter["val_zero_shot"]["t2i_r1"], adapter["val_zero_shot"]["rsum"])


def test_adapter_lifts_test_recall_above_zero_shot(core):
    assert _rsum(core["adapter"]) >= _rsum(core["zero_shot"]) + MARGIN_RSUM, (core["adapter"]["summary"], core["zero_shot"]["summary"])


def test_adapter_does_not_lower_category_precision(core):
    assert core["adapter"]["summary"]["cat_p10"] >= core["zero_shot"]["summary"]["cat_p10"] - MARGIN_CAT
