"""What a tuning job does: split, train, compare on held-out test pairs, store, maybe activate.

The split is drawn when the job is created and stored with it, so the comparison can be repeated
and no test pair ever reaches training or early stopping.
"""

from __future__ import annotations

import random
import time
from typing import Callable

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from adapters.artifact import serialize_adapter
from adapters.data import PairedItem
from adapters.evaluate import evaluate
from adapters.prompted import PromptedCLIP, PromptsUnsupported
from adapters.train import TrainConfig, train_adapter
from service import adapter_versions
from service.context import ServiceContext
from service.errors import ApiError
from service.models import AdapterVersion, Caption, ImageRecord
from service.schemas import TuningConfig

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


def plan_split(image_ids: list[int], cfg: TuningConfig) -> dict[str, list[int]]:
    """Shuffle the captioned images with the job's seed and cut train / val / test."""
    n = len(image_ids)
    n_train, n_val, _ = split_sizes(n, cfg.val_fraction, cfg.test_fraction)
    if n_train < MIN_TRAIN:
        need = minimum_pairs(cfg.val_fraction, cfg.test_fraction)
        raise ApiError(422, "too_few_pairs",
                       f"tuning needs at least {need} captioned images (with val_fraction={cfg.val_fraction}, "
                       f"test_fraction={cfg.test_fraction}); this collection has {n}", minimum=need, captioned=n)
    order = sorted(image_ids)
    random.Random(cfg.seed).shuffle(order)
    return {
        "train": sorted(order[:n_train]),
        "val": sorted(order[n_train : n_train + n_val]),
        "test": sorted(order[n_train + n_val :]),
    }


def to_train_config(cfg: TuningConfig, device: str) -> TrainConfig:
    return TrainConfig(
        method=cfg.method, text_tokens=cfg.text_tokens, visual_tokens=cfg.visual_tokens,
        visual_start=cfg.visual_start, visual_deep_from=cfg.visual_deep_from, text_init=cfg.text_init,
        epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, patience=cfg.patience, seed=cfg.seed,
        same_category_weight=cfg.dcar.same_category_weight, hard_negatives=cfg.dcar.hard_negatives,
        attribute_reweighting=cfg.dcar.attribute_reweighting, device=device,
    )


def check_config(ctx: ServiceContext, cfg: TuningConfig) -> None:
    """Refuse, before queueing, a config this backbone cannot take (e.g. visual prompts on a ResNet)."""
    train_cfg = to_train_config(cfg, str(ctx.backbone.device))
    if cfg.text_tokens >= ctx.backbone.identity.context_length - 4:
        raise ApiError(422, "bad_config", f"text_tokens must leave room for captions in a context of "
                                          f"{ctx.backbone.identity.context_length} tokens")
    try:
        PromptedCLIP.from_backbone(ctx.backbone, train_cfg.prompt_config())
    except (PromptsUnsupported, ValueError) as exc:
        raise ApiError(422, "bad_config", str(exc))
    blocks = getattr(getattr(ctx.backbone.model.visual, "transformer", None), "resblocks", None)
    if cfg.method != "text" and blocks is not None and cfg.visual_deep_from is not None \
            and cfg.visual_deep_from >= len(blocks):
        raise ApiError(422, "bad_config", f"visual_deep_from={cfg.visual_deep_from} is past the last of the "
                                          f"image tower's {len(blocks)} blocks")


def captioned_image_ids(ctx: ServiceContext, collection_id: int) -> list[int]:
    with ctx.session() as session:
        return sorted(set(session.scalars(
            select(ImageRecord.id).join(Caption).where(ImageRecord.collection_id == collection_id))))


def load_items(ctx: ServiceContext, collection_id: int, image_ids: list[int]) -> list[PairedItem]:
    """Paired items of the images that still exist and still have captions."""
    with ctx.session() as session:
        records = session.scalars(select(ImageRecord).options(selectinload(ImageRecord.captions))
                                  .where(ImageRecord.id.in_(image_ids)).order_by(ImageRecord.id)).all()
    items = []
    for record in records:
        if not record.captions:
            continue
        try:
            image = ctx.store.open_rgb(collection_id, record.sha256)
        except FileNotFoundError:  # deleted since the rows were read
            continue
        items.append(PairedItem(image=image, captions=record.caption_texts, category=record.category,
                                attributes=list(record.attributes or []), key=str(record.id)))
    return items


def active_prompts(ctx: ServiceContext, collection_id: int) -> tuple[str, PromptedCLIP | None]:
    who = adapter_versions.resolve(ctx, collection_id, "active")
    return who.name, getattr(who.encoder, "prompted", None)


def run_tuning(
    ctx: ServiceContext,
    job_id: int,
    collection_id: int,
    cfg: TuningConfig,
    split: dict[str, list[int]],
    report: Callable[[dict], None],
    should_cancel: Callable[[], bool],
) -> AdapterVersion:
    started = time.perf_counter()
    report({"stage": "loading"})
    train, val, test = (load_items(ctx, collection_id, split[part]) for part in ("train", "val", "test"))
    if len(train) < 2 or not val or not test:
        raise ValueError("too few captioned images are left in the stored split (were images deleted?)")
    train_cfg = to_train_config(cfg, str(ctx.backbone.device))

    def on_progress(event: dict) -> None:
        elapsed = time.perf_counter() - started
        report({"stage": "training", "step": event["step"], "total_steps": event["total_steps"],
                "epoch": event["epoch"], "epochs": event["epochs"], "loss": event["loss"],
                "val": event.get("metrics"), "val_zero_shot": event.get("zero_shot_metrics"), "elapsed_s": round(elapsed, 2), "eta_s": event.get("eta_s")})

    result = train_adapter(ctx.backbone, train, val, train_cfg, on_progress=on_progress, should_cancel=should_cancel)
    report({"stage": "evaluating", "val_zero_shot": result.zero_shot_metrics, "val": result.best_metrics})
    adapter_test = evaluate(ctx.backbone, test, adapter=result.prompted)
    zero_shot_test = evaluate(ctx.backbone, test)
    baseline_name, baseline_prompts = active_prompts(ctx, collection_id)
    baseline_test = zero_shot_test if baseline_prompts is None else evaluate(ctx.backbone, test,
                                                                           adapter=baseline_prompts)
    blob = serialize_adapter(result.prompted, train_config=train_cfg.to_dict(), metrics={"test": adapter_test})
    train_report = {
        "split_sizes": {"train": len(train), "val": len(val), "test": len(test)},
        "test": {"adapter": adapter_test, "zero_shot": zero_shot_test, "baseline": baseline_test,
                 "baseline_name": baseline_name},
        "training": result.summary(),
        "loss_curve": result.history.get("loss", []),
        "epochs": result.history.get("epochs", []),
        "param_count": result.prompted.num_parameters(),
        "size_bytes": len(blob),
        "config": cfg.model_dump(),
        "train_and_eval_wall_time_s": round(time.perf_counter() - started, 3),
    }
    report({"stage": "indexing"})
    row = adapter_versions.register(
        ctx, collection_id, result.prompted, blob, method=cfg.method, job_id=job_id,
        metrics={"test": adapter_test, "test_zero_shot": zero_shot_test}, report=train_report,
        should_cancel=should_cancel,
    )
    decide_activation(ctx, collection_id, row, cfg, adapter_test["t2i_r1"], baseline_test["t2i_r1"], baseline_name)
    return row


def decide_activation(ctx: ServiceContext, collection_id: int, row: AdapterVersion, cfg: TuningConfig,
                      r1: float, baseline_r1: float, baseline_name: str) -> None:
    versus = f"test R@1 {r1:.3f} vs {baseline_r1:.3f} of {baseline_name} (min_gain {cfg.min_gain})"
    if cfg.activation == "never":
        note, activate = f"kept inactive: activation=never; {versus}", False
    elif cfg.activation == "always":
        note, activate = f"activated: activation=always; {versus}", True
    elif r1 >= baseline_r1 + cfg.min_gain:
        note, activate = f"activated: not worse than the active one; {versus}", True
    else:
        note, activate = f"kept inactive: worse than the active one; {versus}", False
    if activate:
        adapter_versions.activate(ctx, collection_id, row.version, note=note)
    else:
        with ctx.session() as session:
            stored = adapter_versions.get_version(session, collection_id, row.version)
            stored.note = note
            session.commit()
    row.active, row.note = activate, note
