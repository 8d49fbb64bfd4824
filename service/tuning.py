"""What a tuning job does: split, train, compare on held-out test pairs, store, maybe activate.

The split is drawn when the job is created and stored with it, so the comparison can be repeated
and no test pair ever reaches training or early stopping. Images with a category but no caption
take part with captions templated from their category and attributes. The user's marks
(``service.feedback``) add their query texts as training captions (relevant) or name images the
query must rank lower (not relevant), never with a val or test image.

A collection without enough captioned or categorised images can still learn from its owner's
marked searches alone (``training_data``: ``marks``, or ``auto``): ``plan_job`` then stores the
marked images as the job's ``marked`` part and ``service.marks_tuning`` runs it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable

from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from adapters.artifact import serialize_adapter
from adapters.candidates import candidate_configs, train_auto
from adapters.captions import templated_captions
from adapters.data import PairedItem
from adapters.negatives import QueryNegatives
from adapters.prompted import PromptedCLIP, PromptsUnsupported
from adapters.train import TrainConfig, train_adapter
from service import adapter_versions, feedback
from service.activation import Decision, decide, selection_metric
from service.context import ServiceContext
from service.errors import Invalid
from service.held_out import measure
from service.models import AdapterVersion, Caption, ImageRecord
from service.progress import HeldOutComparison, Progress, StoredMetrics, TuningReport, runs_and_eta
from service.schemas import TuningConfig
from service.vocabulary import ACTIVE, Method, Stage, TrainingData

MIN_TRAIN, MIN_VAL, MIN_TEST = 8, 2, 2


def split_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    n_test = max(MIN_TEST, round(n * test_fraction))
    n_val = max(MIN_VAL, round(n * val_fraction))
    return n - n_val - n_test, n_val, n_test


def minimum_pairs(val_fraction: float, test_fraction: float) -> int:
    n = MIN_TRAIN + MIN_VAL + MIN_TEST
    while split_sizes(n, val_fraction, test_fraction)[0] < MIN_TRAIN:
        n += 1
    return n


def too_few_pairs(captioned: int, cfg: TuningConfig, also: str = "", **fields) -> Invalid:
    """The refusal of a job whose collection has fewer captioned or categorised images than a split needs."""
    need = minimum_pairs(cfg.val_fraction, cfg.test_fraction)
    return Invalid("too_few_pairs",
                   f"tuning needs at least {need} captioned or categorised images (with val_fraction={cfg.val_fraction}, "
                   f"test_fraction={cfg.test_fraction}); this collection has {captioned}{also}",
                   minimum=need, captioned=captioned, **fields)


def plan_split(image_ids: list[int], cfg: TuningConfig) -> dict[str, list[int]]:
    """Shuffle the captioned or categorised images with the job's seed and cut train / val / test."""
    n = len(image_ids)
    n_train, n_val, _ = split_sizes(n, cfg.val_fraction, cfg.test_fraction)
    if n_train < MIN_TRAIN:
        raise too_few_pairs(n, cfg)
    order = sorted(image_ids)
    random.Random(cfg.seed).shuffle(order)
    return {
        "train": sorted(order[:n_train]),
        "val": sorted(order[n_train : n_train + n_val]),
        "test": sorted(order[n_train + n_val :]),
    }


MARKED = "marked"  # the one part of a job on marks alone: the images marked for a query text
MIN_MARKED_QUERIES = 2  # query texts with a relevant mark: cross-validation needs one to judge, one to train


def is_marks_job(split: dict[str, list[int]]) -> bool:
    return MARKED in split


def plan_marks(ctx: ServiceContext, collection_id: int) -> dict[str, list[int]]:
    """The images marked for a query text; refused when fewer than two texts found a relevant image."""
    queries, _ = feedback.marked_queries(ctx, collection_id)
    answered = [q for q in queries if q.relevant]
    relevant_images = {i for q in answered for i in q.relevant}
    if len(answered) < MIN_MARKED_QUERIES or len(relevant_images) < 2:
        raise Invalid("too_few_marks",
                      f"tuning on marks alone needs at least {MIN_MARKED_QUERIES} searched texts, with at least 2 "
                      f"images between them, marked relevant (POST /collections/{collection_id}/feedback); this "
                      f"collection has {len(answered)} texts with {len(relevant_images)} images marked relevant",
                      minimum=MIN_MARKED_QUERIES, marked_queries=len(answered))
    return {MARKED: sorted({i for q in queries for i in q.relevant + q.not_relevant})}


def plan_job(ctx: ServiceContext, collection_id: int, cfg: TuningConfig) -> dict[str, list[int]]:
    """What the job learns from, fixed when it is created: a train/val/test split, or the marked images."""
    if cfg.training_data == TrainingData.MARKS:
        return plan_marks(ctx, collection_id)
    captioned = captioned_image_ids(ctx, collection_id)
    if cfg.training_data == TrainingData.PAIRS or len(captioned) >= minimum_pairs(cfg.val_fraction, cfg.test_fraction):
        return plan_split(captioned, cfg)
    try:
        return plan_marks(ctx, collection_id)
    except Invalid as marks_refused:
        raise too_few_pairs(len(captioned), cfg, f"; or, to learn from marked searches alone, {marks_refused.detail}",
                            marked_queries=marks_refused.fields["marked_queries"]) from None


# TuningConfig fields that are not TrainConfig's: the service's own, or (dcar) a group of them.
SERVICE_FIELDS = frozenset({"val_fraction", "test_fraction", "activation", "min_gain", "dcar", "training_data"})


def to_train_config(cfg: TuningConfig, device: str) -> TrainConfig:
    """Every other field (and every DCAR option) has a TrainConfig field of the same name."""
    recipe = cfg.model_dump(mode="json", exclude=set(SERVICE_FIELDS))
    recipe["method"] = cfg.method.trained().value
    return TrainConfig(**recipe, **cfg.dcar.model_dump(mode="json"), device=device)


def check_config(ctx: ServiceContext, cfg: TuningConfig) -> None:
    """Refuse, before queueing, a config this backbone cannot take (e.g. visual prompts on a ResNet)."""
    train_cfg = to_train_config(cfg, str(ctx.backbone.device))
    if cfg.text_tokens >= ctx.backbone.identity.context_length - 4:
        raise Invalid("bad_config", f"text_tokens must leave room for captions in a context of "
                                          f"{ctx.backbone.identity.context_length} tokens")
    tried = candidate_configs(train_cfg) if cfg.method == Method.AUTO else [("", train_cfg)]
    try:
        for _, candidate in tried:
            PromptedCLIP.from_backbone(ctx.backbone, candidate.prompt_config())
    except (PromptsUnsupported, ValueError) as exc:
        raise Invalid("bad_config", str(exc)) from exc
    blocks = getattr(getattr(ctx.backbone.model.visual, "transformer", None), "resblocks", None)
    if cfg.method != Method.TEXT and blocks is not None and cfg.visual_deep_from is not None \
            and cfg.visual_deep_from >= len(blocks):
        raise Invalid("bad_config", f"visual_deep_from={cfg.visual_deep_from} is past the last of the "
                                          f"image tower's {len(blocks)} blocks")


def captioned_image_ids(ctx: ServiceContext, collection_id: int) -> list[int]:
    """Images that can train: those with a caption, and those with a category (templated captions)."""
    with ctx.session() as session:
        in_collection = ImageRecord.collection_id == collection_id
        captioned = session.scalars(select(ImageRecord.id).join(Caption).where(in_collection))
        categorised = session.scalars(select(ImageRecord.id).where(in_collection, func.trim(ImageRecord.category) != ""))
        return sorted(set(captioned) | set(categorised))


def load_items(ctx: ServiceContext, collection_id: int, image_ids: list[int],
               extra_captions: dict[int, list[str]] | None = None) -> tuple[list[PairedItem], int]:
    """Paired items of the images that still exist and still can train, and how many got templated captions.

    ``extra_captions`` (training only: feedback queries) are added after an image's own or templated ones.
    """
    extra_captions = extra_captions or {}
    with ctx.session() as session:
        records = session.scalars(select(ImageRecord).options(selectinload(ImageRecord.captions))
                                  .where(ImageRecord.id.in_(image_ids)).order_by(ImageRecord.id)).all()
    items, templated = [], 0
    for record in records:
        attributes = list(record.attributes or [])
        category = (record.category or "").strip()
        own = record.caption_texts or (templated_captions(category, attributes) if category else [])
        captions = own + [text for text in extra_captions.get(record.id, []) if text not in own]
        if not captions:
            continue
        try:
            image = ctx.store.open_rgb(collection_id, record.sha256)
        except FileNotFoundError:  # deleted since the rows were read
            continue
        templated += not record.caption_texts and bool(category)
        items.append(PairedItem(image=image, captions=captions, category=record.category,
                                attributes=attributes, key=str(record.id)))
    return items, templated


def open_images(ctx: ServiceContext, collection_id: int, image_ids: Iterable[int]) -> dict[int, Image.Image]:
    """The images of these ids that still exist, by id in id order (one deleted since is left out)."""
    with ctx.session() as session:
        records = session.scalars(select(ImageRecord).where(ImageRecord.id.in_(sorted(set(image_ids))))
                                  .order_by(ImageRecord.id)).all()
    out = {}
    for record in records:
        try:
            out[record.id] = ctx.store.open_rgb(collection_id, record.sha256)
        except FileNotFoundError:  # deleted since the rows were read
            continue
    return out


def load_negatives(ctx: ServiceContext, collection_id: int, negatives: dict[str, list[int]]) -> QueryNegatives:
    """The marked images of each query text, each image read once (one deleted since is left out)."""
    images = open_images(ctx, collection_id, (image_id for ids in negatives.values() for image_id in ids))
    out = QueryNegatives(images=list(images.values()))
    position = {image_id: k for k, image_id in enumerate(images)}
    for text, ids in negatives.items():
        kept = [position[i] for i in ids if i in position]
        if kept:
            out.of_caption[text] = kept
    return out


def active_prompts(ctx: ServiceContext, collection_id: int) -> tuple[str, PromptedCLIP | None]:
    who = adapter_versions.resolve(ctx, collection_id, ACTIVE)
    return who.name, getattr(who.encoder, "prompted", None)


def run_tuning(
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
    marks = feedback.training_marks(ctx, collection_id, split)
    in_split = {image_id for ids in split.values() for image_id in ids}
    marked_only = sorted(set(marks.captions) - in_split)  # e.g. uncaptioned images a user marked relevant
    loaded = {part: load_items(ctx, collection_id, split[part]) for part in ("val", "test")}
    loaded["train"] = load_items(ctx, collection_id, sorted(split["train"] + marked_only), marks.captions)
    marks.use.images_added = sum(1 for item in loaded["train"][0] if int(item.key or 0) in set(marked_only))
    (train, _), (val, _), (test, _) = loaded["train"], loaded["val"], loaded["test"]
    if len(train) < 2 or not val or not test:
        raise ValueError("too few captioned or categorised images are left in the stored split "
                         "(were images deleted?)")
    train_cfg = to_train_config(cfg, str(ctx.backbone.device))

    def on_progress(event: dict) -> None:
        elapsed = time.perf_counter() - started
        timing = runs_and_eta(event, elapsed) if "run" in event else {"eta_s": event.get("eta_s")}
        report(Progress(stage=Stage.TRAINING, step=event["step"], total_steps=event["total_steps"],
                        epoch=event["epoch"], epochs=event["epochs"], loss=event["loss"],
                        val=event.get("metrics"), val_zero_shot=event.get("zero_shot_metrics"),
                        elapsed_s=round(elapsed, 2), **timing))

    negatives = load_negatives(ctx, collection_id, marks.negatives)
    candidates = None
    if cfg.method == Method.AUTO:
        auto = train_auto(ctx.backbone, train, val, train_cfg, on_progress=on_progress, should_cancel=should_cancel,
                          negatives=negatives)
        result, candidates = auto.result, auto.summary()
    else:
        result = train_adapter(ctx.backbone, train, val, train_cfg, on_progress=on_progress,
                               should_cancel=should_cancel, negatives=negatives)
    marks.use.not_relevant_used = result.negative_pairs_used
    marks.use.not_relevant_skipped_no_positive = negatives.pairs() - result.negative_pairs_used
    report(Progress(stage=Stage.EVALUATING, val_zero_shot=result.zero_shot_metrics, val=result.best_metrics))
    # Each model meets the test pairs once; metrics and per-query values come from those embeddings.
    adapter_test = measure(ctx.backbone, test, adapter=result.prompted)
    zero_shot_test = measure(ctx.backbone, test)
    baseline_name, baseline_prompts = active_prompts(ctx, collection_id)
    baseline_test = zero_shot_test if baseline_prompts is None else measure(ctx.backbone, test,
                                                                          adapter=baseline_prompts)
    metric = selection_metric(test)
    decision = decide(cfg.activation, cfg.min_gain, metric, baseline_test.per_query[metric],
                      adapter_test.per_query[metric], baseline_name)
    blob = serialize_adapter(result.prompted, train_config=result.config.to_dict(),
                             metrics={"test": adapter_test.metrics})
    comparison = HeldOutComparison(adapter=adapter_test.metrics, zero_shot=zero_shot_test.metrics,
                                   baseline=baseline_test.metrics, baseline_name=baseline_name)
    train_report = TuningReport(
        split_sizes={"train": len(train), "val": len(val), "test": len(test)},
        test=comparison,
        training=result.summary(),
        loss_curve=result.history.get("loss", []),
        epochs=result.history.get("epochs", []),
        param_count=result.prompted.num_parameters(),
        size_bytes=len(blob),
        config=cfg.model_dump(mode="json"),
        train_and_eval_wall_time_s=round(time.perf_counter() - started, 3),
        templated_captions=sum(templated for _, templated in loaded.values()),
        activation=decision.evidence,
        feedback=marks.use,
        candidates=candidates,
    )
    report(Progress(stage=Stage.INDEXING))
    row = adapter_versions.register(
        ctx, collection_id, result.prompted, blob, method=cfg.method.trained(), job_id=job_id,
        metrics=StoredMetrics(test=adapter_test.metrics,
                              test_zero_shot=zero_shot_test.metrics).model_dump(mode="json"),
        report=train_report.model_dump(mode="json"), should_cancel=should_cancel,
    )
    apply_decision(ctx, collection_id, row, decision)
    return row


def apply_decision(ctx: ServiceContext, collection_id: int, row: AdapterVersion, decision: Decision) -> None:
    """Activate the stored version, or keep it inactive; either way its note says why."""
    if decision.activate:
        adapter_versions.activate(ctx, collection_id, row.version, note=decision.note)
    else:
        with ctx.session() as session:
            stored = adapter_versions.get_version(session, collection_id, row.version)
            stored.note = decision.note
            session.commit()
    row.active, row.note = decision.activate, decision.note
