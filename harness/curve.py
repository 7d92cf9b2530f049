"""`flip curve`: what it takes to finish tasks. Trains a base on N distinct generated tasks for each N and runs every
student as an agent on a validation split, never on the held-out tasks.

    tasks       a generated task set (fixtures/taskgen.py: DIR/tasks, DIR/transcripts, DIR/manifest.json with its
                train / validation split); the first N of its training ids (one seeded order, so each N's tasks hold the
                smaller N's) give N distinct tasks
    per N       export those transcripts -> train the recipe for --steps steps (the same compute at every N: more N means
                fewer repeats, not more training) -> on the validation tasks: greedy agent (solved, valid calls, edits
                applied), sampled agents (pass@k), and the fix diagnostic
    diagnostic  the Python fix tasks of the validation split asked two ways: as a plain Before/After completion with three
                worked examples from training tasks ("can it find the fix?") and as the file_edit step right after a
                file_read of the file ("can it write the fix as a call?"); each is solved when the task's test passes
    report      DIR/curve.json, DIR/curve.md (every rate with its 95% Wilson interval; each N against the smallest by
                McNemar's exact test on the same tasks), DIR/curve.png

Every stage's output stays under DIR/n<N>/; an interrupted curve resumes at the first N without a row.json.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from harness import FlipError
from harness.atomic import claim_dir, write_text
from harness.contracts import FIXTURE_TASKS, FIXTURES, recipes
from harness.models import SMOLLM2, check
from harness.options import MODEL_HELP, add_options, device_option, option, options_of
from harness.metrics import interval_text, pct
from harness.stats import PASS_AT, mcnemar_exact, pass_at_k, wilson
from harness.tasks import prompt_text, read_manifest, task_folders, training_order, validation_split

OUTPUT_NAMES = ("n*", "val-tasks", "base", "curve.json", "curve.md", "curve.png")
FEW_SHOT = 3  # worked examples in the plain Before/After prompt
PLAIN_MAX_NEW_TOKENS = 200


# ---------------------------------------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------------------------------------

def distinct_prompts(tasks: Path, val_ids: list[str], train_ids: list[str]) -> list[str]:
    """The validation ids, sorted, without those whose prompt is word for word a training task's (a generic "the tests
    fail, fix it"): the leak check could not tell such a task's text from training data, so it is not validation."""
    taught = {prompt_text(tasks / "tasks" / task_id) for task_id in train_ids}
    return [task_id for task_id in sorted(val_ids) if prompt_text(tasks / "tasks" / task_id) not in taught]


def link_validation(out: Path, tasks: Path, val_ids: list[str], fixture_val: bool) -> Path:
    """DIR/val-tasks: links to the generated validation tasks and (by default) flip tune's validation split of the
    hand-written training tasks. Never a held-out task."""
    val_dir = out / "val-tasks"
    val_dir.mkdir(exist_ok=True)
    links = {task_id: tasks / "tasks" / task_id for task_id in val_ids}
    if fixture_val:
        _, fixture_val_ids = validation_split(task_folders(FIXTURE_TASKS))
        links.update({task_id: FIXTURE_TASKS / task_id for task_id in fixture_val_ids})
    for task_id, target in sorted(links.items()):
        if not (val_dir / task_id).exists():
            (val_dir / task_id).symlink_to(target.resolve())
    return val_dir


def check_not_held_out(data: Path, val_prompts: list[dict]) -> None:
    """No training sample holds a validation task's or a held-out task's text."""
    from harness.evaluate import load_prompts
    from harness.run import check_no_leak

    check_no_leak(data, val_prompts + load_prompts(FIXTURES / "holdout" / "tasks.jsonl"))


# ---------------------------------------------------------------------------------------------------------------------
# The fix diagnostic
# ---------------------------------------------------------------------------------------------------------------------

def single_line_fix(spec: dict) -> dict | None:
    """A Python fix task whose teacher edits one line: {file, old, new}; else None."""
    edits = spec.get("edits") or []
    if spec.get("kind") != "fix" or spec.get("lang") != "python" or len(edits) != 1 or "file" not in spec:
        return None
    old, new = edits[0].get("old", ""), edits[0].get("new", "")
    if not old or "\n" in old.strip("\n"):
        return None
    return {"file": spec["file"], "old": old, "new": new}


def enclosing_function(source: str, line_text: str) -> str | None:
    """The `def` block holding `line_text` (from its def line to the next line indented no deeper), or None."""
    lines = source.splitlines(keepends=True)
    where = next((i for i, line in enumerate(lines) if line.rstrip("\n") == line_text.rstrip("\n")), None)
    if where is None:
        return None
    start = next((i for i in range(where, -1, -1) if lines[i].lstrip().startswith("def ")), None)
    if start is None:
        return None
    indent = len(lines[start]) - len(lines[start].lstrip())
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent):
        end += 1
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1
    return "".join(lines[start:end])


def plain_example(workspace: Path, fix: dict, summary: str) -> tuple[str, str] | None:
    """(before, after) of a fix task's function."""
    before = enclosing_function((workspace / fix["file"]).read_text(encoding="utf-8"), fix["old"])
    if before is None or before.count(fix["old"]) != 1:
        return None
    return before, before.replace(fix["old"], fix["new"])


def plain_prompt(examples: list[tuple[str, str, str]], summary: str, before: str) -> str:
    shots = "".join(f"# Bug: {bug}\n# Before:\n{b.rstrip()}\n# After:\n{a.rstrip()}\n\n" for bug, b, a in examples)
    return f"{shots}# Bug: {summary}\n# Before:\n{before.rstrip()}\n# After:\n"


def plain_answer(completion: str) -> str:
    """The completed function: up to the next example marker."""
    return completion.split("\n# ")[0].split("\n\n\n")[0].rstrip() + "\n"


def diagnostic_cases(val_dir: Path) -> list[dict]:
    """The validation tasks that fix one line of a Python function: the diagnostic's cases."""
    from harness.tasks import load_tasks

    cases = []
    for task in load_tasks(val_dir):
        fix = single_line_fix(task.spec)
        pair = fix and plain_example(task.workspace, fix, task.spec.get("summary", ""))
        if pair:
            cases.append({"task": task, "fix": fix, "before": pair[0], "summary": task.spec.get("summary", "")})
    return cases


def worked_examples(train_tasks: Path, order: list[str]) -> tuple[list[tuple[str, str, str]], list[str]]:
    """The plain prompt's worked examples (bug, before, after) and their task ids: the last fix tasks of the training
    order, so they do not depend on --sizes (a curve can grow without changing them) and no N below their position
    in the order trains on them (curve() refuses a size that would)."""
    examples, ids = [], []
    for task_id in reversed(order):
        spec = json.loads((train_tasks / task_id / "task.json").read_text(encoding="utf-8"))
        fix = single_line_fix(spec)
        pair = fix and plain_example(train_tasks / task_id / "workspace", fix, spec.get("summary", ""))
        if pair and spec.get("summary"):
            examples.append((spec["summary"], *pair))
            ids.append(task_id)
        if len(examples) == FEW_SHOT:
            break
    return examples, ids


def run_plain(model, tokenizer, cases: list[dict], examples: list[tuple]) -> list[bool]:
    """Each case as a plain completion; solved when the completed function, put in place of the buggy one, passes the
    task's test in a sandbox."""
    from harness.decode import generate
    from harness.sandbox import Limits, Sandbox

    # a raw completion, not a chat turn: generate() takes texts as they are
    texts = [plain_prompt(examples, case["summary"], case["before"]) for case in cases]
    completions = generate(model, tokenizer, texts, PLAIN_MAX_NEW_TOKENS, stop_strings=("\n# Bug",))
    outcomes = []
    for case, completion in zip(cases, completions):
        sandbox = Sandbox(case["task"].workspace, Limits())
        try:
            target = sandbox.root / case["fix"]["file"]
            source = target.read_text(encoding="utf-8")
            target.write_text(source.replace(case["before"].rstrip() + "\n", plain_answer(completion["output"]), 1),
                              encoding="utf-8")
            outcomes.append(sandbox.run_test(case["task"].test, 120).exit_code == 0)
        finally:
            sandbox.close()
    return outcomes


class ReadFirstPolicy:
    """Turn 1 is the scripted file_read of the task's file; every later turn is the model's (the edit step)."""

    def __init__(self, inner, files: dict[str, str]):
        self.inner, self.files, self.counter = inner, files, inner.counter

    def __call__(self, episodes, instructions):
        from harness.toolcall import render_tool_call

        if not episodes[0].turns:
            return [render_tool_call("file_read", {"path": self.files[e.task.id]}) for e in episodes]
        return self.inner(episodes, instructions)


def run_edit_step(model, tokenizer, cases: list[dict], options) -> list[bool]:
    """Each case as the agent's second turn after a read of the faulty file; solved when one reply fixes it."""
    from dataclasses import replace

    from harness.agent import ModelPolicy, run_agent

    step_options = replace(options, max_turns=2, progress=False, temperature=0.0)
    policy = ReadFirstPolicy(ModelPolicy(model, tokenizer, step_options),
                             {case["task"].id: case["fix"]["file"] for case in cases})
    lines, _ = run_agent([case["task"] for case in cases], policy, step_options)
    return [line["solved"] for line in lines]


# ---------------------------------------------------------------------------------------------------------------------
# One student
# ---------------------------------------------------------------------------------------------------------------------

def measure(model_ref: str, adapter: Path | None, val_dir: Path, work: Path, cases, examples, options: "CurveOptions"):
    """Greedy agent, sampled agents, and the diagnostic of one model (the base when adapter is None)."""
    from dataclasses import replace

    from harness.agent import AgentOptions, ModelPolicy, run_agent
    from harness.decode import load_for_eval
    from harness.evaluate import write_trace
    from harness.tasks import load_tasks

    model, tokenizer = load_for_eval(model_ref, adapter, options.device)
    tasks = load_tasks(val_dir)
    agent_options = AgentOptions(max_turns=options.max_turns, progress=False)
    lines, greedy = run_agent(tasks, ModelPolicy(model, tokenizer, agent_options), agent_options)
    write_trace(lines, greedy, work / "agent.jsonl")
    solved = {line["id"]: 0 for line in lines}
    for sample in range(options.samples):
        sampled_options = replace(agent_options, temperature=options.temperature, sample_seed=1000 * sample)
        sampled, _ = run_agent(tasks, ModelPolicy(model, tokenizer, sampled_options), sampled_options)
        for line in sampled:
            solved[line["id"]] += line["solved"]
    plain = run_plain(model, tokenizer, cases, examples) if examples else []
    edit = run_edit_step(model, tokenizer, cases, agent_options)
    return {
        "greedy": {key: greedy[key] for key in ("tasks", "solved", "valid_calls", "calls", "edits_applied", "refused",
                                                "stop_reasons", "per_kind", "per_lang")},
        "task_ids": [line["id"] for line in lines],
        "greedy_solved_ids": sorted(line["id"] for line in lines if line["solved"]),
        "samples": options.samples,
        "pass_at": {str(k): round(sum(pass_at_k(options.samples, c, k) for c in solved.values()) / len(solved), 4)
                    for k in PASS_AT if k <= options.samples} if options.samples else {},
        "diagnostic": {"cases": len(cases), "plain_solved": sum(plain), "edit_step_solved": sum(edit),
                       "plain": plain, "edit_step": edit},
    }


def train_student(n: int, ids: list[str], tasks: Path, out: Path, val_dir: Path, options: "CurveOptions") -> Path:
    from harness.export import ExportOptions, export
    from harness.train import TrainConfig, train

    _, candidates = recipes()
    recipe = candidates[options.recipe]
    work = out / f"n{n}"
    datasets = work / "datasets"
    if not (datasets / f"apr_code_sft_{recipe['mode']}.jsonl").is_file():
        export([tasks / "transcripts" / task_id for task_id in ids], datasets,
               ExportOptions(mode="all", max_length=recipe["max_length"], tokenizer=options.base, progress=False))
    data = datasets / f"apr_code_sft_{recipe['mode']}.jsonl"
    from harness.evaluate import load_prompts

    check_not_held_out(data, load_prompts(val_dir))
    if not (work / "adapter" / "adapter_config.json").is_file():
        train(TrainConfig.from_recipe(recipe, data=data, base=options.base, out=work / "adapter",
                                      max_steps=options.steps, device=options.device, seed=options.seed))
    return work / "adapter"


# ---------------------------------------------------------------------------------------------------------------------
# The curve
# ---------------------------------------------------------------------------------------------------------------------

@dataclass(kw_only=True)
class CurveOptions:
    """`flip curve`'s options."""
    tasks: Path = option(help="a generated task set: DIR/tasks, DIR/transcripts, DIR/manifest.json (fixtures/taskgen.py)")
    out: Path = option(help="curve directory (one n<N>/ per size, curve.json, curve.md, curve.png)")
    base: str = option(SMOLLM2, "the base every student trains: " + MODEL_HELP)
    sizes: str = option("64,250,1000,2000", "comma-separated numbers of distinct training tasks")
    recipe: str = option("packed-all-linear", "the training recipe of contracts/recipes.yaml (its steps replaced)")
    steps: int = option(300, "training steps of every student (the same compute at every size)")
    samples: int = option(10, "sampled agent runs per task for pass@k (0: greedy only)")
    temperature: float = option(0.8, "temperature of the sampled runs")
    max_turns: int = option(8, "agent turns per validation task")
    val_tasks: int = option(40, "generated validation tasks used (the first of the manifest's validation split)")
    fixture_val: bool = option(True, "add flip tune's validation split of the hand-written training tasks")
    seed: int = option(42, "seed of the training order and of training")
    device: str = device_option()
    force: bool = option(False, "write into a non-empty --out holding files flip curve did not write (nothing is deleted)")
    compare: tuple[Path, ...] = option((), "comma-separated finished curve directories of other bases, drawn beside "
                                           "this one in curve.png (same validation tasks)")


def parse_sizes(text: str, available: int) -> list[int]:
    try:
        sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise FlipError(f"--sizes {text!r}: not a comma-separated list of integers") from None
    if not sizes or sizes[0] < 1:
        raise FlipError(f"--sizes {text!r}: every size must be at least 1")
    if sizes[-1] > available:
        raise FlipError(f"--sizes asks for {sizes[-1]} tasks; the task set has {available} training tasks (the last "
                        f"fix tasks of the training order are the diagnostic's worked examples, never trained on)")
    return sizes


def curve(options: CurveOptions) -> dict:
    manifest = read_manifest(Path(options.tasks))
    tasks = Path(options.tasks)
    order = training_order(tasks, manifest["train"], options.seed)
    examples, example_ids = worked_examples(tasks / "tasks", order)
    sizes = parse_sizes(options.sizes, min(map(order.index, example_ids), default=len(order)))
    if options.recipe not in recipes()[1]:
        raise FlipError(f"--recipe {options.recipe}: not in contracts/recipes.yaml")
    if (options.steps < 1 or options.samples < 0 or options.max_turns < 1 or options.val_tasks < 0
            or not 0 < options.temperature < float("inf")):
        raise FlipError("--steps and --max-turns must be at least 1, --samples and --val-tasks at least 0, "
                        "--temperature a finite number above 0")
    check(options.base)
    out = claim_dir(options.out, "curve", OUTPUT_NAMES, options.force)
    val_ids = distinct_prompts(tasks, manifest["validation"], manifest["train"])[:options.val_tasks]
    val_dir = link_validation(out, tasks, val_ids, options.fixture_val)
    cases = diagnostic_cases(val_dir)
    rows = []
    for n in [0, *sizes]:  # N = 0 is the base itself
        work = out / ("base" if n == 0 else f"n{n}")
        made = {"n": n, "base": options.base, "recipe": options.recipe, "steps": options.steps if n else 0,
                "examples": example_ids}
        if (work / "row.json").is_file():
            rows.append(resumed_row(work / "row.json", made))
            continue
        work.mkdir(exist_ok=True)
        print(f"flip curve: {options.base}, N = {n} ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        adapter = train_student(n, order[:n], tasks, out, val_dir, options) if n else None
        trained = time.perf_counter()
        row = {**made, "train_s": round(trained - started, 1),
               **measure(options.base, adapter, val_dir, work, cases, examples, options),
               "measure_s": round(time.perf_counter() - trained, 1)}
        write_text(work / "row.json", json.dumps(row, indent=2) + "\n")
        rows.append(row)
    report = {"tasks": str(tasks), "base": options.base, "recipe": options.recipe, "steps": options.steps,
              "validation_tasks": rows[0]["greedy"]["tasks"], "samples": options.samples,
              "temperature": options.temperature, "seed": options.seed, "examples": example_ids, "rows": rows}
    write_text(out / "curve.json", json.dumps(report, indent=2) + "\n")
    write_text(out / "curve.md", render_markdown(report))
    plot(compared_reports(report, options.compare), out / "curve.png")
    return report


def resumed_row(path: Path, made: dict) -> dict:
    """A finished row of this curve, kept when it was made as this run would make it (same base, recipe, steps and
    worked examples; a row from before the examples were recorded is kept on the rest); else one line, exit 2."""
    row = json.loads(path.read_text(encoding="utf-8"))
    for key, value in made.items():
        if key in row and row[key] != value:
            raise FlipError(f"{path} was made with {key} {row[key]}, not {value}: another --out keeps both curves")
    return row


def render_markdown(report: dict) -> str:
    rows = report["rows"]
    smallest = next((row for row in rows if row["n"]), rows[0])
    lines = [
        f"# flip curve: {report['base']}, recipe {report['recipe']} at {report['steps']} steps",
        "",
        f"{report['validation_tasks']} validation tasks (never held-out); greedy agents, and {report['samples']} sampled "
        f"runs per task at temperature {report['temperature']} for pass@k. Rates with 95% Wilson intervals; p: McNemar's "
        f"exact test of greedy solves against N = {smallest['n']} on the same tasks.",
        "",
        "| N distinct tasks | solved (greedy) | p | pass@1 | pass@5 | pass@10 | valid calls | edits applied "
        "| fix as plain code | fix as file_edit step | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        greedy, diag = row["greedy"], row["diagnostic"]
        p = "" if row is smallest else f"{paired_p(row, smallest):.2f}"
        pass_at = [row["pass_at"].get(str(k)) for k in PASS_AT]
        lines.append(
            f"| {row['n'] or 'base'} | {interval_text(greedy, 'agent', 'solve_rate')} | {p} | "
            + " | ".join(pct(v) for v in pass_at)
            + f" | {interval_text(greedy, 'agent', 'valid_call_rate')} | {greedy['edits_applied']} "
            f"| {interval_text(diag, 'diagnostic', 'plain_fix_rate')} "
            f"| {interval_text(diag, 'diagnostic', 'edit_step_fix_rate')} "
            f"| {row['train_s']:.0f} |")
    return "\n".join(lines) + "\n"


def paired_p(row: dict, other: dict) -> float:
    """McNemar's exact p of two rows' greedy solves over the same validation tasks."""
    tasks = row["task_ids"]
    if tasks != other["task_ids"]:
        raise FlipError("curve rows were measured on different validation tasks: rerun into a fresh --out")
    mine, theirs = set(row["greedy_solved_ids"]), set(other["greedy_solved_ids"])
    return mcnemar_exact([t in mine for t in tasks], [t in theirs for t in tasks])


def plot(reports: list[dict], path: Path) -> list[str]:
    """Solved (greedy, with its Wilson interval) and pass@5 against N, one line of each per curve (base and steps);
    the labels drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for report in reports:
        rows, name = report["rows"], f"{report['base']}, {report['steps']} steps"
        xs = [max(row["n"], 1) for row in rows]
        rates = [row["greedy"]["solved"] / row["greedy"]["tasks"] for row in rows]
        intervals = [wilson(row["greedy"]["solved"], row["greedy"]["tasks"]) for row in rows]
        ax.errorbar(xs, rates, yerr=[[r - lo for r, (lo, _) in zip(rates, intervals)],
                                     [hi - r for r, (_, hi) in zip(rates, intervals)]],
                    marker="o", capsize=3, label=f"{name}: solved (greedy)")
        if all("5" in row["pass_at"] for row in rows):
            ax.plot(xs, [row["pass_at"]["5"] for row in rows], marker="s", linestyle="--",
                    label=f"{name}: pass@5")
    ax.set_xscale("log")
    ax.set_xlabel("distinct training tasks (base at 1)")
    ax.set_ylabel("validation tasks solved")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)
    tmp.replace(path)
    return labels


def compared_reports(report: dict, others: tuple[Path, ...]) -> list[dict]:
    """This curve and the finished curves of other bases named by --compare, measured on the same validation tasks."""
    reports = [report]
    for other in others:
        try:
            theirs = json.loads((Path(other) / "curve.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise FlipError(f"--compare {other}: no finished curve there ({err})") from None
        if theirs["rows"][0]["task_ids"] != report["rows"][0]["task_ids"]:
            raise FlipError(f"--compare {other}: measured on other validation tasks than this curve")
        reports.append(theirs)
    return reports


def add_arguments(parser) -> None:
    add_options(parser, CurveOptions)


def main(args) -> int:
    report = curve(options_of(CurveOptions, args))
    print(render_markdown(report), file=sys.stderr)
    return 0
