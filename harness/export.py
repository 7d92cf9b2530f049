"""`flip export`: Claude Code transcripts -> apr-code `<tool_call>` SFT samples (docs/apr-code.md §3-4).

Per file (files sorted by their path relative to the export root, so discovery order never matters):
read trajectories (harness.transcripts) -> make recording paths workspace-relative and redact secrets -> remap each
teacher call through contracts/tool_map.json -> one candidate sample per remappable call, fitted to the token budget
-> the modes pick from the candidates (curated: each trajectory's first; full: all; balanced: a seeded reservoir of
N per tool) -> duplicates (same instruction and response) are dropped -> JSONL written atomically. With --target
messages, mode `conversations` writes each trajectory whole instead, as one chat (system, the task, each call as an
assistant `tool_calls` turn and its result as a `tool` turn, the final answer), for trainers that train on whole
conversations; it is not fitted to --max-length (a trainer's max_length cuts it).

With --jobs N the per-file work (everything up to the candidates and the file's counts) runs in N worker processes;
the main process takes each file's result in the sorted file order and alone picks, deduplicates and writes, so the
outputs are byte-identical to --jobs 1 (which runs the same per-file code in the main process, starting none).

Decisions:
* Unmappable calls (TodoWrite, Task, MultiEdit, ...) are not rendered in the observations: the student cannot make
  them, and an `Action:` it cannot call would teach a tool it does not have. They are counted by name.
* A mapped call whose remapped input does not validate against the apr-code schema (e.g. an Edit without
  old_string) is counted as unmappable under `<Name>:invalid_input`, so `raw_tool_use == remappable +
  sum(unmappable)` stays exact and every response validates.
* A call its tool rejected (is_error on anything but a shell command) is an observation, never a response, counted
  under `failed`; a failing shell command (a test run) stays a target. docs/apr-code.md §3 says why.
* Only one file's trajectories and candidates are held in memory per worker (and at most FILES_IN_FLIGHT results
  per worker wait for the main process); full/curated samples are written file by file; balanced keeps a
  fixed-size reservoir per tool; duplicates are found by a 16-byte digest per sample.

This module imports neither torch nor transformers. The prompt format itself (rendering, redaction, token budgeting)
lives in harness.prompt, shared with the agent and the evaluation.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import sys
import threading
from collections import Counter, deque
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path

from harness import FlipError
from harness.apr_runtime import rewrite_target, runtime_observation, target_refusal
from harness.atomic import MANIFEST, atomic_path, claim_dir, remove_stale, write_text
from harness.contracts import dialect_input, runtime_observations, system_prompt, tool_map, tool_schemas
from harness.models import SMOLLM2
from harness.options import add_options, dialect_option, force_option, option, options_of
from harness.prompt import (SAMPLE_TOKENS, Budget, Scrubber, Step, count_observations, count_steps, fit_instruction,
                            render_observation, render_result)
from harness.toolcall import CLOSE, OPEN, ToolCall, call_errors, render_tool_call
from harness.transcripts import LineStats, Trajectory, read_file, sibling_prompt

MODES = ("curated", "balanced", "full")  # of single-step samples
CONVERSATIONS = "conversations"  # whole trajectories, one chat each: a messages mode only
TARGETS = ("apr-code", "messages")
EVERY_MODE = MODES + (CONVERSATIONS,)
LATER_STEP_MODES = {"full", "balanced"}  # the single-step modes that take steps after the first, and final answers
TARGET_MODES = {"apr-code": MODES, "messages": EVERY_MODE}  # what --mode all writes
TRANSCRIPT_SUFFIXES = (".jsonl", ".ndjson", ".json")
STATS_FILE = "export_stats.json"
FINAL = "final"  # the `tool` of a final-answer sample (its bucket in per_tool and in balanced mode)
MAX_FINAL_CHARS = 600
# What `flip export` writes into --out; a directory holding anything else is refused unless --force.
OUTPUT_NAMES = ("apr_code_sft_*.jsonl", "messages_*.jsonl", STATS_FILE)
DEFAULT_JOBS = os.cpu_count() or 1
# A worker process is started for every this many bytes of transcripts (at most --jobs): below it, starting one
# costs more than the share of the work it would take.
MIN_BYTES_PER_WORKER = 2 * 1024 * 1024
# Files submitted ahead per worker: enough to keep every worker busy, few enough that waiting results stay small.
FILES_IN_FLIGHT = 2


# --------------------------------------------------------------------------------------------------- remap

def remap_call(name: str, tool_input) -> tuple[str, dict] | None:
    """(apr-code tool, input) by contracts/tool_map.json; None when the tool has no mapping."""
    mapping = tool_map().get(name)
    if mapping is None or not isinstance(tool_input, dict):
        return None
    remapped = {}
    for source_key, target_key in mapping.fields.items():
        if source_key in tool_input and tool_input[source_key] is not None:
            remapped[target_key] = tool_input[source_key]
    return mapping.tool, remapped


@dataclass
class Sample:
    instruction: str
    response: str
    system: str
    metadata: dict

    def key(self) -> bytes:
        return hashlib.blake2b(f"{self.instruction}\0{self.response}".encode("utf-8", "replace"),
                               digest_size=16).digest()

    def tools(self) -> list[str]:
        return [self.metadata["tool"]]


@dataclass
class Conversation:
    """One trajectory as a whole chat (mode conversations)."""
    messages: list[dict]
    metadata: dict

    def key(self) -> bytes:
        text = json.dumps(self.messages, ensure_ascii=False, sort_keys=True)
        return hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=16).digest()

    def tools(self) -> list[str]:
        calls = [m["tool_calls"][0]["function"]["name"] for m in self.messages if m.get("tool_calls")]
        return calls + [FINAL] * self.metadata["final"]


# ----------------------------------------------------------------------------------------------- the export

@dataclass
class ExportOptions:
    """export()'s options. Those made with option() are also `flip export`'s command-line options."""
    mode: str = option("all", "curated: first call per trajectory; balanced: seeded N per tool; full: every call; "
                              "conversations (--target messages): each trajectory as one chat; all: every mode of the "
                              "target", choices=EVERY_MODE + ("all",))
    target: str = option("apr-code", "apr-code: apr_code_sft_<mode>.jsonl; messages: messages_<mode>.jsonl (HF chat)",
                         choices=TARGETS)
    max_length: int = option(SAMPLE_TOKENS, "token budget of the whole sample, in the tokenizer's turn format",
                             old_names=("max_tokens",))
    tokenizer: str | None = option(None, f"tokenizer.json, HF dir, .gguf or model reference; the default is {SMOLLM2}")
    per_tool: int = option(40, "balanced mode: samples per apr-code tool")
    seed: int = option(42, "seed of balanced mode's per-tool sampling")
    max_result_chars: int = option(2000, "a tool result longer than this keeps its head and tail around a marker")
    jobs: int = option(DEFAULT_JOBS, "worker processes reading files in parallel (1: none, all in this process); "
                                     "outputs never depend on it")
    dialect: str = dialect_option()
    force: bool = force_option("export")
    progress: bool = True


@dataclass
class Stats:
    files: int = 0
    files_skipped: dict = field(default_factory=dict)  # source -> why
    formats: Counter = field(default_factory=Counter)
    trajectories: int = 0
    sidechain_trajectories: int = 0
    raw_tool_use: int = 0
    remappable: int = 0
    unmappable: Counter = field(default_factory=Counter)
    calls_without_result: int = 0
    refused: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)
    runtime_refused: Counter = field(default_factory=Counter)  # reason -> calls apr-code's runtime would not run
    runtime_rewritten: Counter = field(default_factory=Counter)  # reason -> calls rewritten exactly to run there
    # A dialect that shows the runtime's result texts: tool -> results translated exactly / kept in the teacher's text
    runtime_observations: Counter = field(default_factory=Counter)
    teacher_observations: Counter = field(default_factory=Counter)
    candidates: int = 0
    final_candidates: int = 0
    finals_dropped: Counter = field(default_factory=Counter)
    samples: dict = field(default_factory=dict)
    per_tool: dict = field(default_factory=dict)
    duplicates: dict = field(default_factory=dict)
    redactions: Counter = field(default_factory=Counter)
    without_task: int = 0
    truncated: Counter = field(default_factory=Counter)
    lines: LineStats = field(default_factory=LineStats)

    def add(self, other: "Stats") -> None:
        """Fold one file's counts into the export's. Every count is a sum, so the merged counts never depend on which
        worker read which file; the writers' own counts (samples, per_tool, duplicates) are empty in a file's."""
        for name in (f.name for f in fields(self)):
            mine, theirs = getattr(self, name), getattr(other, name)
            if isinstance(mine, int):
                setattr(self, name, mine + theirs)
            elif isinstance(mine, LineStats):
                mine.add(theirs)
            else:
                mine.update(theirs)  # a Counter adds; files_skipped names each file once

    def as_json(self, options: ExportOptions) -> dict:
        lines = self.lines
        return {
            "files": self.files,
            "files_skipped": dict(sorted(self.files_skipped.items())),
            "formats": dict(sorted(self.formats.items())),
            "trajectories": self.trajectories,
            "sidechain_trajectories": self.sidechain_trajectories,
            "raw_tool_use": self.raw_tool_use,
            "remappable": self.remappable,
            "unmappable": dict(sorted(self.unmappable.items())),
            "calls_without_result": self.calls_without_result,
            "refused": dict(sorted(self.refused.items())),
            "failed": dict(sorted(self.failed.items())),
            "runtime_refused": dict(sorted(self.runtime_refused.items())),
            "runtime_rewritten": dict(sorted(self.runtime_rewritten.items())),
            "runtime_observations": dict(sorted(self.runtime_observations.items())),
            "teacher_observations": dict(sorted(self.teacher_observations.items())),
            "orphan_results": lines.orphan_results,
            "candidates": self.candidates,
            "final_candidates": self.final_candidates,
            "finals_dropped": dict(sorted(self.finals_dropped.items())),
            "samples": {m: self.samples.get(m, 0) for m in EVERY_MODE if m in self.samples},
            "per_tool": {m: dict(sorted(v.items())) for m, v in self.per_tool.items()},
            "duplicates": {m: self.duplicates.get(m, 0) for m in EVERY_MODE if m in self.duplicates},
            "redactions": dict(sorted(self.redactions.items())),
            "without_task": self.without_task,
            "truncated": {k: self.truncated.get(k, 0) for k in (
                "results_shortened", "samples_with_observations_dropped", "observations_dropped",
                "tasks_shortened", "samples_dropped_too_long")},
            "lines": {
                "read": lines.read,
                "used": lines.used,
                "skipped": dict(sorted(lines.skipped.items())),
                "unknown_types": dict(sorted(lines.unknown_types.items())),
                "repaired_surrogates": lines.repaired_surrogates,
                "repaired_bytes": lines.repaired_bytes,
            },
            # "max_tokens": the option's old name, kept as this file's key (a format other tools and old runs read)
            "options": {"mode": options.mode, "target": options.target, "max_tokens": options.max_length,
                        "tokenizer": options.tokenizer or SMOLLM2, "per_tool": options.per_tool,
                        "seed": options.seed, "max_result_chars": options.max_result_chars, "dialect": options.dialect},
        }


def discover(paths) -> list[tuple[str, Path]]:
    """(source, path) for every transcript candidate, sorted by source: the path relative to the export root (the
    common parent of the given paths), POSIX-style. Symbolic links to files are followed wherever they point (the
    source is the link's own path); symbolic links to directories are not walked (a link loop would never end).
    Outputs are never inputs: files in a directory apr-flip wrote are skipped (--out itself never overlaps an input:
    claim_dir refuses that)."""
    found: dict[Path, Path] = {}  # the real file -> the path it was found under
    anchors = []

    def walk_error(err: OSError):
        raise FlipError(f"cannot walk {err.filename}: {err.strerror or err}")

    for given in paths:
        path = Path(os.path.abspath(given))
        if not path.exists():
            raise FlipError(f"{given}: no such file or directory")
        if path.is_dir():
            anchors.append(path)
            for directory, dirnames, filenames in os.walk(path, onerror=walk_error):
                dirnames.sort()
                for name in sorted(filenames):
                    child = Path(directory) / name
                    if child.suffix in TRANSCRIPT_SUFFIXES and child.is_file() and not _is_output(child):
                        found.setdefault(child.resolve(), child)
        elif path.is_file():
            if not os.access(path, os.R_OK):
                raise FlipError(f"{given}: not readable")
            anchors.append(path.parent)
            found.setdefault(path.resolve(), path)
        else:
            raise FlipError(f"{given}: not a regular file or directory")
    if not anchors:
        return []
    root = Path(os.path.commonpath([str(a) for a in anchors]))
    return sorted(((printable_name(walked.relative_to(root).as_posix()), real) for real, walked in found.items()),
                  key=lambda item: item[0])


def printable_name(name: str) -> str:
    """A file name as text every output can hold: a name that is not UTF-8 (its bytes came back as lone surrogates)
    shows those bytes as \\xNN escapes, so one such file neither loses the export nor writes invalid UTF-8."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _is_output(path: Path) -> bool:
    """A file in a directory apr-flip wrote (an export's datasets, a run's traces): an output, never a transcript."""
    return (path.parent / MANIFEST).is_file()


class Writers:
    """One output file per selected mode, written as samples come (balanced at the end)."""

    def __init__(self, out: Path, options: ExportOptions, modes: tuple[str, ...], stats: Stats):
        self.options = options
        self.modes = modes
        self.stats = stats
        self.seen = {m: set() for m in modes}
        self.reservoirs: dict[str, list] = {}
        self.offered: Counter = Counter()
        self._contexts = {}
        self.handles = {}
        self.prefix = "apr_code_sft" if options.target == "apr-code" else "messages"
        for mode in modes:
            stats.samples[mode] = 0
            stats.per_tool[mode] = Counter()
            stats.duplicates[mode] = 0
            context = atomic_path(out / self.file_name(mode))
            self._contexts[mode] = context
            self.handles[mode] = open(context.__enter__(), "w", encoding="utf-8", newline="\n")

    def file_name(self, mode: str) -> str:
        return f"{self.prefix}_{mode}.jsonl"

    def files(self) -> list[str]:
        return [self.file_name(mode) for mode in self.modes]

    def offer(self, sample: Sample, first_in_trajectory: bool) -> None:
        key = None
        for mode in self.modes:
            if mode == "curated" and not first_in_trajectory:
                continue
            if (mode == CONVERSATIONS) != isinstance(sample, Conversation):
                continue  # a conversation goes to its own file only, and a single-step sample never there
            key = key or sample.key()
            if key in self.seen[mode]:
                self.stats.duplicates[mode] += 1
                continue
            self.seen[mode].add(key)
            if mode == "balanced":
                self._reservoir(sample)
            else:
                self._write(mode, sample)

    def _reservoir(self, sample: Sample) -> None:
        """Seeded reservoir sampling per tool: a uniform sample of per_tool, in one pass, in fixed memory."""
        tool = sample.metadata["tool"]
        self.offered[tool] += 1
        reservoir = self.reservoirs.setdefault(tool, [])
        if len(reservoir) < self.options.per_tool:
            reservoir.append(sample)
            return
        rng = _tool_rng(self.options.seed, tool, self.offered[tool])
        slot = rng.randrange(self.offered[tool])
        if slot < self.options.per_tool:
            reservoir[slot] = sample

    def _write(self, mode: str, sample: Sample) -> None:
        self.handles[mode].write(sample_line(sample, self.options.target, self.options.dialect))
        self.stats.samples[mode] += 1
        self.stats.per_tool[mode].update(sample.tools())

    def close(self, ok: bool) -> None:
        if ok and "balanced" in self.modes:
            chosen = [s for tool in sorted(self.reservoirs) for s in self.reservoirs[tool]]
            chosen.sort(key=lambda s: (s.metadata["source"], s.metadata["trajectory"], s.metadata["step"]))
            for sample in chosen:
                self._write("balanced", sample)
        for mode in self.modes:
            self.handles[mode].close()
            context = self._contexts[mode]
            if ok:
                context.__exit__(None, None, None)
            else:
                context.__exit__(RuntimeError, RuntimeError("export failed"), None)


class Candidates:
    """One file's candidate samples, in the order made, for Writers.offer in the main process: per-file work never
    picks, deduplicates or writes, so its results can be made in any process and merged in file order."""

    def __init__(self, modes: tuple[str, ...]):
        self.modes = modes
        self.offers: list[tuple[Sample, bool]] = []

    def offer(self, sample: Sample, first_in_trajectory: bool) -> None:
        self.offers.append((sample, first_in_trajectory))


def _tool_rng(seed: int, tool: str, n: int) -> random.Random:
    # One generator per (seed, tool, position): the choice for one tool never depends on another tool's samples.
    return random.Random(f"{seed}:{tool}:{n}")


def sample_line(sample: Sample | Conversation, target: str, dialect: str | None = None) -> str:
    if isinstance(sample, Conversation):
        obj = {"messages": sample.messages, "tools": list(tools_list(dialect)), "metadata": sample.metadata}
    elif target == "apr-code":
        obj = {"instruction": sample.instruction, "response": sample.response, "system": sample.system,
               "metadata": sample.metadata}
    else:
        obj = messages_record(sample, dialect)
    return json.dumps(obj, ensure_ascii=False) + "\n"


@lru_cache(maxsize=None)
def tools_list(dialect: str | None = None) -> tuple:
    """The apr-code tools as chat-template `tools` entries: name, description and parameters all from the tool's JSON
    Schema in the dialect (contracts/schemas, renamed as contracts/dialects.yaml says; its `description` says what
    the tool does; the rest is its parameters), so the tools a chat lists are the ones its calls use."""
    entries = []
    for name, schema in tool_schemas(dialect).items():
        parameters = {k: v for k, v in schema.items() if k not in ("$schema", "title", "description")}
        entries.append({"type": "function", "function": {"name": name, "description": schema["description"],
                                                         "parameters": parameters}})
    return tuple(entries)


def messages_record(sample: Sample, dialect: str | None = None) -> dict:
    """HF chat format: system/user/assistant messages, the assistant's call as `tool_calls` with object arguments (a
    final answer is the assistant's plain content)."""
    if sample.metadata.get("final"):
        assistant = {"role": "assistant", "content": sample.response}
    else:
        call = json.loads(sample.response[len(OPEN) + 1: -len(CLOSE) - 1])
        assistant = {"role": "assistant", "content": "",
                     "tool_calls": [{"type": "function", "function": {"name": call["name"],
                                                                      "arguments": call["input"]}}]}
    return {
        "messages": [
            {"role": "system", "content": sample.system},
            {"role": "user", "content": sample.instruction},
            assistant,
        ],
        "tools": list(tools_list(dialect)),
        "metadata": sample.metadata,
    }


def trajectory_steps(trajectory: Trajectory, scrubber: Scrubber, budget: Budget, options: ExportOptions,
                     stats: Stats, later_samples: bool = True) -> list[Step]:
    """The trajectory's remappable calls as steps, token-counted. A step's observation is counted only when a later
    sample can read it: every step's but the last with `later_samples`, none without (first actions only)."""
    steps = []
    for call in trajectory.calls:
        stats.raw_tool_use += 1
        remapped = remap_call(call.name, call.input)
        if remapped is None:
            stats.unmappable[call.name or "(unnamed)"] += 1
            continue
        tool, tool_input = remapped
        tool_input = scrubber.value(tool_input)
        if call_errors(ToolCall(tool, tool_input)):
            stats.unmappable[f"{call.name}:invalid_input"] += 1
            continue
        stats.remappable += 1
        if call.refused:
            stats.refused[call.name] += 1  # it never ran: neither a target nor an observation
            continue
        rewrite = rewrite_target(tool, tool_input)  # exact: the same action, in a form apr-code's runtime runs
        if rewrite is not None:
            tool_input = rewrite.input
            stats.runtime_rewritten[rewrite.reason] += 1
        if call.result is None:
            stats.calls_without_result += 1
            result = None
        else:
            result, cut = scrubber.shortened(observed_result(tool, tool_input, call, options.dialect, stats),
                                             options.max_result_chars)
            if cut:
                stats.truncated["results_shortened"] += 1
        # A call its tool rejected (a file that does not exist, an old string not in the file, an unread file) did
        # not do what it asked: the student should see the error and what the teacher did next, never learn the call.
        # A shell command's failure is its outcome (a failing test run is a deliberate step): it stays a target.
        failed = call.is_error and tool != "shell"
        if failed:
            stats.failed[call.name] += 1
        # A call apr-code's runtime would refuse or run differently (harness.apr_runtime) is never a target either;
        # the teacher did run it, so it stays an observation, as a failed call does.
        unrunnable = None if failed else target_refusal(tool, tool_input, call.result, options.dialect)
        if unrunnable is not None:
            stats.runtime_refused[unrunnable] += 1
        tool_input = dialect_input(tool, tool_input, options.dialect)
        response = render_tool_call(tool, tool_input)
        observation = render_observation(tool, tool_input, result, call.is_error)
        steps.append(Step(tool, tool_input, response, 0, observation, 0, render_result(result, call.is_error),
                          target=not failed and unrunnable is None))
    targets = target_steps(steps)
    count_steps(budget.counter, steps, (targets[-1] if later_samples else targets[0]) if targets else 0)
    return steps


def observed_result(tool: str, tool_input: dict, call, dialect: str, stats: Stats) -> str:
    """The call's result as the dialect shows it: the teacher's text, or (a dialect of the runtime's texts) what
    apr-code's runtime would have answered where that translation is exact, counted by tool either way."""
    if not runtime_observations(dialect):
        return call.result
    translated = runtime_observation(tool, tool_input, call.result, call.is_error, call.input)
    if translated is None:
        stats.teacher_observations[tool] += 1
        return call.result
    stats.runtime_observations[tool] += 1
    return translated


def target_steps(steps: list[Step]) -> list[int]:
    """The indexes of the steps that are trained as responses (the calls their tools did not reject)."""
    return [index for index, step in enumerate(steps) if step.target]


def export_trajectory(trajectory: Trajectory, trajectory_id: str, source: str, scrubber: Scrubber, budget: Budget,
                      options: ExportOptions, stats: Stats, writers: Candidates) -> None:
    wanted = LATER_STEP_MODES & set(writers.modes)
    samples = set(writers.modes) != {CONVERSATIONS}
    steps = trajectory_steps(trajectory, scrubber, budget, options, stats, later_samples=bool(wanted))
    if not steps:
        return
    task = scrubber.text(trajectory.task) if trajectory.task else None
    if not task:
        stats.without_task += 1
    task_tokens = budget.count(f"Task:\n{task}\n\n") if task else 0
    targets = target_steps(steps)
    for index in (targets if wanted else targets[:1]) if samples else ():  # curated: each trajectory's first call
        step = steps[index]
        stats.candidates += 1
        instruction = fit_instruction(budget, task, task_tokens, steps, index, stats.truncated)
        if instruction is None:
            continue
        sample = Sample(instruction, step.response, budget.system,
                        {"trajectory": trajectory_id, "step": index, "tool": step.tool, "source": source})
        writers.offer(sample, first_in_trajectory=index == targets[0])
    answer = None
    if (wanted or CONVERSATIONS in writers.modes) and trajectory.final is not None:
        answer = export_final(trajectory.final, steps, task, task_tokens, trajectory_id, source, scrubber, budget,
                              stats, writers)
    if CONVERSATIONS in writers.modes and task:  # a chat opens with the user's task: without one there is none
        chat = conversation(budget.system, task, steps, answer, trajectory_id, source)
        writers.offer(chat, first_in_trajectory=False)


def conversation(system: str, task: str, steps: list[Step], answer: str | None, trajectory_id: str,
                 source: str) -> Conversation:
    """The trajectory as one chat: each call an assistant turn with `tool_calls` (object arguments) and its result a
    `tool` turn answering it by id, then the final answer when there is one."""
    messages = [{"role": "system", "content": system}, {"role": "user", "content": task}]
    for index, step in enumerate(steps):
        call_id = f"call_{index}"
        messages.append({"role": "assistant", "content": "", "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": step.tool, "arguments": step.input}}]})
        messages.append({"role": "tool", "tool_call_id": call_id, "name": step.tool, "content": step.result})
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return Conversation(messages, {"trajectory": trajectory_id, "source": source, "steps": len(steps),
                                   "final": answer is not None})


def final_answer(text: str, limit: int = MAX_FINAL_CHARS) -> str:
    """A short final answer from an agent's closing text: its first paragraph that is not a Markdown heading (with the
    next one when it ends in ":" and both fit, as in "The file contains one line:" and the line), at most `limit`
    characters, cut after a sentence (else a word). A short summary is what teaches a student to stop; a cut marker
    inside a response would teach it to write one."""
    paragraphs = [p.strip() for p in text.strip().split("\n\n") if p.strip()]
    body = [p for p in paragraphs if not all(line.lstrip().startswith("#") for line in p.splitlines())]
    if not body:
        return ""
    answer = body[0]
    if answer.endswith(":") and len(body) > 1 and len(answer) + 2 + len(body[1]) <= limit:
        answer = f"{answer}\n\n{body[1]}"
    if len(answer) <= limit:
        return answer
    head = answer[:limit]
    sentence = max(head.rfind(". "), head.rfind(".\n"))
    return head[:sentence + 1] if sentence > limit // 3 else head.rsplit(None, 1)[0]


def export_final(final: str, steps: list[Step], task: str | None, task_tokens: int, trajectory_id: str, source: str,
                 scrubber: Scrubber, budget: Budget, stats: Stats, writers: Candidates) -> str | None:
    """The trajectory's closing text as one more sample: every observation so far, then a response with no call at
    all, so the student learns that a reply without <tool_call> ends the task. Never in curated mode (first actions).
    Returns the final answer (a conversation's last turn), None when the closing text gives none."""
    stats.final_candidates += 1
    response = final_answer(scrubber.text(final))
    if not response:
        stats.finals_dropped["only_headings"] += 1
        return None
    if OPEN in response or CLOSE in response:
        stats.finals_dropped["call_tag_in_text"] += 1  # a final answer must hold no call tag, not even a half one
        return None
    if not LATER_STEP_MODES & set(writers.modes):
        return response  # only a conversation ends with it
    stats.candidates += 1
    step = Step(FINAL, {}, response, budget.count(response + "\n"), "", 0)
    count_observations(budget.counter, steps)  # the final answer reads every observation, the last one included
    instruction = fit_instruction(budget, task, task_tokens, [*steps, step], len(steps), stats.truncated)
    if instruction is not None:  # else counted in truncated.samples_dropped_too_long, as a call's sample is
        metadata = {"trajectory": trajectory_id, "step": len(steps), "tool": FINAL, "source": source, "final": True}
        writers.offer(Sample(instruction, response, budget.system, metadata), first_in_trajectory=False)
    return response


def export(paths, out: str | os.PathLike, options: ExportOptions | None = None, counter=None) -> dict:
    """Run the export; returns the stats written to OUT/export_stats.json."""
    options = options or ExportOptions()
    if options.target not in TARGETS:
        raise FlipError(f"unknown target {options.target!r}")
    if options.mode == CONVERSATIONS and options.target != "messages":
        raise FlipError("--mode conversations writes chats: it needs --target messages")
    if options.mode not in TARGET_MODES[options.target] + ("all",):
        raise FlipError(f"unknown mode {options.mode!r}")
    if options.max_length < 1 or options.per_tool < 1 or options.max_result_chars < 64:
        raise FlipError("--max-length and --per-tool must be positive, --max-result-chars at least 64")
    if options.jobs < 1:
        raise FlipError(f"--jobs must be at least 1, not {options.jobs}")
    files = discover(paths)
    if counter is None:  # an input like the transcripts: a bad --tokenizer leaves no --out behind
        from harness.tokens import counter as make_counter

        counter = make_counter(options.tokenizer)
    out = claim_dir(out, "export", OUTPUT_NAMES, options.force, inputs=(*paths, options.tokenizer))
    modes = TARGET_MODES[options.target] if options.mode == "all" else (options.mode,)
    stats = Stats()
    work = FileWork(Budget(counter, options.max_length, system_prompt(options.dialect)), options, modes)
    writers = Writers(out, options, modes, stats)
    ok = False
    try:
        # the workers start before the progress bar does: its monitor thread would make forking them unsafe
        with file_results(files, work, worker_count(files, options.jobs)) as results, \
                _progress(files, options.progress) as bar:
            for (source, path), (file_stats, candidates) in zip(files, results):
                stats.add(file_stats)
                for sample, first_in_trajectory in candidates:
                    writers.offer(sample, first_in_trajectory)
                bar.update(_size(path))
        ok = True
    finally:
        writers.close(ok)
    result = stats.as_json(options)
    write_text(out / STATS_FILE, json.dumps(result, ensure_ascii=False, indent=2) + "\n")
    remove_stale(out, "export", OUTPUT_NAMES, keep={STATS_FILE, *writers.files()})
    return result


@dataclass
class FileWork:
    """The per-file half of the export, the same in this process (--jobs 1) and in a worker (pickled once to it)."""
    budget: Budget
    options: ExportOptions
    modes: tuple[str, ...]

    def __call__(self, source: str, path: Path) -> tuple[Stats, list[tuple[Sample, bool]]]:
        """The file's own counts and its candidate samples in order."""
        stats, candidates = Stats(), Candidates(self.modes)
        _export_file(source, path, self.budget, self.options, stats, candidates)
        return stats, candidates.offers


def worker_count(files, jobs: int) -> int:
    """Worker processes to start: at most --jobs, one per file at most, one per MIN_BYTES_PER_WORKER of transcripts
    at most; 1 means none (the work runs in this process)."""
    if jobs <= 1 or len(files) <= 1:
        return 1
    return max(1, min(jobs, len(files), sum(_size(path) for _, path in files) // MIN_BYTES_PER_WORKER))


@contextmanager
def file_results(files, work: FileWork, workers: int):
    """An iterator over each file's FileWork result, in the order of `files` whatever finishes first. One worker:
    the work runs here, lazily, and no process is started. More: a pool of `workers` processes, FILES_IN_FLIGHT
    files submitted ahead per worker (submitted now, so the workers start before the caller makes threads)."""
    if workers <= 1:
        yield (work(source, path) for source, path in files)
        return
    from concurrent.futures import ProcessPoolExecutor

    # Ctrl-C / SIGTERM are held while the workers start: `flip`'s handler raises KeyboardInterrupt, and raised inside
    # fork's after-fork hooks (logging's lock release) Python only prints "Exception ignored" and the export went on.
    # A signal that came meanwhile is delivered when they are released, in ordinary code. Workers release them.
    held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        pool = ProcessPoolExecutor(workers, mp_context=_start_method(), initializer=_start_worker, initargs=(work,))
        results = _in_order(pool, files, workers * FILES_IN_FLIGHT)  # submits the first files: the workers start
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
    try:
        yield results
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # after a failure: no file after it is read


def _in_order(pool, files, window: int):
    waiting = iter(files)
    pending = deque(pool.submit(_work_in_worker, source, path) for source, path in _take(waiting, window))

    def results():
        while pending:
            future = pending.popleft()
            pending.extend(pool.submit(_work_in_worker, source, path) for source, path in _take(waiting, 1))
            yield future.result()  # a worker's FlipError is raised here, as it would be at --jobs 1

    return results()


def _take(iterator, n: int) -> list:
    return [item for _, item in zip(range(n), iterator)]


def _start_method():
    """fork where it is safe, else forkserver (spawn where there is none). A forked worker inherits the loaded
    modules and tokenizer and starts in milliseconds; but fork is unsafe in a process that runs other threads or
    native thread pools (torch's, e.g. when `flip tune` exports after training), and there a worker that starts from
    a clean process costs a fraction of a second more (the per-file work, tokenizer included, is pickled to it)."""
    import multiprocessing

    if sys.platform.startswith("linux") and threading.active_count() == 1 and "torch" not in sys.modules:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("forkserver" if "forkserver" in multiprocessing.get_all_start_methods()
                                       else "spawn")


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
_WORK: FileWork | None = None  # in a worker process: the export's per-file work


def _start_worker(work: FileWork) -> None:
    global _WORK
    _WORK = work
    _die_with_parent()
    # Ctrl-C reaches the whole process group: the main process alone answers it (it stops the pool and removes its
    # temporary files); `flip`'s SIGTERM handler, inherited through fork, would make a worker raise instead of end.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # held by the main process while it started the workers
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the workers are the parallelism: no thread pool inside each


PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _die_with_parent() -> None:
    """A worker ends when the process that started it ends, however it ends: a SIGKILL or SIGHUP of `flip` would
    otherwise leave the pool's workers running, a CPU each. Linux's prctl(PR_SET_PDEATHSIG) has the kernel send the
    worker SIGKILL then; the standard library does not wrap it, so it is called through ctypes. (A forkserver's workers
    die with the forkserver, which ends when flip does.) Elsewhere nothing is done."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _work_in_worker(source: str, path: Path):
    return _WORK(source, path)


def _export_file(source: str, path: Path, budget: Budget, options: ExportOptions, stats: Stats,
                 writers: Candidates) -> None:
    read = read_file(path, stats.lines)
    if read is None:
        stats.files_skipped[source] = "none of stream-json, a Claude Code session, a CCPA trace"
        return
    stats.files += 1
    stats.formats[read.format] += 1
    scrubber = Scrubber(read.roots, stats.redactions)
    fallback_task = sibling_prompt(path)
    main_seen = False
    for trajectory in read.trajectories:
        if not trajectory.sidechain and not main_seen:
            main_seen = True
            if not trajectory.task:
                trajectory.task = fallback_task  # headless runs do not echo `-p <task>`
        stats.trajectories += 1
        stats.sidechain_trajectories += trajectory.sidechain
        export_trajectory(trajectory, f"{source}#{trajectory.index}", source, scrubber, budget, options, stats,
                          writers)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _progress(files, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=sum(_size(p) for _, p in files), unit="B", unit_scale=True, desc="flip export",
                file=sys.stderr, disable=not enabled, leave=False)


def summary_table(stats: dict) -> str:
    rows = [
        ("files", stats["files"]), ("files skipped", len(stats["files_skipped"])),
        ("trajectories", stats["trajectories"]), ("raw tool_use", stats["raw_tool_use"]),
        ("remappable", stats["remappable"]), ("unmappable", sum(stats["unmappable"].values())),
        ("without task", stats["without_task"]), ("lines read", stats["lines"]["read"]),
        ("lines skipped", sum(stats["lines"]["skipped"].values())),
        ("redactions", sum(stats["redactions"].values())),
        ("dropped: too long", stats["truncated"]["samples_dropped_too_long"]),
    ]
    for mode, n in stats["samples"].items():
        rows.append((f"samples {mode}", f"{n}  (duplicates {stats['duplicates'].get(mode, 0)})"))
    width = max(len(k) for k, _ in rows)
    lines = [f"  {k:<{width}}  {v}" for k, v in rows]
    if stats["unmappable"]:
        lines.append("  unmappable: " + ", ".join(f"{k} {v}" for k, v in
                                                   sorted(stats["unmappable"].items(), key=lambda kv: (-kv[1], kv[0]))))
    for source, why in stats["files_skipped"].items():
        lines.append(f"  skipped {source}: {why}")
    return "flip export\n" + "\n".join(lines)


# --------------------------------------------------------------------------------------------------------- CLI

@dataclass
class ExportCliOptions:
    """`flip export`'s options that are not export()'s (ExportOptions)."""
    out: str = option(help="output directory")
    allow_empty: bool = option(False, "exit 0 even when no sample was written (otherwise 1)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # A positional argument taking one or more values: option() makes --options only.
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="transcript files or directories (walked)")
    add_options(parser, ExportCliOptions)
    add_options(parser, ExportOptions)


def main(args) -> int:
    cli = options_of(ExportCliOptions, args)
    options = options_of(ExportOptions, args, progress=not args.quiet)
    stats = export(args.paths, cli.out, options)
    if not args.quiet:
        print(summary_table(stats), file=sys.stderr)
    if not any(stats["samples"].values()) and not cli.allow_empty:
        why = ("no transcript was found" if not stats["files"] else
               f"{stats['truncated']['samples_dropped_too_long']} samples did not fit --max-length {options.max_length}"
               if stats["truncated"]["samples_dropped_too_long"] else "the transcripts hold no remappable call")
        print(f"flip export: wrote no sample: {why} (--allow-empty makes this exit 0)", file=sys.stderr)
        return 1
    return 0
