"""Feedback benchmark: does a job trained on a user's marks alone improve held-out queries?

    python -m bench.feedback [--spec style] [--queries 20 50 200] [--seeds 0] [--pool 1000] [--test 1000]
                             [--ablation] [--backbone MODEL] [--out docs/bench]

The scenario, in the miniature world (``bench.world``; the same draws as ``bench.quality``):

- the user's collection: ``generate(spec, pool, seed=1001)``, the quality benchmark's training
  images, **without captions**: nothing trains but the marks;
- a simulated user searches N texts (captions of N different collection images, drawn with the
  run's seed) and marks each of the zero-shot top 10 truthfully: relevant when the world says the
  text describes the image (its own image, or one whose main object has the same category and every
  attribute; the spec's captions must name every attribute, so this is the whole truth), else not;
- one job per N, through ``adapters.marks.train_on_marks`` with ``TrainConfig()`` (the service's
  default recipe) and the marks turned into training data as the service turns them: a relevant
  mark makes the query a caption of the image, a not-relevant one makes the image a named negative
  of the query (``adapters.negatives``). The epoch and the zero-shot mixing weight are chosen by
  cross-validation over the queries with a relevant mark, and the adapter is served only when the
  bootstrap lower bound of its cross-validated gain, corrected for the candidates compared, is above
  0 on enough judged queries (``adapters.marks``'s gate); the report gives both what is served and
  the adapter before that gate;
- held-out evaluation: ``generate(spec.clean(), test, seed=3003)`` (the quality benchmark's test
  set): other images, other texts, never marked, never used for any choice. R@1/5/10 and category
  P@10 with 95 % bootstrap intervals over the test queries, and the paired gain over zero-shot.

``--ablation`` also trains each job without its named negatives (relevant marks only), so the
negatives' own effect is a paired difference on the same test queries (it doubles the training time).

N runs are prefixes of one session: N = 20 marks the first 20 of the queries N = 200 marks. With
several seeds, per-query results are averaged over seeds before resampling queries. Outputs:
``feedback.json`` (every number) and ``feedback.md`` in ``--out``; the README table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a model hub

import numpy as np
import torch

from adapters.backbone import OFFLINE_CHECKPOINT, load_backbone
from adapters.data import PairedItem
from adapters.marks import FOLDS, MIN_JUDGED_QUERIES, MarkedQuery, train_on_marks
from adapters.stats import bootstrap_mean, paired_bootstrap_gain
from adapters.train import TrainConfig
from bench.machine import machine_info
from bench.quality import TEST_SEED, TRAIN_SEED, Collection, Sizes, run_zero_shot, test_results
from bench.world import WorldSpec, load_spec

SPEC = "style"
QUERY_COUNTS = (20, 50, 200)
POOL_SIZE, TEST_SIZE = 1000, 1000
SEEDS = (0,)
TOP_K = 10  # results the simulated user marks per query
KS = (1, 5, 10)
METRICS = ("r1", "r5", "r10", "cat_p10")
RECIPE = {k: v for k, v in TrainConfig().to_dict().items() if k not in ("seed", "device")}


# ====================================================================== the simulated user
def describes(query_item: PairedItem, image_item: PairedItem) -> bool:
    """The world's truth: a caption of ``query_item`` describes ``image_item``."""
    return query_item.key == image_item.key or (
        query_item.category == image_item.category and sorted(query_item.attributes) == sorted(image_item.attributes))


def check_truthful(spec: WorldSpec) -> None:
    """``describes`` is the whole truth only when every caption names every attribute and none wrongly."""
    cap = spec.caption
    if float(cap.get("partial_prob", 0.0)) > 0 or float(cap.get("noise_prob", 0.0)) > 0:
        raise ValueError(f"spec {spec.name!r} has partial or noisy captions: a simulated user could not judge "
                         "relevance from the world's ground truth (use a spec with partial_prob = noise_prob = 0)")


def simulate_session(backbone, pool: Sequence[PairedItem], n_queries: int, seed: int) -> list[MarkedQuery]:
    """N searches over the collection with the backbone alone, each top ``TOP_K`` marked truthfully."""
    rng = random.Random(f"feedback-session:{seed}")
    owners = rng.sample(range(len(pool)), n_queries)
    texts = [rng.choice(pool[o].captions) for o in owners]
    image_emb = backbone.encode_images([item.image for item in pool])
    text_emb = backbone.encode_texts(texts)
    top = (text_emb @ image_emb.T).topk(min(TOP_K, len(pool)), dim=1).indices.tolist()
    session = []
    for owner, text, hits in zip(owners, texts, top, strict=True):
        marks = MarkedQuery(text)
        for hit in hits:
            (marks.relevant if describes(pool[owner], pool[hit]) else marks.not_relevant).append(hit)
        session.append(marks)
    return session


# ====================================================================== marks -> a served adapter
def session_counts(session: Sequence[MarkedQuery]) -> dict:
    relevant_images = {i for m in session for i in m.relevant}
    return {
        "queries": len(session), "relevant_marks": sum(len(m.relevant) for m in session),
        "not_relevant_marks": sum(len(m.not_relevant) for m in session),
        "queries_with_relevant": sum(1 for m in session if m.relevant), "train_images": len(relevant_images),
    }


# The two models a job reports: what the service serves (the adapter only past the cross-validated
# gate, zero-shot otherwise) and the adapter before the gate (its chosen epoch and weight, served or not).
MODELS = ("served", "adapter")
VARIANTS = {"all marks": True, "relevant marks only": False}  # name -> the named negatives train


def run_feedback_job(backbone, coll: Collection, session: Sequence[MarkedQuery], seed: int,
                     with_negatives: bool = True) -> dict:
    torch.manual_seed(seed)
    result = train_on_marks(backbone, coll.train, session, TrainConfig(seed=seed), with_negatives=with_negatives)
    prompted, selection = result.prompted, result.selection
    record = {"seed": seed, **session_counts(session), "selection": selection.to_dict(),
              "candidates": selection.candidates}
    if result.train is not None:
        record.update(negative_pairs_used=result.train.negative_pairs_used, steps=result.train.steps,
                      wall_time_s=round(result.train.wall_time_s, 1))

    def tested() -> dict:
        return test_results(coll, prompted.encode_image, prompted.encode_text, lambda caps: prompted.tokenize(caps).cpu())

    record["served"] = tested()
    if result.raw_weight > 0 and not selection.served:
        prompted.set_adapted_weight(result.raw_weight)
        record["adapter"] = tested()
    else:  # served is the adapter itself, or nothing was trained (zero-shot both)
        record["adapter"] = record["served"]
    return record


def per_query(result: dict) -> dict[str, np.ndarray]:
    """Per test query: R@K hits and category P@10, from one model's test results."""
    ranks = np.asarray(result["per_query"]["rank"], dtype=np.float64)
    out = {f"r{k}": (ranks <= k).astype(np.float64) for k in KS}
    out["cat_p10"] = np.asarray(result["per_query"]["cat_p10"], dtype=np.float64)
    return out


def with_intervals(values: dict[str, np.ndarray], zero: dict[str, np.ndarray] | None = None) -> dict:
    out = {"metrics": {m: bootstrap_mean(values[m]).to_dict() for m in METRICS if not np.isnan(values[m]).all()}}
    if zero is not None:
        out["gain"] = {m: paired_bootstrap_gain(zero[m], values[m]).to_dict() for m in out["metrics"]}
    return out


def seed_mean(results: list[dict]) -> dict[str, np.ndarray]:
    """Per-query values averaged over seeds (``results``: one model's test results per seed)."""
    parts = [per_query(r) for r in results]
    return {m: np.mean([p[m] for p in parts], axis=0) for m in METRICS}


@dataclass
class Options:
    out: Path = Path("docs/bench")
    spec: str = SPEC
    queries: Sequence[int] = QUERY_COUNTS
    seeds: Sequence[int] = SEEDS
    pool: int = POOL_SIZE
    test: int = TEST_SIZE
    backbone: str | None = None  # None: the shipped miniature-world backbone
    ablation: bool = False  # also train each job without its named negatives


def run_benchmark(opts: Options, backbone=None) -> dict:
    started = time.time()
    backbone = backbone if backbone is not None else load_backbone(opts.backbone)
    spec = load_spec(opts.spec)
    check_truthful(spec)
    coll = Collection.draw(backbone, opts.spec, opts.pool, Sizes(train=(opts.pool,), val=1, test=opts.test))
    zero = run_zero_shot(backbone, coll)
    zero_values = per_query(zero)
    variants = [v for v, negatives in VARIANTS.items() if negatives or opts.ablation]
    runs: dict[tuple[int, str], list[dict]] = {(n, v): [] for n in opts.queries for v in variants}
    skipped: dict[int, list[int]] = {n: [] for n in opts.queries}
    for seed in opts.seeds:
        session = simulate_session(backbone, coll.train, max(opts.queries), seed)
        for n in sorted(opts.queries):
            counts = session_counts(session[:n])
            if counts["queries_with_relevant"] < 2:  # nothing to cross-validate: no job
                skipped[n].append(seed)
                continue
            for variant in variants:
                print(f"N={n} seed {seed} {variant}: {counts['relevant_marks']} relevant marks, "
                      f"{counts['not_relevant_marks']} not relevant", file=sys.stderr, flush=True)
                runs[n, variant].append(run_feedback_job(backbone, coll, session[:n], seed, VARIANTS[variant]))
    rows = []
    for n in opts.queries:
        for variant in variants:
            for model in MODELS:
                row: dict = {"queries": n, "variant": variant, "model": model, "runs": runs[n, variant],
                             "skipped_seeds": skipped[n]}
                if row["runs"]:
                    row.update(with_intervals(seed_mean([r[model] for r in row["runs"]]), zero_values))
                rows.append(row)
        if opts.ablation and runs[n, "all marks"]:
            alone = seed_mean([r["adapter"] for r in runs[n, "relevant marks only"]])
            full = seed_mean([r["adapter"] for r in runs[n, "all marks"]])
            row = next(r for r in rows if r["queries"] == n and r["variant"] == "all marks" and r["model"] == "adapter")
            row["gain_over_relevant_only"] = {m: paired_bootstrap_gain(alone[m], full[m]).to_dict() for m in METRICS
                                              if not np.isnan(full[m]).all()}
    return {
        "benchmark": "feedback", "spec": spec.name, "spec_description": spec.data.get("description", ""),
        "backbone": backbone.identity.to_dict(), "recipe": RECIPE, "top_k_marked": TOP_K, "folds": FOLDS,
        "sizes": {"pool": opts.pool, "test": opts.test, "test_queries": len(zero["per_query"]["rank"])},
        "seeds": {"world": {"collection": TRAIN_SEED, "test": TEST_SEED}, "runs": list(opts.seeds)},
        "zero_shot": {**with_intervals(zero_values), "summary": zero["summary"]},
        "variants": variants, "rows": rows, "machine": machine_info(),
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_time_s": round(time.time() - started, 1),
    }


# ====================================================================== report
def _ci(d: dict | None, signed: bool = False) -> str:
    if not d:
        return "–"
    f = "{:+.1f}" if signed else "{:.1f}"
    return f"{f.format(100 * d['mean'])} [{f.format(100 * d['low'])}, {f.format(100 * d['high'])}]"


def _gate(selection: dict) -> str:
    if not selection.get("gate_ap"):
        return "–"
    return f"{_ci(selection['gate_ap'], True)} ({100 * selection['gate_level']:.3g} %)"


MODEL_LABELS = {"served": "served", "adapter": "adapter before the gate"}


def table(report: dict) -> str:
    head = ["| feedback | marks: relevant / not | R@1 | R@5 | R@10 | category P@10 | ΔR@1 | ΔR@10 | ΔP@10 |",
            "|---|---|---|---|---|---|---|---|---|"]
    z = report["zero_shot"]["metrics"]
    lines = [f"| none (zero-shot) | – | {_ci(z['r1'])} | {_ci(z['r5'])} | {_ci(z['r10'])} | {_ci(z.get('cat_p10'))} "
             "| – | – | – |"]
    for row in report["rows"]:
        label = (f"N = {row['queries']} queries, {MODEL_LABELS[row['model']]}"
                 + ("" if row["variant"] == "all marks" else f", {row['variant']}"))
        if not row["runs"]:
            lines.append(f"| {label} | too few found anything: no job | – | – | – | – | – | – | – |")
            continue
        m, g = row["metrics"], row["gain"]
        rel = sum(r["relevant_marks"] for r in row["runs"]) / len(row["runs"])
        nrel = sum(r["not_relevant_marks"] for r in row["runs"]) / len(row["runs"])
        marks = f"{rel:.0f} / {nrel:.0f}" if row["variant"] == "all marks" else f"{rel:.0f} / ({nrel:.0f} unused)"
        lines.append(f"| {label} | {marks} | {_ci(m['r1'])} | {_ci(m['r5'])} | "
                     f"{_ci(m['r10'])} | {_ci(m.get('cat_p10'))} | {_ci(g['r1'], True)} | {_ci(g['r10'], True)} | "
                     f"{_ci(g.get('cat_p10'), True)} |")
    return "\n".join(head + lines)


def _judged(gains: dict, labels=(("r1", "R@1"), ("r10", "R@10"), ("cat_p10", "category P@10"))) -> str:
    parts = []
    for m, label in labels:
        g = gains.get(m)
        if g is not None:
            word = "improves" if g["low"] > 0 else "worsens" if g["high"] < 0 else "no measurable change in"
            parts.append(f"{word} {label} ({_ci(g, True)})")
    return "; ".join(parts)


def verdicts(report: dict) -> list[str]:
    out = []
    for row in report["rows"]:
        if not row["runs"]:
            if row["variant"] == "all marks" and row["model"] == "served":
                out.append(f"- N = {row['queries']}: no job (fewer than two queries had a relevant result in the top {TOP_K}).")
            continue
        who = "feedback alone" if row["variant"] == "all marks" else "relevant marks alone"
        if row["model"] == "served":
            served = sum(r["selection"]["served"] for r in row["runs"])
            what = f"served ({served} of {len(row['runs'])} jobs past the gate, zero-shot otherwise)"
        else:
            what = "the adapter before the gate"
        out.append(f"- N = {row['queries']}, {who}, {what} vs zero-shot: " + _judged(row["gain"]) + ".")
        if "gain_over_relevant_only" in row:
            out.append(f"- N = {row['queries']}, the named negatives (all marks vs relevant marks only): "
                       + _judged(row["gain_over_relevant_only"]) + ".")
    return out


def markdown(report: dict) -> str:
    sizes = report["sizes"]
    runs = [r for row in report["rows"] for r in row["runs"]]
    lines = [
        "# Feedback benchmark: a job trained on a user's marks alone, on held-out queries",
        "",
        f"Generated by `{report.get('command', 'python -m bench.feedback')}` on {report['generated_at']} in "
        f"{report['wall_time_s'] / 60:.1f} min (CPU, load average at start "
        f"{', '.join(str(x) for x in report['machine']['loadavg_at_start'])}).",
        "",
        f"- World: shift `{report['spec']}`; backbone `{report['backbone'].get('model_name')}`. The user's collection is "
        f"{sizes['pool']:,} images (`generate(spec, {sizes['pool']}, seed={report['seeds']['world']['collection']})`, the "
        "quality benchmark's training images) **without captions**: nothing trains but the marks.",
        f"- The simulated user searches N texts (captions of N different collection images) with the backbone alone "
        f"and marks every one of the top {report['top_k_marked']} truthfully from the world's ground truth: relevant "
        "when the text describes the image (its own image, or the same main object: category and every attribute, "
        "which this spec's captions always name), not relevant otherwise. N = 20 and 50 are prefixes of the N = 200 session.",
        "- The job: `adapters.marks.train_on_marks` with `TrainConfig()` (the service's default recipe). Marks become "
        "data as the service makes them: a relevant mark makes the query a caption of the image, a not-relevant one "
        "names the image as a negative of the query (`adapters/negatives.py`). The epoch and the zero-shot mixing "
        f"weight are chosen by {report['folds']}-fold cross-validation over the queries with a relevant mark: each "
        "query is judged once, by a job that did not train on it (average precision of its relevant marks among its "
        "fold's marked images, paired with zero-shot); the candidate with the highest paired bootstrap 95 % lower bound "
        "of the gain wins, and the final job trains on every mark up to its epoch. **Served**: that adapter only when "
        "the gate passes (its gain's lower bound at the Bonferroni level 1 − 0.05 / K for the K candidates compared is "
        f"above 0, on at least {MIN_JUDGED_QUERIES} judged queries), zero-shot (mixing weight 0) otherwise: what a user would get. **Adapter before "
        "the gate**: the same adapter at its chosen epoch and weight, served or not. "
        + ("The same job without the named negatives (\"relevant marks only\") isolates their effect."
           if "relevant marks only" in report.get("variants", []) else ""),
        f"- Held-out test: the quality benchmark's test set ({sizes['test']:,} images, "
        f"{sizes['test_queries']:,} captions, seed {report['seeds']['world']['test']}, clean captions): other images "
        "and other texts, never marked and never used for any choice. Intervals: 95 % percentile bootstrap over test "
        "queries (2,000 replicates); Δ are paired differences to zero-shot"
        + (f"; per-query results averaged over seeds {report['seeds']['runs']}." if len(report['seeds']['runs']) > 1
           else f"; one seed ({report['seeds']['runs'][0]}): the spread over sessions and training seeds is not in the interval."),
        "",
        table(report),
        "",
        *verdicts(report),
        "",
        "| N | variant | seed | queries with a relevant hit / judged out of fold | relevant / not-relevant marks "
        "| chosen epoch | chosen weight | cross-validated gain in AP, 95 % | the gate's interval (level) | served "
        "| negatives used | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        if row["model"] != "served":
            continue
        for r in row["runs"]:
            sel = r["selection"]
            lines.append(f"| {row['queries']} | {row['variant']} | {r['seed']} | {r['queries_with_relevant']} / "
                         f"{sel['queries']} | {r['relevant_marks']} / {r['not_relevant_marks']} | {sel['epoch']} | "
                         f"{sel['weight']} | {_ci(sel['gain_ap'], True)} | {_gate(sel)} | {'yes' if sel['served'] else 'no'} | "
                         f"{r.get('negative_pairs_used', '–')} | {r.get('wall_time_s', '–')} |")
    if not runs:
        lines.append("| – | – | – | – | – | – | – | – | – | – | – | – |")
    lines += ["", f"Recipe: `{json.dumps(report['recipe'], sort_keys=True)}`.", ""]
    return "\n".join(lines)


def write_outputs(report: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "feedback.json", out / "feedback.md"]
    paths[0].write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    paths[1].write_text(markdown(report))
    return paths


def main(argv: Sequence[str] | None = None, backbone=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.feedback", description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default=SPEC, help=f"world spec: a name in bench/specs or a JSON path (default {SPEC})")
    parser.add_argument("--queries", type=int, nargs="+", default=list(QUERY_COUNTS), help="session sizes N")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--pool", type=int, default=POOL_SIZE, help="images in the user's collection")
    parser.add_argument("--test", type=int, default=TEST_SIZE, help="held-out test images")
    parser.add_argument("--ablation", action="store_true",
                        help="also train each job on its relevant marks only (the negatives' own effect)")
    parser.add_argument("--backbone", default=None, help="open_clip model name (default: the shipped backbone)")
    parser.add_argument("--out", type=Path, default=Path("docs/bench"))
    args = parser.parse_args(argv)
    if max(args.queries) > args.pool:
        parser.error("--queries may not exceed --pool (each query describes a different collection image)")
    if args.backbone is None and backbone is None and not OFFLINE_CHECKPOINT.exists():
        print(f"warning: {OFFLINE_CHECKPOINT} is missing; load_backbone() falls back to a random tiny model", file=sys.stderr)
    opts = Options(out=args.out, spec=args.spec, queries=args.queries, seeds=args.seeds, pool=args.pool,
                   test=args.test, backbone=args.backbone, ablation=args.ablation)
    report = run_benchmark(opts, backbone)
    report["command"] = " ".join(["python -m bench.feedback", *(argv if argv is not None else sys.argv[1:])])
    for path in write_outputs(report, opts.out):
        print(f"wrote {path}", file=sys.stderr)
    print(table(report))
    print("\n".join(verdicts(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
