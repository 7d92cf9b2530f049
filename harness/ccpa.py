"""CCPA's trace format (`*.ccpa-trace.jsonl`, docs/transcripts.md): read as a third transcript format, written for
`flip agent --ccpa-trace DIR`.

CCPA (paiml/claude-code-parity-apr) scores apr code against Claude Code action by action. Its trace is JSONL, one
record per line, told apart by `kind`: session_start, user_prompt, assistant_turn (blocks: text, thinking, tool_use),
tool_result (ok, content, side_effects), session_end, and since its schema v2 hook_event and skill_invocation.
Sources, all at commit 30db757f2084667c442726ee0445255e29f82419 of paiml/claude-code-parity-apr:
`crates/ccpa-trace/src/lib.rs` (the Rust types) and `contracts/claude-code-parity-apr-v1.yaml` § trace_schema;
contracts/ccpa-trace.schema.json is the JSON Schema written from both.

Reading maps a trace onto the trajectories of harness.transcripts, so the export's accounting is the same as for
Claude Code's own formats: every line is used or skipped with a named reason. Tool names are Claude Code's (Read,
Edit, Bash, ...); CCPA writes a file's path as `path` where Claude Code writes `file_path`, which
contracts/tool_map.json maps like any other field.

Writing turns one `flip agent` episode (its trace line) into a student trace (actor `apr-code`): each reply an
assistant turn, each executed call a tool_use block under Claude Code's tool name with CCPA's field names, its
observation a tool_result. The trace is validated against the schema before it is written.
"""
from __future__ import annotations

import hashlib
import json
import uuid
from functools import lru_cache
from pathlib import Path

from harness import FlipError
from harness.contracts import CONTRACTS, tool_map
from harness.prompt import render_result
from harness.toolcall import CLOSE
from harness.transcripts import CCPA, Call, LineStats

SUFFIX = ".ccpa-trace.jsonl"
SCHEMA_FILE = "ccpa-trace.schema.json"
RECORD_VERSION = 1  # every record's `v` (trace_schema.envelope.v: const 1)
ACTOR = "apr-code"  # the student's actor (ccpa-trace lib.rs, enum Actor)
FILE_KEY = "path"  # how CCPA names a file: equivalence.rs path_str reads `path`, never `file_path`
# flip agent's stop reasons -> CCPA's session_end stop_reason (trace_schema.records.session_end.stop_reason).
# A reply without a call ends the turn; the prompt outgrowing its budget is the token limit; the turn limit and the
# repeated-call guard are the runtime cutting the session short, for which CCPA has only `error`.
SESSION_STOP = {"answered": "end_turn", "context_full": "max_tokens", "max_turns": "error", "repeated": "error"}


# --------------------------------------------------------------------------------------------------------- writing

@lru_cache(maxsize=None)
def schema() -> dict:
    return json.loads((CONTRACTS / SCHEMA_FILE).read_text(encoding="utf-8"))


@lru_cache(maxsize=None)
def _validator(formats: bool):
    import jsonschema

    cls = jsonschema.validators.validator_for(schema())
    cls.check_schema(schema())
    return cls(schema(), format_checker=cls.FORMAT_CHECKER if formats else None)


def record_errors(record: dict, formats: bool = True) -> list[str]:
    """Why a record is not a valid CCPA record (empty when it is). `formats` also checks the contract's `format`s
    (session_id a UUID, ts a date-time): flip writes them so; CCPA's Rust reader takes any string there, and its own
    regression fixtures write session ids like `reg-0001`, so a trace read for scoring is checked without them."""
    return [f"{'/'.join(map(str, e.absolute_path)) or '(record)'}: {e.message}"
            for e in _validator(formats).iter_errors(record)]


def trace_errors(records: list[dict], formats: bool = True) -> list[str]:
    """Each invalid record's errors, `line N:` first (the file's line numbers, from 1)."""
    return [f"line {n}: {error}" for n, record in enumerate(records, 1) for error in record_errors(record, formats)]


@lru_cache(maxsize=None)
def claude_code_tools() -> dict[str, tuple[str, dict[str, str]]]:
    """apr-code tool -> (Claude Code tool, apr-code field -> CCPA field): the inverse of contracts/tool_map.json.
    Where a field has two sources (Read's `file_path` and CCPA's `path`) CCPA's own name is the one written."""
    inverse = {}
    for name, mapping in tool_map().items():
        fields: dict[str, str] = {}
        for source, target in mapping.fields.items():
            if target not in fields or source == FILE_KEY:
                fields[target] = source
        inverse[mapping.tool] = (name, fields)
    return inverse


def ccpa_call(name: str, tool_input: dict) -> tuple[str, dict]:
    """An apr-code call as CCPA records it: Claude Code's tool name and field names. A tool or field the map does not
    know keeps its own name (the call was still made)."""
    if name not in claude_code_tools():
        return name, dict(tool_input)
    tool, fields = claude_code_tools()[name]
    return tool, {fields.get(key, key): value for key, value in tool_input.items()}


def split_observation(observation: str) -> tuple[str, bool]:
    """(result text, whether the call failed) of an observation harness.prompt.render_observation made: `Action:` and
    the rendered call (whose JSON holds no raw newline, and no literal closing tag), then render_result's label line."""
    end = observation.find(CLOSE + "\n")
    rest = observation[end + len(CLOSE) + 1:] if end >= 0 else ""
    for is_error in (False, True):
        label = render_result("", is_error)
        if rest.startswith(label):
            return rest[len(label):], is_error
    raise FlipError(f"not an observation of a call: {observation[:80]!r}")


def session_id(model: str, task_id: str, task: str) -> str:
    """A UUIDv7-shaped id derived from the episode (the same episode, the same id: traces are byte-identical)."""
    digest = bytearray(hashlib.blake2b(f"{model}\0{task_id}\0{task}".encode("utf-8", "replace"),
                                       digest_size=16).digest())
    digest[6] = (digest[6] & 0x0F) | 0x70  # version 7
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    return str(uuid.UUID(bytes=bytes(digest)))


def workspace_sha256(workspace: Path) -> str:
    """sha256 over the workspace's files (sorted relative paths and contents): CCPA asserts teacher and student start
    from the same tree. CCPA names it a git tree hash; a workspace need not be a git repository, so this hashes the
    files the same way for both sides."""
    digest = hashlib.sha256()
    for path in sorted(p for p in workspace.rglob("*") if p.is_file() and not p.is_symlink()):
        digest.update(path.relative_to(workspace).as_posix().encode("utf-8", "surrogateescape") + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def episode_records(line: dict, model: str, ts: str, cwd_sha256: str, count=len) -> list[dict]:
    """One `flip agent` trace line as CCPA records. `count` counts a reply's tokens (tokens_out); the prompts' tokens
    are not in the trace line, so tokens_in is written as 0."""
    v = RECORD_VERSION
    records = [{"v": v, "kind": "session_start", "session_id": session_id(model, line["id"], line["task"]), "ts": ts,
                "actor": ACTOR, "model": model, "cwd_sha256": cwd_sha256},
               {"v": v, "kind": "user_prompt", "turn": 0, "text": line["task"]}]
    turn = 0
    for index, step in enumerate(line["turns"]):
        call = step["call"]
        call_id = f"toolu_{index + 1:03d}"
        if call is not None and isinstance(call["input"], dict):
            name, tool_input = ccpa_call(call["name"], call["input"])
            blocks = [{"type": "tool_use", "id": call_id, "name": name, "input": tool_input}]
            stop = "tool_use"
        else:  # a final answer, or a reply whose call could not be parsed into an object: text, not an action
            blocks, stop = [{"type": "text", "text": step["output"]}], "end_turn"
        turn += 1
        records.append({"v": v, "kind": "assistant_turn", "turn": turn, "blocks": blocks, "stop_reason": stop})
        if stop == "tool_use" and step["observation"] is not None:  # a repeated call that was not run has none
            content, failed = split_observation(step["observation"])
            turn += 1
            records.append({"v": v, "kind": "tool_result", "turn": turn, "tool_use_id": call_id, "ok": not failed,
                            "content": content})
    records.append({"v": v, "kind": "session_end", "turn": max(turn, 1),
                    "stop_reason": SESSION_STOP[line["stop_reason"]], "elapsed_ms": round(line["seconds"] * 1000),
                    "tokens_in": 0, "tokens_out": sum(count(step["output"]) for step in line["turns"])})
    return records


def dumps(records: list[dict]) -> str:
    """JSONL as CCPA's fixtures write it: compact, one record per line, non-ASCII kept."""
    return "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records)


def trace_name(task_id: str) -> str:
    return task_id + SUFFIX


def timestamp() -> str:
    """Now, as CCPA's session_start.ts (ISO-8601 UTC, whole seconds)."""
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_trace_dir(out: Path, tasks, force: bool) -> Path:
    """Validate --ccpa-trace before any work, as every output directory is (harness.atomic)."""
    from harness.atomic import check_out_dir

    return check_out_dir(out, "agent", [trace_name(task.id) for task in tasks], force, "--ccpa-trace")


def write_traces(lines: list[dict], tasks, out: Path, model: str, ts: str, count=len, force: bool = False) -> list[str]:
    """One student trace per episode, OUT/<task id>.ccpa-trace.jsonl, each checked against the schema first (a trace
    CCPA would reject is never written) and written atomically. Returns the names written."""
    from harness.atomic import claim_dir, write_text

    workspaces = {task.id: task.workspace for task in tasks}
    traces = {}
    for line in lines:
        records = episode_records(line, model, ts, workspace_sha256(workspaces[line["id"]]), count)
        errors = trace_errors(records)
        if errors:
            raise FlipError(f"the CCPA trace of task {line['id']} does not match {SCHEMA_FILE}: {errors[0]}")
        traces[trace_name(line["id"])] = dumps(records)
    out = claim_dir(out, "agent", list(traces), force, "--ccpa-trace")
    for name, text in traces.items():
        write_text(out / name, text)
    return list(traces)


def read_records(path: Path) -> list[dict]:
    """A CCPA trace's records, each checked against the schema (CCPA's reader rejects a trace with any bad line)."""
    from harness import read_jsonl

    records = [record for _, record in read_jsonl(path, "CCPA trace")]
    errors = trace_errors(records, formats=False)
    if errors:
        raise FlipError(f"{path}: not a CCPA trace: {errors[0]}")
    return records


def calls_of(records: list[dict]) -> list[Call]:
    """The tool_use blocks of a trace, in order (for tests and reports)."""
    return [Call(str(b.get("id", "")), str(b.get("name", "")), b.get("input", {}))
            for r in records if r.get("kind") == "assistant_turn" for b in r.get("blocks") or ()
            if isinstance(b, dict) and b.get("type") == "tool_use"]


# ------------------------------------------------------------------------------------ a Claude Code transcript

def transcript_records(path: Path) -> list[dict]:
    """A transcript flip export reads, as CCPA records: a CCPA trace as it is, a Claude Code transcript (stream-json
    or session) as the turns of the teacher's trace: its main agent's calls in order, each in its own assistant turn (CCPA aligns
    actions by position, not by turn), tool names as recorded, `file_path` written as CCPA's `path`, recording paths
    made workspace-relative as the export makes them. Sub-agent runs are not actions of the session (CCPA records the
    call that started one)."""
    from collections import Counter

    from harness.prompt import Scrubber
    from harness.transcripts import detect_format, read_file

    kind = detect_format(path)
    if kind == CCPA:
        return read_records(path)
    read = read_file(path, LineStats()) if kind else None
    if read is None:
        raise FlipError(f"{path}: none of stream-json, a Claude Code session, a CCPA trace")
    scrubber = Scrubber(read.roots, Counter())
    v, turn = RECORD_VERSION, 0
    records = []  # the turns only: a recording has no CCPA session id, nor the git tree hash session_start needs
    for trajectory in (t for t in read.trajectories if not t.sidechain):
        if trajectory.task:
            records.append({"v": v, "kind": "user_prompt", "turn": turn, "text": scrubber.text(trajectory.task)})
        for call in trajectory.calls:
            tool_input = scrubber.value(call.input) if isinstance(call.input, dict) else {}
            tool_input = {(FILE_KEY if key == "file_path" else key): value for key, value in tool_input.items()}
            turn += 1
            records.append({"v": v, "kind": "assistant_turn", "turn": turn, "stop_reason": "tool_use", "blocks": [
                {"type": "tool_use", "id": call.id, "name": call.name, "input": tool_input}]})
            if call.result is not None:
                turn += 1
                records.append({"v": v, "kind": "tool_result", "turn": turn, "tool_use_id": call.id,
                                "ok": not call.is_error, "content": scrubber.text(call.result)})
    return records


# ------------------------------------------------------------------------------------ the teacher's held-out traces

TEACHER_ACTOR = "claude-code"


def teacher_trace(transcript: Path, task_id: str, task: str, workspace: Path, model: str, ts: str) -> list[dict]:
    """A Claude Code transcript of one task as a whole CCPA teacher trace: session_start (actor claude-code, the
    workspace hashed as a student trace of the same task hashes it, so CCPA sees both start from one tree), the
    task as the user prompt (headless stream-json does not echo it), the transcript's turns (transcript_records),
    session_end. A recording's timings and token counts are not the teacher's own measurements: elapsed_ms and the
    token counts are written as 0."""
    v = RECORD_VERSION
    turns = transcript_records(transcript)
    if not any(r["kind"] == "user_prompt" for r in turns):
        turns.insert(0, {"v": v, "kind": "user_prompt", "turn": 0, "text": task})
    start = {"v": v, "kind": "session_start", "session_id": session_id(model, task_id, task), "ts": ts,
             "actor": TEACHER_ACTOR, "model": model, "cwd_sha256": workspace_sha256(workspace)}
    end = {"v": v, "kind": "session_end", "turn": max([r["turn"] for r in turns] + [1]), "stop_reason": "end_turn",
           "elapsed_ms": 0, "tokens_in": 0, "tokens_out": 0}
    records = [start, *turns, end]
    errors = trace_errors(records)
    if errors:
        raise FlipError(f"the CCPA trace of {transcript} does not match {SCHEMA_FILE}: {errors[0]}")
    return records


def teacher_traces(directory: Path, tasks) -> dict[str, list[dict]]:
    """task id -> the teacher's trace of that task, DIR/<id>.ccpa-trace.jsonl (or any transcript flip export reads,
    DIR/<id>.<suffix>), for the tasks that have one; a directory holding none of the tasks' is refused (a wrong
    directory would otherwise score nothing, silently)."""
    from harness.export import TRANSCRIPT_SUFFIXES

    directory = Path(directory)
    if not directory.is_dir():
        raise FlipError(f"--parity-teacher {directory} is not a directory")
    names = {p.name: p for p in directory.iterdir() if p.is_file()}
    found = {}
    for task in tasks:
        candidates = [names[n] for n in (trace_name(task.id), *(task.id + s for s in TRANSCRIPT_SUFFIXES)) if n in names]
        if candidates:
            found[task.id] = transcript_records(candidates[0])
    if not found:
        raise FlipError(f"--parity-teacher {directory} holds no teacher trajectory of these tasks "
                        f"(<id>{SUFFIX}, e.g. {trace_name(tasks[0].id)})")
    return found
