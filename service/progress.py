"""What a running job (tuning or import) reports, typed; stored (merged into the job row) and served as JSON."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from adapters.evaluate import Metrics  # held-out metrics, typed: the keys adapters.evaluate returns
from service.vocabulary import Stage


class Progress(BaseModel):
    """One progress update. Only the fields a caller sets are written (a set None is written as null)."""

    model_config = ConfigDict(extra="forbid")

    stage: Stage | None = None
    step: int | None = None
    total_steps: int | None = None
    epoch: int | None = None
    epochs: int | None = None
    loss: float | None = None
    val: Metrics | None = None  # held-out metrics of the prompts so far
    val_zero_shot: Metrics | None = None  # ... and of the backbone alone
    elapsed_s: float | None = None
    eta_s: float | None = None
    # Run of runs: a job on marks alone trains once per cross-validation fold, then once on every mark; a job
    # with method auto trains once per candidate recipe.
    run: int | None = None
    runs: int | None = None
    # An import job: step / total_steps count its files; these say what became of those done.
    added: int | None = None
    duplicates: int | None = None  # the collection had the same bytes: metadata updated, no new image
    failed: int | None = None
    failures: list[dict[str, str]] | None = None  # the first failed files: {"path", "reason"}

    def as_update(self) -> dict[str, Any]:
        """The keys this update sets, ready to merge into the stored progress."""
        return self.model_dump(mode="json", exclude_unset=True)

    def ends_an_epoch(self) -> bool:
        return self.step is not None and self.step == self.total_steps


def runs_and_eta(event: dict, elapsed_s: float) -> dict[str, Any]:
    """Progress fields of a job that trains several runs in a row (marks folds, auto's candidates): which run,
    and an ETA over all of them, assuming each run takes as long as those so far."""
    done = (event["run"] - 1 + event["step"] / max(1, event["total_steps"])) / event["runs"]
    return {"run": event["run"], "runs": event["runs"],
            "eta_s": round(elapsed_s * (1 - done) / done, 2) if done > 0 else None}


class StoredMetrics(BaseModel):
    """``AdapterVersion.metrics`` of a tuned version: both measured on the job's held-out test pairs."""

    test: Metrics
    test_zero_shot: Metrics


class HeldOutComparison(BaseModel):
    """The held-out test pairs through the new adapter, the backbone alone, and what was active."""

    adapter: Metrics
    zero_shot: Metrics
    baseline: Metrics
    baseline_name: str


class ActivationEvidence(BaseModel):
    """What decided a tuned version's activation: its test gain over the then-active one, with its interval."""

    policy: str
    metric: str  # "t2i_r1", or "cat_p10" when the captions are class names (service.activation)
    baseline_name: str
    adapter: float  # the metric's mean over the test queries
    baseline: float
    gain: dict[str, float]  # paired bootstrap: mean, low, high
    level: float
    queries: int
    min_gain: float
    activated: bool


class FeedbackUse(BaseModel):
    """What a tuning job took from the user's marks (``service.feedback.training_marks``)."""

    relevant_used: int = 0  # (query text, image) pairs added to training
    relevant_skipped_held_out: int = 0  # the image is in the job's val or test split
    relevant_skipped_no_text: int = 0  # an image or combined query: no text to pair with
    not_relevant_used: int = 0  # (query text, image) pairs that trained as negatives of the query
    not_relevant_skipped_held_out: int = 0  # the image is in the job's val or test split
    not_relevant_skipped_no_positive: int = 0  # the query text trains no image: nothing to rank it below
    not_relevant_skipped_no_text: int = 0  # an image or combined query
    images_added: int = 0  # images outside the split that trained only because of marks


class TuningReport(BaseModel):
    """``AdapterVersion.report`` of a tuned version (served as the adapter's ``report``)."""

    split_sizes: dict[str, int]
    test: HeldOutComparison | None  # None: a job on marks alone (its evidence is ``marks``)
    training: dict[str, Any]  # TrainResult.summary()
    loss_curve: list[float]
    epochs: list[dict[str, Any]]
    param_count: int
    size_bytes: int
    config: dict[str, Any]
    train_and_eval_wall_time_s: float
    templated_captions: int = 0  # items that trained with captions made from their category
    activation: ActivationEvidence | None = None
    feedback: FeedbackUse | None = None  # the user's marks this job trained on, and those it skipped
    marks: dict[str, Any] | None = None  # a job on marks alone: adapters.marks' cross-validated selection
    candidates: dict[str, Any] | None = None  # method auto: each candidate's val metrics, and the one kept
