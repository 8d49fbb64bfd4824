"""Whether a tuned version becomes the active one: the rules of each activation policy, in one place.

The default, ``if_better``, activates only a real gain: the paired bootstrap 95 % interval of the
new version's gain over the one that was active (zero-shot when none), resampled over the job's
test queries, must lie above ``min_gain``. A tie, or a gain the test pairs cannot tell from noise,
keeps the version inactive, and its note says the numbers.

Which per-query number is compared: text->image R@1, unless the captions are class names (every
test image has a category and most test queries are caption texts that more than one test image
carries, e.g. "a photo of a cat"); exact-pair R@1 cannot tell those images apart, so category
precision@10 is compared instead.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from adapters.data import PairedItem
from adapters.stats import paired_bootstrap_gain
from service.progress import ActivationEvidence
from service.vocabulary import Activation

R1, CATEGORY_P10 = "t2i_r1", "cat_p10"
LABELS = {R1: "R@1", CATEGORY_P10: "category P@10"}
LEVEL = 0.95
BOOTSTRAP_SEED = 0  # fixed: the same test results always give the same decision


def captions_are_class_names(items: Sequence[PairedItem]) -> bool:
    if not items or any(item.category is None for item in items):
        return False
    carriers = Counter(text for item in items for text in set(item.captions))
    queries = [text for item in items for text in item.captions]
    return 2 * sum(carriers[text] > 1 for text in queries) > len(queries)


def selection_metric(items: Sequence[PairedItem]) -> str:
    """The per-query metric activation compares on these test items."""
    return CATEGORY_P10 if captions_are_class_names(items) else R1


@dataclass(frozen=True)
class Decision:
    activate: bool
    note: str
    evidence: ActivationEvidence


def decide(policy: Activation, min_gain: float, metric: str, baseline: np.ndarray, candidate: np.ndarray,
           baseline_name: str) -> Decision:
    """Decide from per-query values of the same test queries (baseline: what is active now)."""
    gain = paired_bootstrap_gain(baseline, candidate, seed=BOOTSTRAP_SEED, level=LEVEL)
    queries = int(np.sum(~(np.isnan(baseline) | np.isnan(candidate))))
    numbers = (f"test {LABELS[metric]} {np.nanmean(candidate):.3f} vs {np.nanmean(baseline):.3f} of {baseline_name}, "
               f"gain {gain.mean:+.3f} (95 % interval {gain.low:+.3f} to {gain.high:+.3f}, paired bootstrap "
               f"over {queries} test queries; min_gain {min_gain})")
    if policy == Activation.NEVER:
        activate, why = False, "kept inactive: activation=never"
    elif policy == Activation.ALWAYS:
        activate, why = True, "activated: activation=always"
    elif policy == Activation.IF_NOT_WORSE:
        activate = gain.mean >= min_gain
        why = "activated: not worse than the active one" if activate else \
            "kept inactive: worse than the active one"
    else:
        activate = gain.low > min_gain
        why = "activated: the gain's 95 % interval lies above min_gain" if activate else \
            "kept inactive: the gain's 95 % interval does not lie above min_gain (no clear gain)"
    evidence = ActivationEvidence(
        policy=policy, metric=metric, baseline_name=baseline_name, adapter=float(np.nanmean(candidate)),
        baseline=float(np.nanmean(baseline)), gain=gain.to_dict(), level=LEVEL, queries=queries,
        min_gain=min_gain, activated=activate)
    return Decision(activate, f"{why}; {numbers}", evidence)
