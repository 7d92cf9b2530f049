"""CCPA's action parity score (`flip parity TEACHER STUDENT`): how many of the teacher's actions the student matched.

Ported from paiml/claude-code-parity-apr at commit 30db757f2084667c442726ee0445255e29f82419 (the Rust crate
ccpa-differ is the definition; a Python port because the project is Python and CCPA ships no Python library):
* `crates/ccpa-differ/src/score.rs`: an action is a tool_use block of an assistant_turn, a hook_event record or a
  skill_invocation record, in trace order; actions are aligned by position; score = matched / teacher actions (1.0
  when both have none, 0.0 when only the teacher has none); each unmatched position is a drift, and every student
  action past the teacher's last is an extra one.
* `crates/ccpa-differ/src/equivalence.rs`: the per-tool rules (TOOL_RULES below) and the drift categories (DRIFT).
Drift categories are written as CCPA's `DriftCategory` variants are named (regression/README.md uses those names).
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from harness import FlipError
from harness.options import add_options, option, options_of

# equivalence.rs, enum DriftCategory (MismatchedFileState compares file snapshots, not traces: not produced here)
DRIFT = ("MismatchedToolInput", "MismatchedToolName", "MissingToolCall", "ExtraToolCall", "MismatchedFileState",
         "MismatchedHookEvent", "MissingHookEvent", "ExtraHookEvent", "MismatchedSkillInvocation",
         "MissingSkillInvocation", "ExtraSkillInvocation", "MismatchedActionKind")
TOOL, HOOK, SKILL = "tool", "hook", "skill"
MISSING = {TOOL: "MissingToolCall", HOOK: "MissingHookEvent", SKILL: "MissingSkillInvocation"}
EXTRA = {TOOL: "ExtraToolCall", HOOK: "ExtraHookEvent", SKILL: "ExtraSkillInvocation"}
MISMATCHED = {TOOL: "MismatchedToolInput", HOOK: "MismatchedHookEvent", SKILL: "MismatchedSkillInvocation"}

# Rust's char::is_whitespace (Unicode White_Space), which split_whitespace / trim use. Python's str.split() also
# splits at U+001C..U+001F, which Rust does not: spelled out so that normalisation is CCPA's exactly.
_RUST_WS = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_WS_RUN = re.compile(f"[{_RUST_WS}]+")
_WS_END = re.compile(f"[{_RUST_WS}]+$")
_WS_EDGE = re.compile(f"^[{_RUST_WS}]+|[{_RUST_WS}]+$")


@dataclass(frozen=True)
class Action:
    kind: str  # TOOL, HOOK or SKILL
    label: str  # the tool's name, the hook's event, the skill's name (a drift's `tool_name`)
    record: object  # the tool_use block's `input`, or the hook / skill record


@dataclass
class Drift:
    category: str
    position: int
    tool_name: str


@dataclass
class ParityReport:
    score: float
    matched_count: int
    teacher_count: int
    student_count: int
    drifts: list[Drift] = field(default_factory=list)

    def as_json(self) -> dict:
        return {"score": self.score, "matched": self.matched_count, "teacher_actions": self.teacher_count,
                "student_actions": self.student_count,
                "drifts": [{"category": d.category, "position": d.position, "tool_name": d.tool_name}
                           for d in self.drifts]}


# ------------------------------------------------------------------------------------- serde_json accessors

def _opt_str(value, key: str) -> str | None:
    """`.get(key).and_then(Value::as_str)`"""
    item = value.get(key) if isinstance(value, dict) else None
    return item if isinstance(item, str) else None


def _str(value, key: str) -> str:
    """`.get(key).and_then(Value::as_str).unwrap_or("")`"""
    return _opt_str(value, key) or ""


def _u64(value, key: str) -> int | None:
    """`.get(key).and_then(Value::as_u64)`: a JSON integer in u64's range (not a float, not a bool)."""
    item = value.get(key) if isinstance(value, dict) else None
    return item if type(item) is int and 0 <= item < 2 ** 64 else None


def _bool(value, key: str) -> bool:
    """`.get(key).and_then(Value::as_bool).unwrap_or(false)`"""
    item = value.get(key) if isinstance(value, dict) else None
    return item if isinstance(item, bool) else False


def _path(value) -> str:
    """path_str: CCPA reads `path` only."""
    return _str(value, "path")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def normalize_bash(command: str) -> str:
    """Whitespace runs collapsed to one space, then trailing `;` dropped and trailing whitespace trimmed."""
    collapsed = " ".join(part for part in _WS_RUN.split(command) if part)
    return _WS_END.sub("", collapsed.rstrip(";"))


def _trim(text: str) -> str:
    return _WS_EDGE.sub("", text)


def _canonical(value) -> str:
    """canonicalize(): keys sorted, every value typed. Rust's form quotes strings with `{:?}` and prints numbers as
    serde_json does; only equality of the forms matters, which json.dumps of the same structure gives (a bool is
    never the integer 1, an integer never the float 1.0)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int):
        return str(value) if -2 ** 63 <= value < 2 ** 64 else repr(float(value))  # serde_json: larger ones are f64
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(_canonical(item) for item in value) + "]"
    return "{" + ",".join(f"{json.dumps(k, ensure_ascii=False)}:{_canonical(value[k])}" for k in sorted(value)) + "}"


# ---------------------------------------------------------------------------------- equivalence.rs rules

def _bash(a, b) -> bool:
    return normalize_bash(_str(a, "command")) == normalize_bash(_str(b, "command"))


def _read(a, b) -> bool:
    return (_path(a), _u64(a, "offset"), _u64(a, "limit")) == (_path(b), _u64(b, "offset"), _u64(b, "limit"))


def _write(a, b) -> bool:
    return _path(a) == _path(b) and _sha256(_str(a, "content")) == _sha256(_str(b, "content"))


def _edit(a, b) -> bool:
    if _path(a) != _path(b):
        return False
    post_a, post_b = _opt_str(a, "post_state_sha256"), _opt_str(b, "post_state_sha256")
    if post_a is not None and post_b is not None:  # a post-state both sides declared decides
        return post_a == post_b
    return _str(a, "old_string") == _str(b, "old_string") and _str(a, "new_string") == _str(b, "new_string")


def _glob(a, b) -> bool:
    return _str(a, "pattern") == _str(b, "pattern")


def _grep(a, b) -> bool:
    return ((_trim(_str(a, "pattern")), _path(a), _bool(a, "regex"))
            == (_trim(_str(b, "pattern")), _path(b), _bool(b, "regex")))


def _agent(a, b) -> bool:
    return (_str(a, "subagent_type") == _str(b, "subagent_type")
            and _sha256(_str(a, "prompt")) == _sha256(_str(b, "prompt")))


def _default(a, b) -> bool:
    return _sha256(_canonical(a)) == _sha256(_canonical(b))


TOOL_RULES = {"Bash": _bash, "Read": _read, "Write": _write, "Edit": _edit, "Glob": _glob, "Grep": _grep,
              "Agent": _agent}


def tool_drift(teacher: Action, student: Action) -> str | None:
    """tool_call_equivalent: None when equivalent, else the drift category."""
    if teacher.label != student.label:
        return "MismatchedToolName"
    rule = TOOL_RULES.get(teacher.label, _default)
    return None if rule(teacher.record, student.record) else "MismatchedToolInput"


def _hook_key(record: dict) -> tuple:
    matcher = record.get("matcher")
    return (record.get("event"), matcher if isinstance(matcher, str) else None, record.get("decision"),
            record.get("exit_code"), normalize_bash(_str(record, "output")))


def _skill_key(record: dict) -> tuple:
    return record.get("name"), record.get("source"), _bool(record, "instructions_injected")


def action_drift(teacher: Action, student: Action) -> str | None:
    """action_equivalent: None when equivalent, else the drift category."""
    if teacher.kind != student.kind:
        return "MismatchedActionKind"
    if teacher.kind == TOOL:
        return tool_drift(teacher, student)
    key = _hook_key if teacher.kind == HOOK else _skill_key
    return None if key(teacher.record) == key(student.record) else MISMATCHED[teacher.kind]


# ------------------------------------------------------------------------------------------------- score.rs

def actions(records: list[dict]) -> list[Action]:
    """extract_actions: tool_use blocks, hook events and skill invocations in trace order."""
    found = []
    for record in records:
        kind = record.get("kind")
        if kind == "assistant_turn":
            found += [Action(TOOL, _str(block, "name"), block.get("input"))
                      for block in record.get("blocks") or ()
                      if isinstance(block, dict) and block.get("type") == "tool_use"]
        elif kind == "hook_event":
            found.append(Action(HOOK, _str(record, "event"), record))
        elif kind == "skill_invocation":
            found.append(Action(SKILL, _str(record, "name"), record))
    return found


def parity_score(teacher: list[dict], student: list[dict]) -> ParityReport:
    """compute_parity_score over two traces' records."""
    taught, done = actions(teacher), actions(student)
    drifts, matched = [], 0
    for position, action in enumerate(taught):
        if position >= len(done):
            drifts.append(Drift(MISSING[action.kind], position, action.label))
            continue
        category = action_drift(action, done[position])
        if category is None:
            matched += 1
        else:
            drifts.append(Drift(category, position, action.label))
    drifts += [Drift(EXTRA[a.kind], position, a.label) for position, a in enumerate(done) if position >= len(taught)]
    if taught:
        score = matched / len(taught)
    else:
        score = 1.0 if not done else 0.0
    return ParityReport(score, matched, len(taught), len(done), drifts)


# --------------------------------------------------------------------------------------------------------- CLI

def pairs(teacher: Path, student: Path) -> list[tuple[str, Path, Path]]:
    """(name, teacher trace, student trace): two files, or two directories paired by each trace's path under them
    (every `*.ccpa-trace.jsonl` of the teacher's directory needs its student)."""
    from harness.ccpa import SUFFIX

    if teacher.is_file() and student.is_file():
        return [(student.name, teacher, student)]
    if not (teacher.is_dir() and student.is_dir()):
        raise FlipError("TEACHER and STUDENT must both be files (CCPA traces or Claude Code transcripts), or both "
                        "directories of CCPA traces")
    found = sorted(p.relative_to(teacher) for p in teacher.rglob("*" + SUFFIX) if p.is_file())
    if not found:
        raise FlipError(f"{teacher} holds no *{SUFFIX} file")
    missing = [str(p) for p in found if not (student / p).is_file()]
    if missing:
        raise FlipError(f"{student} has no student trace for {', '.join(missing[:3])}"
                        f"{' ...' if len(missing) > 3 else ''}")
    return [(p.as_posix(), teacher / p, student / p) for p in found]


def compare(teacher: Path, student: Path) -> dict:
    """Each pair's parity report and their mean (CCPA's corpus aggregate, corpus.rs: the mean of per-trace scores)."""
    from harness.ccpa import transcript_records

    rows = {name: parity_score(transcript_records(t), transcript_records(s)).as_json()
            for name, t, s in pairs(teacher, student)}
    mean = sum(row["score"] for row in rows.values()) / len(rows)
    return {"aggregate_score": mean, "traces": len(rows), "per_trace": rows}


@dataclass
class ParityCliOptions:
    """`flip parity`'s options."""
    out: str | None = option(None, "also write the report as JSON to this file")


def add_arguments(parser) -> None:
    parser.add_argument("teacher", metavar="TEACHER",
                        help="the teacher's CCPA trace or Claude Code transcript, or a directory of CCPA traces")
    parser.add_argument("student", metavar="STUDENT",
                        help="the student's CCPA trace, or a directory of them (the same names)")
    add_options(parser, ParityCliOptions)


def main(args) -> int:
    from harness.atomic import check_out_file, write_text

    cli = options_of(ParityCliOptions, args)
    out = check_out_file(cli.out, "--out", inputs=(args.teacher, args.student)) if cli.out else None
    report = compare(Path(args.teacher), Path(args.student))
    text = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    if out is not None:
        write_text(out, text)
    if not args.quiet:
        for name, row in report["per_trace"].items():
            drifts = ", ".join(f"{d['category']}@{d['position']}:{d['tool_name']}" for d in row["drifts"]) or "none"
            print(f"{name}: {row['score']:.3f} ({row['matched']}/{row['teacher_actions']}); drifts: {drifts}",
                  file=sys.stderr)
        print(f"aggregate {report['aggregate_score']:.3f} over {report['traces']} traces", file=sys.stderr)
    sys.stdout.write(text)
    return 0


# ------------------------------------------------------------------------------- per task, in flip agent's report

def task_parity(lines: list[dict], teachers: dict[str, list[dict]]) -> dict:
    """Each agent episode (a `flip agent` trace line) scored against the teacher's trace of its task: the line gains
    `parity` (this module's report, or None without a teacher trace); returns the summary: the mean over the scored
    tasks (CCPA's corpus aggregate) and how many were scored."""
    from harness.ccpa import episode_records

    scores = []
    for line in lines:
        teacher = teachers.get(line["id"])
        if teacher is None:
            line["parity"] = None
            continue
        # only the actions are compared: the session's id, time and workspace hash do not enter the score
        student = episode_records(line, "apr-code", "1970-01-01T00:00:00Z", "0" * 64)
        line["parity"] = parity_score(teacher, student).as_json()
        scores.append(line["parity"]["score"])
    return {"mean": round(sum(scores) / len(scores), 4) if scores else None, "tasks_scored": len(scores),
            "tasks": len(lines)}
