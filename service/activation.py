"""Whether a tuned version becomes the active one: the rules of each activation policy, in one place.

The default, ``if_better``, activates only a real gain: the paired bootstrap 95 % interval of the
new version's gain over the one that was active (zero-shot when none), resampled over the job's
test queries, must lie above ``min_gain``. A tie, or a gain the test pairs cannot tell from noise,
keeps the version inactive, and its note says the numbers.

Which per-query number is compared: text->image R@1, unless the captions are class names (every
test image has a category and most test queries are caption texts that more than one test image
carries, e.g. "a photo of a cat"); exact-pair R@1 cannot tell those images apart, so category
precision@10 is compared instead.

A job on the user's marks alone has no test pairs (``decide_on_marks``): its evidence is the
cross-validated gain in average precision of the marked queries over zero-shot, and ``if_better``
reads its lower bound at the Bonferroni level for the epochs and weights compared (``adapters.marks``'s
gate, which also needs 30 judged queries). That gain is over zero-shot, so it never replaces another active
version by itself.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from adapters.data import PairedItem
from adapters.marks import MIN_JUDGED_QUERIES, Selection, gate_level
from adapters.stats import paired_bootstrap_gain
from service.progress import ActivationEvidence
from service.vocabulary import ZERO_SHOT, Activation

R1, CATEGORY_P10, MARKS_AP = "t2i_r1", "cat_p10", "marks_ap"
LABELS = {R1: "R@1", CATEGORY_P10: "category P@10", MARKS_AP: "cross-validated AP of the marked searches"}
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
    evidence: ActivationEvidence | None  # None: a job on marks that had nothing to compare


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


def decide_on_marks(policy: Activation, min_gain: float, selection: Selection, active_name: str) -> Decision:
    """Decide for a job on marks alone from its cross-validated selection (``active_name``: what serves now)."""
    gate, gain, level = selection.gate, selection.gain, gate_level(len(selection.candidates))
    if gate is None or gain is None or selection.zero_shot_ap is None:
        numbers = "no marked query could be judged by a model that did not train on it"
        evidence = None
    else:
        numbers = (f"cross-validated AP of {selection.queries} marked queries {selection.zero_shot_ap + gain.mean:.3f} "
                   f"vs {selection.zero_shot_ap:.3f} of zero-shot at epoch {selection.epoch}, weight {selection.weight}; "
                   f"gain {gain.mean:+.3f} ({100 * level:.3g} % interval, Bonferroni for the "
                   f"{len(selection.candidates)} epochs and weights compared, {gate.low:+.3f} to {gate.high:+.3f}; "
                   f"min_gain {min_gain})")
        evidence = ActivationEvidence(
            policy=policy, metric=MARKS_AP, baseline_name=ZERO_SHOT, adapter=selection.zero_shot_ap + gain.mean,
            baseline=selection.zero_shot_ap, gain=gate.to_dict(), level=level, queries=selection.queries,
            min_gain=min_gain, activated=False)
    if policy == Activation.NEVER:
        activate, why = False, "kept inactive: activation=never"
    elif policy == Activation.ALWAYS:
        activate, why = True, "activated: activation=always"
    elif gate is None or gain is None:
        activate, why = False, "kept inactive: nothing to compare"
    elif active_name != ZERO_SHOT:
        activate, why = False, f"kept inactive: its gain is over zero-shot, and {active_name} is active"
    elif policy == Activation.IF_NOT_WORSE:
        activate = gain.mean >= min_gain
        why = "activated: not worse than zero-shot" if activate else "kept inactive: worse than zero-shot"
    elif selection.queries < MIN_JUDGED_QUERIES:
        activate, why = False, f"kept inactive: {selection.queries} judged queries, fewer than the {MIN_JUDGED_QUERIES} needed"
    else:
        activate = gate.low > min_gain
        why = ("activated: the gain's interval, corrected for the epochs and weights compared, lies above min_gain"
               if activate else "kept inactive: the gain's interval, corrected for the epochs and weights compared, "
                                "does not lie above min_gain (no clear gain)")
    if evidence is not None:
        evidence = evidence.model_copy(update={"activated": activate})
    return Decision(activate, f"{why}; {numbers}", evidence)
