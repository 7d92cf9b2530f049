"""`flip tune`: choose the training recipe on a validation split of the TRAINING tasks, never on held-out ones.

    split the training tasks   one task per (kind, language) to validation, seeded; the rest train
    per recipe and seed        export the train split's transcripts -> train (one run per training seed) -> first-step
                               eval and agent run on the validation tasks
    pool                       a recipe's runs over its training seeds, counts summed: one student's luck with its
                               data order and initialisation does not choose the recipe (pooled below)
    choose                     no call outside the workspace; then most validation tasks solved; ties: more first
                               tools matching the teacher's, then a higher valid-call rate as an agent, then the
                               shorter training (score below)
    report                     writes DIR/tune.json and a Markdown table, DIR/tune.md, into the tune directory;
                               docs/recipe.md copies the table of the run behind the default

Recipes are data: contracts/recipes.yaml. The held-out workspaces and prompts are never read here.
"""
from __future__ import annotations

import json
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from harness import FlipError
from harness.agent import DEFAULT_MAX_TURNS  # the agent's default: validation runs agents as `flip run` does
from harness.atomic import claim_dir, write_text
from harness.contracts import FIXTURE_TASKS as TASKS, FIXTURE_TRANSCRIPTS as TRANSCRIPTS, dialects, recipes
from harness.metrics import count_text, metric, rate
from harness.models import SMOLLM2, check
from harness.options import (MODEL_HELP, add_options, device_option, dialect_option, force_option, option, options_of,
                             sandbox_option)
from harness.sandbox import check_sandbox
from harness.stats import SIGNIFICANCE, mcnemar_exact
from harness.tasks import VALIDATION_SEED, task_folders, validation_split
from harness.train import TrainConfig

OUTPUT_NAMES = ("datasets-*", "val-tasks", "recipe-*", "tune.json", "tune.md")


def outside_calls(row: dict) -> int:
    """Calls naming a path outside the workspace: the agent's (refused by the sandbox) and the first step's."""
    return row["agent"]["refused"] + row["first_step"]["absolute_path_calls"]


def score(row: dict) -> tuple:
    """Higher is better: no call outside the workspace first (a student that climbs out is a defect, whatever else it
    does well), then validation tasks solved, first tools matching, the agent's valid-call rate, fewer steps."""
    agent = row["agent"]
    return (-outside_calls(row), agent["solved"], row["first_step"]["first_tool_match"], agent["valid_call_rate"] or 0,
            -row["recipe"]["steps"])


# What the noise rule tests, in score's order after the outside calls: each a per-task outcome of every run.
PAIRED_OUTCOMES = ("solved", "first_tool_match")


def per_task_outcomes(work: Path) -> dict:
    """The validation tasks each paired outcome holds for in one run: agent solves, and first tools matching the
    teacher's (from the run's traces, so a row written before these were recorded gets them too)."""
    from harness.evaluate import first_tool_of

    def records(name: str) -> list[dict]:
        return [json.loads(line) for line in (work / name).read_text(encoding="utf-8").splitlines() if line.strip()]

    return {"solved": sorted(line["id"] for line in records("agent.jsonl") if line["solved"]),
            "first_tool_match": sorted(r["id"] for r in records("first_step.jsonl")
                                       if r.get("expected_first_tool") and first_tool_of(r) == r["expected_first_tool"])}


def paired(rows: list[dict], tasks: list[str], outcome: str) -> list[bool]:
    """One recipe's outcome on every (training seed, validation task), in one order."""
    by_seed = {row["train_seed"]: set(row["per_task"][outcome]) for row in rows}
    return [task in by_seed[seed] for seed in sorted(by_seed) for task in tasks]


def choose(pools: list[dict], rows: list[dict], tasks: list[str], default: str) -> dict:
    """The recipe to adopt: the best by score, unless the current default is among the candidates and the best does not
    beat it by more than noise. A candidate replaces the default when it has no call outside the workspace and the
    default has one, or when McNemar's exact test on the first paired outcome where the two differ (solves, then
    first tools matching) gives p below SIGNIFICANCE in its favour; a smaller difference keeps the default."""
    best = max(pools, key=score)
    name = best["recipe"]["name"]
    by_name = {pool["recipe"]["name"]: pool for pool in pools}
    if name == default or default not in by_name:
        return {"chosen": name, "reason": "best by score" if default not in by_name else "the default is the best"}
    if outside_calls(by_name[default]) and not outside_calls(best):
        return {"chosen": name, "reason": f"the default {default} named a path outside the workspace"}
    runs = {recipe: [row for row in rows if row["recipe"]["name"] == recipe] for recipe in (name, default)}
    seeds = [sorted(row["train_seed"] for row in runs[recipe]) for recipe in (name, default)]
    if seeds[0] != seeds[1]:
        raise FlipError(f"recipes {name} and {default} ran on other training seeds: they cannot be compared task by task")
    for outcome in PAIRED_OUTCOMES:
        mine, theirs = paired(runs[name], tasks, outcome), paired(runs[default], tasks, outcome)
        if sum(mine) == sum(theirs):
            continue
        p = mcnemar_exact(mine, theirs)
        if sum(mine) > sum(theirs) and p < SIGNIFICANCE:
            return {"chosen": name, "reason": f"{outcome} {sum(mine)} vs {sum(theirs)}, McNemar p = {p:.3f}"}
        return {"chosen": default, "reason": f"{name} against the default on {outcome}: {sum(mine)} vs {sum(theirs)}, "
                                             f"McNemar p = {p:.3f}, not beyond noise: the default stays"}
    return {"chosen": default, "reason": f"{name} differs from the default only in the valid-call rate or steps: "
                                         "the default stays"}


def pooled(rows: list[dict]) -> dict:
    """One recipe's rows over its training seeds as one row of the same shape: counts summed, rates recomputed."""
    agents, firsts = [row["agent"] for row in rows], [row["first_step"] for row in rows]

    def total(parts: list[dict], key: str) -> int:
        return sum(part[key] for part in parts)

    def pooled_rate(parts: list[dict], section: str, name: str) -> float | None:
        row = metric(section, name)  # unrounded: a pooled rate only ranks recipes and is shown as a percentage
        return rate(total(parts, row.numerator), total(parts, row.denominator), digits=None)

    valid_calls, calls = total(agents, "valid_calls"), total(agents, "calls")
    stops = sum((Counter(part["stop_reasons"]) for part in agents), Counter())
    tasks = total(firsts, "tasks")
    return {
        "recipe": dict(rows[0]["recipe"], train_seeds=[row["train_seed"] for row in rows]),
        "train_s": sum(row["train_s"] for row in rows),
        "agent": {"solved": total(agents, "solved"), "tasks": total(agents, "tasks"), "refused": total(agents, "refused"),
                  "valid_calls": valid_calls, "calls": calls, "valid_call_rate": pooled_rate(agents, "agent", "valid_call_rate"),
                  "stop_reasons": dict(sorted(stops.items()))},
        "first_step": {"first_tool_match": total(firsts, "first_tool_match"),
                       "tasks_with_expected_first_tool": total(firsts, "tasks_with_expected_first_tool"),
                       "absolute_path_calls": total(firsts, "absolute_path_calls"), "tasks": tasks,
                       "tasks_with_valid_call": total(firsts, "tasks_with_valid_call"),
                       "valid_rate": pooled_rate(firsts, "first_step", "valid_rate")},
    }


def check_same_base(out: Path, base: str, dialect: str | None = None) -> None:
    """A tune directory resumes only with the base and dialect it began with: its datasets were counted with that
    base's tokenizer and written in that dialect, and its finished rows trained them. (Rows and datasets written
    before the dialect was recorded are the default dialect's.)"""
    dialect = dialect or dialects()[0]
    made = []
    for stats in sorted(out.glob("datasets-*/export_stats.json")):
        used = json.loads(stats.read_text(encoding="utf-8"))["options"]
        made.append((stats, used["tokenizer"], used.get("dialect", dialects()[0])))
    for row in sorted(out.glob("recipe-*/row.json")):
        used = json.loads(row.read_text(encoding="utf-8"))
        made.append((row, used["base"], used.get("dialect", dialects()[0])))
    for path, used_base, used_dialect in made:
        if (used_base, used_dialect) != (base, dialect):
            raise FlipError(f"{out} was tuned with --base {used_base} --dialect {used_dialect} "
                            f"({path.relative_to(out)}), not {base} with --dialect {dialect}: resume it with those, "
                            "or tune into another --out")


def evaluate_recipe(name: str, recipe: dict, out: Path, train_ids: list[str], val_dir: Path, base: str,
                    max_turns: int, device: str, train_seed: int, sandbox: str, dialect: str | None = None) -> dict:
    from harness.agent import AgentOptions, agent
    from harness.evaluate import evaluate, load_prompts
    from harness.export import ExportOptions, export
    from harness.run import check_no_leak
    from harness.train import TrainConfig, train

    work = out / f"recipe-{name}-seed{train_seed}"
    if (work / "row.json").is_file():  # an interrupted tune resumes: finished recipes are not run again
        return json.loads((work / "row.json").read_text(encoding="utf-8"))
    started = time.perf_counter()
    datasets = out / f"datasets-{recipe['max_length']}"
    if not (datasets / f"apr_code_sft_{recipe['mode']}.jsonl").is_file():
        export([TRANSCRIPTS / task_id for task_id in train_ids], datasets,
               ExportOptions(mode="all", max_length=recipe["max_length"], tokenizer=base, progress=False,
                             dialect=dialect or dialects()[0]))
    data = datasets / f"apr_code_sft_{recipe['mode']}.jsonl"
    prompts = load_prompts(val_dir)
    check_no_leak(data, prompts)
    config = TrainConfig.from_recipe(recipe, data=data, base=base, out=work / "adapter", device=device,
                                     save_every=None, seed=train_seed)
    clock = time.perf_counter()
    summary = train(config)
    train_s = time.perf_counter() - clock
    dialect = dialect or dialects()[0]
    first_step = evaluate(base, prompts, work / "first_step.jsonl", adapter=work / "adapter", device=device,
                          label=f"{name} first step", dialect=dialect)
    agent_summary = agent(base, val_dir, work / "agent.jsonl", adapter=work / "adapter", device=device,
                          options=AgentOptions(max_turns=max_turns, max_length=recipe["max_length"],
                                               sandbox=sandbox, dialect=dialect),
                          label=f"{name} agent")
    row = {"recipe": dict(recipe, name=name), "base": base, "dialect": dialect, "train_seed": train_seed,
           "train_s": round(train_s, 1),
           "final_train_loss": summary["final_train_loss"], "first_step": first_step, "agent": agent_summary,
           "per_task": per_task_outcomes(work),
           "seconds": round(time.perf_counter() - started, 1)}
    write_text(work / "row.json", json.dumps(row, indent=2) + "\n")
    return row


@dataclass(kw_only=True)
class TuneOptions:
    """`flip tune`'s options."""
    out: Path = option(help="tune directory (datasets, one adapter and trace set per recipe, tune.json, tune.md)")
    base: str = option(SMOLLM2, "the base every recipe trains: " + MODEL_HELP)
    recipes: str | None = option(None, "comma-separated recipe names from contracts/recipes.yaml (default: all)")
    seed: int = option(VALIDATION_SEED, "seed of the validation split")
    train_seeds: str = option(
        str(TrainConfig.seed), "comma-separated training seeds: each recipe trains once per seed and is chosen on the "
        "runs pooled; the default is flip train's seed")
    max_turns: int = option(DEFAULT_MAX_TURNS, "agent turns per validation task")
    dialect: str = dialect_option()
    device: str = device_option()
    sandbox: str = sandbox_option()
    force: bool = force_option("tune")


def tune(out: str | Path, names: list[str] | None = None, base: str = TuneOptions.base, seed: int = TuneOptions.seed,
         max_turns: int = TuneOptions.max_turns, device: str = TuneOptions.device, force: bool = False,
         train_seeds: tuple[int, ...] = (TrainConfig.seed,), sandbox: str = TuneOptions.sandbox,
         dialect: str | None = None) -> dict:
    default, candidates = recipes()
    names = names or list(candidates)
    unknown = [n for n in names if n not in candidates]
    if unknown:
        raise FlipError(f"unknown recipe(s) {', '.join(unknown)}; contracts/recipes.yaml has {', '.join(candidates)}")
    if max_turns < 1:
        raise FlipError(f"--max-turns must be at least 1, not {max_turns}")
    if not train_seeds:
        raise FlipError("--train-seeds names no seed")
    check(base)
    check_sandbox(sandbox)
    out = claim_dir(out, "tune", OUTPUT_NAMES, force, inputs=(base,))
    check_same_base(out, base, dialect)
    train_ids, val_ids = validation_split(task_folders(TASKS), seed)
    val_dir = out / "val-tasks"
    val_dir.mkdir(exist_ok=True)
    for task_id in val_ids:
        if not (val_dir / task_id).exists():
            (val_dir / task_id).symlink_to(TASKS / task_id)
    rows, pools = [], []
    for name in names:
        runs = []
        for train_seed in train_seeds:
            print(f"flip tune: recipe {name}, training seed {train_seed} ...", file=sys.stderr, flush=True)
            runs.append(evaluate_recipe(name, candidates[name], out, train_ids, val_dir, base, max_turns, device,
                                        train_seed, sandbox, dialect))
        rows += runs
        pools.append(pooled(runs))
    for row in rows:
        row.setdefault("per_task", per_task_outcomes(out / f"recipe-{row['recipe']['name']}-seed{row['train_seed']}"))
    choice = choose(pools, rows, val_ids, default)
    chosen = choice["chosen"]
    report = {"base": base, "dialect": dialect or dialects()[0], "seed": seed, "train_seeds": list(train_seeds), "validation_tasks": val_ids,
              "train_tasks": len(train_ids), "max_turns": max_turns, "current_default": default, "chosen": chosen,
              "choice": choice["reason"],
              "pooled": pools, "rows": rows}
    write_text(out / "tune.json", json.dumps(report, indent=2) + "\n")
    write_text(out / "tune.md", render_markdown(report))
    return report


def render_markdown(report: dict) -> str:
    def line(row: dict, label: str) -> str:
        recipe, agent, first = row["recipe"], row["agent"], row["first_step"]
        return (
            f"| {label} | {recipe['mode']} | {'yes' if recipe.get('pack') else 'no'} | {recipe['steps']} | {recipe['lr']:g} "
            f"| {','.join(recipe['targets'])} | {recipe['max_length']} | {row['train_s']:.0f} | {outside_calls(row)} "
            f"| {count_text(agent['solved'], agent['tasks'])} "
            f"| {count_text(first['first_tool_match'], first['tasks_with_expected_first_tool'])} "
            f"| {count_text(first['tasks_with_valid_call'], first['tasks'])} "
            f"| {count_text(agent['valid_calls'], agent['calls'])} | {agent['stop_reasons']} |")

    lines = [
        "# flip tune: recipes compared on a validation split of the training tasks",
        "",
        f"Base `{report['base']}`; {len(report['validation_tasks'])} validation tasks (one per kind and language, "
        f"seed {report['seed']}), "
        f"{report['train_tasks']} training tasks; agents run up to {report['max_turns']} turns; each recipe trained "
        f"with seed(s) {', '.join(map(str, report['train_seeds']))}, chosen on its runs pooled. Chosen: "
        f"**{report['chosen']}** (the default in contracts/recipes.yaml is {report['current_default']})."
        + (f" Why: {report['choice']}." if report.get("choice") else ""),
        "",
        "| recipe (training seed) | mode | pack | steps | lr | targets | max length | train s | outside calls "
        "| val solved | first tool | first-step valid | agent valid calls | stops |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for pool in report["pooled"]:
        name = pool["recipe"]["name"]
        runs = [row for row in report["rows"] if row["recipe"]["name"] == name]
        if len(runs) > 1:
            lines += [line(row, f"{name} (seed {row['train_seed']})") for row in runs]
        lines.append(line(pool, f"**{name}**" + (" (pooled)" if len(runs) > 1 else f" (seed {runs[0]['train_seed']})")))
    lines += ["", "Validation tasks: " + ", ".join(report["validation_tasks"]) + "."]
    return "\n".join(lines) + "\n"


def add_arguments(parser) -> None:
    add_options(parser, TuneOptions)


def main(args) -> int:
    options = options_of(TuneOptions, args)
    names = None
    if options.recipes is not None:
        names = [n.strip() for n in options.recipes.split(",") if n.strip()]
        if not names:
            raise FlipError("--recipes names no recipe (omit it to compare them all)")
    try:
        train_seeds = tuple(dict.fromkeys(int(seed) for seed in options.train_seeds.split(",") if seed.strip()))
    except ValueError:
        raise FlipError(f"--train-seeds {options.train_seeds!r}: not a comma-separated list of integers") from None
    report = tune(options.out, names, base=options.base, seed=options.seed, max_turns=options.max_turns, device=options.device,
                  force=options.force, train_seeds=train_seeds, sandbox=options.sandbox, dialect=options.dialect)
    print(render_markdown(report), file=sys.stderr)
    return 0
