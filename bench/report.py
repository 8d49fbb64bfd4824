"""Write the quality benchmark's outputs: quality.json, quality.md and two PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

HEADLINE_ORDER = ["zero-shot", "text prompts", "visual prompts", "dual prompts", "dual + DCAR", "linear adapter", "full fine-tuning"]


def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}"


def _ms(stat: dict | None) -> str:
    """mean ± std (n>1) in percent, or the single value."""
    if not stat:
        return "–"
    if stat.get("n", 1) > 1:
        return f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f}"
    return f"{100 * stat['mean']:.1f}"


def _range(stat: dict | None) -> str:
    if not stat or stat.get("n", 1) < 2:
        return ""
    return f" [{100 * stat['min']:.1f}–{100 * stat['max']:.1f}]"


def _bytes(n: int | None) -> str:
    if not n:
        return "0"
    for unit, size in (("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _params(row: dict) -> str:
    p = row.get("params") or 0
    if p == 0:
        return "0"
    return f"{p:,} ({row['params_pct_backbone']:.3g} %)"


def _time(stat: dict | None) -> str:
    if not stat:
        return "–"
    return f"{stat['mean']:.0f} s"


def headline_rows(shift: dict) -> list[dict]:
    rows = [r for r in shift["rows"] if r["group"] == "headline"]
    rows.sort(key=lambda r: HEADLINE_ORDER.index(r["method"]) if r["method"] in HEADLINE_ORDER else 99)
    return rows


def _zero_row(zero: dict) -> dict:
    t = zero["test"]
    return {"method": "zero-shot", "label": "zero-shot", "params": 0, "params_pct_backbone": 0.0, "bytes": 0, "n": 1,
            **{f"test_{m}": {"mean": t[m], "std": 0.0, "n": 1, "min": t[m], "max": t[m]} for m in ("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1")},
            "val_t2i_r1": {"mean": zero["val"]["t2i_r1"], "n": 1}, "wall_time_s": {"mean": 0.0}}


QUICK_NOTE = (
    "`--quick` (and tests/bench/test_quality_quick.py) runs zero-shot and dual prompts with the recipe above on the "
    "`style` shift at 1000 train / 150 val / 300 test pairs, one seed. Measured before the test's margins were set "
    "(seeds 0/1/2): zero-shot test R@1/5/10 4.6 / 15.6 / 24.2 → dual 5.7 / 20.7 / 30.8, 5.7 / 21.4 / 33.9, "
    "6.8 / 18.5 / 33.0 (300 test images; about 30 s a seed on 2 cores)."
)

# Context gathered before the measured run, on val pairs only (never test), on the same checkpoint.
PRE_RUN_NOTES = [
    "On the previous checkpoint (900 pretraining steps on one thread, broad R@1 8.0 % with full captions) no prompt "
    "configuration beat zero-shot on fine_grained or style; the checkpoint was retrained within the same 20-minute budget "
    "on two threads (2200 steps, broad R@1 22.0 %, see bench/backbone_card.json) before anything below was tried.",
    "The previous recipe (dual, 6 epochs, batch 64, lr 2e-3, patience 2) on the new checkpoint, 200 val items: style "
    "zero-shot val R@1 6.9 % → best 6.9 % (epoch 1); fine_grained 11.0 % → 12.0 %. lr 1e-2 at batch 64 and visual "
    "prompts from the input did no better: the runs stopped after ~50 steps, before prompts had learned.",
    "Batch 32, 10-12 epochs, 500 val items (a superset of the benchmark's 200; zero-shot val R@1 style 2.5 %, R@10 17.5 %; "
    "fine_grained 4.0 %, 33.0 %): style dual lr 5e-3 → 4.1 / 24.0; visual-only (prompts from the input) lr 1e-2 → "
    "4.8 / 25.8; text-only lr 5e-3 → 2.9 / 18.2 (the style shift is mostly in the images); dual lr 1e-2 with prompts from "
    "block 1 → 5.3 / 25.5, from the input → 4.8 / 23.2; fine_grained with the same two → 6.2 / 37.6 and 6.5 / 38.9. "
    "Chosen: prompts from block 1 (block 0 cached, best on style, within noise on fine_grained), lr 1e-2, batch 32, "
    "12 epochs, patience 4.",
    "vocabulary (zero-shot val R@1 below 1 %) describes the style images with words the broad corpus never used "
    "(\"crimson orb\"): those tokens kept their random initial embeddings, which a prompt cannot rewrite; full fine-tuning "
    "could in principle (it trains the token embeddings), though at the benchmark's fine-tuning settings it did not. It is the benchmark's negative control.",
]


def markdown(report: dict) -> str:
    m = report["machine"]
    bb = report["backbone"]
    ident = bb["identity"]
    lines = [
        "# Quality benchmark: prompt adapters on shifted collections",
        "",
        f"- Command: `{report['command']}`  (wall time {report['wall_time_s'] / 60:.1f} min)",
        f"- Date: {report['date']}",
        f"- Machine: {m.get('nproc')} CPU cores ({m.get('cpu_model', '?')}), {m.get('ram_gib', '?')} GiB RAM, torch {m.get('torch')} "
        f"({m.get('torch_threads')} threads), open_clip {m.get('open_clip', '?')}; load average at start {m.get('loadavg_at_start')}"
        " (other jobs may share these cores: compare times only within this run)",
        f"- Backbone: {ident['model_name']} ({bb['parameters']:,} parameters, embed dim {ident['embed_dim']}, image {ident['image_size']} px, "
        f"context {ident['context_length']}), weights sha256 {str(ident.get('checkpoint_sha256'))[:16]}…; {bb['source']}",
        f"- Data: per shift, train {_sizes(report, 'train')} pairs (captions as the spec writes them: partial, sometimes wrong), "
        f"val {_sizes(report, 'val')} (early stopping and configuration choice), test {_sizes(report, 'test')} held-out pairs "
        "(never used for training, early stopping or selection); val and test captions are complete and correct (`spec.clean()`). "
        f"World seeds: train {report['seeds']['train']}, val {report['seeds']['val']}, test {report['seeds']['test']} "
        "(independent draws: every item has its own RNG seeded by (seed, index)).",
        f"- Seeds: prompt methods {report['seeds']['prompt_methods']}, linear adapter {report['seeds']['linear']}, "
        f"full fine-tuning {report['seeds']['full_ft']}, ablations {report['seeds']['ablations']}.",
        f"- Prompt recipe (every prompt row starts from it): `{json.dumps(report['recipe'])}`; DCAR = `{json.dumps(report['dcar'])}`. "
        f"Full fine-tuning: `{json.dumps(report['full_ft_config'])}` (all parameters, CLIP's temperature frozen). "
        f"Linear adapter: `{json.dumps(report['linear_config'])}` (residual d×d map per side on frozen embeddings, starts at zero-shot).",
        "- Metrics: text→image Recall@K on the test pairs (every caption is a query; ties count against the query), "
        "image→text R@1 as a side column. Percentages; `mean ± std` over seeds, [min–max] in the R@1 column. "
        "Time is tuning wall time (frozen preprocessing, training, per-epoch validation).",
        "",
    ]
    for name, shift in report["summary"].items():
        if not shift["rows"]:
            zero = shift["zero_shot"]["test"]
            lines += [f"## {name} (reference, zero-shot only)", "",
                      f"Zero-shot text→image R@1/5/10 = {_pct(zero['t2i_r1'])} / {_pct(zero['t2i_r5'])} / {_pct(zero['t2i_r10'])}, "
                      f"image→text R@1 {_pct(zero['i2t_r1'])} on {zero['n_images']} test images, {zero['n_captions']} captions.", ""]
            continue
        desc = report["sizes"][name]
        lines += [f"## Shift `{name}`", "",
                  f"{desc['train']['items']} train items ({desc['train']['captions']} captions, {desc['train_categories']} categories), "
                  f"{desc['val']['items']} val, {desc['test']['items']} test items ({desc['test']['captions']} test queries).", "",
                  "| method | t2i R@1 | R@5 | R@10 | i2t R@1 | seeds | best epoch(s) | trainable params (% of backbone) | bytes | time |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        rows = ([_zero_row(shift["zero_shot"])] if shift.get("zero_shot") else []) + headline_rows(shift)
        best_key = shift.get("best_prompt_key")
        best = next((r for r in shift["rows"] if r["config_key"] == best_key), None)
        epochs = _best_epochs(report, name)
        for r in rows:
            lines.append(_table_row(r["label"] if r["method"] != "zero-shot" else "zero-shot", r, epochs))
        if best is not None:
            lines.append(_table_row(f"**best prompt config (chosen on val): {best['label']}**", best, epochs))
        lines += ["", "Best epoch 0 means early stopping never saw val R@1 rise above the starting point (for full "
                  "fine-tuning: the untouched backbone is returned, so its row equals zero-shot).", ""]
        lines += ablation_table(name, shift)
    lines += targets_section(report)
    lines += ["## How the recipe was chosen (before the measured run, val only)", ""] + [f"- {n}" for n in PRE_RUN_NOTES] + [""]
    if not report["command"].endswith("--quick") and "--quick" not in report["command"]:
        lines += ["## The quick variant", "", QUICK_NOTE, ""]
    return "\n".join(lines) + "\n"


def _sizes(report: dict, split: str) -> str:
    values = sorted({v[split]["items"] for v in report["sizes"].values()})
    return "/".join(str(v) for v in values)


def _best_epochs(report: dict, name: str) -> dict:
    out: dict[str, list] = {}
    for run in report["runs"]:
        if run["spec"] == name and run.get("best_epoch") is not None:
            out.setdefault(run["config_key"], []).append(run["best_epoch"])
    return out


def _table_row(label: str, r: dict, epochs: dict | None = None) -> str:
    ep = (epochs or {}).get(r.get("config_key"), [])
    return (f"| {label} | {_ms(r.get('test_t2i_r1'))}{_range(r.get('test_t2i_r1'))} | {_ms(r.get('test_t2i_r5'))} | "
            f"{_ms(r.get('test_t2i_r10'))} | {_ms(r.get('test_i2t_r1'))} | {r.get('n', 1)} | "
            f"{', '.join(str(e) for e in ep) if ep else '–'} | {_params(r)} | "
            f"{_bytes(r.get('bytes'))} | {_time(r.get('wall_time_s'))} |")


def ablation_table(name: str, shift: dict) -> list[str]:
    abl = [r for r in shift["rows"] if r["group"] == "ablation"]
    if not abl:
        return []
    base = next((r for r in shift["rows"] if r["method"] == "dual prompts" and r["group"] == "headline"), None)
    lines = [f"### Levers on `{name}` (one change at a time from the dual recipe)", "",
             "Δ compares the same seed(s) against the recipe's own runs (paired, so seed noise partly cancels). "
             "Selection of the best configuration uses val R@1 only.", "",
             "| lever | configuration | seeds | val R@1 | test R@1 | R@5 | R@10 | Δ test R@1 vs recipe | params | time |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    zero = shift.get("zero_shot")
    if zero is not None:
        lines.append(f"| (zero-shot) | no prompts | – | {_pct(zero['val']['t2i_r1'])} | {_pct(zero['test']['t2i_r1'])} | "
                     f"{_pct(zero['test']['t2i_r5'])} | {_pct(zero['test']['t2i_r10'])} | – | 0 | – |")
    if base is not None:
        lines.append(f"| (recipe) | dual prompts | {base['n']} | {_ms(base['val_t2i_r1'])} | {_ms(base['test_t2i_r1'])} | "
                     f"{_ms(base['test_t2i_r5'])} | {_ms(base['test_t2i_r10'])} | – | {_params(base)} | {_time(base['wall_time_s'])} |")
    for r in abl:
        delta = r.get("paired_delta_r1")
        d = "–" if delta is None else f"{100 * delta:+.1f}"
        lines.append(f"| {r['method']} | {r['label']} | {r['n']} | {_ms(r['val_t2i_r1'])} | {_ms(r['test_t2i_r1'])} | "
                     f"{_ms(r['test_t2i_r5'])} | {_ms(r['test_t2i_r10'])} | {d} | {_params(r)} | {_time(r['wall_time_s'])} |")
    lines.append("")
    return lines


def targets_section(report: dict) -> list[str]:
    t = report["targets"]
    lines = ["## Targets", ""]
    yes = lambda b: "**met**" if b else ("**not met**" if b is not None else "not measured")  # noqa: E731
    style = t["per_shift"].get("style", {})
    if "recovered_fraction" in style and style["recovered_fraction"] is not None:
        lines.append(f"- Style shift: the best prompt configuration (chosen on val: {style['best_prompt_label']}) recovers "
                     f"{100 * style['recovered_fraction']:.0f} % of full fine-tuning's R@1 gain over zero-shot "
                     f"(zero-shot {_pct(style['zero_shot_r1'])} → prompts {_pct(style['best_prompt_r1'])} vs full FT {_pct(style['full_ft_r1'])}); "
                     f"target ≥ {100 * 0.8:.0f} %: {yes(t['style_recovers_80pct'])}.")
    elif "full_ft_r1" in style:
        lines.append(f"- Style shift: full fine-tuning did not beat zero-shot ({_pct(style['full_ft_r1'])} vs {_pct(style['zero_shot_r1'])}), "
                     "so the recovered fraction is undefined: **not met**.")
    else:
        lines.append("- Style shift recovery: not measured (no style shift or no full fine-tuning run).")
    per = []
    for name, e in t["per_shift"].items():
        if "best_prompt_r1" in e:
            per.append(f"{name}: {_pct(e['zero_shot_r1'])} → {_pct(e['best_prompt_r1'])} (worst seed {_pct(e['best_prompt_r1_min'])})")
    lines.append(f"- Beats zero-shot on every shift (mean test R@1 of the val-chosen configuration): {yes(t['beats_zero_shot_every_shift'])} — " + "; ".join(per) + ".")
    budget = []
    for name, e in t["per_shift"].items():
        if "best_prompt_params" in e:
            budget.append(f"{name}: {e['best_prompt_params']:,} ({e['best_prompt_params_pct']:.3f} %)")
    lines.append(f"- ≤ 0.5 % of the backbone's parameters ({t['param_budget']:,.0f}): {yes(t['within_param_budget_every_shift'])} — " + "; ".join(budget) + ".")
    fg = t["per_shift"].get("fine_grained", {})
    if "dcar_r1" in fg:
        rows = report["summary"]["fine_grained"]["rows"]
        dual = next(r for r in rows if r["method"] == "dual prompts" and r["group"] == "headline")
        dcar = next(r for r in rows if r["method"] == "dual + DCAR" and r["group"] == "headline")
        delta, n = fg["dcar_minus_dual"], min(dual["n"], dcar["n"])
        # Two standard errors of the difference of two seed means: smaller differences are seed noise.
        two_se = 2 * math.sqrt((fg["dual_std"] ** 2 + fg["dcar_std"] ** 2) / max(1, n))
        verdict = "within seed noise" if abs(delta) <= two_se else ("a gain" if delta > 0 else "a loss")
        others = "; ".join(f"R@{k} {_pct(dual[f'test_t2i_r{k}']['mean'])} → {_pct(dcar[f'test_t2i_r{k}']['mean'])}"
                           for k in (5, 10))
        pieces = [r for r in rows if r["method"] == "DCAR piece" and r.get("paired_delta_r1") is not None]
        piece_text = "; ".join(f"{r['label'].lstrip('+ ')} {100 * r['paired_delta_r1']:+.1f}" for r in pieces)
        ft = fg.get("full_ft_r1")
        lines.append(
            f"- Fine-grained shift, do DCAR's losses close the gap plain prompts leave? **{'Partly' if delta > two_se else 'No'}**: "
            f"test R@1 dual {_pct(fg['dual_r1'])} ± {_pct(fg['dual_std'])} → dual + DCAR {_pct(fg['dcar_r1'])} ± {_pct(fg['dcar_std'])} "
            f"(Δ {100 * delta:+.1f} points over {n} seeds, {verdict}: two standard errors of the difference are "
            f"{100 * two_se:.1f}); {others}."
            + (f" Each piece alone, Δ test R@1 vs the recipe on the same seed: {piece_text}." if piece_text else "")
            + ("" if ft is None else f" Full fine-tuning reaches R@1 {_pct(ft)}."))
    policy = []
    for name, shift in report["summary"].items():
        best = next((r for r in shift["rows"] if r["config_key"] == shift.get("best_prompt_key")), None)
        zero = shift.get("zero_shot")
        if best is None or zero is None:
            continue
        seed0 = next(r for r in report["runs"] if r["spec"] == name and r["config_key"] == best["config_key"] and r["seed"] == report["seeds"]["prompt_methods"][0])
        policy.append(f"{name}: best prompt val R@1 {_pct(seed0['val']['t2i_r1'])} vs zero-shot val {_pct(zero['val']['t2i_r1'])}"
                      + (" (prompts would be kept)" if seed0["val"]["t2i_r1"] > zero["val"]["t2i_r1"] else " (zero-shot would be kept)"))
    if policy:
        lines.append("- A val-based activation rule (as the service applies with its held-out split) would compare the chosen "
                     "configuration with zero-shot on val: " + "; ".join(policy) + ".")
    for note in report.get("notes", []):
        lines.append(f"- {note}")
    lines.append("")
    if report.get("skipped"):
        lines += ["## Skipped to stay within the time budget", ""] + [f"- {s}" for s in report["skipped"]] + [""]
    return lines


def add_paired_deltas(report: dict) -> None:
    """For each ablation row, the mean over its seeds of (its test R@1 − the recipe's, same seed)."""
    runs = report["runs"]
    for name, shift in report["summary"].items():
        base = {r["seed"]: r["test"]["t2i_r1"] for r in runs if r["spec"] == name and r["method"] == "dual prompts" and r["group"] == "headline"}
        for row in shift["rows"]:
            if row["group"] != "ablation" and row["method"] not in ("dual + DCAR", "text prompts", "visual prompts"):
                continue
            own = {r["seed"]: r["test"]["t2i_r1"] for r in runs if r["spec"] == name and r["config_key"] == row["config_key"]}
            pairs = [own[s] - base[s] for s in own if s in base]
            row["paired_delta_r1"] = sum(pairs) / len(pairs) if pairs else None


# ------------------------------------------------------------------ plots
def plot_by_method(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shifts = [n for n, s in report["summary"].items() if s["rows"]]
    if not shifts:
        return
    fig, axes = plt.subplots(1, len(shifts), figsize=(6.5 * len(shifts), 4.8), squeeze=False)
    for ax, name in zip(axes[0], shifts):
        shift = report["summary"][name]
        rows = [_zero_row(shift["zero_shot"])] + headline_rows(shift)
        best = next((r for r in shift["rows"] if r["config_key"] == shift.get("best_prompt_key")), None)
        labels = [r["method"] for r in rows]
        if best is not None:
            rows.append(best)
            labels.append("best prompt\n(val-chosen)")
        x = list(range(len(rows)))
        width = 0.27
        for k, (metric, alpha) in enumerate((("test_t2i_r1", 1.0), ("test_t2i_r5", 0.6), ("test_t2i_r10", 0.35))):
            means = [100 * r[metric]["mean"] for r in rows]
            errs = [100 * r[metric].get("std", 0.0) for r in rows]
            ax.bar([i + (k - 1) * width for i in x], means, width, yerr=errs, capsize=2, alpha=alpha,
                   color="C0", label=metric.split("_")[-1].upper().replace("R", "R@"))
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel("text→image recall on held-out test (%)")
        ax.set_title(f"shift: {name}")
        top = max(100 * (r["test_t2i_r10"]["mean"] + r["test_t2i_r10"].get("std", 0.0)) for r in rows)
        ax.set_ylim(0, max(5.0, 1.25 * top))
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Recall by method (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_vs_params(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shifts = [n for n, s in report["summary"].items() if s["rows"]]
    if not shifts:
        return
    fig, ax = plt.subplots(figsize=(7.5, 5))
    markers = {"text prompts": "^", "visual prompts": "v", "dual prompts": "o", "dual + DCAR": "D",
               "linear adapter": "s", "full fine-tuning": "*"}
    for c, name in enumerate(shifts):
        shift = report["summary"][name]
        colour = f"C{c}"
        for r in shift["rows"]:
            if not r.get("params"):
                continue
            marker = markers.get(r["method"], "x")  # ablations: x
            ax.errorbar(r["params"], 100 * r["test_t2i_r1"]["mean"], yerr=100 * r["test_t2i_r1"].get("std", 0.0), fmt=marker,
                        color=colour, ms=8 if marker == "*" else 5, alpha=0.85, capsize=2)
        ax.axhline(100 * shift["zero_shot"]["test"]["t2i_r1"], color=colour, ls="--", lw=1, label=f"{name}: zero-shot")
        ax.plot([], [], "o", color=colour, label=f"{name}")
    ax.axvline(report["targets"]["param_budget"], color="gray", ls=":", lw=1, label="0.5 % of backbone")
    for method, marker in markers.items():
        ax.plot([], [], marker, color="k", label=method)
    ax.plot([], [], "x", color="k", label="ablation config")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log)")
    ax.set_ylabel("text→image R@1 on held-out test (%)")
    ax.set_title("R@1 vs trainable parameters")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(report: dict, out: Path, quick: bool = False) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    add_paired_deltas(report)
    stem = "quality-quick" if quick else "quality"
    paths = [out / f"{stem}.json", out / f"{stem}.md"]
    paths[0].write_text(json.dumps(report, indent=1, default=str) + "\n")
    paths[1].write_text(markdown(report))
    if not quick:
        plot_by_method(report, out / "recall_by_method.png")
        plot_vs_params(report, out / "recall_vs_params.png")
        paths += [out / "recall_by_method.png", out / "recall_vs_params.png"]
    partial = out / f"{stem}.partial.json"
    partial.unlink(missing_ok=True)
    return paths
