"""Greedy tool-call evaluation: does a model act (a valid `<tool_call>`) on held-out tasks, and on the right file?

Each task becomes exactly what the student is trained on for a first step: the contracts' system prompt and the
first-step instruction of harness.prompt (the task only), rendered with the tokenizer's chat template and a generation
prompt. Decoding is greedy and bounded, and stops at the end-of-turn token. The raw output is parsed by the apr-code
runtime's rules (harness.toolcall), so a call counts only when apr-code itself would see it.

Grounding (docs/evaluation.md): the reference's students emitted valid calls on `/tmp/<old fixture>/` paths, so "a valid
call" alone is not the goal. A task is grounded when one of its valid calls names a workspace-relative path that the
task text names; calls naming absolute paths (outside any workspace apr-code runs in) are flagged.

torch / transformers / peft are imported inside the functions that need them, so the path helpers stay cheap.
"""
from __future__ import annotations

import json
import os
import posixpath
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from harness import FlipError, read_jsonl
from harness.atomic import check_out_file, write_text
from harness.options import (MODEL_HELP, adapter_option, add_options, device_option, dialect_option, option,
                             options_of)
from harness.contracts import dialects
from harness.decode import DEFAULT_BATCH_SIZE, generate, load_for_eval, render_prompt
from harness.metrics import fill, interval_text
from harness.prompt import render_instruction
from harness.toolcall import ToolCall, call_errors, parse_tool_calls

DEFAULT_MAX_NEW_TOKENS = 128


# ---------------------------------------------------------------------------------------------------------------------
# Paths: which workspace paths a task names, which paths a call names
# ---------------------------------------------------------------------------------------------------------------------

# File extensions a bare name (no slash) must end in to count as a path: "Cargo.toml", "lib.rs", not "e.g." nor
# "example.com" nor "v1.2". A name with a slash only needs an alphabetic extension or a trailing slash.
FILE_EXTENSIONS = frozenset(
    "rs toml lock py pyi md rst txt json jsonl yaml yml cfg ini conf js mjs cjs ts tsx jsx go c h cc cpp hpp cxx java "
    "kt kts rb sh bash zsh fish ps1 csv tsv html htm css scss sql xml proto gradle swift php pl lua r ex exs erl hs ml "
    "mli scala clj cs fs vue svelte dart zig nim jl tf env gitignore dockerignore editorconfig ipynb in gguf".split()
)
BARE_FILENAMES = frozenset({"Makefile", "Dockerfile", "Justfile", "Rakefile", "Gemfile", "Procfile", "LICENSE",
                            "README", "CHANGELOG", "CODEOWNERS"})
# A URL is removed before paths are looked for: its "host/dir/file.html" is not a workspace path.
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://\S+|\bwww\.\S+")
# Path-shaped tokens: word characters, dots, dashes, slashes, tildes. Quotes, backticks, "=", ":" and spaces end one,
# which also splits `--manifest-path=Cargo.toml` and `tests/test_x.py::test_y` in shell commands.
_TOKEN = re.compile(r"[\w.~/-]+")
_EXTENSION = re.compile(r"\.([A-Za-z][A-Za-z0-9]{0,9})$")
# Paths that are outside the workspace but harmless in a shell command (redirections).
_HARMLESS_ABSOLUTE = frozenset({"/dev/null", "/dev/stdout", "/dev/stderr"})


def normalise_path(path: str) -> str:
    """`./src//lib.rs` -> `src/lib.rs`; `src/` -> `src`; absolute paths keep their leading `/`."""
    path = path.strip().strip("'\"`")
    if not path:
        return ""
    normal = posixpath.normpath(path)
    return "" if normal == "." else normal


def is_absolute(path: str) -> bool:
    """Outside the workspace: apr-code paths are relative to the project directory, so `/x` and `~/x` are not in it."""
    return path.startswith(("/", "~"))


def _looks_like_path(token: str) -> bool:
    token = token.rstrip(".-")  # sentence punctuation: "Fix src/lib.rs."
    if not token or is_absolute(token) or not re.search(r"[A-Za-z]", token):
        return False  # no letter at all: "1.2.3", "3/4"
    if token.startswith("./"):
        return len(token) > 2
    name = token.rstrip("/").rsplit("/", 1)[-1]
    if "/" in token.strip("/"):
        # "src/lib.rs", "src/bin/", "stats/summary.py"; but "and/or" or "read/write" has neither marker
        return token.endswith("/") or bool(_EXTENSION.search(name))
    if name in BARE_FILENAMES:
        return True
    match = _EXTENSION.search(name)
    return bool(match) and match.group(1).lower() in FILE_EXTENSIONS and len(name) > len(match.group(0))


def task_paths(task: str) -> list[str]:
    """The workspace-relative paths a task's text names, normalised, in order of first mention."""
    text = _URL.sub(" ", task)
    found: list[str] = []
    for token in _TOKEN.findall(text):
        if _looks_like_path(token):
            path = normalise_path(token.rstrip(".-"))
            if path and path not in found:
                found.append(path)
    return found


def call_path_fields(call: ToolCall) -> list[str]:
    """The raw path-bearing texts of a call: `path` of file_* / grep / glob, a literal glob pattern, a shell command."""
    tool_input = call.input if isinstance(call.input, dict) else {}
    values: list = []
    if call.name.startswith("file_") or call.name in ("grep", "glob"):
        values.append(tool_input.get("path"))
    if call.name == "glob":
        pattern = tool_input.get("pattern")
        if isinstance(pattern, str) and not any(ch in pattern for ch in "*?[{"):
            values.append(pattern)  # a pattern without wildcards names exactly one path
    if call.name == "shell":
        values.append(tool_input.get("command"))
    return [v for v in values if isinstance(v, str) and v.strip()]


def call_paths(call: ToolCall) -> list[str]:
    """Every normalised path a call names (a shell command is split into path-shaped tokens)."""
    paths: list[str] = []
    for value in call_path_fields(call):
        tokens = _TOKEN.findall(value) if call.name == "shell" else [value]
        for token in tokens:
            path = normalise_path(token)
            if path and path not in paths:
                paths.append(path)
    return paths


def names_path(call: ToolCall, wanted: str) -> bool:
    """Whether the call names the workspace path `wanted` (relative paths only: an absolute recording path that
    happens to end in `/src/lib.rs` is not the workspace's src/lib.rs). A bare file name in the task ("lib.rs")
    is also named by a call on `src/lib.rs`."""
    for path in call_paths(call):
        if is_absolute(path):
            continue
        if path == wanted or ("/" not in wanted and path.endswith("/" + wanted)):
            return True
    return False


def climbs_out(path: str) -> bool:
    """A relative path that leaves the workspace: `..`, `../x`, `src/../../x` (normalised)."""
    return path == ".." or path.startswith("../")


def absolute_paths(call: ToolCall) -> list[str]:
    """The paths outside the workspace that a call names: absolute ones (/dev/null and friends excepted) and ones
    climbing out with `..`."""
    return [p for p in call_paths(call) if (is_absolute(p) and p not in _HARMLESS_ABSOLUTE) or climbs_out(p)]


def grounded(task: str, calls: list[ToolCall], dialect: str | None = None) -> bool | None:
    """True when a call valid in the dialect names a path the task names; None when the task names no path (not
    measurable)."""
    wanted = task_paths(task)
    if not wanted:
        return None
    return any(not call_errors(call, dialect) and names_path(call, path) for call in calls for path in wanted)


# ---------------------------------------------------------------------------------------------------------------------
# One task's trace line, and the summary over all of them
# ---------------------------------------------------------------------------------------------------------------------


def trace_record(task_id: str, task: str, output: str, dialect: str | None = None, **extra) -> dict:
    """Everything measured about one generated output, as one JSON-serialisable trace line; a call is valid in the
    dialect's schemas (the field names the model was prompted with)."""
    calls = parse_tool_calls(output)
    errors = [call_errors(call, dialect) for call in calls]
    abs_paths = sorted({p for call in calls for p in absolute_paths(call)})
    return {
        "id": task_id,
        "task": task,
        "output": output,
        "tool_calls": [{"name": c.name, "input": c.input, "closed": c.closed} for c in calls],
        "valid": [not e for e in errors],
        "errors": errors,
        "tool_use_count": len(calls),
        "task_paths": task_paths(task),
        "grounded": grounded(task, calls, dialect),
        "absolute_paths": abs_paths,
        "absolute_path_flag": bool(abs_paths),
        **extra,
    }


def summarise(records: list[dict]) -> dict:
    """The counts over all trace records, with their rates (harness.metrics, section first_step)."""
    tasks = len(records)
    with_call = sum(1 for r in records if r["tool_use_count"] > 0)
    with_valid = sum(1 for r in records if any(r["valid"]))
    naming = [r for r in records if r["grounded"] is not None]
    grounded_n = sum(1 for r in naming if r["grounded"])
    calls = [c for r in records for c in r["tool_calls"]]
    valid_calls = sum(sum(r["valid"]) for r in records)
    return fill({
        "tasks": tasks,
        "tasks_with_call": with_call,
        "tasks_with_valid_call": with_valid,
        "tasks_naming_path": len(naming),
        "tasks_grounded": grounded_n,
        "total_calls": len(calls),
        "valid_calls": valid_calls,
        "calls_per_tool": dict(sorted(Counter(c["name"] for c in calls).items())),
        "absolute_path_calls": sum(1 for r in records for c in r["tool_calls"]
                                   if absolute_paths(ToolCall(c["name"], c["input"]))),
        "tasks_with_absolute_path": sum(1 for r in records if r["absolute_path_flag"]),
        "unclosed_calls": sum(1 for c in calls if not c["closed"]),
        "hit_token_limit": sum(1 for r in records if r.get("hit_token_limit")),
        # prompts longer than the model's context with their reply: not decoded (harness.decode.fits_context)
        "prompts_over_context": sum(1 for r in records if r.get("over_context")),
        **first_tool_summary(records),
    }, "first_step")


def first_tool_of(record: dict) -> str | None:
    return record["tool_calls"][0]["name"] if record["tool_calls"] else None


def first_tool_summary(records: list[dict]) -> dict:
    """Does the first call use the tool the teacher used first (tasks that record one), overall and per task kind."""
    expecting = [r for r in records if r.get("expected_first_tool")]
    matched = [r for r in expecting if first_tool_of(r) == r["expected_first_tool"]]
    kinds: dict[str, Counter] = {}
    for r in records:
        row = kinds.setdefault(r.get("kind") or "(none)", Counter())
        row["tasks"] += 1
        row["valid"] += any(r["valid"])
        row["grounded"] += bool(r["grounded"])
        row["naming_path"] += r["grounded"] is not None
        row["first_tool_match"] += r in matched
    return {"tasks_with_expected_first_tool": len(expecting), "first_tool_match": len(matched),
            "per_kind": {kind: dict(row) for kind, row in sorted(kinds.items())}}


def format_summary(summary: dict, label: str = "") -> str:
    head = f"{label}: " if label else ""
    return (
        f"{head}{summary['tasks']} tasks: {summary['tasks_with_call']} with a call; "
        f"with a valid call {interval_text(summary, 'first_step', 'valid_rate')}; "
        f"grounded {interval_text(summary, 'first_step', 'grounded_rate')} of the tasks naming a path; "
        f"{summary['total_calls']} calls {summary['calls_per_tool']}; "
        f"absolute-path calls {summary['absolute_path_calls']}"
    )


# ---------------------------------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------------------------------


def load_prompts(path: str | os.PathLike) -> list[dict]:
    """`{"id", "task"}` per line; blank lines skipped; a bad line is a FlipError naming it. A directory of agent task
    folders (harness.agent) gives each task's prompt, with its `kind` and teacher's `first_tool`."""
    path = Path(path)
    if path.is_dir():
        from harness.tasks import load_tasks

        return [{"id": t.id, "task": t.prompt, "kind": t.kind, "first_tool": t.first_tool} for t in load_tasks(path)]
    prompts = []
    for number, obj in read_jsonl(path, "prompts file"):
        if not isinstance(obj.get("task"), str) or not obj["task"].strip():
            raise FlipError(f"{path}:{number}: expected {{\"id\", \"task\"}} with a non-empty task")
        prompts.append({"id": str(obj.get("id", number)), "task": obj["task"]})
    if not prompts:
        raise FlipError(f"{path}: no prompts")
    return prompts


# ---------------------------------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------------------------------


def evaluate_loaded(model, tokenizer, prompts: list[dict], max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                    batch_size: int = DEFAULT_BATCH_SIZE, progress: str | None = None,
                    dialect: str | None = None) -> tuple[list[dict], dict]:
    """Evaluate an already-loaded (model, tokenizer): (trace records, summary). Used by `flip run` from the trainer's
    on_eval callback, so steps-to-flip is measured on the training model without a reload. The dialect's system
    prompt is shown and its schemas decide validity."""
    start = time.perf_counter()
    texts = [render_prompt(tokenizer, render_instruction(p["task"]), dialect) for p in prompts]
    generated = generate(model, tokenizer, texts, max_new_tokens, batch_size, progress=progress)
    records = [trace_record(p["id"], p["task"], g.pop("output"), dialect, kind=p.get("kind"),
                            expected_first_tool=p.get("first_tool"), **g) for p, g in zip(prompts, generated)]
    summary = summarise(records)
    summary["dialect"] = dialect or dialects()[0]
    summary["max_new_tokens"] = max_new_tokens
    summary["seconds"] = round(time.perf_counter() - start, 2)
    return records, summary


def write_trace(records: list[dict], summary: dict, out: str | os.PathLike) -> Path:
    """TRACE.jsonl and TRACE.summary.json beside it, both written atomically; returns the summary path."""
    out = Path(out)
    write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    summary_path = summary_file(out)
    write_text(summary_path, json.dumps(summary, indent=2) + "\n")
    return summary_path


def summary_file(trace: str | os.PathLike) -> Path:
    trace = Path(trace)
    stem = trace.name[: -len(".jsonl")] if trace.name.endswith(".jsonl") else trace.name
    return trace.with_name(stem + ".summary.json")


def evaluate(model: str, prompts: str | os.PathLike | list[dict], out: str | os.PathLike,
             adapter: str | os.PathLike | None = None, device: str = "auto",
             max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, batch_size: int = DEFAULT_BATCH_SIZE,
             label: str | None = None, dialect: str | None = None, progress: bool = True) -> dict:
    """Load a model (+ adapter), evaluate it on the prompts, write the trace and its summary; returns the summary.
    `progress`: the progress bar and the summary line on stderr (--quiet: neither)."""
    prompt_list = load_prompts(prompts) if isinstance(prompts, (str, os.PathLike)) else list(prompts)
    inputs = ((prompts,) if isinstance(prompts, (str, os.PathLike)) else ()) + (model, adapter)
    check_out_file(out, "--out", inputs=inputs)
    check_out_file(summary_file(out), "--out (its .summary.json)", inputs=inputs)
    from harness.models import check

    check(model)
    loaded, tokenizer = load_for_eval(model, adapter, device)
    records, summary = evaluate_loaded(loaded, tokenizer, prompt_list, max_new_tokens, batch_size,
                                       progress=(label or str(model)) if progress else None, dialect=dialect)
    summary = {"model": str(model), "adapter": str(adapter) if adapter else None, **summary}
    write_trace(records, summary, out)
    if summary["prompts_over_context"]:
        print(f"flip eval: {summary['prompts_over_context']} prompt(s) with their {max_new_tokens} reply tokens exceed "
              "the model's context: not decoded, counted as prompts_over_context (over_context in the trace)",
              file=sys.stderr)
    if progress:
        print(format_summary(summary, label or str(model)), file=sys.stderr)
    return summary


# ---------------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class EvalOptions:
    """`flip eval`'s options."""
    model: str = option(help=MODEL_HELP)
    adapter: str | None = adapter_option()
    prompts: str = option(help='JSONL, one {"id", "task"} per line')
    out: str = option(help="trace JSONL (a .summary.json is written beside it)")
    device: str = device_option()
    max_new_tokens: int = option(DEFAULT_MAX_NEW_TOKENS, "tokens generated per task")
    batch_size: int = option(DEFAULT_BATCH_SIZE, "prompts per generate() call")
    dialect: str = dialect_option()

    def __post_init__(self):
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise FlipError("--max-new-tokens and --batch-size must be >= 1")


def add_arguments(parser) -> None:
    add_options(parser, EvalOptions)


def main(args) -> int:
    options = options_of(EvalOptions, args)
    evaluate(options.model, options.prompts, options.out, adapter=options.adapter, device=options.device,
             max_new_tokens=options.max_new_tokens, batch_size=options.batch_size, dialect=options.dialect,
             progress=not args.quiet)
    return 0
