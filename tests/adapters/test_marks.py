"""Learning from marks alone: average precision, and the cross-validated gate's fallback to zero-shot.

Real open_clip modules on the tiny test model; a random model proves nothing about quality, so these
check the mechanics: what the gate serves when it refuses is exactly the backbone's embeddings.
"""

from __future__ import annotations

import pytest
import torch

from adapters.marks import MarkedQuery, average_precision, cross_validate, train_on_marks
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
    assert selection.served == (best > 0)


def _served_texts(result, texts):
    return result.prompted.encode_text(result.prompted.tokenize(texts)).float().cpu()


def test_the_served_adapter_is_the_gated_one(tiny_backbone, marked):
    pool, queries = marked
    result = train_on_marks(tiny_backbone, pool, queries, TrainConfig(epochs=1, batch_size=8, seed=0), folds=3)
    selection = result.selection
    assert selection.served == (selection.gain is not None and selection.gain.low > 0)
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
