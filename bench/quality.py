"""Quality half of the offline benchmark: what a per-collection adapter buys on shifted collections.

    python -m bench.quality [--spec PATH ...] [--methods ...] [--seeds ...] [--sizes 1000 5000]
                            [--levers] [--quick] [--out docs/bench]

For every shift (a world spec: a name in ``bench/specs`` or any JSON file path) a collection is
drawn deterministically from the miniature world:

- train: ``generate(spec, size, seed=TRAIN_SEED)``, captions as the spec writes them; the sizes a
  personal collection has (1,000 and 5,000 pairs; the smaller is a prefix of the larger);
- val: ``generate(spec.clean(), VAL_SIZE, seed=VAL_SEED)``: early stopping, the zero-shot mixing
  weight, the baselines' learning rates and the levers are all chosen here;
- test: ``generate(spec.clean(), TEST_SIZE, seed=TEST_SEED)``: never seen by training, stopping or
  any choice. Items are drawn from their own RNG seeded by (seed, index): independent draws.

Methods: ``zero-shot``; ``adapter`` (``TrainConfig()``: the recipe), ``adapter+blocks`` (the recipe
with block adapters) and ``adapter+blocks-lr3e-3`` (the same, its low-rank maps at lr 3e-3): the candidates of the service's default, ``method: "auto"``, whose rows the summary
composes from them (``bench.summary.compose_auto``); ``dual``
(dual prompts alone: the recipe without residual map or zero-shot mixing); ``dcar`` (dual + DCAR's
three parts); ``linear`` (a d x d residual map on frozen embeddings) and ``full-ft`` (every backbone
weight). The baselines get the recipe's epoch / patience / batch budget and a learning rate chosen on
val from a sweep of four (widened when a published run chose an end of the sweep). ``--levers`` adds
one-lever-at-a-time variants of the dual prompts, scored on val only. Every R@K, category P@10 / mAP,
difference to zero-shot and recovered fraction gets a 95 % bootstrap interval over test queries and
seeds (``bench.intervals``).

Outputs in ``--out``: quality.json (every run, per-query results), quality.md, recall_by_method.png,
recall_vs_params.png; the README table is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import cast

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a model hub

import torch
from tqdm import tqdm

from adapters.artifact import load_adapter, serialize_adapter
from adapters.backbone import OFFLINE_CHECKPOINT, load_backbone
from adapters.candidates import CANDIDATES
from adapters.evaluate import flatten_captions, image_ids_of, per_query_category, per_query_t2i_ranks, retrieval_metrics
from adapters.features import preprocess_images
from adapters.train import TrainConfig, train_adapter
from bench.baselines import (
    FeatureAdapterConfig,
    FrozenFeatures,
    FullFinetuneConfig,
    encode_text,
    full_finetune,
    train_feature_adapter,
    trim_tokens,
)
from bench.machine import machine_info
from bench.summary import CANDIDATE_METHODS
from bench.world import generate, load_spec

TRAIN_SEED, VAL_SEED, TEST_SEED = 1001, 2002, 3003
SHIFTS = ("style", "fine_grained", "composition", "vocabulary")
REFERENCE = "broad"
TRAIN_SIZES = (1000, 5000)
VAL_SIZE, TEST_SIZE = 500, 1000
SEEDS = (0, 1, 2)
LINEAR_LRS = (1e-4, 3e-4, 1e-3, 3e-3)
FT_LRS = (3e-5, 1e-4, 3e-4, 1e-3)
DCAR = dict(same_category_weight=0.5, hard_negatives=2, attribute_reweighting=True)

# The recipe is TrainConfig's defaults (what the service trains by); never a copy kept here.
RECIPE = {k: v for k, v in TrainConfig().to_dict().items() if k not in ("seed", "device")}
# The plain dual prompts: the recipe without the output-side pieces.
DUAL = dict(RECIPE, method="dual", residual_rank=0, zero_shot_mix=False, consistency_weight=0.0, word_tokens=0)


def budget() -> dict:
    """The epoch / patience / batch / warm-up budget every method gets (the recipe's)."""
    return {k: RECIPE[k] for k in ("epochs", "patience", "batch_size", "warmup")}


# The pieces the recipe adds to the plain dual prompts: a lever "on the recipe" keeps them.
ON_RECIPE = {k: RECIPE[k] for k in RECIPE if RECIPE[k] != DUAL[k]}
RECIPE_LEVER = "recipe: + residual map + mixing + collection words"  # the row that is the recipe itself
# The recipe before collection words joined it (2026-11-26): the output-side pieces alone.
OUTPUT_SIDE = {k: v for k, v in ON_RECIPE.items() if k != "word_tokens"}
OUTPUT_SIDE_LEVER = "+ residual map + mixing"

# The two levers of issue 9's list measured last (fifteenth session): MaPLe's coupling of text to
# visual prompts, and augmentation of the training images that keeps their captions true.
COUPLED_LEVER = "recipe + block adapters (rank 8) + coupled prompts (text prompts at every text block, rank-4 maps onto the visual prompts)"
AUGMENT_LEVER = "recipe + block adapters (rank 8) + augmented training images (brightness, 2-px shift, noise)"

# One lever at a time, scored on val (never on test): from the plain dual prompts, then on the
# output-side pieces (the recipe before collection words), then on the recipe.
LEVERS: dict[str, dict] = {
    "dual prompts (base)": {},
    "+ prompts at every text block": dict(text_deep=True),
    "+ consistency to frozen features (w=1)": dict(consistency_weight=1.0),
    "+ zero-shot mixing chosen on val": dict(zero_shot_mix=True),
    "+ residual map (rank 32)": dict(residual_rank=32),
    OUTPUT_SIDE_LEVER: OUTPUT_SIDE,
    RECIPE_LEVER: ON_RECIPE,
    "+ 2 captions per image per step": dict(captions_per_item=2),
    "+ category weighting (DCAR, same=0.5)": dict(same_category_weight=0.5),
    "+ hard negatives (DCAR, k=2)": dict(hard_negatives=2),
    "+ attribute reweighting (DCAR)": dict(attribute_reweighting=True),
    "+ visual prompts from the input (block 0, 16 tokens)": dict(visual_start=0, visual_deep_from=0, visual_tokens=16),
    "+ prompts' lr 3e-3 (recipe 1e-2)": dict(lr=3e-3),
    "+ residual map + mixing + prompts at every text block": dict(OUTPUT_SIDE, text_deep=True),
    "+ residual map + mixing + consistency to frozen features (w=1)": dict(OUTPUT_SIDE, consistency_weight=1.0),
    "+ residual map + mixing + 2 captions per image per step": dict(OUTPUT_SIDE, captions_per_item=2),
    "+ residual map + mixing + category weighting (DCAR, same=0.5)": dict(OUTPUT_SIDE, same_category_weight=0.5),
    "+ residual map + mixing + hard negatives (DCAR, k=2)": dict(OUTPUT_SIDE, hard_negatives=2),
    "+ residual map + mixing + attribute reweighting (DCAR)": dict(OUTPUT_SIDE, attribute_reweighting=True),
    "+ residual map + mixing + all of DCAR": dict(OUTPUT_SIDE, **DCAR),
    "recipe with 64 collection words (recipe 192)": dict(ON_RECIPE, word_tokens=64),
    "recipe, collection words' lr 1e-3 (recipe 1e-2)": dict(ON_RECIPE, word_lr=1e-3),
    "recipe + block adapters (rank 8)": dict(ON_RECIPE, block_adapter_rank=8),
    "recipe + block adapters (rank 2)": dict(ON_RECIPE, block_adapter_rank=2),
    "recipe + block adapters (rank 8), low-rank maps' lr 3e-3 (recipe 1e-3)": dict(
        ON_RECIPE, block_adapter_rank=8, residual_lr=3e-3),
    "recipe + block adapters (rank 8) + text block adapters (rank 2)": dict(
        ON_RECIPE, block_adapter_rank=8, text_block_adapter_rank=2),
    "recipe + block adapters (rank 8), prompts and adapters from block 0 (recipe 1)": dict(
        ON_RECIPE, block_adapter_rank=8, visual_start=0),
    COUPLED_LEVER: dict(ON_RECIPE, block_adapter_rank=8, text_deep=True, coupling_rank=4),
    AUGMENT_LEVER: dict(ON_RECIPE, block_adapter_rank=8, augment=True),
}


@dataclass(frozen=True)
class Sizes:
    train: Sequence[int] = TRAIN_SIZES
    val: int = VAL_SIZE
    test: int = TEST_SIZE


QUICK_SHIFT = "style"
QUICK_SIZES = Sizes(train=(600,), val=200, test=300)


# ====================================================================== data
@dataclass
class Collection:
    """One shift at one train size: items, and the test tensors prepared once."""

    name: str
    train: list
    val: list
    test: list
    test_pixels: torch.Tensor
    test_captions: list[str]
    test_owner: torch.Tensor
    test_ids: torch.Tensor
    test_query_categories: list
    test_image_categories: list
    cache: dict = field(default_factory=dict)

    @classmethod
    def draw(cls, backbone, spec_ref: str, train_size: int, sizes: Sizes) -> Collection:
        spec = load_spec(spec_ref)
        train = generate(spec, train_size, seed=TRAIN_SEED)
        val = generate(spec.clean(), sizes.val, seed=VAL_SEED)
        test = generate(spec.clean(), sizes.test, seed=TEST_SEED)
        captions, owner = flatten_captions(test)
        pixels = preprocess_images(backbone, [item.image for item in test])
        cats = [item.category for item in test]
        return cls(spec.name, train, val, test, pixels, captions, owner, image_ids_of(test),
                   [cats[int(i)] for i in owner], cats)

    def pixels(self, backbone) -> tuple[torch.Tensor, torch.Tensor]:
        if "pixels" not in self.cache:
            self.cache["pixels"] = (preprocess_images(backbone, [i.image for i in self.train]),
                                    preprocess_images(backbone, [i.image for i in self.val]))
        return self.cache["pixels"]

    def describe(self) -> dict:
        def caps(items):
            return sum(len(i.captions) for i in items)

        return {
            "train": {"items": len(self.train), "captions": caps(self.train), "seed": TRAIN_SEED},
            "val": {"items": len(self.val), "captions": caps(self.val), "seed": VAL_SEED},
            "test": {"items": len(self.test), "captions": caps(self.test), "seed": TEST_SEED},
            "categories": len({i.category for i in self.test}),
        }


@torch.no_grad()
def test_results(coll: Collection, encode_image: Callable, encode_text_tokens: Callable, tokenize: Callable) -> dict:
    """Per-query test results (ranks, category P@10 and AP) and their means."""
    image = torch.cat([encode_image(coll.test_pixels[s : s + 250]).float().cpu() for s in range(0, len(coll.test_pixels), 250)])
    tokens = tokenize(coll.test_captions)
    text = torch.cat([encode_text_tokens(trim_tokens(tokens[s : s + 256])).float().cpu() for s in range(0, len(tokens), 256)])
    ranks = per_query_t2i_ranks(text, image, coll.test_owner, coll.test_ids)
    cat = per_query_category(text, image, coll.test_query_categories, coll.test_image_categories)
    full = retrieval_metrics(text, image, coll.test_owner, coll.test_ids)
    return {
        "summary": {"t2i_r1": full["t2i_r1"], "t2i_r5": full["t2i_r5"], "t2i_r10": full["t2i_r10"], "i2t_r1": full["i2t_r1"],
                    "rsum": full["rsum"], "cat_p10": float(torch.nanmean(cat["cat_p10"])),
                    "cat_map": float(torch.nanmean(cat["cat_map"]))},
        "per_query": {"rank": ranks.tolist(), "cat_p10": [round(float(x), 3) for x in cat["cat_p10"]],
                      "cat_ap": [round(float(x), 4) for x in cat["cat_map"]]},
    }


def _val(metrics: Mapping[str, object] | None) -> dict | None:
    return None if metrics is None else {k: metrics[k] for k in ("t2i_r1", "t2i_r5", "t2i_r10", "rsum") if k in metrics}


def _backbone_params(backbone) -> int:
    return sum(p.numel() for p in backbone.model.parameters())


# ====================================================================== runs
def run_zero_shot(backbone, coll: Collection) -> dict:
    model = backbone.model
    res = test_results(coll, lambda p: model.encode_image(p.to(backbone.device), normalize=True),
                       lambda t: encode_text(model, t.to(backbone.device)), backbone.tokenizer)
    return {"method": "zero-shot", "seed": None, "params": 0, "bytes": 0, "wall_time_s": 0.0,
            "val": _val(FrozenFeatures.encode(backbone, coll.val).metrics()), **res}


def run_adapter(backbone, coll: Collection, method: str, overrides: dict, seed: int, with_test: bool = True,
                bar=None) -> dict:
    cfg = TrainConfig(**{**overrides, "seed": seed})

    def progress(info: dict) -> None:
        if bar is not None:
            bar.set_postfix_str(f"{coll.name}/{len(coll.train)} {method} s{seed} ep {info['epoch']}/{info['epochs']} "
                                f"val R@1 {info['metrics']['t2i_r1']:.3f}")

    torch.manual_seed(seed)
    result = train_adapter(backbone, coll.train, coll.val, cfg, on_progress=progress)
    trained = result.prompted
    blob = serialize_adapter(trained, cfg)
    record = {
        "method": method, "seed": seed, "config": cfg.to_dict(), "val": _val(result.best_metrics),
        "val_zero_shot": _val(result.zero_shot_metrics), "params": trained.num_parameters(),
        "bytes": len(blob), "wall_time_s": round(result.wall_time_s, 1),
        "best_epoch": result.best_epoch, "steps": result.steps,
        "adapted_weight": float(trained.adapted_weight) if trained.adapted_weight is not None else None,
    }
    if with_test:
        stored = load_adapter(blob, backbone)  # tested as the service serves it: read back from its file
        record.update(test_results(coll, stored.encode_image, stored.encode_text, lambda caps: stored.tokenize(caps).cpu()))
        unrounded = test_results(coll, trained.encode_image, trained.encode_text, lambda caps: trained.tokenize(caps).cpu())
        record["t2i_r1_before_storage"] = unrounded["summary"]["t2i_r1"]  # float32 in memory, before float16 storage
    return record


def _features(backbone, coll: Collection) -> tuple[FrozenFeatures, FrozenFeatures]:
    if "features" not in coll.cache:
        train_px, val_px = coll.pixels(backbone)
        coll.cache["features"] = (FrozenFeatures.encode(backbone, coll.train, train_px), FrozenFeatures.encode(backbone, coll.val, val_px))
    return coll.cache["features"]


def run_linear(backbone, coll: Collection, seed: int, lr: float) -> tuple[dict, object]:
    b = budget()
    cfg = FeatureAdapterConfig(hidden=None, epochs=b["epochs"], patience=b["patience"], batch_size=b["batch_size"],
                               warmup=b["warmup"], lr=lr, seed=seed)
    train_f, val_f = _features(backbone, coll)
    result = train_feature_adapter(backbone, coll.train, train_f, val_f, cfg)
    record = {"method": "linear", "seed": seed, "config": cfg.to_dict(), "val": _val(result.best_metrics),
              "params": result.num_parameters, "bytes": result.num_bytes, "wall_time_s": round(result.wall_time_s, 1),
              "best_epoch": result.best_epoch, "steps": result.steps}
    return record, result.model


def test_linear(backbone, coll: Collection, adapter) -> dict:
    model = backbone.model
    return test_results(coll, lambda p: adapter.image(model.encode_image(p.to(backbone.device), normalize=True).float()),
                        lambda t: adapter.text(encode_text(model, t.to(backbone.device)).float()), backbone.tokenizer)


def run_full_ft(backbone, coll: Collection, seed: int, lr: float) -> tuple[dict, object]:
    b = budget()
    cfg = FullFinetuneConfig(epochs=b["epochs"], patience=b["patience"], batch_size=b["batch_size"], warmup=b["warmup"],
                             lr=lr, seed=seed)
    train_px, val_px = coll.pixels(backbone)
    result = full_finetune(backbone, coll.train, coll.val, cfg, train_px, val_px)
    record = {"method": "full-ft", "seed": seed, "config": cfg.to_dict(), "val": _val(result.best_metrics),
              "params": result.num_parameters, "bytes": result.num_bytes, "wall_time_s": round(result.wall_time_s, 1),
              "best_epoch": result.best_epoch, "steps": result.steps}
    return record, result.model


def swept(backbone, coll: Collection, method: str, seeds: Sequence[int], lrs: Sequence[float], bar=None) -> list[dict]:
    """A baseline: lr chosen on val (seed 0 of the sweep), then every seed at that lr, tested."""
    run = run_linear if method == "linear" else run_full_ft
    sweep = []
    kept: dict[float, tuple[dict, object]] = {}
    for lr in lrs:
        if bar is not None:
            bar.set_postfix_str(f"{coll.name}/{len(coll.train)} {method} lr sweep {lr:g}")
        record, model = run(backbone, coll, seeds[0], lr)
        sweep.append({"lr": lr, "val_t2i_r1": record["val"]["t2i_r1"], "val_rsum": record["val"]["rsum"],
                      "best_epoch": record["best_epoch"]})
        best = max(sweep, key=lambda s: (s["val_t2i_r1"], s["val_rsum"]))
        kept = {lr: (record, model)} if best["lr"] == lr else kept  # keep only the leader's model
    chosen = max(sweep, key=lambda s: (s["val_t2i_r1"], s["val_rsum"]))["lr"]
    tester = test_linear if method == "linear" else (lambda bb, c, m: test_results(
        c, m.encode_image, lambda t: encode_text(m.model, t.to(bb.device)), bb.tokenizer))
    out = []
    for seed in seeds:
        if bar is not None:
            bar.set_postfix_str(f"{coll.name}/{len(coll.train)} {method} lr {chosen:g} s{seed}")
        record, model = kept[chosen] if seed == seeds[0] else run(backbone, coll, seed, chosen)
        record = {**record, **tester(backbone, coll, model), "lr_sweep": sweep, "lr_chosen": chosen}
        out.append(record)
        del model
    return out


# ====================================================================== the benchmark
@dataclass
class Options:
    out: Path = Path("docs/bench")
    specs: Sequence[str] = SHIFTS
    methods: Sequence[str] = ("zero-shot", *CANDIDATE_METHODS.values(), "dual", "linear", "full-ft")
    seeds: Sequence[int] = SEEDS
    sizes: Sizes = Sizes()
    big_size_methods: Sequence[str] | None = None  # methods also run at sizes after the first (None: all)
    big_size_seeds: Sequence[int] | None = None
    levers: bool = False
    lever_specs: Sequence[str] | None = None  # None: every spec
    lever_names: Sequence[str] | None = None  # None: every lever
    lever_seeds: Sequence[int] = (0,)  # a lever is screened on seed 0; more seeds tell it from seed noise
    reference: str | None = REFERENCE
    quick: bool = False
    linear_lrs: Sequence[float] = LINEAR_LRS
    ft_lrs: Sequence[float] = FT_LRS
    device: str = "auto"  # as the service: the GPU where there is one
    precision: str = "auto"  # as the service: fp16 on a GPU, fp32 on the CPU


def quick_options(out: Path) -> Options:
    return Options(out=out, specs=(QUICK_SHIFT,), methods=("zero-shot", "adapter"), seeds=(0,), sizes=QUICK_SIZES,
                   reference=None, quick=True)


def quick_core(backbone, spec: str = QUICK_SHIFT, seed: int = 0, sizes: Sizes = QUICK_SIZES) -> dict:
    """The quick variant's core: zero-shot vs the default adapter on one shift's held-out test pairs."""
    coll = Collection.draw(backbone, spec, sizes.train[0], sizes)
    return {"zero_shot": run_zero_shot(backbone, coll), "adapter": run_adapter(backbone, coll, "adapter", RECIPE, seed)}


def plan_runs(opts: Options) -> list[tuple[str, int, str, object]]:
    plan: list[tuple[str, int, str, object]] = []
    for spec in opts.specs:
        for n, size in enumerate(opts.sizes.train):
            methods = opts.methods if n == 0 or opts.big_size_methods is None else [m for m in opts.methods if m in opts.big_size_methods]
            seeds = opts.seeds if n == 0 or opts.big_size_seeds is None else opts.big_size_seeds
            for method in methods:
                if method == "zero-shot":
                    plan.append((spec, size, method, None))
                elif method in ("linear", "full-ft"):
                    plan.append((spec, size, method, tuple(seeds)))
                else:
                    plan += [(spec, size, method, s) for s in seeds]
    if opts.levers:
        size = opts.sizes.train[0]
        for label in opts.lever_names or LEVERS:
            for spec in opts.lever_specs or opts.specs:
                plan += [(spec, size, "lever", (label, s)) for s in opts.lever_seeds]
    return plan


# Each of auto's candidates runs as its own bench method (bench.summary.CANDIDATE_METHODS).
METHOD_CONFIGS = {method: dict(RECIPE, **CANDIDATES[name]) for name, method in CANDIDATE_METHODS.items()} | {
    "dual": DUAL, "dcar": dict(DUAL, **DCAR)}


def run_benchmark(opts: Options) -> dict:
    t_start = time.perf_counter()
    backbone = load_backbone(device=opts.device, precision=opts.precision)
    plan = plan_runs(opts)
    records: list[dict] = []
    data: dict[tuple[str, int], Collection] = {}
    bar = tqdm(total=len(plan), desc="quality runs", unit="run", file=sys.stderr, dynamic_ncols=True)
    for spec, size, method, arg in plan:
        key = (spec, size)
        if key not in data:
            for old in [k for k in data if k[0] != spec]:  # one shift's tensors in memory at a time
                del data[old]
            data[key] = Collection.draw(backbone, spec, size, opts.sizes)
        coll = data[key]
        base = {"spec": coll.name, "spec_ref": spec, "train_size": size}
        # plan_runs gives a sweep its seeds, a lever its name and seed, any other method one seed (hence the casts).
        if method == "zero-shot":
            records.append({**base, **run_zero_shot(backbone, coll)})
        elif method in ("linear", "full-ft"):
            lrs = opts.linear_lrs if method == "linear" else opts.ft_lrs
            records += [{**base, **r} for r in swept(backbone, coll, method, cast(Sequence[int], arg), lrs, bar)]
        elif method == "lever":
            label, seed = cast(tuple[str, int], arg)
            overrides = dict(DUAL, **LEVERS[label])
            rec = run_adapter(backbone, coll, "lever", overrides, seed, with_test=False, bar=bar)
            records.append({**base, **rec, "lever": label})
        else:
            records.append({**base, **run_adapter(backbone, coll, method, METHOD_CONFIGS[method], cast(int, arg),
                                                  bar=bar)})
        bar.update(1)
        _write_partial(opts, records)
    bar.close()
    reference = None
    if opts.reference:
        coll = Collection.draw(backbone, opts.reference, 2, opts.sizes)
        reference = {"spec": opts.reference, **run_zero_shot(backbone, coll)["summary"]}
    from bench.summary import summarize

    return {
        "command": None,  # set by main() from its arguments
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_time_s": round(time.perf_counter() - t_start, 1),
        "machine": machine_info(),
        "backbone": {"identity": backbone.identity.to_dict(), "parameters": _backbone_params(backbone),
                     "device": str(backbone.device), "precision": backbone.precision,
                     "card": json.loads((Path(__file__).parent / "backbone_card.json").read_text())},
        "recipe": RECIPE, "dual": DUAL, "dcar": DCAR, "baseline_budget": budget(),
        "linear_lrs": list(opts.linear_lrs), "full_ft_lrs": list(opts.ft_lrs), "levers": LEVERS, "recipe_lever": RECIPE_LEVER,
        "sizes": {"train": list(opts.sizes.train), "val": opts.sizes.val, "test": opts.sizes.test},
        "collections": {f"{k[0]}/{k[1]}": c.describe() for k, c in data.items()},
        "seeds": {"world": {"train": TRAIN_SEED, "val": VAL_SEED, "test": TEST_SEED}, "methods": list(opts.seeds)},
        "reference_zero_shot": reference,
        "summary": (summary := summarize(records, _backbone_params(backbone))),
        "notes": notes(opts, summary),
        "runs": records,
    }


def summary_notes(summary: dict) -> list[str]:
    """Facts the numbers themselves call for: shifts outside the real-CLIP regime, methods that did not run."""
    out = []
    for key, coll in summary["collections"].items():
        zero = coll["methods"].get("zero-shot")
        if zero is not None and not 0.10 <= zero["t2i_r1"]["mean"] <= 0.35:
            out.append(f"{key}: zero-shot R@1 {100 * zero['t2i_r1']['mean']:.1f} % is outside the 10-35 % range real CLIP users are in.")
        missing = [m for m in ("zero-shot", "adapter", "linear", "full-ft") if m not in coll["methods"]]
        if missing:
            out.append(f"{key}: not run: {', '.join(missing)} (their comparisons say 'not run').")
    return out


def notes(opts: Options, summary: dict) -> list[str]:
    """What the run left out or could not show, stated from what actually ran."""
    out = summary_notes(summary)
    if len(opts.sizes.train) < 2:
        out.append(f"Only {opts.sizes.train[0]:,}-pair collections ran (no second train size).")
    elif opts.big_size_methods is not None or opts.big_size_seeds is not None:
        out.append(f"At {', '.join(f'{n:,}' for n in opts.sizes.train[1:])} pairs only {list(opts.big_size_methods or opts.methods)} "
                   f"ran, seeds {list(opts.big_size_seeds or opts.seeds)}.")
    out.append(f"Baselines' learning rates were swept on seed {opts.seeds[0]} only; the other seeds reuse the chosen rate.")
    for name, lrs in (("full fine-tuning", opts.ft_lrs), ("linear adapter", opts.linear_lrs)):
        if len(lrs) < 3:
            out.append(f"{name}: learning rate NOT swept in this run (only {list(lrs)}): fewer than the 3 values the protocol asks for.")
    if len(opts.seeds) < 3:
        out.append(f"Seeds {list(opts.seeds)}: intervals over seeds rest on {len(opts.seeds)} run(s) per method.")
    if not opts.levers:
        out.append("The lever study (one lever at a time, on val) is not part of this run.")
    return out


def merge_reports(paths: Sequence[Path], command: str, extra_notes: Sequence[str] = ()) -> dict:
    """One report from several runs' JSON (full reports or the partial lists of records)."""
    from bench.summary import summarize

    base: dict | None = None
    records: list[dict] = []
    parts = []
    inherited: list[str] = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        if isinstance(data, dict):
            records += data["runs"]
            base = base or data
            # Each source's machine: a seeded run may not repeat on a CPU whose kernels differ.
            parts.append({"file": str(path), "command": data.get("command"), "wall_time_s": data.get("wall_time_s"),
                          "machine": data.get("machine"), "complete": True})
            if "merged_from" in data:
                # An earlier merge (a published report, say) taken as one input: its sources and its notes
                # still describe its records; the notes its summary called for are recomputed below.
                parts[-1]["merged_from"] = data["merged_from"]
                recomputed = set(summary_notes(data["summary"]))
                inherited += [n for n in data.get("notes", []) if n not in recomputed and n not in inherited]
        else:
            records += data
            parts.append({"file": str(path), "complete": False, "records": len(data)})
    if base is None:
        backbone = load_backbone()
        base = {"machine": machine_info(), "recipe": RECIPE, "dual": DUAL, "dcar": DCAR, "baseline_budget": budget(),
                "linear_lrs": LINEAR_LRS, "full_ft_lrs": FT_LRS, "sizes": {"val": VAL_SIZE, "test": TEST_SIZE},
                "seeds": {"world": {"train": TRAIN_SEED, "val": VAL_SEED, "test": TEST_SEED}, "methods": list(SEEDS)},
                "collections": {}, "reference_zero_shot": None, "wall_time_s": 0.0,
                "backbone": {"identity": backbone.identity.to_dict(), "parameters": _backbone_params(backbone),
                             "card": json.loads((Path(__file__).parent / "backbone_card.json").read_text())}}
    # Older runs knew fewer levers: the report names them by the current definitions.
    base = {**base, "levers": {**base.get("levers", {}), **LEVERS}, "recipe_lever": RECIPE_LEVER}
    # Zero-shot is deterministic: a shift measured by several of the merged runs keeps one record.
    seen: set[tuple] = set()
    unique = []
    for r in records:
        key = (r["spec"], r["train_size"], r["method"], r.get("seed"), r.get("lever"), r.get("lr_chosen"))
        if key not in seen:
            seen.add(key)
            unique.append(r)
    # Tables list sizes, then shifts in the protocol's order, levers in LEVERS' order, whatever order
    # the files came in.
    order = {name: i for i, name in enumerate(SHIFTS)}
    levers: dict[str | None, int] = {name: i for i, name in enumerate(LEVERS)}  # a record without a lever: None
    unique.sort(key=lambda r: (r["train_size"], order.get(r["spec"], len(order)), levers.get(r.get("lever"), -1)))
    records, combined = combine_sweeps(unique)
    params = base["backbone"]["parameters"]
    for method, lrs_key in (("linear", "linear_lrs"), ("full-ft", "full_ft_lrs")):  # the rates actually tried
        tried = sorted({s["lr"] for r in records if r["method"] == method for s in r.get("lr_sweep", [])})
        if tried:
            base = {**base, lrs_key: tried}
    summary = summarize(records, params)
    # A sweep combined again here is described by its new note (every rate it has now).
    regrouped = {n.split(": lr sweep", 1)[0] for n in combined}
    inherited = [n for n in inherited if n.split(": lr sweep", 1)[0] not in regrouped]
    notes = summary_notes(summary) + list(extra_notes) + inherited + combined
    incomplete = [str(p["file"]) for p in parts if not p["complete"]]
    if incomplete:
        notes.append(f"Merged from runs stopped before their end (partial records): {', '.join(incomplete)}; "
                     "methods missing from a shift did not finish in the time budget.")
    return {**base, "command": command, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "merged_from": parts, "summary": summary, "notes": notes, "runs": records}


def combine_sweeps(records: list[dict]) -> tuple[list[dict], list[str]]:
    """One record per baseline and seed from runs that each tried part of its lr sweep.

    A sweep may be split over processes (``--ft-lrs`` one value each, run side by side); the merged
    record is the one ``swept`` would have kept: the lr with the best val R@1 (recall sum breaks
    ties), with every tried lr in its ``lr_sweep``. Test results of the other lrs are dropped unread.
    """
    groups: dict[tuple, list[dict]] = {}
    out: list[dict | tuple] = []
    for r in records:
        if r["method"] in ("linear", "full-ft") and "lr_sweep" in r:
            key = (r["spec"], r["train_size"], r["method"], r["seed"])
            if key not in groups:
                groups[key] = []
                out.append(key)  # placeholder: keeps the record's place
            groups[key].append(r)
        else:
            out.append(r)
    notes: list[str] = []
    merged: list[dict] = []
    for item in out:
        if not isinstance(item, tuple):
            merged.append(item)
            continue
        runs = groups[item]
        if len(runs) == 1:
            merged.append(runs[0])
            continue
        sweep = sorted({s["lr"]: s for r in runs for s in r["lr_sweep"]}.values(), key=lambda s: s["lr"])
        chosen = max(sweep, key=lambda s: (s["val_t2i_r1"], s["val_rsum"]))["lr"]
        merged.append({**next(r for r in runs if r["lr_chosen"] == chosen), "lr_sweep": sweep, "lr_chosen": chosen})
        notes.append(f"{item[0]}/{item[1]} {item[2]} seed {item[3]}: lr sweep {[s['lr'] for s in sweep]} ran as "
                     f"{len(runs)} separate processes; {chosen:g} chosen on val R@1.")
    return merged, notes


def _write_partial(opts: Options, records: list[dict]) -> None:
    """Keep what has been measured so far on disk, so an interrupted run is not lost."""
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / ("quality-quick.partial.json" if opts.quick else "quality.partial.json")).write_text(json.dumps(records))


def _drop_option(argv: list[str], name: str) -> list[str]:
    """argv without ``name`` and its values (up to the next option)."""
    out, skipping = [], False
    for arg in argv:
        if arg.startswith("--"):
            skipping = arg == name or arg.startswith(name + "=")
        if not skipping:
            out.append(arg)
    return out


def run_in_parallel(args: argparse.Namespace, argv: list[str]) -> int:
    """``--jobs N``: the shifts dealt round-robin to N child runs (``--out`` OUT/parts/i), then merged into OUT.

    Each shift's runs are independent of the others' (own data, seeded training), so the merged
    report holds the same records a single process would write, in shift order.
    """
    import subprocess

    from bench.report import readme_table, write_outputs

    specs = list(args.specs or SHIFTS)
    jobs = min(args.jobs, len(specs))
    base = _drop_option(_drop_option(_drop_option(argv, "--jobs"), "--spec"), "--out")
    base = _drop_option(base, "--shifts")
    parts, procs = [], []
    for i in range(jobs):
        out = args.out / "parts" / str(i)
        cmd = [sys.executable, "-m", "bench.quality", *base, "--spec", *specs[i::jobs], "--out", str(out)]
        log = (args.out / "parts" / f"{i}.log")
        log.parent.mkdir(parents=True, exist_ok=True)
        # Each child in its own session: with the kernel's autogroup scheduling a session's
        # processes share one CPU slice, so children left in ours would split one share between them.
        procs.append((subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True), log))
        parts.append(out / "quality.json")
    failed = [str(log) for proc, log in procs if proc.wait() != 0]
    if failed:
        print(f"child runs failed, see {', '.join(failed)}", file=sys.stderr)
        return 1
    command = " ".join(["python -m bench.quality", *argv])
    report = merge_reports(parts, command)
    order = {name: i for i, name in enumerate(specs)}
    report["runs"].sort(key=lambda r: order.get(r["spec_ref"], len(order)))
    from bench.summary import summarize

    report["summary"] = summarize(report["runs"], report["backbone"]["parameters"])
    report["notes"] = [n for n in report["notes"] if not n.startswith("Merged from")]
    child = json.loads(parts[0].read_text())
    report["notes"] += [n for n in child["notes"] if not n.startswith(tuple(f"{s}/" for s in specs))]
    report["wall_time_s"] = max(json.loads(p.read_text())["wall_time_s"] for p in parts)
    report["parallel_jobs"] = jobs
    paths = write_outputs(report, args.out)
    print(f"{jobs} parallel runs merged; wrote {', '.join(str(p) for p in paths)}")
    print(readme_table(report))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", "--shifts", dest="specs", nargs="+", default=None,
                        help=f"shift specs: names in bench/specs or JSON file paths (default {' '.join(SHIFTS)})")
    parser.add_argument("--methods", nargs="+", default=None, choices=("zero-shot", *METHOD_CONFIGS, "linear", "full-ft"))
    parser.add_argument("--seeds", nargs="+", type=int, default=None)
    parser.add_argument("--sizes", nargs="+", type=int, default=None, help="train sizes (default 1000 5000)")
    parser.add_argument("--test-size", type=int, default=None)
    parser.add_argument("--val-size", type=int, default=None)
    parser.add_argument("--big-size-methods", nargs="+", default=None, help="methods also run at the larger train sizes")
    parser.add_argument("--big-size-seeds", nargs="+", type=int, default=None)
    parser.add_argument("--ft-lrs", nargs="+", type=float, default=None, help=f"full fine-tuning lr sweep (default {FT_LRS})")
    parser.add_argument("--linear-lrs", nargs="+", type=float, default=None, help=f"linear adapter lr sweep (default {LINEAR_LRS})")
    parser.add_argument("--levers", action="store_true", help="add the one-lever-at-a-time study (val only)")
    parser.add_argument("--lever-specs", nargs="+", default=None)
    parser.add_argument("--lever-names", nargs="+", default=None, help="a subset of the levers (default all)")
    parser.add_argument("--lever-seeds", nargs="+", type=int, default=[0], help="seeds of each lever run (default 0)")
    parser.add_argument("--quick", action="store_true", help="one shift, small sizes, the default adapter, one seed")
    parser.add_argument("--device", default="auto", help="auto (the GPU where there is one) | cpu | cuda | cuda:N")
    parser.add_argument("--precision", default="auto", help="auto (fp16 on a GPU, fp32 on the CPU) | fp32 | fp16 | bf16")
    parser.add_argument("--out", type=Path, default=Path("docs/bench"))
    parser.add_argument("--from-json", type=Path, default=None, help="rewrite the markdown and plots from a saved quality.json")
    parser.add_argument("--note", action="append", default=None, help="a sentence for the report's notes (with --merge)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="run the shifts in this many processes side by side (each with its own shifts, one thread), "
                             "then merge their quality.json into --out: the same runs as one process, sooner on several cores")
    parser.add_argument("--merge", type=Path, nargs="+", default=None,
                        help="combine the runs of several quality.json / quality.partial.json files (e.g. one per shift, run "
                             "in parallel) into one report in --out")
    args = parser.parse_args(argv)
    from bench.report import readme_table, write_outputs

    if args.merge is not None:
        report = merge_reports(args.merge, " ".join(["python -m bench.quality", *(argv if argv is not None else sys.argv[1:])]),
                               args.note or [])
        paths = write_outputs(report, args.out)
        print(f"merged {len(args.merge)} files into {', '.join(str(p) for p in paths)}")
        print(readme_table(report))
        return 0
    if args.from_json is not None:
        report = json.loads(args.from_json.read_text())
        paths = write_outputs(report, args.out)
        print(f"rewrote {', '.join(str(p) for p in paths)} from {args.from_json}")
        print(readme_table(report))
        return 0
    if args.jobs > 1:
        return run_in_parallel(args, list(argv if argv is not None else sys.argv[1:]))
    # One thread: on a CPU shared with other jobs two OpenMP threads spin against each other (a
    # pretraining step measured 13-18 s with two threads vs 2-5 s with one at load average 7).
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    out = args.out
    if args.quick and out == Path("docs/bench"):
        out = Path("bench/runs/quick")  # a quick run never overwrites the published results
    opts = quick_options(out) if args.quick else Options(out=out)
    if args.specs:
        opts.specs = tuple(args.specs)
    if args.methods:
        opts.methods = tuple(args.methods)
    if args.seeds:
        opts.seeds = tuple(args.seeds)
    sizes = opts.sizes
    if args.sizes:
        sizes = replace(sizes, train=tuple(args.sizes))
    if args.test_size:
        sizes = replace(sizes, test=args.test_size)
    if args.val_size:
        sizes = replace(sizes, val=args.val_size)
    opts.sizes = sizes
    opts.big_size_methods = args.big_size_methods
    opts.big_size_seeds = args.big_size_seeds
    opts.levers = args.levers
    opts.ft_lrs = tuple(args.ft_lrs) if args.ft_lrs else opts.ft_lrs
    opts.linear_lrs = tuple(args.linear_lrs) if args.linear_lrs else opts.linear_lrs
    opts.lever_specs = args.lever_specs
    opts.lever_names = args.lever_names
    opts.lever_seeds = tuple(args.lever_seeds)
    opts.device, opts.precision = args.device, args.precision
    if not OFFLINE_CHECKPOINT.exists():
        print(f"warning: {OFFLINE_CHECKPOINT} is missing; load_backbone() falls back to a random tiny model", file=sys.stderr)
    report = run_benchmark(opts)
    report["command"] = " ".join(["python -m bench.quality", *(argv if argv is not None else sys.argv[1:])])
    paths = write_outputs(report, opts.out)
    print(f"wall time {report['wall_time_s']:.0f} s; wrote {', '.join(str(p) for p in paths)}")
    print(readme_table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
