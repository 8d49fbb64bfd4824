"""Learning from a user's marks alone: training data from marked queries, and choices by cross-validation.

A user who marks search results gives few queries (tens to a couple of hundred), most of them with
one relevant image or none. Holding a quarter of them out as a val set leaves 2-20 val queries: the
epoch and the zero-shot mixing weight chosen on them are noise, and a noisy choice ships a loss.
Here every query with a relevant mark is judged once, by a model that did not train on it:

- the answered queries are cut into ``folds`` groups; for each group a job trains on the marks of the
  others (``train_adapter`` with the caller's recipe, every epoch run) and, after every epoch, each
  held-out query ranks its fold's marked images (those that do not train in this fold) at every
  mixing weight of the recipe's ``mix_grid``; the score of a query is the average precision of its
  relevant marks in that ranking (smoother than a hit at rank 1 with one relevant image or two);
- per (epoch, weight > 0) this gives one value per answered query, paired with zero-shot (weight 0)
  on the same rankings. The candidate chosen is the one whose paired bootstrap 95 % lower bound of
  the gain over zero-shot is highest (a lower bound, not a mean: a lucky point estimate on a few
  queries does not win), and the final job trains on every mark up to that epoch;
- the **gate**: the adapter is served at that weight only when the lower bound of the chosen
  candidate's gain is above 0 at a Bonferroni-corrected level, 1 - 0.05 / K for the K candidates
  compared. The 95 % bound that chose it is the best of K (epochs 0-10 x 4 weights, 44 with the
  recipe): on a few queries the best of 44 lower bounds clears 0 by chance alone. It also needs at
  least 30 judged queries: a percentile bootstrap over fewer understates its own spread (simulated,
  pure-noise candidates on 10 queries passed the corrected bound one time in five; on 30, one in
  twenty; the uncorrected best-of-40 passed one time in three). Otherwise the weight is 0, which is
  exactly zero-shot. With few marks the gate usually refuses: learning from use never makes search
  worse than it was before the user marked anything. (A bootstrap max-t interval over all
  candidates at once, which allows for their errors being shared, was tried in the sixth session:
  on the benchmark's marks it was no narrower, so the gate stayed as it was; README, "Learning from
  use".)

Marks become data as the service makes them (``service.tuning``): a relevant mark makes the query
text a caption of the image; a not-relevant one makes the image a named negative of the query
(``adapters.negatives``), used only while the query trains.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from .data import PairedItem
from .features import ImageSide, TextSide, preprocess_images
from .negatives import QueryNegatives
from .prompted import PromptConfig, PromptedCLIP
from .stats import Interval, paired_bootstrap_gain
from .train import TrainConfig, TrainResult, train_adapter

FOLDS = 4
BOOTSTRAP_SEED = 0  # fixed: the same marks always give the same choice
FAMILY_LEVEL = 0.95  # the gate's confidence over all candidates together (Bonferroni)
MIN_JUDGED_QUERIES = 30  # fewer: the gate refuses whatever the bound says


@dataclass
class MarkedQuery:
    """One search: its text and the marks on its results (indices into the collection's items)."""

    text: str
    relevant: list[int] = field(default_factory=list)
    not_relevant: list[int] = field(default_factory=list)


def training_data(pool: Sequence[PairedItem], queries: Sequence[MarkedQuery]) -> tuple[list[PairedItem], QueryNegatives]:
    """Items captioned only by the queries marked relevant for them, and each query's named negatives."""
    captions: dict[int, list[str]] = {}
    for query in queries:
        for index in query.relevant:
            captions.setdefault(index, []).append(query.text)
    items = [PairedItem(pool[i].image, texts, key=pool[i].key) for i, texts in sorted(captions.items())]
    negatives, position = QueryNegatives(), {}
    for query in queries:
        for index in query.not_relevant:
            if index not in position:
                position[index] = len(negatives.images)
                negatives.images.append(pool[index].image)
            negatives.of_caption.setdefault(query.text, []).append(position[index])
    return items, negatives


def average_precision(scores: torch.Tensor, relevant: torch.Tensor) -> float:
    """AP of the relevant entries in the ranking by ``scores`` (ties against the query)."""
    order = torch.argsort(relevant.int(), stable=True)  # irrelevant first, so a tie never favours a relevant one
    order = order[torch.argsort(scores[order], descending=True, stable=True)]
    hits = relevant[order].float()
    precision = hits.cumsum(0) / torch.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum().clamp_min(1))


@dataclass
class Selection:
    """What cross-validation chose, and whether the gate lets the adapter be served."""

    epoch: int
    weight: float  # the adapter's mixing weight at that epoch (> 0; before the gate, 0 when nothing was judged)
    gain: Interval | None  # paired gain in AP over zero-shot on the held-out queries, 95 % (None: nothing judged)
    queries: int  # answered queries judged by a model that did not train on them
    served: bool  # the gate's lower bound is above 0
    candidates: list[dict[str, Any]] = field(default_factory=list)
    gate: Interval | None = None  # the same gain at the corrected level the gate reads (None: nothing judged)
    zero_shot_ap: float | None = None  # the judged queries' mean AP with the backbone alone

    @property
    def served_weight(self) -> float:
        return self.weight if self.served else 0.0

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "weight": self.weight, "served": self.served, "served_weight": self.served_weight,
                "queries": self.queries, "gain_ap": None if self.gain is None else self.gain.to_dict(),
                "gate_ap": None if self.gate is None else self.gate.to_dict(),
                "gate_level": gate_level(len(self.candidates)) if self.candidates else None,
                "candidates_compared": len(self.candidates), "zero_shot_ap": self.zero_shot_ap}


@dataclass
class MarksResult:
    prompted: PromptedCLIP  # served: mixing weight ``selection.served_weight`` (0: exactly zero-shot)
    raw_weight: float  # the weight cross-validation chose, before the gate (0: nothing to choose from)
    selection: Selection
    train: TrainResult | None  # the final job on every mark (None: fewer than 2 images to train on)


class _FoldJudge:
    """After each epoch of a fold's job: every held-out query's AP at each mixing weight."""

    def __init__(self, backbone, pool, held_out: Sequence[MarkedQuery], trained: set[int], grid: Sequence[float]):
        gallery = sorted({i for q in held_out for i in q.relevant + q.not_relevant} - trained)
        position = {index: k for k, index in enumerate(gallery)}
        self.queries = [q for q in held_out if any(i in position for i in q.relevant)]
        self.relevant = [torch.tensor([i in q.relevant for i in gallery]) for q in self.queries]
        self.pixels = preprocess_images(backbone, [pool[i].image for i in gallery])
        self.texts = [q.text for q in self.queries]
        self.grid = list(grid)
        zero = PromptedCLIP.from_backbone(backbone, PromptConfig())
        self.zero = (TextSide(zero, self.texts).all(), ImageSide(zero, self.pixels).all()) if self.queries else None
        self.scores: dict[tuple[int, float], list[float]] = {}
        self.sides: tuple[TextSide, ImageSide] | None = None  # built once, on the job's adapter

    def __call__(self, epoch: int, prompted: PromptedCLIP) -> bool:
        if not self.queries:
            return False
        if self.sides is None:
            self.sides = TextSide(prompted, self.texts), ImageSide(prompted, self.pixels)
        assert self.zero is not None  # built whenever there are queries
        text, image = self.sides[0].all(), self.sides[1].all()
        for weight in self.grid:
            sims = prompted.mix_embeddings(text, self.zero[0], weight) @ prompted.mix_embeddings(image, self.zero[1], weight).T
            self.scores[epoch, weight] = [average_precision(s, r) for s, r in zip(sims, self.relevant, strict=True)]
        return False


ProgressCallback = Callable[[dict], None]


def _run_progress(on_progress: ProgressCallback | None, run: int, runs: int) -> ProgressCallback | None:
    """``train_adapter``'s events of run ``run`` of ``runs`` (the folds, then the final job).

    Its own val metrics are left out: they come from one training item and choose nothing here.
    """
    if on_progress is None:
        return None
    keep = ("step", "total_steps", "epoch", "epochs", "loss")
    return lambda event: on_progress({**{k: event[k] for k in keep}, "run": run, "runs": runs})


def cross_validate(backbone, pool: Sequence[PairedItem], queries: Sequence[MarkedQuery], config: TrainConfig,
                   folds: int = FOLDS, with_negatives: bool = True, on_progress: ProgressCallback | None = None,
                   should_cancel: Callable[[], bool] | None = None) -> Selection:
    """Choose (epoch, mixing weight > 0) on answered queries judged out of fold; gate on the lower bound.

    ``on_progress`` gets each fold's training events with ``run`` (1..folds) and ``runs`` (folds + 1,
    the final job included); ``should_cancel`` is polled at every step (``TrainingCancelled``).
    """
    if not config.zero_shot_mix:
        raise ValueError("choosing a mixing weight needs zero_shot_mix")
    answered = [q for q in queries if q.relevant]
    per_candidate: dict[tuple[int, float], list[float]] = {}
    fold_cfg = replace(config, patience=None, restore_best=False)
    for fold in range(folds):
        held_out = [q for k, q in enumerate(answered) if k % folds == fold]
        out = {id(q) for q in held_out}
        trains = [q for q in queries if id(q) not in out]
        items, negatives = training_data(pool, trains)
        trained = {i for q in trains for i in q.relevant}
        judge = _FoldJudge(backbone, pool, held_out, trained, sorted({0.0, *config.mix_grid}))
        if len(items) < 2 or not judge.queries:
            continue
        # train_adapter's own val (one training item) is not used for any choice: the judge decides.
        train_adapter(backbone, items, items[:1], fold_cfg, negatives=negatives if with_negatives else None,
                      on_epoch=judge, on_progress=_run_progress(on_progress, fold + 1, folds + 1),
                      should_cancel=should_cancel)
        for key, values in judge.scores.items():
            per_candidate.setdefault(key, []).extend(values)
    return choose(per_candidate)


def choose(per_candidate: dict[tuple[int, float], list[float]]) -> Selection:
    """The candidate with the highest 95 % lower bound, and the gate's verdict on it.

    ``per_candidate[(epoch, weight)]``: one AP per judged query, the same queries in the same order
    for every key; weight 0 is zero-shot (the same at every epoch), the fallback and not a candidate.
    """
    if not per_candidate:
        return Selection(0, 0.0, None, 0, False)
    zero = np.asarray(per_candidate[min(key for key in per_candidate if key[1] == 0.0)])
    keys = sorted(key for key in per_candidate if key[1] > 0)
    if not keys:
        return Selection(0, 0.0, None, len(zero), False)
    values = np.asarray([per_candidate[key] for key in keys])
    candidates: list[dict[str, Any]] = [
        {"epoch": epoch, "weight": weight, "gain_ap": paired_bootstrap_gain(zero, row, seed=BOOTSTRAP_SEED).to_dict()}
        for (epoch, weight), row in zip(keys, values, strict=True)]
    # Highest lower bound; ties go to less adapter, then to fewer epochs.
    chosen = max(range(len(keys)), key=lambda k: (round(candidates[k]["gain_ap"]["low"], 12), -keys[k][1], -keys[k][0]))
    level = gate_level(len(candidates))
    gate = paired_bootstrap_gain(zero, values[chosen], n_boot=_replicates(level), seed=BOOTSTRAP_SEED, level=level)
    served = gate.low > 0 and len(zero) >= MIN_JUDGED_QUERIES
    epoch, weight = keys[chosen]
    return Selection(epoch, weight, Interval(**candidates[chosen]["gain_ap"]), len(zero), served, candidates, gate,
                     float(zero.mean()))


def gate_level(candidates: int) -> float:
    """Two-sided level whose lower bound holds for all ``candidates`` at once (Bonferroni)."""
    return 1.0 - (1.0 - FAMILY_LEVEL) / max(1, candidates)


def _replicates(level: float) -> int:
    """Enough bootstrap replicates for about 25 of them in the tail the lower bound is read from."""
    return max(2000, math.ceil(25 / ((1.0 - level) / 2)))


def train_on_marks(backbone, pool: Sequence[PairedItem], queries: Sequence[MarkedQuery],
                   config: TrainConfig | None = None, folds: int = FOLDS, with_negatives: bool = True,
                   on_progress: ProgressCallback | None = None,
                   should_cancel: Callable[[], bool] | None = None) -> MarksResult:
    """Cross-validate, then train on every mark up to the chosen epoch; serve it only past the gate.

    ``with_negatives=False`` leaves the not-relevant marks out (an ablation of the named negatives).
    ``on_progress`` and ``should_cancel``: as ``cross_validate``'s, the final job being run folds + 1.
    """
    config = config or TrainConfig()
    selection = cross_validate(backbone, pool, queries, config, folds, with_negatives, on_progress, should_cancel)
    items, negatives = training_data(pool, queries)
    if len(items) < 2 or selection.gain is None:
        return MarksResult(_zero_shot(backbone, config), 0.0, replace(selection, served=False), None)
    final = replace(config, patience=None, restore_best=False)
    result = train_adapter(backbone, items, items[:1], final, negatives=negatives if with_negatives else None,
                           on_epoch=lambda epoch, _: epoch >= selection.epoch,
                           on_progress=_run_progress(on_progress, folds + 1, folds + 1), should_cancel=should_cancel)
    result.prompted.set_adapted_weight(selection.served_weight)
    return MarksResult(result.prompted, selection.weight, selection, result)


def _zero_shot(backbone, config: TrainConfig) -> PromptedCLIP:
    """An adapter of the recipe's shape at mixing weight 0: exactly the backbone's embeddings."""
    prompted = PromptedCLIP.from_backbone(backbone, config.prompt_config())
    prompted.set_adapted_weight(0.0)
    return prompted
