"""`flip agent`: run a model as an apr-code agent on task workspaces, executing its calls in a sandbox, and count the
tasks whose tests pass.

Tasks (`--tasks DIR`): one folder per task,
    DIR/<id>/prompt.txt     the task, as the user would type it
    DIR/<id>/workspace/     the project files
    DIR/<id>/task.json      {"test": "<shell command, run in the workspace, exit 0 = solved>", ...}; other fields are
                            optional (`kind` and `first_tool` feed the per-kind report; the rest is ignored here)

Per task: a fresh sandbox (harness.sandbox) holding a copy of the workspace, then up to --max-turns turns. A turn
renders the prompt with the exporter's own functions (harness.prompt: the task, the running observations, the oldest
dropped behind the same marker when over the token budget), generates greedily, parses the reply by the apr-code
runtime's rules (harness.toolcall), executes the FIRST call (harness.runtime) and appends its observation. The
episode stops when a reply holds no call (the agent's final answer), when the same call comes 3 times in a row, or at
the turn limit. Then the task's test runs in the sandbox: `solved`.

Generation is batched across the tasks still running: every turn, the live tasks' prompts go through the model
together (sorted by length, so a batch pads little). The same loop drives the oracle (the scripted teacher's solution
steps for a task.json, `oracle_calls`), which proves the tasks, their tests and the runtime.
"""
from __future__ import annotations

import json
import keyword
import re
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from harness import FlipError, ccpa, progress_bar
from harness.atomic import check_out_dir, check_out_file, claim_dir, remove_entry
from harness.contracts import system_prompt
from harness.decode import DEFAULT_BATCH_SIZE
from harness.export import ExportOptions
from harness.metrics import fill, interval_text
from harness.options import (MODEL_HELP, adapter_option, add_options, device_option, dialect_option, force_option,
                             option, options_of, path_or_none, runtime_option, sandbox_option)
from harness.prompt import SAMPLE_TOKENS, Budget, Scrubber, Step, count_steps, fit_instruction, render_observation
from harness.apr_runtime import runtime_schemas, schema_errors
from harness.contracts import dialect_input, dialect_renames
from harness.runtime import AprRuntime, Runtime, tool_error
from harness.parity import task_parity
from harness.sandbox import SKIP_DIRS, Limits, Sandbox, check_sandbox, isolation
from harness.tasks import FIRST_TOOL_BY_KIND, AgentTask, load_tasks, touches_fix
from harness.toolcall import CLOSE, OPEN, ToolCall, call_errors, parse_tool_calls, render_tool_call

DEFAULT_MAX_TURNS = 8
DEFAULT_MAX_NEW_TOKENS = 256  # a file_edit or file_write call carries code: 128 tokens cut many of the teacher's
DEFAULT_TEST_TIMEOUT = 300.0
REPEAT_LIMIT = 3  # the same call this many times in a row ends the episode
SHOWN_INVALID_CHARS = 400  # how much of an unparsable reply its error observation repeats
STOP_REASONS = ("answered", "repeated", "max_turns", "context_full")
CHANGING_TOOLS = ("file_edit", "file_write")  # a call of these that its tool accepted changed the workspace


# ---------------------------------------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------------
# The oracle: the scripted teacher's solution steps for a task.json, as apr-code calls
# ---------------------------------------------------------------------------------------------------------------------


def oracle_calls(spec: dict) -> list[tuple[str, dict]]:
    """The teacher's canonical path (fixtures/teacher.py's first variant of each kind) as apr-code calls: look first
    the way the kind calls for (read the named file, grep, run the tests, read the tests), write / edit, run the tests."""
    kind, file, test = spec["kind"], spec["file"], spec["test"]
    first = FIRST_TOOL_BY_KIND[kind]
    calls: list[tuple[str, dict]] = []
    read: set[str] = set()
    if first == "shell":
        calls.append(("shell", {"command": test}))
    elif first == "grep":
        calls.append(("grep", {"pattern": spec["grep"]}))
    elif kind == "create-from-tests":
        calls.append(("file_read", {"path": spec["test_file"]}))
    elif first == "file_read":
        calls.append(("file_read", {"path": file}))
        read.add(file)
    if "content" in spec:
        calls.append(("file_write", {"path": file, "content": spec["content"]}))
        read.add(file)
    for edit in spec.get("edits", []):
        path = edit.get("file", file)
        if path not in read:
            calls.append(("file_read", {"path": path}))
            read.add(path)
        calls.append(("file_edit", {"path": path, "old": edit["old"], "new": edit["new"]}))
    calls.append(("shell", {"command": test}))
    return calls


# ---------------------------------------------------------------------------------------------------------------------
# Episodes
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class AgentOptions:
    """The agent loop's options. Those made with option() are also `flip agent`'s command-line options; the others
    are set by the code that runs an agent."""
    max_turns: int = option(DEFAULT_MAX_TURNS, "turns per task")
    keep: Path | None = option(None, "leave each task's final workspace at KEEP/<id>/ (build outputs removed)",
                               type=path_or_none)
    ccpa_trace: Path | None = option(None, "also write each episode as a CCPA student trace, "
                                           "DIR/<id>.ccpa-trace.jsonl (harness/ccpa.py)", type=path_or_none)
    parity_teacher: Path | None = option(None, "score each episode's CCPA action parity against the teacher's trace "
                                               "of its task, DIR/<id>.ccpa-trace.jsonl (fixtures/holdout/teacher for "
                                               "the held-out tasks)", type=path_or_none)
    max_new_tokens: int = option(DEFAULT_MAX_NEW_TOKENS, "tokens per reply")
    max_length: int = option(SAMPLE_TOKENS, "token budget of prompt + reply, as the trainer's --max-length",
                             old_names=("max_tokens",))
    # The live tasks decode together; finished rows leave the batch.
    batch_size: int = option(DEFAULT_BATCH_SIZE, "prompts per generate() call")
    test_timeout: float = option(DEFAULT_TEST_TIMEOUT, "seconds for a task's test command")
    temperature: float = option(0.0, "0: greedy replies; above 0: sampled at this temperature (pass@k runs)")
    sample_seed: int = option(0, "seed of the sampled replies (with --temperature above 0): same seed, same run")
    dialect: str = dialect_option()
    runtime: str = runtime_option()
    sandbox: str = sandbox_option()
    max_result_chars: int = ExportOptions.max_result_chars  # observations are shortened as the training data's were
    limits: Limits = field(default_factory=Limits)
    sandbox_dir: str | None = None  # where sandboxes are made (default: the system's temporary directory)
    progress: bool = True


@dataclass
class Episode:
    task: AgentTask
    sandbox: Sandbox
    runtime: Runtime
    scrubber: Scrubber
    steps: list[Step] = field(default_factory=list)  # what the next prompt shows
    turns: list[dict] = field(default_factory=list)  # what the trace shows
    calls: list[str] = field(default_factory=list)  # each turn's call, as a key (repeat detection)
    stop_reason: str | None = None
    truncated: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def live(self) -> bool:
        return self.stop_reason is None


def open_episode(task: AgentTask, options: AgentOptions) -> Episode:
    sandbox = Sandbox(task.workspace, options.limits, options.sandbox_dir, options.sandbox)
    # Results name the sandbox by its path, as Claude Code's name the recording directory: the same Scrubber makes
    # them workspace-relative (and redacts secrets) exactly as the exporter does.
    scrubber = Scrubber(sorted({str(sandbox.root), str(sandbox.real_root)}), Counter())
    runtime = AprRuntime(sandbox) if options.runtime == "apr" else Runtime(sandbox)
    return Episode(task, sandbox, runtime, scrubber)


def next_instruction(episode: Episode, budget: Budget) -> str | None:
    """The user turn for the next step: exactly the exporter's fitting, with the reply's room reserved in the budget."""
    pending = Step("", {}, "", 0, "", 0)
    task_tokens = budget.count(f"Task:\n{episode.task.prompt}\n\n")
    return fit_instruction(budget, episode.task.prompt, task_tokens, [*episode.steps, pending], len(episode.steps),
                           episode.truncated)


def _call_key(call: ToolCall) -> str:
    return json.dumps([call.name, call.input], sort_keys=True, ensure_ascii=False)


def act(episode: Episode, output: str, counter, options: AgentOptions) -> None:
    """One reply: stop, or execute its first call and record the observation the next prompt will show."""
    calls = parse_tool_calls(output)
    turn = {"output": output, "call": None, "valid": False, "observation": None, "refused": False}
    episode.turns.append(turn)
    if not calls:
        if OPEN not in output:
            episode.stop_reason = "answered"  # apr-code ends the turn on a reply without a call
            return
        shown = output if len(output) <= SHOWN_INVALID_CHARS else output[:SHOWN_INVALID_CHARS] + " ..."
        observation = (f"Action: {shown}\nResult (error):\n"
                       + tool_error("Could not parse a tool call: the <tool_call> block holds no JSON object with a "
                                    "string \"name\""))
        _record(episode, turn, None, observation, counter)
        return
    call = calls[0]
    turn["call"] = {"name": call.name, "input": call.input}
    key = _call_key(call)
    episode.calls.append(key)
    if episode.calls[-REPEAT_LIMIT:] == [key] * REPEAT_LIMIT:
        episode.stop_reason = "repeated"
        return
    tool_input = call.input if isinstance(call.input, dict) else {}
    if options.runtime == "apr":  # apr-code validates each call itself, with its own texts
        turn["valid"] = call.name in runtime_schemas() and isinstance(call.input, dict) \
            and not schema_errors(tool_input, runtime_schemas()[call.name])
        result = episode.runtime.execute(call.name, tool_input)
    else:
        errors = call_errors(call, options.dialect)
        if errors:
            text = errors[0] if errors[0].startswith("unknown tool") else "InputValidationError: " + "; ".join(errors)
            observation = render_observation(call.name, tool_input, tool_error(text), is_error=True)
            _record(episode, turn, call, observation, counter)
            return
        turn["valid"] = True
        result = episode.runtime.execute(call.name, project_input(call.name, tool_input, options.dialect))
    turn["refused"] = result.refused
    turn["applied"] = call.name in CHANGING_TOOLS and not result.is_error
    shown, _ = episode.scrubber.shortened(result.text, options.max_result_chars)
    observation = render_observation(call.name, episode.scrubber.value(tool_input), shown, result.is_error)
    _record(episode, turn, call, observation, counter)


def project_input(tool: str, tool_input: dict, dialect: str) -> dict:
    """A dialect's call in the field names harness.runtime.Runtime takes (the renames undone; a runtime-dialect memory
    call's content is its value under no key)."""
    back = {new: old for old, new in dialect_renames(dialect).get(tool, {}).items()}
    renamed = {back.get(k, k): v for k, v in tool_input.items()}
    if tool == "memory" and "content" in renamed:
        renamed = {"action": renamed["action"], "value": renamed["content"]}
    return renamed


def _record(episode: Episode, turn: dict, call: ToolCall | None, observation: str, counter) -> None:
    turn["observation"] = observation
    name = call.name if call else ""
    response = render_tool_call(call.name, call.input) if call else turn["output"]
    step = Step(name, call.input if call else {}, response, 0, observation, 0)
    count_steps(counter, [step])
    episode.steps.append(step)


def close_episode(episode: Episode, options: AgentOptions) -> dict:
    """Run the task's test in the sandbox, keep the workspace when asked, and return the task's trace line."""
    started = time.perf_counter()
    test = episode.sandbox.run_test(episode.task.test, options.test_timeout)
    if options.keep is not None:
        keep_workspace(episode.sandbox.root, options.keep / episode.task.id)
    episode.sandbox.close()
    episode.seconds += time.perf_counter() - started
    return trace_line(episode, test, options.dialect)


def keep_workspace(source: Path, target: Path) -> None:
    """The final workspace without build outputs, so anyone can re-run its test; replaces an earlier copy of ours
    (check_out_dir refused, before any work, a KEEP holding a task's folder that no run of flip agent wrote)."""
    if target.exists() or target.is_symlink():
        remove_entry(target)
    shutil.copytree(source, target, symlinks=True, ignore=shutil.ignore_patterns(*SKIP_DIRS, "*.pyc"))


def fix_line_edits(task: AgentTask, calls: list[dict]) -> int | None:
    """How many file_edit calls quote a line the task's own fix changes (harness.tasks.touches_fix), in either
    dialect's field name; None for a task without such lines. It tells a student that cannot find the faulty line
    from one that finds it and cannot write the change."""
    fix = task.fix_lines
    if not fix:
        return None
    olds = [c["input"].get("old", c["input"].get("old_string")) for c in calls
            if c["name"] == "file_edit" and isinstance(c.get("input"), dict)]
    return sum(1 for old in olds if isinstance(old, str) and touches_fix(old, fix))


# Words a search pattern may hold that are the language's, not a name the agent made up (`def name\b`, `const X\b`)
PATTERN_KEYWORDS = frozenset(keyword.kwlist) | {
    "fn", "let", "mut", "pub", "const", "static", "struct", "enum", "impl", "trait", "use", "mod", "crate", "self",
    "Self", "match", "loop", "where", "type", "ref", "move", "unsafe", "extern", "dyn"}


def pattern_names(pattern: str) -> set[str]:
    r"""The identifiers a grep pattern looks for: its words of 3 or more characters once regex escapes (`\b`, `\s`,
    `\w`) are taken out, less the languages' keywords."""
    words = re.findall(r"[A-Za-z_][A-Za-z0-9_]{2,}", re.sub(r"\\.", " ", pattern))
    return {word for word in words if word not in PATTERN_KEYWORDS}


def invented_searches(prompt: str, turns: list[dict]) -> int:
    """How many grep calls look for a name that neither the task's prompt nor an earlier tool result showed: a search
    for something the agent made up (the generated tasks' teacher greps only what it was shown,
    fixtures/teacher.py grep_pattern), which finds nothing or finds it by luck."""
    seen, count = [prompt], 0
    for turn in turns:
        call = turn.get("call")
        if call and call.get("name") == "grep" and isinstance(call.get("input"), dict) \
                and isinstance(call["input"].get("pattern"), str):
            shown = "\n".join(seen)
            count += any(name not in shown for name in pattern_names(call["input"]["pattern"]))
        if turn.get("observation"):
            seen.append(turn["observation"])
    return count


def trace_line(episode: Episode, test, dialect: str | None = None) -> dict:
    from harness.evaluate import grounded

    task = episode.task
    calls = [t["call"] for t in episode.turns if t["call"]]
    first = episode.turns[0]["call"] if episode.turns and episode.turns[0]["call"] else None
    first_call = [ToolCall(first["name"], first["input"])] if first else []
    return {
        "id": task.id,
        "task": task.prompt,
        "kind": task.kind,
        "lang": task.lang,
        "solved": test.exit_code == 0,
        "stop_reason": episode.stop_reason,
        "turns": episode.turns,
        "first_tool": first["name"] if first else None,
        "expected_first_tool": task.first_tool,
        "first_tool_match": (first is not None and first["name"] == task.first_tool) if task.first_tool else None,
        "grounded": grounded(task.prompt, first_call, dialect),
        "calls_by_tool": dict(sorted(Counter(c["name"] for c in calls).items())),
        "invalid_calls": sum(1 for t in episode.turns if t["observation"] is not None and not t["valid"]),
        "refused": sum(1 for t in episode.turns if t["refused"]),
        "edits_applied": sum(1 for t in episode.turns if t.get("applied")),
        "fix_line_edits": fix_line_edits(task, calls),
        "invented_searches": invented_searches(task.prompt, episode.turns),
        "test": {"command": task.test, "exit_code": test.exit_code, "timed_out": test.timed_out,
                 "output_tail": test.output[-1500:]},
        "seconds": round(episode.seconds, 2),
    }


# ---------------------------------------------------------------------------------------------------------------------
# Policies: who writes the replies
# ---------------------------------------------------------------------------------------------------------------------


class ModelPolicy:
    """Replies of a loaded model (greedy, or sampled with options.temperature), the live tasks' prompts batched together."""

    def __init__(self, model, tokenizer, options: AgentOptions):
        from harness.tokens import TokenCounter

        from harness.decode import PromptCache

        self.model, self.tokenizer, self.options = model, tokenizer, options
        self.counter = TokenCounter.of(tokenizer)
        self.turn = 0
        self.prompt_cache = PromptCache()  # each episode's last prompt: its next turn prefills only what is new

    def __call__(self, episodes: list[Episode], instructions: list[str]) -> list[str]:
        from harness.decode import generate, render_prompt

        texts = [render_prompt(self.tokenizer, instruction, self.options.dialect) for instruction in instructions]
        # generate batches prompts of similar length together (harness.decode.length_batches)
        generated = generate(self.model, self.tokenizer, texts, self.options.max_new_tokens, self.options.batch_size,
                             stop_strings=(CLOSE,), temperature=self.options.temperature,
                             seed=self.options.sample_seed + self.turn,
                             keys=[episode.task.id for episode in episodes], prompt_cache=self.prompt_cache)
        self.turn += 1  # a fresh draw each turn, the same draws on every rerun
        return [result["output"] for result in generated]


class OraclePolicy:
    """The scripted teacher's solution steps (oracle_calls, in the dialect's field names), then its summary as the
    final, call-free answer."""

    def __init__(self, counter, dialect: str | None = None):
        self.counter = counter
        self.dialect = dialect

    def __call__(self, episodes: list[Episode], instructions: list[str]) -> list[str]:
        outputs = []
        for episode in episodes:
            plan = oracle_calls(episode.task.spec)
            step = len(episode.turns)
            outputs.append(render_tool_call(plan[step][0], dialect_input(*plan[step], self.dialect)) if step < len(plan)
                           else episode.task.spec.get("summary", "Done."))
        return outputs


# ---------------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------------


def run_agent(tasks: list[AgentTask], policy, options: AgentOptions) -> tuple[list[dict], dict]:
    """Every task as an episode, the live ones advanced together turn by turn: (trace lines, summary)."""
    check_sandbox(options.sandbox)
    started = time.perf_counter()
    teachers = ccpa.teacher_traces(options.parity_teacher, tasks) if options.parity_teacher is not None else None
    budget = Budget(policy.counter, options.max_length - options.max_new_tokens, system_prompt(options.dialect))
    episodes = [open_episode(task, options) for task in tasks]
    records: dict[str, dict] = {}
    timings = Counter()
    try:
        with progress_bar(options.progress, total=len(tasks), desc="flip agent", unit="task", leave=False) as bar:
            for turn in range(options.max_turns):
                live = [e for e in episodes if e.live]
                prompts = []
                for episode in live:
                    instruction = next_instruction(episode, budget)
                    if instruction is None:
                        episode.stop_reason = "context_full"
                    prompts.append(instruction)
                ready = [(e, p) for e, p in zip(live, prompts) if p is not None]
                if not ready:
                    break
                clock = time.perf_counter()
                outputs = policy([e for e, _ in ready], [p for _, p in ready])
                timings["generation_s"] += time.perf_counter() - clock
                clock = time.perf_counter()
                for (episode, _), output in zip(ready, outputs):
                    act(episode, output, policy.counter, options)
                timings["tools_s"] += time.perf_counter() - clock
                bar.set_postfix(turn=turn + 1, live=sum(e.live for e in episodes))
            for episode in episodes:
                if episode.live:
                    episode.stop_reason = "max_turns"
            clock = time.perf_counter()
            for episode in episodes:
                records[episode.task.id] = close_episode(episode, options)
                bar.update(1)
            timings["tests_s"] += time.perf_counter() - clock
    finally:
        for episode in episodes:
            episode.sandbox.close()
    lines = [records[task.id] for task in tasks]
    summary = summarise(lines, time.perf_counter() - started, options.sandbox)
    if teachers is not None:
        summary["parity"] = {**task_parity(lines, teachers), "teacher": str(options.parity_teacher)}
    summary["timings_s"] = {k: round(v, 1) for k, v in sorted(timings.items())}
    return lines, summary


def summarise(lines: list[dict], seconds: float, sandbox: str = "bwrap") -> dict:
    """The counts over all episodes' trace lines, with their rates (harness.metrics, section agent)."""
    turns = [t for line in lines for t in line["turns"]]
    with_call = [t for t in turns if t["observation"] is not None or t["call"] is not None]
    valid = sum(1 for t in turns if t["valid"])
    naming = [line for line in lines if line["grounded"] is not None]
    expecting = [line for line in lines if line["first_tool_match"] is not None]
    solved = sum(line["solved"] for line in lines)
    fixing = [line for line in lines if line.get("fix_line_edits") is not None]
    searching = [line for line in lines if line.get("invented_searches") is not None]
    kinds: dict[str, dict] = {}
    for line in lines:
        row = kinds.setdefault(line["kind"] or "(none)", Counter())
        row["tasks"] += 1
        row["solved"] += line["solved"]
        row["first_tool_match"] += bool(line["first_tool_match"])
        row["grounded"] += bool(line["grounded"])
        row["naming_path"] += line["grounded"] is not None
    languages: dict[str, Counter] = {}
    for line in lines:
        row = languages.setdefault(line.get("lang") or "(none)", Counter())  # traces before `lang` was recorded: none
        row["tasks"] += 1
        row["solved"] += line["solved"]
    return fill({
        "tasks": len(lines),
        "solved": solved,
        "mean_turns": round(len(turns) / len(lines), 2) if lines else None,
        "turns": len(turns),
        "calls": len(with_call),
        "valid_calls": valid,  # of the turns that hold a call (a final answer is none)
        "invalid_calls": sum(line["invalid_calls"] for line in lines),
        "first_call_grounded": sum(1 for line in naming if line["grounded"]),
        "tasks_naming_path": len(naming),
        "first_tool_match": sum(1 for line in expecting if line["first_tool_match"]),
        "tasks_with_expected_first_tool": len(expecting),
        "calls_per_tool": dict(sorted(sum((Counter(line["calls_by_tool"]) for line in lines), Counter()).items())),
        "refused": sum(line["refused"] for line in lines),
        "edits_applied": sum(line["edits_applied"] for line in lines),
        # traces written before the fix's lines were recorded have no count: they are left out of both
        "tasks_editing_fix_line": sum(1 for line in fixing if line["fix_line_edits"]),
        "tasks_with_fix_lines": len(fixing),
        # traces written before searches were checked have no count: they are left out of both
        "tasks_with_invented_search": sum(1 for line in searching if line["invented_searches"]),
        "tasks_checked_for_search": len(searching),
        "stop_reasons": dict(sorted(Counter(line["stop_reason"] for line in lines).items())),
        "per_kind": {kind: dict(row) for kind, row in sorted(kinds.items())},
        "per_lang": {lang: dict(row) for lang, row in sorted(languages.items())},
        "seconds": round(seconds, 1),
        "tasks_per_minute": round(len(lines) / (seconds / 60), 2) if seconds > 0 else None,
        "isolation": isolation().describe(sandbox),
    }, "agent")


def format_summary(summary: dict, label: str = "") -> str:
    head = f"{label}: " if label else ""
    def interval(name: str) -> str:
        return interval_text(summary, "agent", name)

    return (f"{head}solved {interval('solve_rate')}; "
            f"{summary['mean_turns']} turns per task, valid calls {interval('valid_call_rate')}; "
            f"first call grounded {interval('grounded_rate')}, first tool matches "
            f"{interval('first_tool_match_rate')}; "
            + (f"an edit on the fix's line {interval('fix_line_rate')}; " if "tasks_with_fix_lines" in summary else "")
            + (f"a made-up grep {interval('invented_search_rate')}; " if "tasks_checked_for_search" in summary else "")
            + f"refused {summary['refused']}; "
            f"stops {summary['stop_reasons']}; {summary['tasks_per_minute']} tasks/min"
            + (f"; CCPA action parity {summary['parity']['mean']} over {summary['parity']['tasks_scored']} tasks"
               if summary.get("parity") else ""))


def agent(model: str, tasks_dir, out, adapter=None, device: str = "auto", options: AgentOptions | None = None,
          label: str | None = None, force: bool = False) -> dict:
    """Load tasks and model, run every task as an agent episode, write TRACE.jsonl and its summary; return the summary."""
    from harness.decode import load_for_eval
    from harness.evaluate import summary_file, write_trace

    from harness.models import check

    options = options or AgentOptions()
    check_sandbox(options.sandbox)
    tasks = load_tasks(tasks_dir)
    check(model)
    inputs = (tasks_dir, model, adapter)
    out = check_out_file(out, "--out", inputs=inputs)
    check_out_file(summary_file(out), "--out (its .summary.json)", inputs=inputs)
    if options.keep is not None:
        # --keep is an output directory like --out: a task folder there that no run of flip agent wrote is the
        # user's (keeping a workspace would replace it), refused before any work, --force or not
        check_out_dir(options.keep, "agent", [t.id for t in tasks], force, "--keep", inputs)
    if options.ccpa_trace is not None:
        ccpa.check_trace_dir(options.ccpa_trace, tasks, force)
    if options.parity_teacher is not None:
        ccpa.teacher_traces(options.parity_teacher, tasks)  # a wrong directory fails before the model loads
    loaded, tokenizer = load_for_eval(model, adapter, device)
    if options.keep is not None:
        options.keep = claim_dir(options.keep, "agent", [t.id for t in tasks], force, "--keep")
    policy = ModelPolicy(loaded, tokenizer, options)
    started = ccpa.timestamp()
    records, summary = run_agent(tasks, policy, options)
    summary = {"model": str(model), "adapter": str(adapter) if adapter else None, "tasks_dir": str(tasks_dir),
               "dialect": options.dialect, "runtime": options.runtime, "temperature": options.temperature,
               "sample_seed": options.sample_seed if options.temperature > 0 else None, **summary}
    write_trace(records, summary, out)
    if options.ccpa_trace is not None:
        ccpa.write_traces(records, tasks, options.ccpa_trace, str(model), started, policy.counter.count, force)
    if options.progress:
        print(format_summary(summary, label or str(model)), file=sys.stderr)
    return summary


# ---------------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class AgentCliOptions:
    """`flip agent`'s options that are not the agent loop's (AgentOptions): what runs, on which tasks, where."""
    model: str = option(help=MODEL_HELP)
    adapter: str | None = adapter_option()
    tasks: str = option(help="a directory of task folders: <id>/prompt.txt, <id>/task.json (test), <id>/workspace/")
    out: str = option(help="trace JSONL, one line per task (a .summary.json is written beside it)")
    shell_timeout: float = option(Limits.timeout_s, "seconds for one shell call of the model")
    device: str = device_option()
    force: bool = force_option("agent", "--keep or --ccpa-trace")


def add_arguments(parser) -> None:
    add_options(parser, AgentCliOptions)
    add_options(parser, AgentOptions)


def main(args) -> int:
    if args.max_turns < 1 or args.max_new_tokens < 1 or args.batch_size < 1:
        raise FlipError("--max-turns, --max-new-tokens and --batch-size must be at least 1")
    if args.max_length <= args.max_new_tokens:
        raise FlipError("--max-length must be larger than --max-new-tokens (the prompt needs room too)")
    if not (args.test_timeout > 0 and args.shell_timeout > 0):
        raise FlipError("--test-timeout and --shell-timeout must be positive")
    if not (0 <= args.temperature < float("inf")):
        raise FlipError(f"--temperature must be a finite number >= 0, not {args.temperature}")
    cli = options_of(AgentCliOptions, args)
    options = options_of(AgentOptions, args, limits=Limits(timeout_s=cli.shell_timeout), progress=not args.quiet)
    agent(cli.model, cli.tasks, cli.out, adapter=cli.adapter, device=cli.device, options=options, force=cli.force)
    return 0
