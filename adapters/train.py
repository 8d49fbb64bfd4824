"""The training loop: learn textual and/or visual prompts for one collection.

Only the adapter's tensors are optimised (prompts, the word table of the collection's own words,
and the residual maps when asked for; AdamW,
linear warm-up then cosine decay). Frozen work is done once (``features``; shared between candidates: ``frozen_work``), batches come from
``sampling``, the objective from ``losses`` (plus, when given, the user's named negatives of a caption:
``adapters.negatives``). After every epoch the adapter is scored by
text->image R@1 on ``val_items`` (a held-out split the caller keeps apart from its final test
split); the best epoch is kept and training stops after ``patience`` epochs without improvement.

With ``zero_shot_mix`` the weight of the adapted embedding against the zero-shot one is then
chosen on the same held-out items from ``mix_grid`` (0 is exactly zero-shot): an adapter that does
not help on held-out pairs falls back towards the backbone instead of shipping a loss. When no
epoch beat the initial (random) prompts, the weight is 0: untrained prompts never ship.

``TrainConfig()``'s defaults are THE recipe: the service trains by them and the benchmark reads
its recipe from them; change the method here, nowhere else.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F

from .data import PairedItem
from .evaluate import Metrics, flatten_captions, image_ids_of, retrieval_metrics
from .features import FrozenWork, ImageSide, PixelAugment, TextSide
from .losses import (
    CategoryWeights,
    attribute_margins,
    attribute_weights,
    contrastive_loss,
    frozen_logit_scale,
    mine_hard_negatives,
)
from .negatives import NegativeTerm, QueryNegatives
from .prompted import PromptConfig, PromptedCLIP, collection_words
from .sampling import BatchSampler, TrainingSet, category_codes, compose_attribute_captions
from .schedule import EarlyStopping, score, warmup_cosine

METHODS = ("text", "visual", "dual")


class TrainingCancelled(RuntimeError):
    """``should_cancel()`` returned True; the partial prompts are discarded."""


@dataclass
class TrainConfig:
    method: str = "dual"  # "text" | "visual" | "dual"
    text_tokens: int = 4  # M (ignored for "visual")
    visual_tokens: int = 8  # N (ignored for "text")
    visual_start: int = 1  # first image block receiving prompts; > 0 lets earlier blocks be cached
    visual_deep_from: int | None = 1  # fresh visual prompts before every block from here (VPT-deep)
    text_init: str = "a photo of a"  # or "random"
    epochs: int = 10
    lr: float = 1e-2
    batch_size: int = 32
    weight_decay: float = 0.0
    warmup: float = 0.1  # a fraction of all steps (< 1) or a number of steps (>= 1)
    captions_per_item: int = 1  # captions of one image in a batch are positives, never negatives
    same_category_weight: float = 1.0  # DCAR: weight of a same-category negative
    other_category_weight: float = 1.0  # ... and of a different-category one
    hard_negatives: int = 0  # mined neighbours per view (image, caption) added per anchor
    attribute_reweighting: bool = False  # add captions composed from discriminative attributes
    attribute_captions: int = 2  # composed captions per item
    attribute_phrases: int = 2  # attribute phrases per composed caption
    attribute_temperature: float = 0.05
    learn_logit_scale: bool = False  # CLIP's temperature is frozen unless asked
    patience: int | None = 3  # epochs without held-out improvement before stopping
    restore_best: bool = True  # return the best held-out epoch's prompts (False: the last ones)
    cache_features: bool = True  # cache image activations before the first prompted block
    seed: int = 0
    device: str | None = None  # None: the backbone's device (a shared backbone is never moved)
    text_deep: bool = False  # fresh text prompts before every text block (MaPLe / PromptSRC)
    residual_rank: int = 32  # low-rank residual map on each tower's output embedding (0: none)
    residual_lr: float = 1e-3  # its learning rate (prompts use ``lr``)
    word_tokens: int = 192  # learn an embedding offset for the K tokens the training captions use most (not "visual")
    word_lr: float | None = None  # the offsets' learning rate (None: the prompts' ``lr``)
    block_adapter_rank: int = 0  # bottleneck adapter beside every prompted image block (0: none; needs visual prompts)
    text_block_adapter_rank: int = 0  # bottleneck adapter beside every text block (0: none; not for "visual")
    coupling_rank: int = 0  # coupled prompts: text->visual prompt maps of this rank (0: none; "dual" only)
    augment: bool = False  # change training images each step in ways their captions survive (features.PixelAugment)
    consistency_weight: float = 0.0  # pull adapted embeddings towards the frozen ones (KgCoOp / PromptSRC)
    zero_shot_mix: bool = True  # choose a mixing weight with the zero-shot embedding on val
    mix_grid: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)  # adapted-embedding weights tried

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, not {self.method!r}")
        self.mix_grid = tuple(float(w) for w in self.mix_grid)
        if self.zero_shot_mix and (not self.mix_grid or any(not 0.0 <= w <= 1.0 for w in self.mix_grid)):
            raise ValueError("mix_grid must hold weights in [0, 1]")

    def prompt_config(self) -> PromptConfig:
        return PromptConfig(
            text_tokens=0 if self.method == "visual" else self.text_tokens,
            visual_tokens=0 if self.method == "text" else self.visual_tokens,
            visual_start=self.visual_start,
            visual_deep_from=self.visual_deep_from,
            text_init=self.text_init,
            seed=self.seed,
            text_deep=self.text_deep and self.method != "visual",
            residual_rank=self.residual_rank,
            zero_shot_mix=self.zero_shot_mix,
            word_tokens=0 if self.method == "visual" else self.word_tokens,
            block_adapter_rank=0 if self.method == "text" else self.block_adapter_rank,
            text_block_adapter_rank=0 if self.method == "visual" else self.text_block_adapter_rank,
            coupling_rank=self.coupling_rank if self.method == "dual" else 0,
        )

    def to_dict(self) -> dict:
        out = asdict(self)
        out["mix_grid"] = list(self.mix_grid)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass
class TrainResult:
    prompted: PromptedCLIP
    config: TrainConfig
    best_epoch: int  # 0: the initial prompts were never beaten
    best_metrics: Metrics
    zero_shot_metrics: Metrics  # the backbone without prompts on the same held-out items
    wall_time_s: float
    steps: int
    stopped_early: bool
    history: dict = field(default_factory=dict)  # "loss", "lr" per step; "epochs": list of records
    negative_pairs_used: int = 0  # (caption, image) pairs of ``negatives`` whose caption trained

    def summary(self) -> dict:
        """JSON-safe facts worth storing with the adapter."""
        return {
            "best_epoch": self.best_epoch,
            "val": self.best_metrics,
            "val_zero_shot": self.zero_shot_metrics,
            "steps": self.steps,
            "wall_time_s": round(self.wall_time_s, 3),
            "stopped_early": self.stopped_early,
            "collection_words": self.prompted.words(),
        }


def _amp(device: torch.device, model_dtype: torch.dtype) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
    """Autocast dtype (None: off, as on CPU, where full precision keeps runs deterministic) and scaler."""
    if device.type != "cuda":
        return None, None
    dtype = torch.float16 if model_dtype == torch.float16 or not torch.cuda.is_bf16_supported() else torch.bfloat16
    return dtype, (torch.amp.GradScaler("cuda") if dtype == torch.float16 else None)


@torch.no_grad()
def _attribute_captions(backbone, items, image_bank, cfg: TrainConfig) -> list[list[str]]:
    """Composed captions per item, attribute phrases weighted by their zero-shot margin."""
    phrases = sorted({a for item in items for a in item.attributes})
    if not phrases:
        return [[] for _ in items]
    phrase_emb = backbone.encode_texts(phrases)
    code = {p: i for i, p in enumerate(phrases)}
    cats = category_codes(items)
    has = torch.zeros(len(items), len(phrases), dtype=torch.bool)
    for i, item in enumerate(items):
        has[i, [code[a] for a in item.attributes]] = True
    weights: list[torch.Tensor | None] = []
    for i, item in enumerate(items):
        if not item.attributes:
            weights.append(None)
            continue
        cols = torch.tensor([code[a] for a in item.attributes])
        rivals = ~has[:, cols].T  # (a, n): images lacking the phrase...
        if cats is not None and cats[i] >= 0:
            same = (cats == cats[i])[None, :] & rivals
            # ...of the same category when there are any: that is the distinction that is hard.
            rivals = torch.where(same.any(1, keepdim=True), same, rivals)
        margins = attribute_margins(phrase_emb[cols], torch.full((len(cols),), i), image_bank, rivals)
        weights.append(attribute_weights(margins, cfg.attribute_temperature))
    return compose_attribute_captions(items, weights, cfg.attribute_captions, cfg.attribute_phrases, cfg.seed)


def train_adapter(
    backbone,
    train_items: Sequence[PairedItem],
    val_items: Sequence[PairedItem],
    config: TrainConfig,
    on_progress: Callable[[dict], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    negatives: QueryNegatives | None = None,
    on_epoch: Callable[[int, PromptedCLIP], bool] | None = None,
    frozen: FrozenWork | None = None,
) -> TrainResult:
    """``negatives``: images that must rank below a caption's own image (``adapters.negatives``).

    ``frozen``: ``frozen_work(backbone, train_items, val_items)``, shared by callers that train
    several adapters on the same items; computed here when not given.

    ``on_epoch(epoch, prompted)`` is called after epoch 0 (the initial prompts) and after every epoch,
    with the adapter unmixed; returning True stops training there (e.g. a caller that judges epochs
    itself, ``adapters.marks``).
    """
    start_time = time.perf_counter()
    cfg = config
    if cfg.device is not None and torch.device(cfg.device) != backbone.device:
        raise ValueError(f"config asks for {cfg.device} but the backbone lives on {backbone.device}")
    if len(train_items) < 2 or len(val_items) < 1:
        raise ValueError("training needs at least 2 training items and 1 held-out item")
    device = backbone.device
    prompted = _new_adapter(backbone, cfg, train_items)

    if frozen is None:
        frozen = frozen_work(backbone, train_items, val_items)
    elif len(frozen.train_pixels) != len(train_items) or len(frozen.val_pixels) != len(val_items):
        raise ValueError("the shared frozen work was computed for other items")
    need_bank = cfg.hard_negatives > 0 or cfg.attribute_reweighting or cfg.consistency_weight > 0
    image_bank = frozen.zero_train_images() if need_bank else None
    extra = _attribute_captions(backbone, train_items, image_bank, cfg) if cfg.attribute_reweighting else None
    data = TrainingSet.build(train_items, extra)
    caption_bank = (TextSide(frozen.zero, data.captions).all()
                    if cfg.hard_negatives > 0 or cfg.consistency_weight > 0 else None)
    neighbours = None
    if cfg.hard_negatives > 0:
        assert image_bank is not None and caption_bank is not None
        item_text = torch.stack([caption_bank[idx].mean(0) for idx in data.captions_of])
        neighbours = mine_hard_negatives(image_bank, item_text, cfg.hard_negatives, data.categories, data.image_ids)

    augment = PixelAugment.for_backbone(backbone, cfg.seed) if cfg.augment else None
    images = frozen.train_images(prompted, cache=cfg.cache_features, augment=augment)
    texts = TextSide(prompted, data.captions)
    named = None
    if negatives is not None and negatives.pairs_for(data.captions) > 0:
        named = NegativeTerm(backbone, prompted, data.captions, negatives, cfg.batch_size, cfg.cache_features, cfg.seed)
    val_captions, val_owner = flatten_captions(val_items)
    val_ids = image_ids_of(val_items)
    val_images = ImageSide(prompted, frozen.val_pixels)
    val_texts = TextSide(prompted, val_captions)

    def validate() -> Metrics:
        return retrieval_metrics(val_texts.all(), val_images.all(), val_owner, val_ids)

    zero_val_text, zero_val_image = frozen.zero_val_text, frozen.zero_val_image
    zero_shot = retrieval_metrics(zero_val_text, zero_val_image, val_owner, val_ids)

    sampler = BatchSampler(data, cfg.batch_size, neighbours, cfg.captions_per_item, cfg.seed)
    total_steps = cfg.epochs * sampler.steps_per_epoch
    weight_maps = ("residual.", "block_adapters.", "text_block_adapters.", "coupling.")  # low-rank maps: residual_lr
    prompt_params = [p for name, p in prompted.named_parameters()
                     if not name.startswith(weight_maps) and name != "word_deltas"]
    groups: list[dict] = [{"params": prompt_params, "lr": cfg.lr}]
    if prompted.word_deltas is not None:
        groups.append({"params": [prompted.word_deltas], "lr": cfg.lr if cfg.word_lr is None else cfg.word_lr})
    maps = [p for name, p in prompted.named_parameters() if name.startswith(weight_maps)]
    if maps:
        groups.append({"params": maps, "lr": cfg.residual_lr})
    log_scale = frozen_logit_scale(backbone.model).log().to(device)
    if cfg.learn_logit_scale:
        log_scale = torch.nn.Parameter(log_scale.clone())
        groups.append({"params": [log_scale], "lr": cfg.lr})
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, cfg.warmup))
    amp_dtype, scaler = _amp(device, backbone.dtype)
    weights = CategoryWeights(cfg.same_category_weight, cfg.other_category_weight)
    cats = data.categories

    history: dict = {"loss": [], "lr": [], "epochs": []}
    t_val = time.perf_counter()
    metrics = validate()
    val_time = time.perf_counter() - t_val
    history["epochs"].append({"epoch": 0, "metrics": metrics, "mean_loss": None})
    stopper = EarlyStopping(cfg.patience)
    stopper.update(0, metrics, prompted.prompt_state_dict)
    step, stopped_early, train_time = 0, False, 0.0
    stop_now = on_epoch is not None and on_epoch(0, prompted)

    for epoch in range(1, 0 if stop_now else cfg.epochs + 1):
        epoch_losses = []
        for items, caption_index, slot in sampler.epoch():
            if should_cancel is not None and should_cancel():
                raise TrainingCancelled(f"cancelled at step {step} of {total_steps}")
            t_step = time.perf_counter()
            item_ids = data.image_ids[items]
            item_cats = cats[items] if cats is not None else None
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                image_emb, text_emb = images(items), texts(caption_index)
                loss = contrastive_loss(
                    image_emb, text_emb, log_scale.exp().clamp(max=100.0),
                    item_ids, item_ids[slot],
                    item_cats, item_cats[slot] if item_cats is not None else None, weights,
                )
                if cfg.consistency_weight > 0:
                    assert image_bank is not None and caption_bank is not None
                    loss = loss + cfg.consistency_weight * (
                        _cosine_distance(image_emb, image_bank[items].to(device))
                        + _cosine_distance(text_emb, caption_bank[caption_index].to(device))
                    )
                if named is not None:
                    term = named(text_emb, image_emb, caption_index, slot, log_scale.exp().clamp(max=100.0))
                    loss = loss if term is None else loss + term
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            history["lr"].append(scheduler.get_last_lr()[0])
            scheduler.step()
            step += 1
            train_time += time.perf_counter() - t_step
            epoch_losses.append(float(loss.detach()))
            history["loss"].append(epoch_losses[-1])
            if on_progress is not None:
                remaining = total_steps - step
                eta = train_time / step * remaining + val_time * (cfg.epochs - epoch + 1)
                on_progress({
                    "step": step, "total_steps": total_steps, "epoch": epoch, "epochs": cfg.epochs,
                    "loss": epoch_losses[-1], "metrics": metrics, "zero_shot_metrics": zero_shot,
                    "eta_s": round(eta, 2),
                })

        t_val = time.perf_counter()
        metrics = validate()
        val_time = time.perf_counter() - t_val
        history["epochs"].append({"epoch": epoch, "metrics": metrics, "mean_loss": sum(epoch_losses) / len(epoch_losses)})
        stopper.update(epoch, metrics, prompted.prompt_state_dict)
        if on_progress is not None:
            on_progress({
                "step": step, "total_steps": total_steps, "epoch": epoch, "epochs": cfg.epochs,
                "loss": history["epochs"][-1]["mean_loss"], "metrics": metrics, "zero_shot_metrics": zero_shot,
                "eta_s": round((train_time / step) * (total_steps - step) + val_time * (cfg.epochs - epoch), 2),
            })
        if on_epoch is not None and on_epoch(epoch, prompted):
            stopped_early = epoch < cfg.epochs
            break
        if stopper.should_stop(epoch, cfg.epochs):
            stopped_early = True
            break

    best_metrics = stopper.best_metrics
    assert best_metrics is not None  # epoch 0 was recorded before the loop
    if cfg.restore_best:
        prompted.load_prompt_state_dict(stopper.best_state)
    if cfg.zero_shot_mix:
        if stopper.best_epoch == 0:
            # No epoch beat the initial prompts on held-out pairs: training did not help, and the
            # initial prompts are random, so none of them ships (a "gain" from mixing them in is an
            # ensemble with noise, as large as one held-out query). The adapter is exactly zero-shot.
            weight, best_metrics, history["mix"] = 0.0, zero_shot, []
        else:
            weight, best_metrics, history["mix"] = _choose_mix(
                prompted, val_texts.all(), val_images.all(), zero_val_text, zero_val_image, val_owner, val_ids,
                cfg.mix_grid,
            )
        prompted.set_adapted_weight(weight)
    return TrainResult(
        prompted=prompted,
        config=cfg,
        best_epoch=stopper.best_epoch,
        best_metrics=best_metrics,
        zero_shot_metrics=zero_shot,
        wall_time_s=time.perf_counter() - start_time,
        steps=step,
        stopped_early=stopped_early,
        history=history,
        negative_pairs_used=named.pairs_used if named is not None else 0,
    )


def frozen_work(backbone, train_items: Sequence[PairedItem], val_items: Sequence[PairedItem]) -> FrozenWork:
    """The frozen computation ``train_adapter`` needs for these items, to share between adapters."""
    return FrozenWork(backbone, [item.image for item in train_items], [item.image for item in val_items],
                      flatten_captions(val_items)[0])


def _new_adapter(backbone, cfg: TrainConfig, train_items: Sequence[PairedItem]) -> PromptedCLIP:
    """The untrained adapter; its word table holds the words of these training captions."""
    prompt_config = cfg.prompt_config()
    words = collection_words(backbone.tokenizer, flatten_captions(train_items)[0], prompt_config.word_tokens)
    prompted = PromptedCLIP.from_backbone(backbone, replace(prompt_config, word_tokens=len(words)))
    if words:
        prompted.set_words(words)
    return prompted


def _cosine_distance(adapted: torch.Tensor, frozen: torch.Tensor) -> torch.Tensor:
    """Mean 1 - cos between adapted and frozen unit embeddings (KgCoOp / PromptSRC's pull)."""
    return (1.0 - F.cosine_similarity(adapted.float(), frozen.float(), dim=-1)).mean()


@torch.no_grad()
def _choose_mix(prompted, text, image, zero_text, zero_image, owner, ids, grid) -> tuple[float, Metrics, list[dict]]:
    """The adapted-embedding weight with the best held-out score; ties go to more zero-shot."""
    tried = []
    best_weight: float | None = None
    best_metrics: Metrics | None = None
    for weight in sorted(grid):  # ascending: a later weight must be strictly better to win
        metrics = retrieval_metrics(
            prompted.mix_embeddings(text, zero_text, weight), prompted.mix_embeddings(image, zero_image, weight), owner, ids
        )
        tried.append({"adapted_weight": weight, "metrics": metrics})
        if best_metrics is None or score(metrics) > score(best_metrics):
            best_weight, best_metrics = weight, metrics
    assert best_weight is not None and best_metrics is not None
    return best_weight, best_metrics, tried
