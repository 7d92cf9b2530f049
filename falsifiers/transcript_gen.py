"""Generated Claude Code transcripts for the export falsifiers and benchmark (not a test module).

`transcripts()` is a hypothesis strategy for one recording (stream-json or on-disk session) with random tool calls,
sub-agents (Task calls with their own calls), parallel calls, messages split over lines, planted secrets and
recording paths; `damage()` then truncates, inserts garbage / invalid UTF-8 / unknown events, and drops lines.
`write()` puts a recording on disk (sub-agent files and sibling prompt.txt included) and returns the ground truth.
"""
from __future__ import annotations

import json
import random
import string
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import strategies as st

MAPPED = ("Read", "Write", "Edit", "Bash", "Grep", "Glob")
# Closing texts: none, a plain answer, a Markdown summary naming a recording path and a secret, one holding a call tag
# (never a final answer), a heading only (nothing to answer with).
FINALS = ("", "Done: the tests pass.", "## Summary\n\nFixed {cwd}/src/lib.rs; the key {secret} is unused.",
          'Next I would run <tool_call>{{"name": "shell"}}</tool_call>', "## Summary")
UNMAPPED = ("TodoWrite", "WebFetch", "MultiEdit", "mcp__srv__tool", "KillBash", "BashOutput")
ALNUM = string.ascii_letters + string.digits


def secret_values(rng: random.Random) -> list[tuple[str, str]]:
    """(text to plant, the part that must never appear in the output)."""
    gh = "ghp_" + "".join(rng.choice(ALNUM) for _ in range(36))
    ant = "sk-ant-" + "".join(rng.choice(ALNUM) for _ in range(30))
    aws = "AKIA" + "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(16))
    pw = "Pw" + "".join(rng.choice(ALNUM) for _ in range(12))
    return [(gh, gh), (ant, ant), (aws, aws), (f"password={pw}", pw)]


@dataclass
class GenCall:
    id: str
    name: str
    input: dict
    result: str | None
    is_error: bool = False
    sub: list = field(default_factory=list)  # a Task call's own calls (a sub-agent)


@dataclass
class Recording:
    fmt: str  # "stream" | "session"
    cwd: str
    task: str | None
    calls: list  # top-level GenCall
    secrets: list  # strings that must not survive
    lines: list = field(default_factory=list)  # bytes, one per line (main file)
    extra_files: dict = field(default_factory=dict)  # relative name -> list of lines (sub-agent files)
    prompt_file: str | None = None  # content of a sibling prompt.txt
    final: str | None = None  # the main agent's closing text after its last call
    expected: Counter = field(default_factory=Counter)  # Claude Code tool name -> calls (undamaged)
    failed: Counter = field(default_factory=Counter)  # tool name -> mapped calls its tool rejected (not Bash's)


def _call(rng: random.Random, cwd: str, secrets: list[str], depth: int, counter: list[int], big: int = 0) -> GenCall:
    counter[0] += 1
    cid = f"toolu_{counter[0]:04d}{rng.randrange(10**6):06d}"
    rel = rng.choice(["src/lib.rs", "src/main.rs", "tests/it.rs", "Cargo.toml", "README.md", "a b/c.txt"])
    path = f"{cwd}/{rel}"
    secret = rng.choice(secrets) if rng.random() < 0.4 else ""
    names = list(MAPPED) * 3 + list(UNMAPPED) + (["Task", "Agent"] if depth == 0 else [])
    name = rng.choice(names)
    body = "\n".join(f"{i + 1}\tline {i} of {rel} {rng.randrange(1000)}" for i in range(rng.randrange(1, 8)))
    if big:
        body = (body + "\n") * max(1, big // max(1, len(body)))
    result = f"{body}\n{secret}\nsee {path}"
    if name == "Read":
        tool_input = {"file_path": path}
    elif name == "Write":
        tool_input = {"file_path": path, "content": f"fn main() {{}} // {secret}\n"}
    elif name == "Edit":
        tool_input = {"file_path": path, "old_string": "fn a()", "new_string": f"fn b() // {cwd}"}
        if rng.random() < 0.2:
            del tool_input["old_string"]  # the teacher's call failed validation; apr-code would reject it too
    elif name == "Bash":
        tool_input = {"command": f"cd {cwd} && cargo test {secret}".strip(), "description": "run tests"}
    elif name == "Grep":
        tool_input = {"pattern": "fn ", "path": cwd, "-i": True}
    elif name == "Glob":
        tool_input = {"pattern": "**/*.rs", "path": cwd}
    elif name in ("Task", "Agent"):
        tool_input = {"description": "sub", "prompt": f"Investigate {path} quickly {secret}", "subagent_type": "x"}
    else:
        tool_input = {"todos": [{"content": f"check {path}", "status": "pending"}], "url": "https://example.com"}
    if rng.random() < 0.1:
        result = None  # interrupted: no result
    call = GenCall(cid, name, tool_input, result, is_error=rng.random() < 0.1)
    if name in ("Task", "Agent"):
        call.sub = [_call(rng, cwd, secrets, 1, counter, big) for _ in range(rng.randrange(1, 4))]
        call.result = "sub-agent finished"
    return call


def _count(calls, counter: Counter, failed: Counter) -> None:
    for call in calls:
        invalid = call.name == "Edit" and "old_string" not in call.input
        counter[f"{call.name}:invalid_input" if invalid else call.name] += 1
        if call.is_error and call.result is not None and not invalid and call.name in MAPPED and call.name != "Bash":
            failed[call.name] += 1
        _count(call.sub, counter, failed)


def _dumps(obj) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def _tool_use(call):
    return {"type": "tool_use", "id": call.id, "name": call.name, "input": call.input}


def _tool_result(call):
    block = {"type": "tool_result", "tool_use_id": call.id, "content": call.result}
    if call.is_error:
        block["is_error"] = True
    return block


def render_stream(rec: Recording, rng: random.Random, echo_task: bool, split: bool, partials: bool) -> None:
    sid = "sess-1"
    uid = iter(range(1, 10**9))
    out = rec.lines
    if rng.random() < 0.5:
        out.append(_dumps({"type": "system", "subtype": "hook_started", "session_id": sid, "uuid": f"u{next(uid)}"}))
    out.append(_dumps({"type": "system", "subtype": "init", "cwd": rec.cwd, "session_id": sid, "tools": list(MAPPED),
                       "uuid": f"u{next(uid)}"}))
    if rec.task and echo_task:
        out.append(_dumps({"type": "user", "message": {"role": "user", "content": [{"type": "text", "text": rec.task}]},
                           "parent_tool_use_id": None, "session_id": sid, "uuid": f"u{next(uid)}"}))
    elif rec.task:
        rec.prompt_file = rec.task

    def emit(calls, parent):
        i = 0
        while i < len(calls):
            group = calls[i: i + rng.choice([1, 1, 2, 3])]  # parallel calls: several tool_use before any result
            i += len(group)
            mid = f"msg_{next(uid)}"
            if partials:
                out.append(_dumps({"type": "stream_event", "event": {"type": "content_block_start", "content_block":
                                   _tool_use(group[0])}, "session_id": sid, "uuid": f"u{next(uid)}"}))
            envelope = {"parent_tool_use_id": parent, "session_id": sid}
            if split:
                out.append(_dumps({"type": "assistant", "message": {"id": mid, "role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "x"}]}, **envelope, "uuid": f"u{next(uid)}"}))
                for call in group:
                    out.append(_dumps({"type": "assistant", "message": {"id": mid, "role": "assistant",
                                       "content": [_tool_use(call)]}, **envelope, "uuid": f"u{next(uid)}"}))
            else:
                out.append(_dumps({"type": "assistant", "message": {"id": mid, "role": "assistant",
                                   "content": [{"type": "text", "text": "ok"}] + [_tool_use(c) for c in group]},
                                   **envelope, "uuid": f"u{next(uid)}"}))
            order = list(group)
            rng.shuffle(order)
            for call in order:
                if call.sub:
                    if rng.random() < 0.5:
                        out.append(_dumps({"type": "user", "message": {"role": "user", "content": [
                            {"type": "text", "text": call.input["prompt"]}]}, "parent_tool_use_id": call.id,
                            "session_id": sid, "uuid": f"u{next(uid)}"}))
                    emit(call.sub, call.id)
                if call.result is not None:
                    out.append(_dumps({"type": "user", "message": {"role": "user", "content": [_tool_result(call)]},
                                       **envelope, "uuid": f"u{next(uid)}"}))

    emit(rec.calls, None)
    if rec.final:
        out.append(_dumps({"type": "assistant", "message": {"id": "msg_final", "role": "assistant", "content": [
            {"type": "text", "text": rec.final}]}, "parent_tool_use_id": None, "session_id": sid,
            "uuid": f"u{next(uid)}"}))
    if rng.random() < 0.7:
        out.append(_dumps({"type": "result", "subtype": "success", "is_error": False, "session_id": sid,
                           "uuid": f"u{next(uid)}"}))


def render_session(rec: Recording, rng: random.Random, layout: str, command_wrapper: bool) -> None:
    sid = "0f6a-session"
    uid = iter(range(1, 10**9))
    out = rec.lines
    out.append(_dumps({"type": "summary", "summary": "s", "leafUuid": "x"}))
    last = [None]

    def record(kind, content, sidechain, sink, parent_key="main", **extra):
        uuid = f"{sid}-{next(uid)}"
        rec_ = {"parentUuid": last_of[parent_key], "isSidechain": sidechain, "userType": "external", "cwd": rec.cwd,
                "sessionId": sid, "version": "1.0.98", "gitBranch": "", "type": kind,
                "message": {"role": kind, "content": content}, "uuid": uuid, "timestamp": "2025-01-01T00:00:00Z",
                **extra}
        last_of[parent_key] = uuid
        sink.append(_dumps(rec_))
        return rec_

    last_of = {"main": None}
    if rec.task:
        text = (f"<command-message>x is running</command-message>\n<command-name>/x</command-name>\n"
                f"<command-args>{rec.task}</command-args>") if command_wrapper else rec.task
        record("user", text, False, out)
        if command_wrapper:
            record("user", [{"type": "text", "text": "expanded command body"}], False, out, isMeta=True)

    def emit(calls, sidechain, sink, key):
        for call in calls:
            record("assistant", [_tool_use(call)], sidechain, sink, key)
            if call.sub:
                sub_key = call.id
                last_of[sub_key] = None
                if layout == "inline":
                    sub_sink = out
                elif layout == "sibling":
                    sub_sink = rec.extra_files.setdefault(f"agent-{call.id[-6:]}.jsonl", [])
                else:
                    sub_sink = rec.extra_files.setdefault(f"{sid}/subagents/agent-{call.id[-6:]}.jsonl", [])
                record("user", call.input["prompt"], True, sub_sink, sub_key)
                emit(call.sub, True, sub_sink, sub_key)
            if call.result is not None:
                record("user", [_tool_result(call)], sidechain, sink, key)

    emit(rec.calls, False, out, "main")
    if rec.final:
        record("assistant", [{"type": "text", "text": rec.final}], False, out)
    if rng.random() < 0.5 and len(out) > 2:  # a resumed session repeats earlier records (same uuid)
        out.extend(out[1: 1 + rng.randrange(1, len(out))])


def build(rng: random.Random, fmt: str, n_calls: int, has_task: bool, echo_task: bool = True, split: bool = False,
          partials: bool = False, layout: str = "inline", command_wrapper: bool = False, big: int = 0,
          tag: str = "x", final: str | None = None) -> Recording:
    """One recording from plain choices (the hypothesis strategy and the benchmark both use it); `final`, one of
    FINALS, pins the closing text the recording's cwd would otherwise choose."""
    cwd = f"/tmp/{tag}-teacher.{''.join(rng.choice(ALNUM) for _ in range(6))}"
    planted = secret_values(rng)
    secrets = [text for text, _ in planted]
    task = f"Fix the failing test in {cwd}/src/lib.rs. token {rng.choice(secrets)} done" if has_task else None
    counter = [0]
    calls = [_call(rng, cwd, secrets, 0, counter, big) for _ in range(n_calls)]
    rec = Recording(fmt, cwd, task, calls, [must for _, must in planted] + [cwd])
    # Drawn from its own generator: the draws of every other part of a recording stay as they were.
    rec.final = (random.Random(cwd).choice(FINALS) if final is None else final).format(cwd=cwd, secret=secrets[0])
    _count(calls, rec.expected, rec.failed)
    if fmt == "stream":
        render_stream(rec, rng, echo_task=echo_task, split=split, partials=partials)
    else:
        render_session(rec, rng, layout, command_wrapper)
    return rec


@st.composite
def transcripts(draw, big: int = 0):
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    fmt = draw(st.sampled_from(["stream", "session"]))
    tag = draw(st.sampled_from(["fix-bug", "add_fn", "x"]))
    has_task = draw(st.booleans()) or fmt == "session"
    n_calls = draw(st.integers(0, 7))
    if fmt == "stream":
        return build(rng, fmt, n_calls, has_task, echo_task=draw(st.booleans()), split=draw(st.booleans()),
                     partials=draw(st.booleans()), big=big, tag=tag)
    return build(rng, fmt, n_calls, has_task, layout=draw(st.sampled_from(["inline", "sibling", "subagents"])),
                 command_wrapper=draw(st.booleans()), big=big, tag=tag)


DAMAGES = ("truncate", "garbage", "invalid_utf8", "unknown_type", "drop", "blank", "huge_garbage")


@st.composite
def damaged(draw, base=None):
    rec = draw(base if base is not None else transcripts())
    kinds = draw(st.lists(st.sampled_from(DAMAGES), min_size=1, max_size=4))
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    damage(rec, kinds, rng)
    return rec


def _inside_planted(line: bytes, cut: int, planted: list[str]) -> bool:
    for text in planted:
        needle = json.dumps(text)[1:-1].encode()
        start = line.find(needle)
        while start >= 0:
            if start < cut < start + len(needle):
                return True
            start = line.find(needle, start + 1)
    return False


def damage(rec: Recording, kinds, rng: random.Random) -> None:
    lines = rec.lines
    # The stream-json init line is the only record of the recording's cwd; it is kept (see the report's limits).
    # Looked up on every pick: inserted lines shift the indices.
    def protected(i: int) -> bool:
        return b'"subtype":"init"' in lines[i]

    def pick():
        choices = [i for i in range(len(lines)) if not protected(i)]
        return rng.choice(choices) if choices else None

    for kind in kinds:
        if kind == "truncate" and lines:
            i = len(lines) - 1
            if not protected(i) and len(lines[i]) > 3:
                lines[i] = lines[i][: rng.randrange(1, len(lines[i]) - 2)]  # no newline: the process died
        elif kind == "garbage":
            lines.insert(rng.randrange(len(lines) + 1), b"Warning: no stdin data received in 3s, proceeding\n")
        elif kind == "huge_garbage":
            lines.insert(rng.randrange(len(lines) + 1), b"{" + b"x" * 200_000 + b"\n")
        elif kind == "invalid_utf8":
            i = pick()
            if i is not None:
                # Bad bytes cost only themselves (the line is kept), so bytes inside a planted secret or recording
                # path would leave a secret no pattern can recognise: the damage lands outside them.
                cuts = [cut for cut in range(len(lines[i])) if not _inside_planted(lines[i], cut, rec.secrets)]
                if cuts:
                    cut = rng.choice(cuts)
                    lines[i] = lines[i][:cut] + b"\xff\xfe\xc3" + lines[i][cut:]
        elif kind == "unknown_type":
            lines.insert(rng.randrange(len(lines) + 1), b'{"type":"brand_new_event","session_id":"s","x":1}\n')
        elif kind == "drop":
            i = pick()
            if i is not None:
                del lines[i]
        elif kind == "blank":
            lines.insert(rng.randrange(len(lines) + 1), b"\n")
    if lines and not lines[-1].endswith(b"\n") and "truncate" not in kinds:
        lines[-1] += b"\n"


def write(rec: Recording, directory: Path, name: str = "teacher") -> Path:
    """Write the recording under `directory`; returns the main file's path."""
    directory.mkdir(parents=True, exist_ok=True)
    main = directory / (f"{name}.stream.ndjson" if rec.fmt == "stream" else f"{name}.jsonl")
    main.write_bytes(b"".join(rec.lines))
    for rel, lines in rec.extra_files.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"".join(lines))
    if rec.prompt_file:
        (directory / "prompt.txt").write_text(rec.prompt_file, encoding="utf-8")
    return main
