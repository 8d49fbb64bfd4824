"""What every training loop here shares: the learning-rate shape, the held-out score, early stopping.

``adapters.train`` (prompts) and ``bench.baselines`` (linear adapter, full fine-tuning) use these
same pieces, so the baselines get exactly the prompts' schedule and stopping rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .evaluate import Metrics


def warmup_cosine(total: int, warmup: float) -> Callable[[int], float]:
    """LR factor per step: linear warm-up (a fraction of ``total`` if < 1, else steps), then cosine to 0."""
    warm = int(warmup if warmup >= 1 else round(warmup * total))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total - warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def score(metrics: Metrics) -> tuple[float, float]:
    """Held-out score: R@1 decides; on a collection's small held-out set it often ties, then the recall sum."""
    return metrics["t2i_r1"], metrics["rsum"]


@dataclass
class EarlyStopping:
    """Keeps the best epoch's state by ``score`` and says when ``patience`` epochs brought nothing."""

    patience: int | None
    best_score: tuple[float, float] = (-math.inf, -math.inf)
    best_epoch: int = 0
    best_metrics: Metrics | None = None  # set by the first update
    best_state: Any = None
    bad_epochs: int = 0

    def update(self, epoch: int, metrics: Metrics, snapshot: Callable[[], Any]) -> bool:
        """Record an epoch's held-out metrics; ``snapshot()`` is called only when it is the new best."""
        if score(metrics) > self.best_score:
            self.best_score, self.best_epoch, self.best_metrics = score(metrics), epoch, metrics
            self.best_state = snapshot()
            self.bad_epochs = 0
            return True
        self.bad_epochs += 1
        return False

    def should_stop(self, epoch: int, epochs: int) -> bool:
        return self.patience is not None and self.bad_epochs >= self.patience and epoch < epochs
