"""method "auto": every candidate trains on the same data, the best on val is kept, a tie keeps the first."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from adapters.candidates import CANDIDATES, candidate_configs, choose, train_auto
from adapters.schedule import score
from adapters.train import TrainConfig, frozen_work, train_adapter
from bench.world import generate, load_spec


def _metrics(r1: float, rsum: float) -> dict:
    return {"t2i_r1": r1, "rsum": rsum}


def test_choose_takes_the_best_r1_then_the_recall_sum_and_a_tie_keeps_the_earlier():
    assert choose([_metrics(0.2, 1.0), _metrics(0.3, 0.5)]) == 1
    assert choose([_metrics(0.3, 1.0), _metrics(0.3, 1.2)]) == 1
    assert choose([_metrics(0.3, 1.0), _metrics(0.3, 1.0)]) == 0
    assert choose([_metrics(0.4, 1.0), _metrics(0.3, 2.0)]) == 0


def test_the_first_candidate_is_the_config_as_given_and_text_prompts_skip_block_adapters():
    given = TrainConfig(epochs=3, block_adapter_rank=0)
    configs = candidate_configs(given)
    assert [name for name, _ in configs] == list(CANDIDATES)
    assert configs[0][1] == given
    assert configs[1][1].block_adapter_rank > 0 and configs[1][1].epochs == 3
    assert configs[2][1] == replace(configs[1][1], residual_lr=3e-3)  # the second at another lr, nothing else
    assert [name for name, _ in candidate_configs(TrainConfig(method="text"))] == ["recipe"]


@pytest.fixture(scope="module")
def world_items():
    items = generate(load_spec("broad"), 60, seed=3)
    return items[:40], items[40:]


def test_train_auto_keeps_the_candidate_best_on_val(tiny, world_items):
    train, val = world_items
    events = []
    config = TrainConfig(epochs=2, batch_size=16, patience=None, text_tokens=2, visual_tokens=2)
    auto = train_auto(tiny, train, val, config, on_progress=events.append)

    assert [c["name"] for c in auto.tried] == list(CANDIDATES)
    assert sum(c["chosen"] for c in auto.tried) == 1
    kept = next(c for c in auto.tried if c["chosen"])
    assert kept["name"] == auto.chosen
    assert auto.result.best_metrics == kept["val"]
    assert all(score(kept["val"]) >= score(c["val"]) for c in auto.tried)
    assert auto.tried[1]["params"] > auto.tried[0]["params"]  # the block adapters' factors
    assert auto.tried[2]["params"] == auto.tried[1]["params"]
    assert (auto.result.prompted.block_adapters is not None) == (auto.chosen != "recipe")
    assert auto.result.config == candidate_configs(config)[[c["chosen"] for c in auto.tried].index(True)][1]
    assert {(e["run"], e["runs"]) for e in events} == {(1, 3), (2, 3), (3, 3)}
    assert auto.summary() == {"chosen": auto.chosen, "candidates": auto.tried}


def test_candidates_share_the_frozen_work_and_train_as_they_would_alone(tiny, world_items, monkeypatch):
    """Pixels, zero-shot held-out embeddings and cached activations are computed once per job."""
    import adapters.features as features

    calls = []
    real = features.preprocess_images
    monkeypatch.setattr(features, "preprocess_images", lambda *a, **k: calls.append(1) or real(*a, **k))
    train, val = world_items
    config = TrainConfig(epochs=1, batch_size=16, patience=None, text_tokens=2, visual_tokens=2)
    auto = train_auto(tiny, train, val, config)
    assert len(calls) == 2  # the training and the held-out images, once for three candidates
    for (name, cfg), tried in zip(candidate_configs(config), auto.tried, strict=True):
        alone = train_adapter(tiny, train, val, cfg)
        assert (alone.best_metrics, alone.best_epoch) == (tried["val"], tried["best_epoch"]), name
        if tried["chosen"]:
            for key, tensor in alone.prompted.prompt_state_dict().items():
                assert torch.equal(tensor, auto.result.prompted.prompt_state_dict()[key]), key


def test_frozen_work_of_other_items_is_refused(tiny, world_items):
    train, val = world_items
    frozen = frozen_work(tiny, train[:10], val)
    with pytest.raises(ValueError, match="other items"):
        train_adapter(tiny, train, val, TrainConfig(epochs=1, batch_size=16), frozen=frozen)
