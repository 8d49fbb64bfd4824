"""From the quality runs to intervals and goal checks (no model code: works on quality.json too).

Per (shift, train size) and method: 95 % bootstrap intervals (test queries and seeds, paired
across methods: ``bench.intervals``) of R@1/5/10, category P@10 and mAP, of each difference to
zero-shot, and of the recovered fraction of full fine-tuning's R@1 gain. The goals of issue 9 are
checked against those intervals; a check whose methods did not run says "not run", never "not met".

The service's default, ``method: "auto"``, trains each of ``adapters.candidates``' recipes and keeps
the one best on val. Its rows are composed from the runs of its candidates (``adapter``,
``adapter+blocks`` and ``adapter+blocks-lr3e-3``, same shift, size and seed: the runs auto makes,
training being deterministic on one machine) with the choice auto makes, ``adapters.candidates.choose`` on their val metrics; its
wall time is theirs summed. The goals are checked on ``auto`` where it could be composed, else on
``adapter``.
"""

from __future__ import annotations

import zlib
from collections import defaultdict

import numpy as np

from adapters.candidates import CANDIDATES, choose
from bench.intervals import Resampler, interval, recovered

METRICS = ("t2i_r1", "t2i_r5", "t2i_r10", "cat_p10", "cat_map")
PARAM_BUDGET = 0.005  # <= 0.5 % of the backbone's parameters
RECOVERY_TARGET = 0.8  # of full fine-tuning's R@1 gain over zero-shot
# The bench method that runs each of auto's candidates, in the candidates' order.
CANDIDATE_METHODS = dict(zip(CANDIDATES, ("adapter", "adapter+blocks", "adapter+blocks-lr3e-3"), strict=True))


def default_method(methods) -> str:
    """The row that stands for the service's default adapter."""
    return "auto" if "auto" in methods else "adapter"


def compose_auto(records: list[dict]) -> list[dict]:
    """One "auto" record per (shift, size, seed) where every candidate ran: the candidate auto keeps."""
    runs = {(r["spec"], r["train_size"], r["seed"], r["method"]): r for r in records if "per_query" in r}
    out = []
    for spec, size, seed, method in runs:
        if method != CANDIDATE_METHODS["recipe"]:
            continue
        found = [runs.get((spec, size, seed, m)) for m in CANDIDATE_METHODS.values()]
        tried = [t for t in found if t is not None]
        if len(tried) < len(found):
            continue
        kept = choose([t["val"] for t in tried])
        out.append({**tried[kept], "method": "auto", "auto_choice": list(CANDIDATES)[kept],
                    "wall_time_s": sum(t["wall_time_s"] for t in tried)})
    return out


def per_query(record: dict, metric: str) -> np.ndarray:
    pq = record["per_query"]
    if metric.startswith("t2i_r"):
        k = int(metric[len("t2i_r"):])
        return (np.asarray(pq["rank"]) <= k).astype(np.float64)
    if metric == "cat_p10":
        return np.asarray(pq["cat_p10"], dtype=np.float64)
    return np.asarray(pq["cat_ap"], dtype=np.float64)


def _matrix(runs: list[dict], metric: str) -> np.ndarray:
    return np.stack([per_query(r, metric) for r in sorted(runs, key=lambda r: r["seed"] if r["seed"] is not None else -1)])


def summarize(records: list[dict], backbone_params: int) -> dict:
    out: dict = {"collections": {}, "levers": {}}
    groups: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    # A lever row is compared with auto's candidates trained with the same seed on the same pairs.
    candidates_val = {(r["spec"], r["train_size"], r.get("seed"), r["method"]): r["val"]["t2i_r1"]
                      for r in records if r.get("method") in CANDIDATE_METHODS.values() and "val" in r}
    for r in [r for r in records if r.get("method") != "auto"] + compose_auto(records):
        if "per_query" in r:
            groups[(r["spec"], r["train_size"])][r["method"]].append(r)
        elif r.get("method") == "lever":
            seed = r.get("seed", 0)
            same_pairs = {name: candidates_val.get((r["spec"], r["train_size"], seed, method))
                          for name, method in CANDIDATE_METHODS.items()}
            out["levers"].setdefault(f"{r['spec']}/{r['train_size']}", []).append(
                {"lever": r["lever"], "seed": seed, "val": r["val"], "val_zero_shot": r["val_zero_shot"],
                 "params": r["params"], "adapted_weight": r["adapted_weight"], "best_epoch": r["best_epoch"],
                 "wall_time_s": r["wall_time_s"], "candidates_val_t2i_r1": same_pairs})
    for (spec, size), methods in groups.items():
        n_q = len(next(iter(methods.values()))[0]["per_query"]["rank"])
        res = Resampler(n_q, seed=zlib.crc32(f"{spec}/{size}".encode()))
        reps: dict[str, dict[str, np.ndarray]] = {}
        for method, runs in methods.items():
            reps[method] = {m: res.replicates(_matrix(runs, m)) for m in METRICS}
        rows = {}
        zero = reps.get("zero-shot")
        for method, runs in methods.items():
            params = max(r["params"] for r in runs)  # auto: the larger candidate's, if any seed kept it
            row: dict = {"seeds": sorted(r["seed"] for r in runs if r["seed"] is not None), "params": params,
                         "params_pct_backbone": 100.0 * params / backbone_params, "bytes": max(r["bytes"] for r in runs),
                         "wall_time_s": float(np.mean([r["wall_time_s"] for r in runs]))}
            for m in METRICS:
                row[m] = interval(reps[method][m]).to_dict()
                if zero is not None and method != "zero-shot":
                    row[f"{m}_vs_zero_shot"] = interval(reps[method][m] - zero[m]).to_dict()
            if "lr_chosen" in runs[0]:
                row["lr_sweep"], row["lr_chosen"] = runs[0]["lr_sweep"], runs[0]["lr_chosen"]
            if runs[0].get("adapted_weight") is not None:
                row["adapted_weight"] = [r["adapted_weight"] for r in runs]
            if method == "auto":
                row["auto_choice"] = [r["auto_choice"] for r in sorted(runs, key=lambda r: r["seed"])]
            if any("t2i_r1_before_storage" in r for r in runs):
                row["t2i_r1_before_storage"] = [r.get("t2i_r1_before_storage") for r in runs]
            if zero is not None and "full-ft" in reps and method not in ("zero-shot", "full-ft"):
                rec = recovered(reps[method]["t2i_r1"], zero["t2i_r1"], reps["full-ft"]["t2i_r1"])
                row["recovered_fraction"] = rec.to_dict() if rec is not None else None
            if "linear" in reps and method not in ("zero-shot", "linear"):
                row["t2i_r1_vs_linear"] = interval(reps[method]["t2i_r1"] - reps["linear"]["t2i_r1"]).to_dict()
            rows[method] = row
        out["collections"][f"{spec}/{size}"] = {"spec": spec, "train_size": size, "n_queries": n_q, "methods": rows,
                                                "goals": goals(rows, backbone_params)}
    return out


def goals(rows: dict, backbone_params: int) -> dict:
    """Issue 9's goals for the default adapter, each "met", "not met" or "not run", with the numbers."""
    a = rows.get(default_method(rows))
    if a is None:
        return {"all": "not run"}
    out: dict = {"method": default_method(rows)}
    rec = a.get("recovered_fraction")
    if "full-ft" not in rows or "zero-shot" not in rows:
        out["recovers_80pct_of_full_ft"] = {"status": "not run"}
    elif rec is None:
        out["recovers_80pct_of_full_ft"] = {"status": "undefined", "why": "full fine-tuning did not gain over zero-shot"}
    else:
        status = "met" if rec["low"] >= RECOVERY_TARGET else ("not met" if rec["high"] < RECOVERY_TARGET else
                                                              ("met (point), interval includes less" if rec["mean"] >= RECOVERY_TARGET else "not met (point), interval includes 80 %"))
        out["recovers_80pct_of_full_ft"] = {"status": status, **rec}
    if "zero-shot" in rows:
        never = {}
        for m in ("t2i_r1", "t2i_r5", "t2i_r10", "cat_p10"):
            d = a[f"{m}_vs_zero_shot"]
            never[m] = {"status": "below (interval < 0)" if d["high"] < 0 else ("not below" if d["mean"] >= 0 else "below (point), interval includes 0"), **d}
        out["never_below_zero_shot"] = never
    else:
        out["never_below_zero_shot"] = {"status": "not run"}
    if "linear" in rows:
        d = a["t2i_r1_vs_linear"]
        out["beats_linear"] = {"status": "met" if d["low"] > 0 else ("not met" if d["high"] < 0 else "tie (interval includes 0)"), **d}
    else:
        out["beats_linear"] = {"status": "not run"}
    out["within_param_budget"] = {"status": "met" if a["params"] <= PARAM_BUDGET * backbone_params else "not met",
                                  "params": a["params"], "pct": a["params_pct_backbone"]}
    return out
