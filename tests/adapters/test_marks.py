"""Learning from marks alone: average precision, and the cross-validated gate's fallback to zero-shot.

Real open_clip modules on the tiny test model; a random model proves nothing about quality, so these
check the mechanics: what the gate serves when it refuses is exactly the backbone's embeddings.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adapters.marks import (
    MIN_JUDGED_QUERIES,
    MarkedQuery,
    average_precision,
    choose,
    cross_validate,
    gate_level,
    train_on_marks,
)
from adapters.train import TrainConfig
from bench.world import generate, load_spec


def test_average_precision_counts_ties_against_the_query():
    assert average_precision(torch.tensor([0.9, 0.5, 0.1]), torch.tensor([True, False, False])) == 1.0
    assert average_precision(torch.tensor([0.9, 0.5, 0.1]), torch.tensor([False, True, True])) == pytest.approx(
        (1 / 2 + 2 / 3) / 2)
    assert average_precision(torch.tensor([0.5, 0.5]), torch.tensor([True, False])) == 0.5


@pytest.fixture(scope="module")
def marked(tiny_backbone):
    pool = generate(load_spec("style"), 24, seed=5)
    queries = [MarkedQuery(pool[k].captions[0], relevant=[k], not_relevant=[(k + 1) % 24, (k + 7) % 24])
               for k in range(12)]
    return pool, queries


def test_cross_validation_judges_every_answered_query_once_per_candidate(tiny_backbone, marked):
    pool, queries = marked
    cfg = TrainConfig(epochs=2, batch_size=8, seed=0)
    selection = cross_validate(tiny_backbone, pool, queries, cfg, folds=3)
    assert selection.queries == len(queries)
    assert {(c["epoch"], c["weight"]) for c in selection.candidates} == {
        (e, w) for e in range(3) for w in cfg.mix_grid if w > 0}
    best = max(c["gain_ap"]["low"] for c in selection.candidates)
    assert selection.gain is not None
    assert selection.gain.low == best
    assert selection.gate is not None and selection.gate.low <= selection.gain.low  # the corrected bound is stricter
    assert selection.served == (selection.gate.low > 0 and selection.queries >= MIN_JUDGED_QUERIES)


def _served_texts(result, texts):
    return result.prompted.encode_text(result.prompted.tokenize(texts)).float().cpu()


def test_the_served_adapter_is_the_gated_one(tiny_backbone, marked):
    pool, queries = marked
    result = train_on_marks(tiny_backbone, pool, queries, TrainConfig(epochs=1, batch_size=8, seed=0), folds=3)
    selection = result.selection
    assert selection.served == (selection.gate is not None and selection.gate.low > 0
                                and selection.queries >= MIN_JUDGED_QUERIES)
    assert float(result.prompted.adapted_weight) == selection.served_weight
    texts = [q.text for q in queries[:4]]
    same = torch.allclose(_served_texts(result, texts), tiny_backbone.encode_texts(texts).float(), atol=1e-5)
    assert same == (not selection.served)  # refused: exactly zero-shot


def test_marks_with_nothing_relevant_serve_zero_shot(tiny_backbone, marked):
    pool, queries = marked
    nothing = [MarkedQuery(q.text, not_relevant=q.not_relevant) for q in queries]
    result = train_on_marks(tiny_backbone, pool, nothing, TrainConfig(epochs=1, batch_size=8), folds=3)
    assert result.train is None
    assert not result.selection.served
    texts = [q.text for q in queries[:4]]
    assert torch.allclose(_served_texts(result, texts), tiny_backbone.encode_texts(texts).float(), atol=1e-5)


def _candidates(n_queries: int, seed: int, gain: float = 0.0) -> dict[tuple[int, float], list[float]]:
    """Per-query AP of zero-shot and of 10 epochs x 4 weights that differ from it by noise (+ ``gain``)."""
    rng = np.random.default_rng(seed)
    zero = rng.uniform(0.2, 1.0, n_queries)
    common = rng.normal(0, 0.1, n_queries)  # one job's epochs and weights err together
    per = {(0, 0.0): list(zero)}
    for epoch in range(10):
        for weight in (0.25, 0.5, 0.75, 1.0):
            per[epoch, weight] = list(zero + gain + common * weight + rng.normal(0, 0.05, n_queries))
    return per


def test_the_gate_corrects_for_choosing_the_best_of_many_candidates():
    assert gate_level(40) == pytest.approx(1 - 0.05 / 40)
    # Pure noise on 80 queries: the best of 40 uncorrected 95 % lower bounds often clears 0, the gate never.
    selections = [choose(_candidates(80, seed)) for seed in range(20)]
    assert sum(s.gain.low > 0 for s in selections) >= 3
    assert not any(s.served for s in selections)


def test_the_gate_serves_a_real_gain_and_never_on_too_few_queries():
    assert all(choose(_candidates(80, seed, gain=0.08)).served for seed in range(5))
    few = choose(_candidates(MIN_JUDGED_QUERIES - 1, 0, gain=0.3))
    assert few.gate is not None and few.gate.low > 0 and not few.served
