"""Tuning time with and without caching of frozen computation (``adapters.train.train_adapter``).

- visual prompts entering block L > 0: ``TrainConfig.cache_features`` True vs False (the real switch:
  the activations entering block L are computed once per image, or the first L blocks run every step);
- text-only prompts: the image side is frozen, so ``train_adapter`` always encodes images once and has
  no switch to turn that off. The "uncached" run here is an emulation: the bench swaps
  ``adapters.features.ImageSide`` for a subclass that re-encodes the batch's pixels every step.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Sequence
from typing import Any
from unittest import mock

import torch

import adapters.features as features_module
from adapters.features import ImageSide
from adapters.train import TrainConfig, train_adapter


class _RecomputeFrozenImages(ImageSide):
    """ImageSide that, asked for cache=False on a frozen (prompt-free) image side, re-encodes every step."""

    def __init__(self, prompted, pixels, cache: bool = True, batch_size: int = 64, prefix=None, augment=None):
        if cache or prompted.visual_prompts is not None or augment is not None:
            super().__init__(prompted, pixels, cache=cache, batch_size=batch_size, prefix=prefix, augment=augment)
            return
        self.prompted = prompted
        self.device = prompted.device
        self.frozen = True
        self.pixels = pixels
        self.prefix = None
        self.features = None

    def __call__(self, index: torch.Tensor) -> torch.Tensor:
        if self.features is None and self.prefix is None:
            with torch.no_grad():  # the frozen tower: no gradient would flow into it anyway
                features = self.prompted.image_tower(self.pixels[index].to(self.device))
            # The same head as the cached side (the residual map, when there is one, still trains);
            # encode_image would also mix with zero-shot, which training never does.
            return self.prompted.image_head(features)
        return super().__call__(index)


def _timed_train(backbone, train_items, val_items, config: TrainConfig, emulate_uncached: bool) -> dict:
    events: list[tuple[float, int]] = []

    def on_progress(event: dict) -> None:
        events.append((time.perf_counter(), int(event["step"])))

    # The uncached side: train_adapter's training images come from FrozenWork, which builds them
    # from this module attribute.
    uncached = mock.patch.object(features_module, "ImageSide", _RecomputeFrozenImages)
    context = uncached if emulate_uncached else contextlib.nullcontext()
    with context:
        t0 = time.perf_counter()
        result = train_adapter(backbone, train_items, val_items, config, on_progress=on_progress)
        wall = time.perf_counter() - t0
    # A step's time: from the previous progress event to its own (the first step of the run is left out:
    # nothing marks its start). Epoch-end events (same step number, after validation) only mark starts.
    step_s, last_step, previous = [], 0, None
    for t, step in events:
        if step > last_step and previous is not None:
            step_s.append(t - previous)
        last_step, previous = max(last_step, step), t
    # Before the first step: preprocessing, the frozen side's one-time encode, the prefix cache.
    setup = events[0][0] - t0 if events else wall
    return {
        "result": result,
        "wall_s": wall,
        "setup_s": setup,
        "after_steps_s": wall - setup - sum(step_s),  # validation at each epoch's end, the final evaluation
        "steps": result.steps,
        "step_ms_median": 1000.0 * statistics.median(step_s) if step_s else None,
        "train_loop_s": sum(step_s),
        "timed_steps": len(step_s),
    }


def _compare(a, b) -> dict:
    """How far apart two TrainResults are: prompt tensors, held-out metrics, loss curves."""
    sa, sb = a.prompted.prompt_state_dict(), b.prompted.prompt_state_dict()
    prompt_diff = max((float((sa[k].float() - sb[k].float()).abs().max()) for k in sa), default=0.0)
    metric_diff = max(abs(float(a.best_metrics[k]) - float(b.best_metrics[k])) for k in a.best_metrics)
    la, lb = a.history["loss"], b.history["loss"]
    loss_diff = max((abs(x - y) for x, y in zip(la, lb, strict=True)), default=0.0) if len(la) == len(lb) else float("inf")
    return {
        "same_keys": sorted(sa) == sorted(sb),
        "prompt_max_abs_diff": prompt_diff,
        "best_metrics_max_abs_diff": metric_diff,
        "loss_curve_max_abs_diff": loss_diff,
        "same_best_epoch": a.best_epoch == b.best_epoch,
        "same_steps": a.steps == b.steps,
        "bitwise_identical_prompts": all(torch.equal(sa[k], sb[k]) for k in sa),
    }


def run_pair(backbone, train_items, val_items, base: TrainConfig, repeats: int, emulated: bool,
             tolerance: float = 1e-4) -> dict:
    """Cached vs uncached on the same data and seed, alternating, ``repeats`` times each."""
    runs: dict[str, list[dict]] = {"cached": [], "uncached": []}
    last = {}
    for _ in range(repeats):
        for name in ("cached", "uncached"):
            cfg = TrainConfig.from_dict({**base.to_dict(), "cache_features": name == "cached"})
            out = _timed_train(backbone, train_items, val_items, cfg, emulate_uncached=emulated and name == "uncached")
            last[name] = out.pop("result")
            runs[name].append(out)
    comparison = _compare(last["cached"], last["uncached"])
    comparison["equal_within_tolerance"] = bool(
        comparison["same_keys"] and comparison["same_steps"] and comparison["same_best_epoch"]
        and comparison["prompt_max_abs_diff"] <= tolerance and comparison["best_metrics_max_abs_diff"] <= tolerance
    )
    comparison["tolerance"] = tolerance

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    return {
        "config": base.to_dict(),
        "uncached_is": ("emulated by the bench (ImageSide re-encodes frozen images every step; "
                        "train_adapter has no switch for this)") if emulated else "TrainConfig.cache_features=False",
        "repeats": repeats,
        "runs": runs,
        "cached_wall_s": med("cached", "wall_s"),
        "uncached_wall_s": med("uncached", "wall_s"),
        "wall_speedup": med("uncached", "wall_s") / med("cached", "wall_s"),
        "cached_step_ms": med("cached", "step_ms_median"),
        "uncached_step_ms": med("uncached", "step_ms_median"),
        "step_speedup": med("uncached", "step_ms_median") / med("cached", "step_ms_median"),
        "cached_setup_s": med("cached", "setup_s"),
        "uncached_setup_s": med("uncached", "setup_s"),
        "cached_after_steps_s": med("cached", "after_steps_s"),
        "uncached_after_steps_s": med("uncached", "after_steps_s"),
        "same_result": comparison,
        "best_metrics_cached": last["cached"].best_metrics,
    }


def run_tuning(backbone, items: Sequence, n_train: int, epochs: int, batch_size: int, repeats: int,
               visual_prompted_last: Sequence[int], seed: int) -> dict:
    train_items, val_items = list(items[:n_train]), list(items[n_train:])
    depth = len(backbone.model.visual.transformer.resblocks)
    common: dict[str, Any] = dict(epochs=epochs, batch_size=batch_size, seed=seed, patience=None, warmup=0.1)
    out: dict = {"n_train": len(train_items), "n_val": len(val_items), "image_blocks": depth, "visual": {}}
    for last in visual_prompted_last:
        start = depth - last  # the same share of the tower whatever the backbone's depth
        if not 0 < start < depth:
            continue
        cfg = TrainConfig(method="visual", visual_start=start, **common)
        out["visual"][str(start)] = run_pair(backbone, train_items, val_items, cfg, repeats, emulated=False)
    out["text"] = run_pair(backbone, train_items, val_items, TrainConfig(method="text", **common), repeats,
                           emulated=True)
    return out
