"""pass@k of sampled agent runs (`flip passk TRACE...`): several `flip agent --temperature T --sample-seed S` runs of
one model on the same tasks, pooled into the unbiased pass@k (harness.stats) for every k up to the number of runs.

Each run is a separate `flip agent` call, so a long measurement (a sampled pass of the 38 held-out tasks takes minutes
on a CPU) stops and resumes one run at a time, and runs can come from several machines. The runs must be of one model
and adapter on one task set, and no two may be the same run: two traces with the same replies on every task (a seed given
twice, or two greedy runs) would count one outcome twice, so they are refused, as is a run its summary records as
greedy.

Intervals (95%): pass@n of n runs is the share of tasks solved at least once, a binomial count, so it gets the Wilson
interval; pass@k for k < n is a mean of per-task estimates in [0, 1], so its interval is a percentile bootstrap over
the tasks (scipy.stats.bootstrap, seeded: the same runs give the same interval).
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from harness import FlipError, read_jsonl
from harness.options import add_options, option, options_of
from harness.stats import CONFIDENCE, PASS_AT, pass_at_k, wilson

SAME_RUN = ("model", "adapter", "tasks_dir", "dialect", "runtime")  # summary keys every pooled run must share
BOOTSTRAP_RESAMPLES = 9999
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Run:
    path: Path
    lines: list[dict]
    summary: dict


def load_run(path: Path) -> Run:
    from harness.evaluate import summary_file

    summary_path = summary_file(path)
    if not path.is_file() or not summary_path.is_file():
        raise FlipError(f"{path} is not a flip agent trace (it needs {summary_path.name} beside it)")
    lines = [line for _, line in read_jsonl(path, "trace")]
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise FlipError(f"{summary_path} is not a flip agent summary: {err}") from None
    if not isinstance(summary, dict):
        raise FlipError(f"{summary_path} is not a flip agent summary (a JSON object)")
    if not lines or not all(isinstance(line, dict) and {"id", "solved", "turns"} <= set(line) for line in lines):
        raise FlipError(f"{path} is not a flip agent trace (each line needs id, solved and turns)")
    return Run(path, lines, summary)


def replies(run: Run) -> list[list[str]]:
    return [[turn.get("output") for turn in line["turns"]] for line in run.lines]


def check_runs(runs: list[Run]) -> None:
    """One model, one adapter, one task set, every run a different one."""
    first = runs[0]
    for run in runs[1:]:
        differ = [key for key in SAME_RUN if run.summary.get(key) != first.summary.get(key)]
        if differ:
            raise FlipError(f"{run.path} and {first.path} differ in {', '.join(differ)}: pass@k pools runs of one "
                            "model on one task set")
        if [line["id"] for line in run.lines] != [line["id"] for line in first.lines]:
            raise FlipError(f"{run.path} and {first.path} ran different tasks")
    seen: dict[str, Path] = {}
    for run in runs:
        if run.summary.get("temperature") == 0:  # recorded by flip agent; older traces do not say
            raise FlipError(f"{run.path} is a greedy run (temperature 0); pass@k pools sampled runs "
                            "(flip agent --temperature T --sample-seed S)")
        key = json.dumps(replies(run))
        if key in seen:
            raise FlipError(f"{run.path} and {seen[key]} are the same run (the same replies on every task: a greedy run "
                            "or a seed given twice); pool distinct sampled runs")
        seen[key] = run.path


def bootstrap_interval(values: list[float]) -> tuple[float, float]:
    """The 95% percentile bootstrap interval of the mean of values (seeded)."""
    if len(set(values)) == 1:  # every resample has the same mean (scipy warns and returns nan)
        return values[0], values[0]
    import numpy as np
    from scipy.stats import bootstrap

    result = bootstrap((np.asarray(values),), np.mean, confidence_level=CONFIDENCE, method="percentile",
                       n_resamples=BOOTSTRAP_RESAMPLES, rng=np.random.default_rng(BOOTSTRAP_SEED))
    return round(float(result.confidence_interval.low), 4), round(float(result.confidence_interval.high), 4)


def estimate(solved: dict[str, int], samples: int, k: int) -> dict:
    """pass@k over tasks (task id -> runs that solved it), with its interval and how it was made."""
    values = [pass_at_k(samples, count, k) for count in solved.values()]
    mean = round(sum(values) / len(values), 4)
    if k == samples:
        hit = sum(1 for count in solved.values() if count)
        return {"value": mean, "interval": list(wilson(hit, len(values))), "interval_method": "wilson",
                "tasks_solved": hit}
    return {"value": mean, "interval": list(bootstrap_interval(values)), "interval_method": "bootstrap"}


def pass_at_report(runs: list[Run], ks: tuple[int, ...] = PASS_AT) -> dict:
    """pass@k for each k of ks up to the number of runs, overall and per task kind, and each task's solve count."""
    check_runs(runs)
    samples = len(runs)
    solved = {line["id"]: 0 for line in runs[0].lines}
    kind = {line["id"]: line.get("kind") or "(none)" for line in runs[0].lines}
    for run in runs:
        for line in run.lines:
            solved[line["id"]] += bool(line["solved"])
    by_kind: dict[str, dict[str, int]] = defaultdict(dict)
    for task, count in solved.items():
        by_kind[kind[task]][task] = count
    chosen = [k for k in ks if k <= samples]
    return {
        **{key: runs[0].summary.get(key) for key in SAME_RUN},
        "runs": [str(run.path) for run in runs],
        "samples": samples,
        "tasks": len(solved),
        "solved_per_run": [run.summary.get("solved", sum(bool(line["solved"]) for line in run.lines)) for run in runs],
        "pass_at": {str(k): estimate(solved, samples, k) for k in chosen},
        "per_kind": {name: {"tasks": len(tasks), **{f"pass@{k}": estimate(tasks, samples, k)["value"] for k in chosen}}
                     for name, tasks in sorted(by_kind.items())},
        "solved_by_task": solved,
    }


def format_report(report: dict) -> str:
    parts = [f"pass@{k} {row['value']:.3f} (95% CI {row['interval'][0]:.3f}-{row['interval'][1]:.3f}, "
             f"{row['interval_method']})" for k, row in report["pass_at"].items()]
    return (f"{report['samples']} runs of {report['model']} on {report['tasks']} tasks (solved per run "
            f"{report['solved_per_run']}): " + "; ".join(parts))


# --------------------------------------------------------------------------------------------------------- CLI

@dataclass
class PassKCliOptions:
    """`flip passk`'s options."""
    k: str = option(",".join(map(str, PASS_AT)), "comma-separated k values (each at most the number of runs)")
    out: str | None = option(None, "also write the report as JSON to this file")


def parse_ks(text: str, samples: int) -> tuple[int, ...]:
    try:
        ks = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise FlipError(f"--k must be comma-separated whole numbers, not {text!r}") from None
    if not ks or ks[0] < 1:
        raise FlipError(f"--k must be whole numbers of at least 1, not {text!r}")
    if not any(k <= samples for k in ks):
        raise FlipError(f"--k {text}: every k exceeds the {samples} runs given (pass@k needs k <= runs)")
    return ks


def add_arguments(parser) -> None:
    parser.add_argument("traces", metavar="TRACE", nargs="+",
                        help="flip agent traces (TRACE.jsonl with TRACE.summary.json) of sampled runs of one model")
    add_options(parser, PassKCliOptions)


def main(args) -> int:
    from harness.atomic import check_out_file, write_text

    cli = options_of(PassKCliOptions, args)
    paths = [Path(trace) for trace in args.traces]
    ks = parse_ks(cli.k, len(paths))
    from harness.evaluate import summary_file

    inputs = (*paths, *(summary_file(path) for path in paths))  # --out must not replace a trace or its summary
    out = check_out_file(cli.out, "--out", inputs=inputs) if cli.out else None
    report = pass_at_report([load_run(path) for path in paths], ks)
    text = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    if out is not None:
        write_text(out, text)
    if not args.quiet:
        print(format_report(report), file=sys.stderr)
    sys.stdout.write(text)
    return 0
