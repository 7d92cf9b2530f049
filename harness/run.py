"""`flip run` (what `make flip` runs): the whole pipeline on the fixtures, and the flip report.

    export fixtures/transcripts -> DIR/datasets/          (every mode; the default trains on one)
    train the bundled base      -> DIR/adapter/           (steps-to-flip measured on the held-out tasks as it trains)
    remap                       -> DIR/adapter_remapped.safetensors + DIR/adapter.gguf
    merge                       -> DIR/merged/ + DIR/merged.gguf
    evaluate base and student   -> DIR/traces/{base,student}.jsonl (+ .summary.json): the first step
    run both as agents          -> DIR/traces/agent_{base,student}.jsonl (+ .summary.json): whole tasks, solved or not
    report                      -> DIR/report.json + DIR/report.md

The held-out tasks are only ever evaluated, never trained on: the run refuses a dataset that contains one.
The goal is checked, not assumed: the report states each floor with the measured number beside it.
"""
from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from dataclasses import MISSING, dataclass, field
from pathlib import Path

from harness import FlipError
from harness import agent as agent_stage, evaluate as eval_stage  # their defaults (neither imports torch)
from harness.atomic import claim_dir, forget_outputs, record_outputs, recorded_outputs, remove_ours, write_text
from harness.contracts import FIXTURE_TASKS, FIXTURE_TRANSCRIPTS, FIXTURES, default_recipe, recipes
from harness.export import MODES, ExportOptions  # MODES: the apr-code datasets a run can train on
from harness.metrics import FLIP_THRESHOLD, METRICS, count_text, goals, interval_text, pct
from harness.models import SMOLLM2
from harness.options import (MODEL_HELP, add_options, config_text, default_config, device_option, dialect_option,
                             field_names, force_option, option, options_of, path_or_none, positive_or_none,
                             read_config, runtime_option, sandbox_option)
from harness.sandbox import check_sandbox
from harness.train import RECIPE_FIELD_NAMES, TrainConfig

# The training recipe is data: the default of contracts/recipes.yaml, chosen by `flip tune` on a validation split of
# the training tasks (docs/recipe.md); what it does not set keeps TrainConfig's defaults.
RECIPE_NAME, RECIPE = recipes()[0], default_recipe()
# held-out first-step checks during training (steps-to-flip): twice in the default 140 steps; each costs ~15-20 s on
# 2 cores, and make flip has 15 minutes
DEFAULT_EVAL_EVERY = 70
# What `flip run` writes into --out; a directory holding anything else is refused unless --force.
OUTPUT_NAMES = ("datasets", "adapter", "adapter_remapped.safetensors", "adapter.gguf", "merged", "merged.gguf",
                "traces", "progress.jsonl", "report.json", "report.md", "config.json")
# What the stages that --resume does not redo write into --out, recorded in the run's manifest when they finish.
STAGE_OUTPUTS = {"export": ("datasets",), "train": ("adapter", "progress.jsonl")}
CONFIG_FILE = "config.json"  # the resolved options; `flip run --config FILE` reads one back to repeat the run


def train_option(name: str, help: str | None = None, default=MISSING):
    """A flip run option that is a TrainConfig field (a recipe's `steps` is max_steps), declared once, in TrainConfig:
    its type, choices and help are TrainConfig's (or `help`, where a run gives it more to do); its default is the
    default recipe's value, else TrainConfig's (or `default`)."""
    spec = TrainConfig.__dataclass_fields__[RECIPE_FIELD_NAMES.get(name, name)]
    if default is MISSING:
        default = RECIPE.get(name, spec.default)
    return option(tuple(default) if isinstance(default, list) else default, help or spec.metadata["help"],
                  **spec.metadata["argparse"])


@dataclass
class RunOptions:
    out: Path = option(None, "run directory (datasets, adapter, merged, traces, report); required unless --config "
                             "names one")
    base: str = option(SMOLLM2, MODEL_HELP)
    data: Path | None = option(None, "train on this SFT jsonl instead of exporting the fixtures")
    transcripts: Path = option(FIXTURE_TRANSCRIPTS, "transcripts to export")
    train_tasks: Path | None = option(None, "a generated task set (fixtures/taskgen.py, what flip curve reads): export "
                                      "the first --train-n tasks of its training order (flip curve's) instead of "
                                      "--transcripts", type=path_or_none)
    train_n: int | None = option(None, "how many of --train-tasks' training tasks (default: all of them)", type=int)
    with_fixtures: bool = option(False, "with --train-tasks: also export the hand-written tasks' transcripts "
                                 "(fixtures/transcripts) of flip tune's training split, never its validation split")
    holdout: Path = option(FIXTURES / "holdout" / "workspaces", 'held-out task folders (prompt.txt, task.json, '
                           'workspace/), or a {"id", "task"} JSONL (first step only, no agent)')
    recipe: str = option(RECIPE_NAME, "the training recipe of contracts/recipes.yaml: its values are the defaults of "
                         "the training options below (shown: the default recipe's)", choices=tuple(recipes()[1]))
    mode: str = option(RECIPE["mode"], "which exported dataset to train on", choices=MODES)
    dialect: str = dialect_option()  # exported, trained, evaluated and run as an agent in it
    # The training options: TrainConfig's fields, declared there with their help and checks (train_option).
    steps: int = train_option("steps", "optimizer steps")
    lr: float = train_option("lr")
    rank: int = train_option("rank")
    alpha: int = train_option("alpha")
    targets: tuple[str, ...] = train_option("targets")
    batch_size: int = train_option("batch_size")
    grad_accum: int = train_option("grad_accum")
    seed: int = train_option("seed", "seed of export sampling, data order and LoRA's initialisation")
    max_length: int = train_option("max_length", "token budget of a sample (export and training)")
    pack: bool = train_option("pack")
    val_fraction: float = train_option("val_fraction")
    dtype: str = train_option("dtype")
    save_every: int | None = train_option("save_every", "checkpoint the training every N steps, so that --resume "
                                          "continues it (0: no checkpoint before the end)", default=None)
    eval_every: int | None = option(DEFAULT_EVAL_EVERY, "steps between held-out evals during training (0: none, "
                                    "no steps-to-flip)", type=positive_or_none)
    max_new_tokens: int = option(eval_stage.DEFAULT_MAX_NEW_TOKENS, "final evals")
    # Progress evals during training decode fewer tokens: greedy decoding is prefix-stable, so a call that opens and
    # closes within them is the same call the full eval sees; a base-like model's prose would otherwise cost the
    # full budget at every eval.
    progress_tokens: int = option(64, "evals during training")
    eval_batch_size: int = option(eval_stage.DEFAULT_BATCH_SIZE,
                                  "prompts decoded together (evaluations and agent turns)")
    device: str = device_option()
    merge: bool = option(True, "merge the adapter into the base; --no-merge: the student is base + adapter")
    agent: bool = option(True, "run base and student as agents on the held-out workspaces")
    sandbox: str = sandbox_option()
    runtime: str = runtime_option()
    max_turns: int = option(agent_stage.DEFAULT_MAX_TURNS, "agent turns per held-out task")
    agent_tokens: int = option(agent_stage.DEFAULT_MAX_NEW_TOKENS, "tokens per agent reply (a call may carry code)")
    parity_teacher: Path | None = option(FIXTURES / "holdout" / "teacher", "the teacher's CCPA trace of each held-out "
                                         "task, <id>.ccpa-trace.jsonl: the agents' per-task action parity ('' for none)",
                                         type=path_or_none)
    force: bool = force_option("run")
    resume: bool = option(False, "continue an interrupted run in this --out, with the same options: a stage whose "
                                 "outputs are complete (export, train) is not redone, training resumes from its last "
                                 "checkpoint (--save-every), the later stages run again; an --out with no run starts one")
    timings: dict = field(default_factory=dict)  # wall seconds per phase
    cpu_times: dict = field(default_factory=dict)  # CPU seconds per phase (all threads of this process)

    def __post_init__(self):
        if self.out is None:
            raise FlipError("--out is required (or a --config file that names one)")
        self.out = Path(self.out)
        self.transcripts, self.holdout = Path(self.transcripts), Path(self.holdout)
        self.data = Path(self.data) if self.data is not None else None
        self.train_tasks = Path(self.train_tasks) if self.train_tasks else None
        if self.train_n is not None and self.train_tasks is None:
            raise FlipError("--train-n needs --train-tasks")
        if self.with_fixtures and self.train_tasks is None:
            raise FlipError("--with-fixtures needs --train-tasks (without it the fixtures are what is exported)")
        if self.train_tasks is not None and self.data is not None:
            raise FlipError("--train-tasks and --data: give one (--data skips the export)")
        self.parity_teacher = Path(self.parity_teacher) if self.parity_teacher else None
        self.targets = tuple(self.targets)
        for name in ("max_new_tokens", "progress_tokens", "eval_batch_size", "max_turns", "agent_tokens"):
            if getattr(self, name) < 1:
                raise FlipError(f"--{name.replace('_', '-')} must be at least 1")
        if self.agent_tokens >= self.max_length:
            raise FlipError("--agent-tokens must be smaller than --max-length (the prompt needs room too)")
        if self.mode not in MODES:
            raise FlipError(f"--mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        self.train_config()  # the training options are checked by TrainConfig, before any work

    def export_inputs(self) -> list[Path]:
        """What the export reads: --train-tasks' first --train-n training transcripts (and, --with-fixtures, the
        hand-written training split's), else --transcripts."""
        if self.train_tasks is None:
            return [self.transcripts]
        from harness.tasks import hand_written_training_transcripts, training_transcripts

        fixtures = hand_written_training_transcripts(FIXTURE_TASKS, FIXTURE_TRANSCRIPTS) if self.with_fixtures else []
        return training_transcripts(self.train_tasks, self.train_n, self.seed) + fixtures

    def train_data(self) -> Path:
        """The jsonl training reads: --data, or the export's dataset of --mode."""
        return self.data if self.data is not None else self.out / "datasets" / f"apr_code_sft_{self.mode}.jsonl"

    def train_config(self) -> TrainConfig:
        """The training stage's config: this run's recipe fields (TrainConfig.from_recipe, as flip tune and flip curve
        build theirs) and its other training options. A refused value is named by its flip run option."""
        recipe = {name: getattr(self, name) for name in RECIPE_OPTIONS}
        try:
            return TrainConfig.from_recipe(recipe, data=self.train_data(), base=self.base, out=self.out / "adapter",
                                           batch_size=self.batch_size, grad_accum=self.grad_accum, seed=self.seed,
                                           device=self.device, eval_every=self.eval_every, save_every=self.save_every)
        except FlipError as err:
            message = str(err)
            for run_name, train_name in RECIPE_FIELD_NAMES.items():
                message = message.replace(_flag(train_name), _flag(run_name))
            raise FlipError(message) from None


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# The options of a run that a recipe sets (contracts/recipes.yaml, every_recipe included): the same names there.
RECIPE_OPTIONS = ("mode", "steps", "lr", "rank", "alpha", "targets", "max_length", "pack", "val_fraction", "dtype")


def recipe_defaults(name: str) -> dict:
    """--recipe NAME: that recipe's values as the parser's defaults (harness.cli; options given explicitly win)."""
    recipe = recipes()[1][name]
    return {key: tuple(value) if isinstance(value, list) else value for key, value in recipe.items()}


# What config.json holds: every option but those about this process (--force, --resume) and the measurements.
CONFIG_FIELDS = field_names(RunOptions, exclude=("force", "resume", "timings", "cpu_times"))


def run_config(options: RunOptions) -> str:
    """config.json's text: the same options give the same bytes."""
    return config_text(options, CONFIG_FIELDS)


@dataclass
class Stages:
    """Each stage's own options and output directory in one run, built once (plan_stages) when the run directory is
    claimed: a phase takes its section from here rather than unpacking the run's options field by field."""
    out: Path  # the run directory, claimed once by run()
    export: ExportOptions | None  # None: --data names the training set, nothing is exported
    train: TrainConfig
    eval: dict  # evaluate()'s options, the same for base and student
    agent: agent_stage.AgentOptions | None  # None: no agents (--no-agent, or held-out prompts without workspaces)
    datasets: Path
    adapter: Path
    merged: Path | None  # None: --no-merge, the student is the base with the adapter
    traces: Path

    def student(self, base: str) -> tuple[str, Path | None]:
        """(model, adapter) of the student: the merged model, or the base with the adapter when nothing is merged."""
        return (str(self.merged), None) if self.merged is not None else (base, self.adapter)


def plan_stages(options: RunOptions) -> Stages:
    """Every stage's options and directory in the run directory (options.out, once run() claimed it), made once from
    the run's options, which were checked when RunOptions was made, before any work. The layout is OUTPUT_NAMES'."""
    out, train = options.out, options.train_config()
    export_options = None
    if options.data is None:
        # the token budget is counted with the base's own tokenizer: the trainer keeps or drops samples by the same
        # count
        export_options = ExportOptions(mode="all", max_length=options.max_length, tokenizer=options.base,
                                       seed=options.seed, dialect=options.dialect, progress=False)
    agent_options = None
    if options.agent and options.holdout.is_dir():
        agent_options = agent_stage.AgentOptions(
            max_turns=options.max_turns, max_new_tokens=options.agent_tokens, max_length=options.max_length,
            batch_size=options.eval_batch_size, sandbox=options.sandbox, dialect=options.dialect,
            runtime=options.runtime, parity_teacher=options.parity_teacher)
    return Stages(out=out, export=export_options, train=train,
                  eval=dict(device=options.device, max_new_tokens=options.max_new_tokens,
                            batch_size=options.eval_batch_size, dialect=options.dialect),
                  agent=agent_options, datasets=out / "datasets", adapter=out / "adapter",
                  merged=out / "merged" if options.merge else None, traces=out / "traces")


@contextmanager
def phase(options: RunOptions, name: str):
    """Times one phase into options.timings and says on stderr what is running."""
    print(f"flip run: {name} ...", file=sys.stderr, flush=True)
    start, cpu = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        options.timings[name] = round(time.perf_counter() - start, 1)
        # CPU seconds too: on a shared machine wall time measures the neighbours as much as this run
        options.cpu_times[name] = round(time.process_time() - cpu, 1)
        print(f"flip run: {name} done in {options.timings[name]:.1f} s", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------------------
# Phases
# ---------------------------------------------------------------------------------------------------------------------

def export_phase(options: RunOptions, stages: Stages) -> tuple[Path, dict | None]:
    """(the training jsonl, export stats or None when --data was given)."""
    data = stages.train.data
    if stages.export is None:
        if not data.is_file():
            raise FlipError(f"--data {data} not found")
        return data, None
    from harness.export import STATS_FILE, export

    if resumed(options, "export"):
        return data, json.loads((stages.datasets / STATS_FILE).read_text(encoding="utf-8"))
    forget_outputs(stages.out, "run", STAGE_OUTPUTS["export"])
    stats = export(options.export_inputs(), stages.datasets, stages.export)
    if not data.is_file():
        raise FlipError(f"the export wrote no {data.name} (modes: curated, balanced, full)")
    record_outputs(stages.out, "run", STAGE_OUTPUTS["export"])
    return data, stats


def resumed(options: RunOptions, stage: str) -> bool:
    """--resume, and the stage's outputs are complete: recorded in the run's manifest when the stage finished and
    unedited since. Such a stage is not redone."""
    done = options.resume and recorded_outputs(options.out, "run", STAGE_OUTPUTS[stage])
    if done:
        print(f"flip run: {stage}: complete in {options.out}, not redone (--resume)", file=sys.stderr, flush=True)
    return done


def check_resumable(out: Path, config: str) -> None:
    """--resume continues the run its config.json describes, with the same options (a fresh --out just starts). An
    option its config.json lacks, one flip run gained after the run began, counts as given at its default: upgrading
    apr-flip does not strand a half-trained run, and that option at another value still refuses it."""
    written = out / CONFIG_FILE
    if written.is_file() and written.read_text(encoding="utf-8") != config:
        before = json.loads(written.read_text(encoding="utf-8"))
        before, now = {**default_config(RunOptions, CONFIG_FIELDS), **before}, json.loads(config)
        differ = sorted(key for key in set(before) | set(now) if before.get(key) != now.get(key))
        if not differ:
            return
        raise FlipError(f"--resume: {written} was written with other options ({', '.join(differ)}); resume with "
                        f"the same ones (--config {written} --resume), or run into another --out")


def check_no_leak(data: Path, prompts: list[dict]) -> int:
    """Refuse to train on a held-out task: no instruction may contain a held-out task's text. Returns samples read."""
    tasks = {p["task"].strip(): p["id"] for p in prompts}
    count = 0
    with open(data, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            count += 1
            instruction = json.loads(line).get("instruction", "")
            for task, task_id in tasks.items():
                if task in instruction:
                    raise FlipError(f"{data}:{number} contains held-out task {task_id!r}: never train on the eval set")
    return count


def flip_step(progress: list[dict], threshold: float = FLIP_THRESHOLD) -> int | None:
    """The first eval step at which the student held a valid call on >= threshold of the held-out tasks."""
    return next((row["step"] for row in progress if (row["valid_rate"] or 0) >= threshold), None)


def train_phase(options: RunOptions, stages: Stages, prompts: list[dict]) -> tuple[dict, list[dict]]:
    """Train into DIR/adapter, evaluating the held-out tasks on the training model every eval_every steps."""
    from harness.evaluate import evaluate_loaded
    from harness.train import OUTPUT_NAMES as TRAIN_OUTPUTS, train

    adapter, progress_file = stages.adapter, stages.out / "progress.jsonl"
    if resumed(options, "train"):
        return (json.loads((adapter / "train_summary.json").read_text(encoding="utf-8")),
                read_progress(progress_file))
    forget_outputs(stages.out, "run", STAGE_OUTPUTS["train"])
    if options.resume:  # the trainer resumes its checkpoint; the progress evals it made so far are kept
        rows = {row["step"]: row for row in read_progress(progress_file)}
    else:
        # A fresh run: the trainer would resume a matching checkpoint, and a resumed run skips the progress evals
        # that steps-to-flip is read from. Only an adapter directory flip train wrote is removed (else train refuses
        # it).
        remove_ours(adapter, "train", TRAIN_OUTPUTS)
        rows = {}

    def on_eval(step, model, tokenizer):
        _, summary = evaluate_loaded(model, tokenizer, prompts, options.progress_tokens, options.eval_batch_size,
                                     dialect=options.dialect)
        row = {"step": step, **{k: summary[k] for k in ("tasks_with_call", "tasks_with_valid_call", "valid_rate",
                                                          "tasks_grounded", "grounded_rate", "seconds")}}
        rows[step] = row
        # written at every eval: an interrupted run keeps the evals its checkpoint will not redo
        write_text(progress_file, "".join(json.dumps(r) + "\n" for _, r in sorted(rows.items())))
        print(f"flip run: step {step}: {row['tasks_with_valid_call']}/{summary['tasks']} tasks with a valid call, "
              f"grounded {row['tasks_grounded']}/{summary['tasks_naming_path']} ({row['seconds']:.0f} s)",
              file=sys.stderr, flush=True)

    # Without progress evals the trainer's end-of-training call is skipped too: the final eval measures the student.
    summary = train(stages.train, on_eval=on_eval if stages.train.eval_every else None)
    progress = [row for _, row in sorted(rows.items())]
    write_text(progress_file, "".join(json.dumps(r) + "\n" for r in progress))
    record_outputs(stages.out, "run", STAGE_OUTPUTS["train"])
    return summary, progress


def read_progress(path: Path) -> list[dict]:
    """progress.jsonl's rows (none when it is absent)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def remap_phase(options: RunOptions, stages: Stages) -> dict:
    from harness.remap import remap_to_apr

    return remap_to_apr(stages.adapter, stages.out / "adapter_remapped.safetensors",
                        gguf_file=stages.out / "adapter.gguf", base=options.base)


def merge_phase(options: RunOptions, stages: Stages) -> dict:
    from harness.merge import merge

    return merge(options.base, stages.adapter, stages.merged, gguf_file=stages.out / "merged.gguf")


def eval_phase(options: RunOptions, stages: Stages, prompts: list[dict]) -> dict:
    """Base and student on the held-out tasks, with the same prompts, decoding and token budget."""
    from harness.evaluate import evaluate

    traces, common = stages.traces, stages.eval
    base = evaluate(options.base, prompts, traces / "base.jsonl", label="base", **common)
    model, adapter = stages.student(options.base)
    student = evaluate(model, prompts, traces / "student.jsonl", adapter=adapter, label="student", **common)
    return {"base": base, "student": student}


def agent_phase(options: RunOptions, stages: Stages) -> dict:
    """Base and student as apr-code agents on the held-out workspaces, with the same turns, budget and runtime."""
    from harness.agent import agent

    traces = stages.traces
    base = agent(options.base, options.holdout, traces / "agent_base.jsonl", device=options.device,
                 options=stages.agent, label="base agent")
    model, adapter = stages.student(options.base)
    student = agent(model, options.holdout, traces / "agent_student.jsonl", adapter=adapter, device=options.device,
                    options=stages.agent, label="student agent")
    lines = [json.loads(line) for line in (traces / "agent_student.jsonl").read_text(encoding="utf-8").splitlines()]
    base_lines = [json.loads(line) for line in (traces / "agent_base.jsonl").read_text(encoding="utf-8").splitlines()]
    return {"base": base, "student": student, "max_turns": options.max_turns,
            "parity_per_task": {line["id"]: {"base": (other.get("parity") or {}).get("score"),
                                             "student": (line.get("parity") or {}).get("score")}
                                for line, other in zip(lines, base_lines)},
            "solved_example": next((line for line in lines if line["solved"]), None),
            "unsolved_example": next((line for line in lines if not line["solved"]), None)}


# ---------------------------------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------------------------------

def build_report(options: RunOptions, data: Path, export_stats, train_summary: dict, progress: list[dict],
                 artifacts: dict, results: dict) -> dict:
    base, student = results["first_step"]["base"], results["first_step"]["student"]
    return {
        "goal": goals(results),
        "base_model": options.base,
        "dialect": options.dialect,
        "dataset": {"path": str(data), "mode": options.mode if export_stats is not None else None,
                    "samples": train_summary["samples"],
                    "export_samples": export_stats.get("samples") if export_stats else None},
        "held_out": {"path": str(options.holdout), "tasks": base["tasks"]},
        "base": base,
        "student": student,
        "agent": results.get("agent"),
        "steps_trained": train_summary["steps"],
        "steps_to_flip": flip_step(progress),
        "flip_threshold": FLIP_THRESHOLD,
        "progress": progress,
        "training": {k: train_summary.get(k) for k in ("final_train_loss", "final_val_loss", "tokens_per_s",
                                                         "steps_per_s", "samples", "packed", "device", "config")},
        "loss_curve": "adapter/loss.png",
        "artifacts": artifacts,
        "wall_time_s": dict(options.timings),
        "cpu_time_s": dict(options.cpu_times),
    }


def render_markdown(report: dict) -> str:
    base, student = report["base"], report["student"]
    goal = report["goal"]
    lines = [
        "# apr-flip: the flip report",
        "",
        f"Base `{report['base_model']}`, trained {report['steps_trained']} steps on "
        f"`{report['dataset']['path']}` ({report['dataset']['samples']['train']} train / "
        f"{report['dataset']['samples']['val']} val samples) in the {report['dialect']} dialect, evaluated greedily on "
        f"{report['held_out']['tasks']} held-out tasks (never trained on).",
        "",
        f"**Goal {'met' if goal['met'] else 'NOT met'}.**",
        "",
        "| check | floor | measured | met |",
        "|---|---|---|---|",
    ]
    for name, row in goal["checks"].items():
        lines.append(f"| {name} | {row['floor']} | {_measured(report, name, row['value'])} | {'yes' if row['met'] else 'NO'} |")
    if report["agent"]:
        lines += agent_section(report["agent"])
    lines += [
        "",
        "## The first step (single-step evaluation)",
        "",
        "| | base | student |",
        "|---|---|---|",
        f"| tasks with >= 1 call | {base['tasks_with_call']}/{base['tasks']} | {student['tasks_with_call']}/{student['tasks']} |",
        _rate_row("tasks with >= 1 valid call", base, student, "valid_rate"),
        _rate_row("grounded (of tasks naming a path)", base, student, "grounded_rate"),
        _rate_row("valid calls / calls", base, student, "valid_call_rate"),
        f"| calls per tool | {base['calls_per_tool'] or '-'} | {student['calls_per_tool'] or '-'} |",
        _rate_row("first tool matches the teacher's", base, student, "first_tool_match_rate"),
        f"| calls naming a path outside the workspace (absolute or ..) | {base['absolute_path_calls']} | "
        f"{student['absolute_path_calls']} |",
        f"| outputs that hit the token limit | {base['hit_token_limit']} | {student['hit_token_limit']} |",
        "",
        "Per task kind (first step: first tool matches the teacher's / grounded / tasks):",
        "",
        "| kind | base | student |",
        "|---|---|---|",
        *[f"| {kind} | {_kind_cell(base['per_kind'].get(kind))} | {_kind_cell(student['per_kind'].get(kind))} |"
          for kind in sorted(set(base["per_kind"]) | set(student["per_kind"]))],
        "",
        f"Steps trained: {report['steps_trained']}. Steps to flip (first eval step with a valid call on >= "
        f"{pct(report['flip_threshold'])} of held-out tasks): "
        f"{report['steps_to_flip'] if report['steps_to_flip'] is not None else 'never (within this run)'}.",
        "",
    ]
    if report["progress"]:
        lines += ["| step | tasks with a valid call | grounded |", "|---|---|---|"]
        lines += [f"| {r['step']} | {r['tasks_with_valid_call']} ({pct(r['valid_rate'])}) | "
                  f"{r['tasks_grounded']} ({pct(r['grounded_rate'])}) |" for r in report["progress"]]
        lines.append("")
    training = report["training"]
    lines += [
        f"Final train loss {training['final_train_loss']:.4f}"
        + (f", val loss {training['final_val_loss']:.4f}" if training["final_val_loss"] is not None else "")
        + f" on {training['device']}.",
        "",
        "![loss curve](adapter/loss.png)",
        "",
        "Wall time per phase (s): " + ", ".join(f"{k} {v:.1f}" for k, v in report["wall_time_s"].items()) + "; "
        "CPU time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in report["cpu_time_s"].items()) + ".",
        "",
        "Traces: `traces/base.jsonl`, `traces/student.jsonl` (one line per task: output, calls, validity, grounding); "
        "`traces/agent_base.jsonl`, `traces/agent_student.jsonl` (one line per task: every turn, the test's verdict).",
        "",
    ]
    return "\n".join(lines)


def _summary(report: dict, section: str, who: str) -> dict:
    return report[who] if section == "first_step" else report[section][who]


def _measured(report: dict, goal: str, value) -> str:
    """A goal's measured value: a count as it is, a rate as 'k/n (p%, 95% CI lo-hi%)' from its summary's counts."""
    row = next(row for row in METRICS if row.goal == goal)
    if row.denominator is None:
        return str(value)
    return interval_text(_summary(report, row.section, row.who), row.section, row.name)


def _rate_row(label: str, base: dict, student: dict, name: str, section: str = "first_step") -> str:
    """A table row of one rate of the metrics table, base and student, each with its 95% Wilson interval."""
    return f"| {label} | {interval_text(base, section, name)} | {interval_text(student, section, name)} |"


def _kind_cell(row: dict | None) -> str:
    if not row:
        return "-"
    return f"{row['first_tool_match']} / {row['grounded']} of {row['naming_path']} / {row['tasks']}"


def _solved_cell(row: dict | None) -> str:
    return count_text(row["solved"], row["tasks"]) if row else "0/0"


def _solves_table(column: str, base: dict, student: dict) -> list[str]:
    """The agents' solves per group (task kind, language), each with its 95% Wilson interval."""
    return [f"Per {column} (agent: solved / tasks, 95% Wilson interval):", "", f"| {column.split()[-1]} | base | student |",
            "|---|---|---|",
            *[f"| {group} | {_solved_cell(base.get(group))} | {_solved_cell(student.get(group))} |"
              for group in sorted(set(base) | set(student))], ""]


def parity_rows(base: dict, student: dict) -> list[str]:
    """The agents' mean CCPA action parity against the teacher's held-out trajectories (when they were scored)."""
    if not (base.get("parity") and student.get("parity")):
        return []
    def cell(parity):
        return "n/a" if parity["mean"] is None else f"{parity['mean']:.3f} ({parity['tasks_scored']}/{parity['tasks']} tasks)"

    return [f"| CCPA action parity with the teacher (mean) | {cell(base['parity'])} | {cell(student['parity'])} |"]


def parity_table(per_task: dict) -> list[str]:
    """Each held-out task's CCPA action parity, base and student, against the teacher's trajectory of that task."""
    if not per_task or all(row["student"] is None and row["base"] is None for row in per_task.values()):
        return []

    def cell(score):
        return "-" if score is None else f"{score:.3f}"

    return ["", "Per task: CCPA action parity (matched / teacher actions, `harness/parity.py`) against the teacher's "
                "trajectory of the task:", "", "| task | base | student |", "|---|---|---|",
            *[f"| {task} | {cell(row['base'])} | {cell(row['student'])} |" for task, row in per_task.items()]]


def agent_section(agent: dict) -> list[str]:
    """The agentic comparison: whole tasks in the sandbox, solved when the task's tests pass."""
    base, student = agent["base"], agent["student"]

    def row(label, key, fmt=str):
        return f"| {label} | {fmt(base[key])} | {fmt(student[key])} |"

    lines = [
        "",
        "## As agents: whole held-out tasks in a sandbox",
        "",
        f"Each task runs up to {agent['max_turns']} turns (the first call of each reply executed, its result shown in "
        # a summary written before flip agent recorded its runtime ran in the only one there was, claude's
        f"the next prompt) in the {student.get('runtime', 'claude')} runtime; solved = the task's own test command "
        "exits 0 in the final workspace.",
        "",
        "| | base | student |",
        "|---|---|---|",
        _rate_row("solved", base, student, "solve_rate", "agent"),
        row("mean turns", "mean_turns"),
        _rate_row("valid calls / turns with a call", base, student, "valid_call_rate", "agent"),
        _rate_row("first tool matches the teacher's", base, student, "first_tool_match_rate", "agent"),
        _rate_row("first call grounded (of tasks naming a path)", base, student, "grounded_rate", "agent"),
        # summaries written before the fix's lines were counted have no such row
        *([_rate_row("an edit quotes the line the fix changes (of tasks whose fix edits lines)", base, student,
                     "fix_line_rate", "agent")] if "tasks_with_fix_lines" in student else []),
        *([_rate_row("a grep for a name nothing had shown (made up)", base, student, "invented_search_rate", "agent")]
          if "tasks_checked_for_search" in student else []),
        row("edits applied", "edits_applied"),
        row("calls refused (outside the workspace)", "refused"),
        row("calls per tool", "calls_per_tool", lambda v: v or "-"),
        row("stop reasons", "stop_reasons"),
        row("tasks per minute", "tasks_per_minute"),
        *parity_rows(base, student),
        "",
        *_solves_table("task kind", base["per_kind"], student["per_kind"]),
        # summaries written before the language was recorded have none
        *_solves_table("language", base.get("per_lang", {}), student.get("per_lang", {})),
        f"Sandbox: {student['isolation']}.",
        *parity_table(agent.get("parity_per_task")),
    ]
    for title, trace in (("A solved task", agent.get("solved_example")), ("An unsolved task", agent.get("unsolved_example"))):
        if trace:
            lines += ["", f"### {title} (student): `{trace['id']}`", "", f"Task: {trace['task']}", ""]
            for number, turn in enumerate(trace["turns"], 1):
                lines += [f"Turn {number}:", "", "```", turn["output"].strip()[:600], "```", ""]
                if turn["observation"]:
                    shown = turn["observation"].split("\n", 3)[-1]  # the result, after the echoed action
                    lines += ["```", shown.strip()[:400], "```", ""]
            lines.append(f"Stop: {trace['stop_reason']}; test exit code {trace['test']['exit_code']}.")
    return lines


# ---------------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------------

def run(options: RunOptions) -> dict:
    from harness.evaluate import load_prompts

    from harness.models import check

    start, cpu = time.perf_counter(), time.process_time()
    config = run_config(options)  # the options as given, before --out is made absolute
    if not options.holdout.exists():
        raise FlipError(f"--holdout {options.holdout}: no such file or directory")
    prompts = load_prompts(options.holdout)  # every input is checked before the first minute of work
    check(options.base)
    if options.agent and options.holdout.is_dir():
        check_sandbox(options.sandbox)
    if options.data is None and not options.transcripts.exists():
        raise FlipError(f"--transcripts {options.transcripts}: no such file or directory")
    if options.train_tasks is not None:
        options.export_inputs()  # the generated set and its --train-n are checked before any work
    if options.data is not None and not options.data.is_file():
        raise FlipError(f"--data {options.data} not found")
    if options.agent and options.holdout.is_dir() and options.parity_teacher is not None:
        from harness.tasks import load_tasks
        from harness.ccpa import teacher_traces

        teacher_traces(options.parity_teacher, load_tasks(options.holdout))  # read and checked before any work
    options.out = claim_dir(options.out, "run", OUTPUT_NAMES, options.force,
                            inputs=(options.transcripts, options.train_tasks, options.data, options.holdout,
                                    options.base))
    if options.resume:
        check_resumable(options.out, config)
    write_text(options.out / CONFIG_FILE, config)
    stages = plan_stages(options)
    with phase(options, "export"):
        data, export_stats = export_phase(options, stages)
        check_no_leak(data, prompts)
    with phase(options, "train"):
        train_summary, progress = train_phase(options, stages, prompts)
    artifacts = {"adapter": "adapter/"}
    with phase(options, "remap"):
        remap = remap_phase(options, stages)
        artifacts.update(remapped="adapter_remapped.safetensors", adapter_gguf=Path(remap["gguf"]).name)
    if stages.merged is not None:
        with phase(options, "merge"):
            merged = merge_phase(options, stages)
            artifacts.update(merged="merged/", merged_gguf=Path(merged["paths"]["gguf"]).name
                             if merged["paths"]["gguf"] else None)
    with phase(options, "eval"):
        results = {"first_step": eval_phase(options, stages, prompts)}
    if stages.agent is not None:
        with phase(options, "agent"):
            results["agent"] = agent_phase(options, stages)
    options.timings["total"] = round(time.perf_counter() - start, 1)
    options.cpu_times["total"] = round(time.process_time() - cpu, 1)
    report = build_report(options, data, export_stats, train_summary, progress, artifacts, results)
    write_text(options.out / "report.json", json.dumps(report, indent=2) + "\n")
    write_text(options.out / "report.md", render_markdown(report))
    return report


def add_arguments(parser) -> None:
    parser.add_argument("--config", type=Path,
                        help="a run's config.json: its options become the defaults, those given here override them")
    add_options(parser, RunOptions)


def config_defaults(path: Path) -> dict:
    """The options a --config file sets, as parser defaults (harness.cli: the command line overrides them)."""
    return read_config(path, RunOptions, CONFIG_FIELDS)


def options_from_args(args) -> RunOptions:
    return options_of(RunOptions, args)


def main(args) -> int:
    options = options_from_args(args)
    report = run(options)
    if not args.quiet:
        print(render_markdown(report), file=sys.stderr)
    print(f"flip run: report -> {options.out / 'report.md'}", file=sys.stderr)
    if not report["goal"]["met"]:
        missed = [name for name, row in report["goal"]["checks"].items() if not row["met"]]
        print(f"flip run: goal NOT met ({', '.join(missed)}); exit 1", file=sys.stderr)
        return 1
    return 0
