"""A tuning job on the user's marked searches alone: for a collection without captions or categories.

A photo collection rarely has captions; what it gets from use is marks on search results
(``service.feedback``). ``adapters.marks.train_on_marks`` turns them into an adapter the way the
feedback benchmark measures it (README, "Learning from use"): each query text with a relevant mark is
judged once, by a cross-validation fold that did not train on it; the epoch and the zero-shot mixing
weight are chosen there, and a final run trains on every mark. There are no test pairs: activation
reads the cross-validated gain over zero-shot (``service.activation.decide_on_marks``).

The version is stored at the weight cross-validation chose, whatever the gate says, so activating it
by hand later serves what was trained; a job the gate refuses leaves it inactive with the numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from adapters.artifact import serialize_adapter
from adapters.data import PairedItem
from adapters.marks import MarkedQuery, train_on_marks, training_data
from service import adapter_versions, feedback
from service.activation import decide_on_marks
from service.context import ServiceContext
from service.models import AdapterVersion
from service.progress import Progress, TuningReport, runs_and_eta
from service.schemas import TuningConfig
from service.tuning import MARKED, MIN_MARKED_QUERIES, active_prompts, apply_decision, open_images, to_train_config
from service.vocabulary import Stage


def load_marked(ctx: ServiceContext, collection_id: int, image_ids: list[int]
                ) -> tuple[list[PairedItem], list[MarkedQuery], feedback.FeedbackUse]:
    """The job's marked images that still exist (uncaptioned: marks are their only text) and the marks on them."""
    queries, use = feedback.marked_queries(ctx, collection_id)
    images = open_images(ctx, collection_id, image_ids)
    pool = [PairedItem(image=image, captions=[], key=str(image_id)) for image_id, image in images.items()]
    position = {image_id: k for k, image_id in enumerate(images)}
    marked = []
    for query in queries:
        relevant = [position[i] for i in query.relevant if i in position]
        not_relevant = [position[i] for i in query.not_relevant if i in position]
        if relevant or not_relevant:
            marked.append(MarkedQuery(query.text, relevant, not_relevant))
    return pool, marked, use


def run_marks_tuning(
    ctx: ServiceContext,
    job_id: int,
    collection_id: int,
    cfg: TuningConfig,
    split: dict[str, list[int]],
    report: Callable[[Progress], None],
    should_cancel: Callable[[], bool],
) -> AdapterVersion:
    started = time.perf_counter()
    report(Progress(stage=Stage.LOADING))
    pool, marked, use = load_marked(ctx, collection_id, split[MARKED])
    items, negatives = training_data(pool, marked)
    if len(items) < 2 or sum(1 for q in marked if q.relevant) < MIN_MARKED_QUERIES:
        raise ValueError("too few marked searches are left on the job's images (were images deleted?)")
    train_cfg = to_train_config(cfg, str(ctx.backbone.device))

    def on_progress(event: dict) -> None:
        elapsed = time.perf_counter() - started
        report(Progress(stage=Stage.TRAINING, step=event["step"], total_steps=event["total_steps"],
                        epoch=event["epoch"], epochs=event["epochs"], loss=event["loss"], elapsed_s=round(elapsed, 2),
                        **runs_and_eta(event, elapsed)))

    result = train_on_marks(ctx.backbone, pool, marked, train_cfg, on_progress=on_progress,
                            should_cancel=should_cancel)
    selection, trained = result.selection, result.train
    if trained is None:
        raise ValueError("no marked search could be judged by a model that did not train on it: mark the results "
                         "of more searches (each text needs a relevant image that no other text marked)")
    report(Progress(stage=Stage.EVALUATING))
    trained.prompted.set_adapted_weight(result.raw_weight)  # what was trained; activation decides on serving it
    active_name, _ = active_prompts(ctx, collection_id)
    decision = decide_on_marks(cfg.activation, cfg.min_gain, selection, active_name)
    use.relevant_used = sum(len(item.captions) for item in items)
    use.not_relevant_used = trained.negative_pairs_used
    use.not_relevant_skipped_no_positive = negatives.pairs() - trained.negative_pairs_used
    use.images_added = len(items)
    choice = selection.to_dict()
    blob = serialize_adapter(trained.prompted, train_config=train_cfg.to_dict(), metrics={"marks": choice})
    train_report = TuningReport(
        split_sizes={"train": len(items), "marked_queries": len(marked), "judged_queries": selection.queries},
        test=None,
        training=trained.summary() | {"val": None, "val_zero_shot": None},  # its val is one training item
        loss_curve=trained.history.get("loss", []),
        epochs=[{k: v for k, v in e.items() if k != "metrics"} for e in trained.history.get("epochs", [])],
        param_count=trained.prompted.num_parameters(),
        size_bytes=len(blob),
        config=cfg.model_dump(mode="json"),
        train_and_eval_wall_time_s=round(time.perf_counter() - started, 3),
        activation=decision.evidence,
        feedback=use,
        marks={**choice, "candidates": selection.candidates},
    )
    report(Progress(stage=Stage.INDEXING))
    row = adapter_versions.register(
        ctx, collection_id, trained.prompted, blob, method=cfg.method.trained(), job_id=job_id,
        metrics={"marks": choice}, report=train_report.model_dump(mode="json"),
        should_cancel=should_cancel,
    )
    apply_decision(ctx, collection_id, row, decision)
    return row
