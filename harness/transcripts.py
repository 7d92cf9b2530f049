"""Reading Claude Code transcripts into trajectories (docs/transcripts.md).

Two formats, told apart by CONTENT, never by file name:
  * headless stream-json (`claude -p --output-format stream-json`): snake_case envelope, `parent_tool_use_id`;
  * on-disk sessions (`~/.claude/projects/.../<session>.jsonl`, `agent-<id>.jsonl`): camelCase, `parentUuid` chains,
    `isSidechain`.

A trajectory is one agent's ordered tool calls (with their paired results) and the task it was given: the main agent
(split where the user gives a new prompt) and every sub-agent (its own trajectory, its task being its prompt).

Robustness (docs/transcripts.md): lines are read in binary (no line-length limit) and decoded one by one; every line read is either
used or skipped with a named reason, counted in `LineStats`. Nothing here raises on bad content.
"""
from __future__ import annotations

import codecs
import json
import re
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path

from harness import FlipError

STREAM_JSON = "stream-json"
SESSION = "session"
CCPA = "ccpa-trace"  # CCPA's trace format (read_ccpa below)

# Record types that carry no turn content; they are skipped with the reason `ignored:<type>`.
_STREAM_IGNORED = {"system", "result", "rate_limit_event", "tool_progress", "tool_use_summary", "control_request",
                   "control_response", "keep_alive"}
_SESSION_IGNORED = {"summary", "file-history-snapshot", "queue-operation", "progress", "attachment", "system"}
_DETECT_LINES = 200  # lines looked at to tell the format; hooks and summaries can come before the first turn
MAX_DEPTH = 64  # deeper nesting is not a transcript record (Claude Code's are a handful of levels deep)

_COMMAND_ARGS = re.compile(r"<command-args>(.*?)</command-args>", re.S)
_COMMAND_NAME = re.compile(r"<command-name>(.*?)</command-name>", re.S)


@dataclass
class Call:
    id: str
    name: str  # the Claude Code tool name as recorded
    input: object
    result: str | None = None  # None: no result was recorded (interrupted run)
    is_error: bool = False
    refused: bool = False  # a person or a permission rule refused it: it never ran


@dataclass
class Trajectory:
    index: int  # order of creation within its file: stable ids
    task: str | None
    sidechain: bool = False
    calls: list[Call] = field(default_factory=list)
    closing: list[str] = field(default_factory=list)  # assistant text after the last call (its final answer)

    @property
    def final(self) -> str | None:
        """The agent's final answer: the text it wrote after its last call, once that call has a result."""
        text = "\n\n".join(t for t in self.closing if t.strip()).strip()
        if not text or not self.calls or self.calls[-1].result is None:
            return None
        return text


@dataclass
class FileRead:
    format: str
    trajectories: list[Trajectory]
    roots: list[str]  # the recording's working directories, first = the session's own


@dataclass
class LineStats:
    read: int = 0
    used: int = 0
    skipped: Counter = field(default_factory=Counter)
    unknown_types: Counter = field(default_factory=Counter)
    orphan_results: int = 0  # tool results whose call is not in the file
    repaired_surrogates: int = 0  # lines whose lone UTF-16 surrogates were replaced
    repaired_bytes: int = 0  # lines with undecodable bytes, each replaced by U+FFFD (the line itself is kept)

    def skip(self, reason: str) -> None:
        self.skipped[reason] += 1

    def add(self, other: "LineStats") -> None:
        """Add another file's line counts (an export read in several processes sums its files' counts)."""
        for name in (f.name for f in fields(self)):
            mine = getattr(self, name)
            if isinstance(mine, Counter):
                mine.update(getattr(other, name))
            else:
                setattr(self, name, mine + getattr(other, name))


# ----------------------------------------------------------------------------------------------- line reading

def _open(path: Path):
    try:
        return open(path, "rb")
    except OSError as err:
        raise FlipError(f"cannot read {path}: {err.strerror or err}") from err


def iter_records(path: Path, stats: LineStats | None = None, limit: int | None = None):
    """Yield the JSON objects of a file, one per good line; count every line (read, and why skipped)."""
    stats = stats if stats is not None else LineStats()
    with _open(path) as handle:
        for number, raw in enumerate(handle):
            if limit is not None and number >= limit:
                return
            stats.read += 1
            if number == 0:
                raw = raw.removeprefix(codecs.BOM_UTF8)  # an editor's byte-order mark is not part of the first record
            complete = raw.endswith(b"\n")
            if not raw.strip():
                stats.skip("blank")
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("utf-8", "replace")  # a damaged byte costs that byte, never the whole line
                stats.repaired_bytes += 1
            try:
                record = json.loads(text)
            except RecursionError:
                stats.skip("too_deep")
                continue
            except ValueError:
                stats.skip("not_json" if complete else "truncated_last_line")
                continue
            if not isinstance(record, dict):
                stats.skip("not_an_object")
                continue
            if text.count("[") + text.count("{") > MAX_DEPTH and _depth(record) > MAX_DEPTH:
                stats.skip("too_deep")  # no transcript nests this deep; later stages walk records recursively
                continue
            if "\\ud" in text or "\\uD" in text:  # cheap test first: lone surrogates cannot be written as UTF-8
                record, changed = _without_lone_surrogates(record)
                stats.repaired_surrogates += changed
            yield record


def _children(value):
    if isinstance(value, list):
        return range(len(value))
    if isinstance(value, dict):
        return list(value)
    return ()


def _depth(value) -> int:
    """How deeply lists and objects nest (iterative: a hostile line must not exhaust the stack)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, depth)
            stack.extend((item[key], depth + 1) for key in _children(item))
    return deepest


def _without_lone_surrogates(value) -> tuple[object, bool]:
    """(value with each lone UTF-16 surrogate replaced by U+FFFD, whether any was). Iterative, in place."""
    holder = [value]
    changed = False
    stack = [(holder, 0)]
    while stack:
        container, key = stack.pop()
        item = container[key]
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                # U+FFFD is the standard replacement mark (utf-8 "replace" would write "?").
                container[key] = item.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
                changed = True
        else:
            stack.extend((item, child) for child in _children(item))
    return holder[0], changed


# ------------------------------------------------------------------------------------------- format detection

def _record_format(record: dict) -> str | None:
    """The format a record proves (strong markers only): a bare `session_id` is not proof, since unknown event
    types of any release may carry it."""
    if is_ccpa_record(record):
        return CCPA  # a `kind` and a `v`, never a `type`
    if "parentUuid" in record or "isSidechain" in record or "sessionId" in record:
        return SESSION
    if record.get("type") in ("summary", "file-history-snapshot", "queue-operation"):
        return SESSION
    if "parent_tool_use_id" in record or record.get("type") in ("stream_event", "result", "assistant", "user"):
        return STREAM_JSON  # an assistant/user line without parentUuid/sessionId is the headless envelope
    if record.get("type") == "system" and record.get("subtype") == "init" and "session_id" in record:
        return STREAM_JSON
    return None


def detect_format(path: Path) -> str | None:
    """STREAM_JSON, SESSION, CCPA, or None when the file is none of them (it is then reported and skipped)."""
    weak = None
    for record in iter_records(path, limit=_DETECT_LINES):
        found = _record_format(record)
        if found:
            return found
        if weak is None and "session_id" in record and isinstance(record.get("type"), str):
            weak = STREAM_JSON  # only snake_case envelopes (hooks, unknown events) seen so far
    return weak


# ----------------------------------------------------------------------------------------------- shared bits

def result_text(content) -> str:
    """A tool_result's content as text: a string, or text blocks joined (images become a short marker)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, dict):
                if block.get("type") == "text":
                    parts.append(str(block.get("text", "")))
                elif block.get("type") == "image":
                    parts.append("[image]")
                else:
                    parts.append(json.dumps(block, ensure_ascii=False, sort_keys=True))
            else:
                parts.append(str(block))
        return "\n".join(parts)
    return json.dumps(content, ensure_ascii=False, sort_keys=True)


def prompt_text(content) -> str | None:
    """The human prompt in a user message, or None when it is not one (tool results, command output, empty).

    Slash commands: `<command-name>/x</command-name><command-args>A</command-args>` gives A (the command's own
    expansion comes as a separate isMeta record, which is skipped).
    """
    if isinstance(content, list):
        if any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content):
            return None
        texts = [str(b.get("text", "")) for b in content if isinstance(b, dict) and b.get("type") == "text"]
        content = "\n".join(texts)
    if not isinstance(content, str):
        return None
    text = content.strip()
    if "<command-name>" in text:
        args = _COMMAND_ARGS.search(text)
        text = args.group(1).strip() if args else ""
    if text.startswith("<local-command-stdout>") or text.startswith("[Request interrupted"):
        return None
    return text or None


def is_refusal(text: str) -> bool:
    """Whether a tool result is Claude Code's answer to a call that was refused, not run (contracts/refusals.json)."""
    from harness.contracts import refusal_prefixes

    text = text.strip()
    text = text.removeprefix("<tool_use_error>").lstrip()
    return text.startswith(refusal_prefixes())


def _tool_results(content):
    if isinstance(content, list):
        for block in content:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                yield block


class _Builder:
    """Collects trajectories of one file: calls by tool_use id (parallel calls, results in any order)."""

    def __init__(self, stats: LineStats):
        self.stats = stats
        self.trajectories: list[Trajectory] = []
        self.calls: dict[str, Call] = {}
        self.main: Trajectory | None = None
        self.side: dict[str, Trajectory] = {}

    def new(self, task: str | None, sidechain: bool) -> Trajectory:
        trajectory = Trajectory(len(self.trajectories), task, sidechain)
        self.trajectories.append(trajectory)
        return trajectory

    def main_prompt(self, text: str) -> None:
        """A new human prompt: it is the task of the next calls (a new trajectory once calls were made)."""
        if self.main is None or self.main.calls:
            self.main = self.new(text, False)
        else:
            self.main.task = f"{self.main.task}\n\n{text}" if self.main.task else text

    def main_trajectory(self) -> Trajectory:
        if self.main is None:
            self.main = self.new(None, False)
        return self.main

    def add_record(self, kind: str, content, side_key: str | None) -> bool:
        """An assistant or user record of the main agent (side_key None) or of one sub-agent run: calls, results, or
        a prompt (the run's task). False when a user record held none of them."""
        if kind == "assistant":
            self.add_calls(self.sidechain(side_key) if side_key else self.main_trajectory(), content)
            return True
        if self.add_results(content):
            return True
        prompt = prompt_text(content)
        if prompt is None:
            return False
        if side_key:
            self.sidechain(side_key, prompt)
        else:
            self.main_prompt(prompt)
        return True

    def sidechain(self, key: str, prompt: str | None = None) -> Trajectory:
        trajectory = self.side.get(key)
        if trajectory is None:
            parent_call = self.calls.get(key)
            task = prompt
            if task is None and parent_call is not None and isinstance(parent_call.input, dict):
                task = parent_call.input.get("prompt") if isinstance(parent_call.input.get("prompt"), str) else None
            trajectory = self.side[key] = self.new(task, True)
        elif trajectory.task is None and prompt:
            trajectory.task = prompt
        return trajectory

    def add_calls(self, trajectory: Trajectory, content) -> None:
        if isinstance(content, str):
            trajectory.closing.append(content)
            return
        if not isinstance(content, list):
            return
        for block in content:
            if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str):
                trajectory.closing.append(block["text"])
            if isinstance(block, dict) and block.get("type") == "tool_use":
                trajectory.closing.clear()  # text before a call is narration, not the final answer
                call_id = str(block.get("id", ""))
                if call_id and call_id in self.calls:
                    continue  # the same block again (a resumed session or a replayed line): counted once
                call = Call(call_id, str(block.get("name", "")), block.get("input", {}))
                if call_id:
                    self.calls[call_id] = call
                trajectory.calls.append(call)

    def add_results(self, content) -> bool:
        found = False
        for block in _tool_results(content):
            found = True
            call = self.calls.get(str(block.get("tool_use_id", "")))
            if call is None:
                self.stats.orphan_results += 1
                continue
            call.result = result_text(block.get("content"))
            call.is_error = bool(block.get("is_error"))
            call.refused = call.refused or (call.is_error and is_refusal(call.result))
        return found

    def mark_refused(self, record: dict) -> None:
        """Calls a record says never ran: a result line's permission_denials, a tool_result_meta non_execution_kind."""
        denied = [d.get("tool_use_id") for d in record.get("permission_denials") or () if isinstance(d, dict)]
        denied += [m.get("tool_use_id") for m in record.get("tool_result_meta") or ()
                   if isinstance(m, dict) and m.get("non_execution_kind")]
        for call_id in denied:
            call = self.calls.get(str(call_id))
            if call is not None:
                call.refused = True


def _message(record: dict) -> dict:
    message = record.get("message")
    return message if isinstance(message, dict) else {}


# ------------------------------------------------------------------------------------------------ stream-json

def read_stream_json(path: Path, stats: LineStats) -> FileRead:
    builder = _Builder(stats)
    roots: list[str] = []
    seen_uuids: set[str] = set()
    for record in iter_records(path, stats):
        kind = record.get("type")
        if _repeated(record, seen_uuids, stats):
            continue
        if kind == "system" and record.get("subtype") == "init" and isinstance(record.get("cwd"), str):
            _add_root(roots, record["cwd"])
            stats.skip("ignored:system")
            continue
        if kind == "stream_event":
            stats.skip("stream_event_partial")  # the complete assistant lines follow: never count twice
            continue
        builder.mark_refused(record)  # the result line's permission_denials, a record's tool_result_meta
        if kind in _STREAM_IGNORED:
            stats.skip(f"ignored:{kind}")
            continue
        if kind not in ("assistant", "user"):
            _skip_unknown(stats, kind)
            continue
        parent = record.get("parent_tool_use_id")
        _use(stats, builder.add_record(kind, _message(record).get("content"), str(parent) if parent else None))
    return FileRead(STREAM_JSON, builder.trajectories, roots)


# ------------------------------------------------------------------------------------------ on-disk sessions

def _repeated(record: dict, seen_uuids: set[str], stats: LineStats) -> bool:
    """A record whose uuid was already read: resumed sessions and replayed lines repeat records; counted once."""
    uuid = record.get("uuid")
    if not isinstance(uuid, str):
        return False
    if uuid in seen_uuids:
        stats.skip("duplicate_uuid")
        return True
    seen_uuids.add(uuid)
    return False


def _use(stats: LineStats, used: bool) -> None:
    if used:
        stats.used += 1
    else:
        stats.skip("user_without_prompt")


def _skip_unknown(stats: LineStats, kind) -> None:
    """A record type this reader does not know (new ones come with every release): counted by name, skipped."""
    stats.skip("unknown_type" if kind else "no_type")
    if kind:
        stats.unknown_types[str(kind)] += 1


def read_session(path: Path, stats: LineStats) -> FileRead:
    builder = _Builder(stats)
    roots: list[str] = []
    seen_uuids: set[str] = set()
    chain_root: dict[str, str] = {}  # sidechain record uuid -> the uuid that starts its chain (one sub-agent run)
    for record in iter_records(path, stats):
        kind = record.get("type")
        uuid = record.get("uuid")
        if _repeated(record, seen_uuids, stats):
            continue
        if isinstance(record.get("cwd"), str):
            _add_root(roots, record["cwd"])
        if kind in _SESSION_IGNORED:
            stats.skip(f"ignored:{kind}")
            continue
        if kind not in ("assistant", "user"):
            _skip_unknown(stats, kind)
            continue
        if record.get("isMeta"):
            stats.skip("meta")  # an expanded slash command: its <command-args> record holds the task
            continue
        if record.get("isCompactSummary"):
            stats.skip("compact_summary")
            continue
        chain = None  # the main agent's records
        if record.get("isSidechain"):
            parent = record.get("parentUuid")
            # a chain starts where the parent is not a sidechain record already seen (null, or a lost line)
            chain = (chain_root.get(parent) if isinstance(parent, str) else None) or f"line{stats.read}"
            if isinstance(uuid, str):
                chain_root[uuid] = chain
        _use(stats, builder.add_record(kind, _message(record).get("content"), chain))
        builder.mark_refused(record)
    return FileRead(SESSION, builder.trajectories, roots)


def _add_root(roots: list[str], cwd: str) -> None:
    """Keep the session's first cwd, and later ones only when outside every kept root (a `cd` into a subdirectory
    keeps paths relative to the project root)."""
    cwd = cwd.rstrip("/\\")  # a Windows recording writes C:\\tmp\\ws
    if not cwd:
        return
    if any(cwd == root or cwd.startswith((root + "/", root + "\\")) for root in roots):
        return
    roots.append(cwd)


# ------------------------------------------------------------------------------------------------------ entry


# ---------------------------------------------------------------------------------------------------------------------
# CCPA's trace format (`*.ccpa-trace.jsonl`): trajectories of the same shape; harness.ccpa writes it and scores it.
# Sources: paiml/claude-code-parity-apr at 30db757f, crates/ccpa-trace/src/lib.rs and the trace_schema section of
# contracts/claude-code-parity-apr-v1.yaml. CCPA writes a file's path as `path`: contracts/tool_map.json maps it.
# ---------------------------------------------------------------------------------------------------------------------

CCPA_KINDS = ("session_start", "user_prompt", "assistant_turn", "tool_result", "session_end", "hook_event",
         "skill_invocation")

# Records that carry no turn content for an export: counted under `ignored:<kind>` and skipped. Hooks and skills are
# actions for the parity score (harness.parity), but apr-code has no tool that makes them.
CCPA_IGNORED = ("session_start", "session_end", "hook_event", "skill_invocation")


def is_ccpa_record(record: dict) -> bool:
    """Whether a JSON line is a CCPA record: its `kind` is one of the trace kinds and it carries the version `v`."""
    return record.get("kind") in CCPA_KINDS and "v" in record


def read_ccpa(path: Path, stats: LineStats) -> FileRead:
    """The trace's trajectories: the main agent's calls, split where a user prompt follows calls (as an on-disk
    session is). Never raises on bad content: a record of the wrong shape is skipped as `invalid:<kind>`."""
    builder = _Builder(stats)
    for record in iter_records(path, stats):
        kind = record.get("kind")
        if kind not in CCPA_KINDS:
            _skip_unknown(stats, kind)
            continue
        if kind == "session_start" and builder.main is not None and builder.main.calls:
            builder.main = None  # a second session in one file starts a new trajectory
        if kind in CCPA_IGNORED:
            stats.skip(f"ignored:{kind}")
            continue
        if _add(builder, kind, record):
            stats.used += 1
        else:
            stats.skip(f"invalid:{kind}")
    return FileRead(CCPA, builder.trajectories, [])


def _add(builder: _Builder, kind: str, record: dict) -> bool:
    if kind == "user_prompt":
        if not isinstance(record.get("text"), str):
            return False
        if record["text"].strip():
            builder.main_prompt(record["text"].strip())
        return True
    if kind == "assistant_turn":
        blocks = record.get("blocks")
        if not isinstance(blocks, list):
            return False
        # text blocks are narration or the final answer, tool_use blocks calls; thinking is neither
        builder.add_calls(builder.main_trajectory(), blocks)
        return True
    return _add_result(builder, record)


def _add_result(builder: _Builder, record: dict) -> bool:
    call_id, ok, content = record.get("tool_use_id"), record.get("ok"), record.get("content")
    if not isinstance(call_id, str) or not isinstance(ok, bool) or not isinstance(content, str):
        return False
    call = builder.calls.get(call_id)
    if call is None:
        builder.stats.orphan_results += 1
        return True
    call.result, call.is_error = content, not ok
    call.refused = call.refused or (call.is_error and is_refusal(content))
    return True


def read_file(path: Path, stats: LineStats) -> FileRead | None:
    """The file's trajectories, or None when it is none of the formats (the caller reports it)."""
    kind = detect_format(path)
    if kind is None:
        return None
    if kind == CCPA:
        return read_ccpa(path, stats)
    if kind == STREAM_JSON:
        return read_stream_json(path, stats)
    return read_session(path, stats)


def sibling_prompt(path: Path) -> str | None:
    """The task stored next to a headless transcript (`prompt.txt` / `prompt.md`), when there is one."""
    for name in ("prompt.txt", "prompt.md"):
        candidate = path.parent / name
        if candidate.is_file():
            try:
                text = candidate.read_bytes().decode("utf-8-sig", "replace").strip()
            except OSError:
                continue
            if text:
                return text
    return None
