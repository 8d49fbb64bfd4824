"""docs/bench/gpu.md from a ``bench/gpu_check.sh`` run: the GPU's quality runs set beside the published
CPU runs of the same shifts, sizes and seeds, and the test suite's result with its models on the GPU.

    python -m bench.gpu_report CHECK_DIR [--junit PATH] [--note TEXT] [--published docs/bench/quality.json]
                               [--out docs/bench/gpu.md]

Each GPU run is compared with the CPU run of the same shift, train size, method and seed on the same
test queries: the difference in R@1 and category P@10 with a paired 95 % bootstrap interval.
"""

from __future__ import annotations

import argparse
import json
import shlex
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from adapters.stats import paired_bootstrap_gain
from bench.summary import CANDIDATE_METHODS, compose_auto, per_query

METHOD_ORDER = ("zero-shot", *CANDIDATE_METHODS.values(), "auto")
# A candidate's run is labelled with the candidate's name.
LABEL = {"zero-shot": "zero-shot", **{method: name for name, method in CANDIDATE_METHODS.items()},
         "auto": "auto (the default)"}


def _key(record: dict) -> tuple:
    return record["spec"], record["train_size"], record["method"], record["seed"]


def _runs(records: list[dict]) -> dict[tuple, dict]:
    """Plain runs (no lever study) by key, with the composed ``auto`` records added."""
    plain = [r for r in records if r["method"] in METHOD_ORDER and "per_query" in r]
    return {_key(r): r for r in plain + compose_auto(plain)}


def _diff(gpu: dict, cpu: dict, metric: str) -> str:
    gain = paired_bootstrap_gain(per_query(cpu, metric), per_query(gpu, metric))
    return f"{100 * gain.mean:+.1f} [{100 * gain.low:+.1f}, {100 * gain.high:+.1f}]"


def quality_rows(check_dir: Path, published: dict[tuple, dict]) -> tuple[list[str], dict]:
    lines = ["| shift (train pairs) | precision | method | GPU R@1 | CPU R@1 | GPU − CPU, R@1 | GPU − CPU, cat P@10 "
             "| GPU run time | CPU run time |", "|---|---|---|---|---|---|---|---|---|"]
    machine: dict = {}
    for path in sorted(check_dir.glob("*/quality.json")):
        report = json.loads(path.read_text())
        machine = machine or {**report["machine"], "device": report["backbone"].get("device")}
        precision = report["backbone"].get("precision", "?")
        gpu_runs = _runs(report["runs"])
        for key in sorted(gpu_runs, key=lambda k: (k[0], k[1], METHOD_ORDER.index(k[2]), k[3])):
            gpu, cpu = gpu_runs[key], published.get(key)
            spec, size, method, seed = key
            times = f"{gpu['wall_time_s']:.0f} s | {cpu['wall_time_s']:.0f} s" if cpu and method != "zero-shot" else "– | –"
            if cpu is None:
                lines.append(f"| {spec} ({size:,}) | {precision} | {LABEL[method]} | {100 * gpu['summary']['t2i_r1']:.1f} "
                             "| – (no published CPU run) | – | – | – |")
                continue
            choice = f" (kept: {gpu['auto_choice']}; CPU kept: {cpu['auto_choice']})" if method == "auto" else ""
            lines.append(
                f"| {spec} ({size:,}) | {precision} | {LABEL[method]}{choice} | {100 * gpu['summary']['t2i_r1']:.1f} "
                f"| {100 * cpu['summary']['t2i_r1']:.1f} | {_diff(gpu, cpu, 't2i_r1')} | {_diff(gpu, cpu, 'cat_p10')} "
                f"| {times} |")
    return lines, machine


def suite_lines(junit: Path) -> list[str]:
    if not junit.exists():
        return ["The test suite did not run (no junit.xml)."]
    suites = ET.parse(junit).getroot()
    suite = suites if suites.tag == "testsuite" else suites.find("testsuite")
    assert suite is not None
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    lines = [f"`PAS_TEST_DEVICE=cuda pytest -m \"not slow\" tests/adapters tests/service`: {passed} passed, "
             f"{counts['failures']} failed, {counts['errors']} not collected or not set up, {counts['skipped']} skipped "
             f"(in {float(suite.get('time', 0)):.0f} s)."]
    for case in suite.iter("testcase"):
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        if problem is not None:
            message = (problem.get("message") or "").splitlines()[0][:160] if problem.get("message") else ""
            name = "::".join(part for part in (case.get("classname"), case.get("name")) if part)
            lines.append(f"- {name}: {message}")
    reasons = Counter((skip.get("message") or "").strip() for skip in suite.iter("skipped"))
    lines += [f"- skipped ({n}): {reason}" for reason, n in reasons.most_common()]
    return lines


def write(check_dir: Path, junit: Path, published_path: Path, out: Path, command: str, notes: Sequence[str] = ()) -> str:
    published = _runs(json.loads(published_path.read_text())["runs"])
    rows, machine = quality_rows(check_dir, published)
    env = (check_dir / "env.txt").read_text().strip().splitlines() if (check_dir / "env.txt").exists() else []
    env = [line for line in env if not line.startswith("GPU ")]  # nvidia-smi's line, where a check wrote one
    text = "\n".join([
        "# The service on a GPU",
        "",
        f"Written by `{command}` from a run of `bench/gpu_check.sh` (on a machine with CUDA). CI has no GPU: "
        "this is the check of the CUDA and half-precision paths.",
        "",
        "Machine: " + "; ".join(env) if env else f"Machine: {machine.get('gpu')}",
        "",
        "## Quality on the GPU against the published CPU runs",
        "",
        "The same shifts, train sizes, methods and seeds as the CPU runs in `docs/bench/quality.json`, tested on the "
        "same queries. The GPU runs train with the backbone in the named precision (fp16: the service's default on a "
        "GPU, with autocast and a gradient scaler) and are tested as read back from their stored files. The difference "
        "has a paired 95 % bootstrap interval over test queries; one seed, so it holds run-to-run variation (GPU "
        "kernels are not bit-for-bit the CPU's) as well as precision. Run times are each run's own: the CPU runs "
        "used one thread beside other runs, at another time, so they are not a measured speed ratio.",
        "",
        *rows,
        "",
        "## The test suite with its models on the GPU",
        "",
        *suite_lines(junit),
        "",
        *(["## Notes", "", *(f"- {note}" for note in notes), ""] if notes else []),
    ])
    out.write_text(text)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_report", description=__doc__.split("\n\n")[0])
    parser.add_argument("check_dir", type=Path, help="the OUT_DIR of a bench/gpu_check.sh run")
    parser.add_argument("--junit", type=Path, default=None, help="the suite's results (default CHECK_DIR/junit.xml)")
    parser.add_argument("--note", action="append", default=[], help="a sentence for the report's notes")
    parser.add_argument("--published", type=Path, default=Path("docs/bench/quality.json"))
    parser.add_argument("--out", type=Path, default=Path("docs/bench/gpu.md"))
    args = parser.parse_args(argv)
    shown = [str(args.check_dir), *(["--junit", str(args.junit)] if args.junit else []), "--out", str(args.out)]
    command = "python -m bench.gpu_report " + " ".join(shlex.quote(a) for a in shown) + (" --note ..." if args.note else "")
    junit = args.junit or args.check_dir / "junit.xml"
    print(write(args.check_dir, junit, args.published, args.out, command, args.note))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
