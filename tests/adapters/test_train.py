"""The training loop on the tiny backbone: mechanics, determinism, callbacks, frozen backbone."""

from __future__ import annotations

import pytest
import torch

from adapters.prompted import PromptedCLIP
from adapters.train import TrainConfig, TrainingCancelled, train_adapter
from bench.world import generate, load_spec

from .helpers import backbone_digest


@pytest.fixture(scope="module")
def world_items():
    items = generate(load_spec("broad"), 60, seed=3)
    return items[:40], items[40:]


FAST = dict(epochs=2, batch_size=16, patience=None, text_tokens=2, visual_tokens=2)
PROMPTS_ONLY = dict(residual_rank=0, zero_shot_mix=False, word_tokens=0)  # the prompt machinery alone: no map, mixing or word table


def test_only_prompts_change_and_backbone_is_untouched(tiny, world_items):
    train, val = world_items
    before = backbone_digest(tiny.model)
    result = train_adapter(tiny, train, val, TrainConfig(method="dual", visual_deep_from=1, lr=1e-2, restore_best=False, **FAST))
    assert backbone_digest(tiny.model) == before
    assert all(not p.requires_grad for p in tiny.model.parameters())
    state = result.prompted.prompt_state_dict()
    initial = PromptedCLIP.from_backbone(tiny, result.prompted.config).prompt_state_dict()
    learned = {"text_prompts", "visual_prompts", "residual.image.down", "residual.image.up", "residual.text.down",
               "residual.text.up", "word_deltas"}
    assert set(state) == set(initial) == learned | {"adapted_weight", "word_ids"}  # the default recipe's tensors
    assert all(not torch.equal(state[name], initial[name]) for name in learned)  # every learned tensor moved
    assert result.steps == 2 * 3
    assert len(result.history["loss"]) == result.steps
    assert [e["epoch"] for e in result.history["epochs"]] == [0, 1, 2]
    assert result.best_metrics == result.history["epochs"][result.best_epoch]["metrics"]
    assert result.zero_shot_metrics["n_captions"] >= len(val)


def test_fixed_seed_is_deterministic_on_cpu(tiny, world_items):
    train, val = world_items
    config = TrainConfig(method="dual", seed=7, hard_negatives=1, same_category_weight=0.5, **FAST)
    a = train_adapter(tiny, train, val, config)
    b = train_adapter(tiny, train, val, config)
    assert a.history["loss"] == b.history["loss"]
    for name, tensor in a.prompted.prompt_state_dict().items():
        assert torch.equal(tensor, b.prompted.prompt_state_dict()[name])


@pytest.mark.parametrize(
    "method,extra,shapes",
    [
        ("text", {}, {"text_prompts": [2, 64]}),
        ("visual", {"visual_start": 1}, {"visual_prompts": [1, 2, 64]}),
        ("dual", {"attribute_reweighting": True, "hard_negatives": 2, "captions_per_item": 2}, {"text_prompts": [2, 64], "visual_prompts": [1, 2, 64]}),
    ],
)
def test_methods_and_loss_options_run(tiny, world_items, method, extra, shapes):
    train, val = world_items
    result = train_adapter(tiny, train, val, TrainConfig(method=method, **{**FAST, "epochs": 1}, **PROMPTS_ONLY, **extra))
    assert result.prompted.prompt_shapes() == shapes
    assert all(torch.isfinite(torch.tensor(result.history["loss"])))


def test_progress_reports_and_cancel(tiny, world_items):
    train, val = world_items
    seen = []
    result = train_adapter(tiny, train, val, TrainConfig(method="text", **FAST), on_progress=seen.append)
    steps = [r["step"] for r in seen]
    assert steps[-1] == result.steps
    assert seen[-1]["total_steps"] == result.steps
    assert {"step", "total_steps", "epoch", "loss", "metrics", "eta_s"} <= set(seen[0])
    assert seen[-1]["eta_s"] == 0
    calls = []
    with pytest.raises(TrainingCancelled):
        train_adapter(tiny, train, val, TrainConfig(method="text", **FAST), should_cancel=lambda: calls.append(1) or len(calls) > 2)


def test_early_stopping_keeps_best_epoch(tiny, world_items):
    train, val = world_items
    config = TrainConfig(method="text", **{**FAST, "epochs": 5, "patience": 1}, **PROMPTS_ONLY, lr=0.0)
    result = train_adapter(tiny, train, val, config)
    # With a zero learning rate nothing improves: one epoch of patience, then stop; epoch 0 kept.
    assert result.stopped_early
    assert result.best_epoch == 0
    assert len(result.history["epochs"]) == 2


def test_best_epoch_is_what_comes_back(tiny, world_items):
    """The returned prompts are the best held-out epoch's, not the last epoch's.

    On the CPU a snapshot that aliased the live parameters would follow every later step, and
    ``restore_best`` would silently return the last epoch while reporting another.
    """
    train, val = world_items
    states: dict[int, dict[str, torch.Tensor]] = {}

    def keep(epoch: int, prompted: PromptedCLIP) -> bool:
        states[epoch] = {k: v.clone() for k, v in prompted.prompt_state_dict().items()}
        return False

    config = TrainConfig(method="dual", **{**FAST, "epochs": 4}, **PROMPTS_ONLY, lr=5e-2)
    result = train_adapter(tiny, train, val, config, on_epoch=keep)
    returned = result.prompted.prompt_state_dict()
    assert set(returned) == set(states[result.best_epoch])
    for name, value in returned.items():
        assert torch.equal(value, states[result.best_epoch][name]), name
    # Every epoch moved the prompts, so returning the wrong epoch could not pass unnoticed.
    assert all(not torch.equal(states[e]["visual_prompts"], states[e + 1]["visual_prompts"]) for e in range(4))


def test_a_state_snapshot_shares_no_memory_with_the_prompts(tiny):
    prompted = PromptedCLIP.from_backbone(tiny, TrainConfig(method="dual", **FAST).prompt_config())
    snapshot = prompted.prompt_state_dict()
    before = {k: v.clone() for k, v in snapshot.items()}
    with torch.no_grad():
        for param in prompted.parameters():
            param.add_(1.0)
    for name, value in snapshot.items():
        assert torch.equal(value, before[name]), name
