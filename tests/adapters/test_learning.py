"""Prompt training must learn: held-out recall clearly above zero-shot on a shifted collection.

The collection is the ``style`` shift reduced to the part of it that a frozen backbone can still
see: the candle-lit colour cast and darkening of its photographs, and its templates, with the
vocabulary of the pretraining corpus and without the grain, blur and clutter. Why not the full
shift: on the shipped miniworld backbone it has almost no headroom for any per-collection adapter
at this size (in our runs on 350 training items a linear map on frozen embeddings and full
fine-tuning both stayed at held-out R@1 <= 0.02; unseen words such as "crimson orb" never
received trained token embeddings, and grainy night images land on nearly one embedding). A colour cast is the kind of systematic shift prompts
exist for: the information is in the image tokens, the zero-shot mapping reads it wrongly.

Splits are independent draws (different seeds): train captions as the spec writes them,
validation (early stopping) and test (the assertion) with clean captions, test never seen by
training or early stopping.
"""

from __future__ import annotations

import copy
import time

import pytest

from adapters.backbone import OFFLINE_CHECKPOINT, load_backbone
from adapters.evaluate import evaluate
from adapters.train import TrainConfig, train_adapter
from bench.world import WorldSpec, generate, load_spec

pytestmark = pytest.mark.skipif(
    not OFFLINE_CHECKPOINT.exists(),
    reason=f"the pretrained miniworld backbone ({OFFLINE_CHECKPOINT}) is not in this checkout",
)


def colour_cast_style() -> WorldSpec:
    data = copy.deepcopy(load_spec("style").data)
    data["caption"]["words"] = {}  # the pretraining vocabulary ("red circle", not "crimson orb")
    data["noise"] = {"clean": {"w": 1, "sigma": 0}}
    data["backgrounds"] = copy.deepcopy(load_spec("broad").data["backgrounds"])
    data["lighting"] = {"candle": {"w": 1, "gain": 0.55, "tint": [1.3, 0.95, 0.6]}}
    return WorldSpec("style-colour-cast", data)


def test_visual_prompts_learn_a_colour_cast():
    start = time.perf_counter()
    backbone = load_backbone(device="cpu")
    spec = colour_cast_style()
    train = generate(spec, 400, seed=101)
    val = generate(spec.clean(), 150, seed=202)
    test = generate(spec.clean(), 300, seed=303)

    config = TrainConfig(
        method="visual", visual_tokens=8, visual_start=1, visual_deep_from=1,  # block 0 is cached
        lr=1e-2, epochs=10, batch_size=32, patience=4, seed=0,
    )
    result = train_adapter(backbone, train, val, config)
    zero_shot = evaluate(backbone, test)
    trained = evaluate(backbone, test, result.prompted)
    elapsed = time.perf_counter() - start
    print(
        f"\ntest t2i R@1 {zero_shot['t2i_r1']:.3f} -> {trained['t2i_r1']:.3f}, "
        f"R@10 {zero_shot['t2i_r10']:.3f} -> {trained['t2i_r10']:.3f}, "
        f"i2t R@1 {zero_shot['i2t_r1']:.3f} -> {trained['i2t_r1']:.3f}; "
        f"val R@1 by epoch {[round(e['metrics']['t2i_r1'], 3) for e in result.history['epochs']]}; "
        f"{result.steps} steps, {elapsed:.1f} s"
    )
    assert zero_shot["t2i_r1"] < 0.06  # the collection is one where zero-shot is poor
    assert result.best_epoch > 0
    assert trained["t2i_r1"] >= zero_shot["t2i_r1"] + 0.015
    assert trained["t2i_r1"] >= 1.3 * zero_shot["t2i_r1"]
    assert trained["t2i_r10"] >= zero_shot["t2i_r10"] + 0.06
    assert trained["i2t_r1"] >= zero_shot["i2t_r1"] + 0.02
