"""Falsifiers of the transcript reader (harness/transcripts.py): formats by content, damage, pairing, sub-agents."""
from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

import transcript_gen as gen
from harness import FlipError
from harness.transcripts import (_DETECT_LINES, SESSION, STREAM_JSON, LineStats, _without_lone_surrogates, detect_format,
                                 iter_records, prompt_text, read_file, result_text, sibling_prompt)

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _lines(*objs) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objs)


def _all_calls(read):
    return [c for t in read.trajectories for c in t.calls]


def test_format_is_detected_from_content_not_name(tmp_path):
    stream = tmp_path / "looks-like-a-session.jsonl"
    stream.write_bytes(b"Warning: no stdin\n" + _lines({"type": "system", "subtype": "init", "cwd": "/w",
                                                         "session_id": "s"}))
    session = tmp_path / "looks-like-stream.ndjson"
    session.write_bytes(_lines({"type": "summary", "summary": "x", "leafUuid": "y"},
                               {"type": "user", "parentUuid": None, "isSidechain": False, "sessionId": "s",
                                "cwd": "/w", "uuid": "a", "message": {"role": "user", "content": "hi"}}))
    resumed = tmp_path / "unknown-event-first.jsonl"  # a snake_case unknown event before the session records
    resumed.write_bytes(_lines({"type": "brand_new_event", "session_id": "s"},
                               {"type": "user", "parentUuid": None, "isSidechain": False, "sessionId": "s",
                                "cwd": "/w", "uuid": "a", "message": {"role": "user", "content": "hi"}}))
    other = tmp_path / "package-lock.json"
    other.write_bytes(_lines({"name": "x", "version": "1"}))
    assert detect_format(stream) == STREAM_JSON
    assert detect_format(session) == SESSION
    assert detect_format(resumed) == SESSION
    assert detect_format(other) is None
    assert read_file(other, LineStats()) is None


@pytest.mark.helper
def test_unreadable_path_is_a_flip_error(tmp_path):
    with pytest.raises(FlipError, match=r"cannot read .*missing.jsonl: No such file or directory"):
        read_file(tmp_path / "missing.jsonl", LineStats())


ONE_RECORD = [  # (a file's records, the format they prove)
    ([{"type": "summary", "summary": "s", "leafUuid": "u"}], SESSION),
    ([{"type": "file-history-snapshot", "messageId": "m"}], SESSION),
    ([{"type": "queue-operation", "operation": "enqueue"}], SESSION),
    ([{"type": "user", "parentUuid": None}], SESSION),
    ([{"type": "user", "isSidechain": False}], SESSION),
    ([{"type": "user", "sessionId": "s"}], SESSION),
    ([{"type": "x", "parent_tool_use_id": None}], STREAM_JSON),
    ([{"type": "stream_event", "event": {}}], STREAM_JSON),
    ([{"type": "result", "subtype": "success"}], STREAM_JSON),
    ([{"type": "assistant", "message": {}}], STREAM_JSON),
    ([{"type": "user", "message": {}}], STREAM_JSON),
    ([{"type": "system", "subtype": "init", "session_id": "s"}], STREAM_JSON),
    ([{"type": "system", "subtype": "init"}], None),
    ([{"type": "hook_event", "session_id": "s"}], STREAM_JSON),  # weak: a snake_case envelope, nothing else seen
    ([{"session_id": "s"}], None),
    ([{"type": 3, "session_id": "s"}], None),
    ([{"type": "hook_event", "session_id": "s"}, {"type": "summary", "summary": "s", "leafUuid": "u"}], SESSION),
    ([{"type": "hook_event", "session_id": "s"}, {"type": "new_event"}], STREAM_JSON),
    ([{"type": "system", "subtype": "init", "session_id": "s"}, {"type": "summary", "summary": "s"}], STREAM_JSON),
    ([{"name": "package"}], None),
]


@pytest.mark.parametrize("records, expected", ONE_RECORD)
def test_each_format_marker_alone_decides_the_format(tmp_path, records, expected):
    """Every strong marker decides on its own (a file may hold nothing else); a snake_case envelope with a session_id
    is weak evidence of stream-json that any strong marker overrides; the first 200 lines are looked at, no more."""
    path = tmp_path / "t.jsonl"
    path.write_bytes(_lines(*records))
    assert detect_format(path) == expected
    late = tmp_path / "late.jsonl"  # the deciding record is line 200
    late.write_bytes(_lines(*[{"name": "x"}] * (_DETECT_LINES - len(records)), *records))
    assert detect_format(late) == expected
    too_late = tmp_path / "too-late.jsonl"  # ... or line 201
    too_late.write_bytes(_lines(*[{"name": "x"}] * _DETECT_LINES, *records))
    assert detect_format(too_late) is None


def test_each_damaged_line_is_skipped_by_its_reason(tmp_path):
    """The reasons are export_stats.json's names for what was lost: blank, not_json, not_an_object, too_deep, and
    truncated_last_line for a last line without its newline (the process died); the lines after each are read. An
    undecodable byte costs only that byte (U+FFFD, counted as repaired), and lone surrogates are repaired at any depth
    (600 levels, iteratively) while 100,000 nested lists are skipped, never a RecursionError."""
    good = json.dumps({"type": "user", "message": {"content": "x"}}).encode() + b"\n"
    deep_surrogate = b'{"a": ' + b"[" * 60 + b'"\\ud800"' + b"]" * 60 + b"}\n"
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"\n" + good + b'{"a": "ok \xff\xfe ok"}\n' + good + b"{not json\n" + good + b"[1, 2]\n" + good
                     + b'{"u": "\\uD800"}\n' + b'{"n": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
                     + deep_surrogate + b'{"deep": ' + b"[" * 100 + b"]" * 100 + b'}\n' + b'{"type": "us')
    stats = LineStats()
    records = list(iter_records(path, stats))
    assert len(records) == 7 and records[1] == {"a": "ok \ufffd\ufffd ok"} and records[-2] == {"u": "\ufffd"}
    assert stats.skipped == Counter({"blank": 1, "not_json": 1, "not_an_object": 1, "too_deep": 2,
                                     "truncated_last_line": 1})
    assert stats.read == 13 and stats.repaired_surrogates == 2 and stats.repaired_bytes == 1
    deep = "\ud800"
    for _ in range(5000):
        deep = [deep]
    repaired, changed = _without_lone_surrogates({"a": deep})
    while not isinstance(repaired, str):
        repaired = repaired[0] if isinstance(repaired, list) else repaired["a"]
    assert changed and repaired == "\ufffd"


@SETTINGS
@given(gen.damaged())
def test_every_line_is_used_or_skipped_with_a_reason(rec):
    with tempfile.TemporaryDirectory() as tmp:
        main = gen.write(rec, Path(tmp))
        stats = LineStats()
        if read_file(main, stats) is None:  # never raises, whatever the damage
            return  # nothing recognisable left: the exporter reports the file as skipped
        expected_lines = sum(1 for _ in main.open("rb"))
        assert stats.read == expected_lines
        assert stats.used + sum(stats.skipped.values()) == stats.read
        assert all(reason for reason in stats.skipped)


def test_split_message_parallel_calls_and_interleaved_results_pair_by_id(tmp_path):
    env = {"session_id": "s", "parent_tool_use_id": None}
    path = tmp_path / "t.ndjson"
    path.write_bytes(_lines(
        {"type": "system", "subtype": "init", "cwd": "/w", **env, "uuid": "0"},
        {"type": "stream_event", "event": {"type": "content_block_start", "content_block":
                                           {"type": "tool_use", "id": "A", "name": "Read", "input": {}}}, **env},
        {"type": "assistant", "message": {"id": "m1", "content": [{"type": "thinking", "thinking": ""}]}, **env, "uuid": "1"},
        {"type": "assistant", "message": {"id": "m1", "content": [
            {"type": "tool_use", "id": "A", "name": "Read", "input": {"file_path": "/w/a"}}]}, **env, "uuid": "2"},
        {"type": "user", "message": {"content": [{"type": "tool_result", "tool_use_id": "A", "content": "ra"}]},
         **env, "uuid": "3"},
        {"type": "assistant", "message": {"id": "m1", "content": [
            {"type": "tool_use", "id": "B", "name": "Glob", "input": {"pattern": "*"}},
            {"type": "tool_use", "id": "C", "name": "Bash", "input": {"command": "ls"}}]}, **env, "uuid": "4"},
        {"type": "user", "message": {"content": [{"type": "tool_result", "tool_use_id": "C", "content": [
            {"type": "text", "text": "rc"}], "is_error": True}]}, **env, "uuid": "5"},
        {"type": "user", "message": {"content": [{"type": "tool_result", "tool_use_id": "B", "content": "rb"}]},
         **env, "uuid": "6"},
        {"type": "user", "message": {"content": [{"type": "tool_result", "tool_use_id": "Z", "content": "?"}]},
         **env, "uuid": "7"},
        {"type": "assistant", "message": {"id": "m1", "content": [
            {"type": "tool_use", "id": "A", "name": "Read", "input": {"file_path": "/w/a"}}]}, **env, "uuid": "2"},
        {"type": "assistant", "message": {"id": "m1", "content": [
            {"type": "tool_use", "id": "B", "name": "Glob", "input": {"pattern": "*"}}]}, **env, "uuid": "2b"},
    ))
    stats = LineStats()
    read = read_file(path, stats)
    calls = {c.id: c for c in _all_calls(read)}
    assert [c.id for c in _all_calls(read)] == ["A", "B", "C"]  # the partial and the replayed line are not new calls
    assert (calls["A"].result, calls["B"].result, calls["C"].result) == ("ra", "rb", "rc")
    assert calls["C"].is_error and not calls["B"].is_error
    assert stats.orphan_results == 1
    assert stats.skipped["stream_event_partial"] == 1 and stats.skipped["duplicate_uuid"] == 1
    assert read.roots == ["/w"]


def test_sub_agents_are_their_own_trajectories_with_their_prompt_as_task(tmp_path):
    env = {"session_id": "s"}
    stream = tmp_path / "s.ndjson"
    stream.write_bytes(_lines(
        {"type": "system", "subtype": "init", "cwd": "/w", **env},
        {"type": "assistant", "parent_tool_use_id": None, "message": {"id": "m", "content": [
            {"type": "tool_use", "id": "T", "name": "Agent", "input": {"prompt": "look around", "description": "d"}}]}, **env},
        {"type": "assistant", "parent_tool_use_id": "T", "message": {"id": "n", "content": [
            {"type": "tool_use", "id": "R", "name": "Read", "input": {"file_path": "/w/x"}}]}, **env},
        {"type": "user", "parent_tool_use_id": None, "message": {"content": [
            {"type": "tool_result", "tool_use_id": "T", "content": [{"type": "text", "text": "done"}]}]}, **env},
    ))
    read = read_file(stream, LineStats())
    assert [(t.sidechain, t.task, [c.name for c in t.calls]) for t in read.trajectories] == [
        (False, None, ["Agent"]), (True, "look around", ["Read"])]

    session = tmp_path / "x.jsonl"
    base = {"sessionId": "s", "cwd": "/w", "userType": "external"}
    session.write_bytes(_lines(
        {"type": "user", "parentUuid": None, "isSidechain": False, "uuid": "1", **base, "message": {"content":
         "<command-message>o</command-message>\n<command-name>/o</command-name>\n<command-args>build it</command-args>"}},
        {"type": "user", "parentUuid": "1", "isSidechain": False, "isMeta": True, "uuid": "2", **base,
         "message": {"content": [{"type": "text", "text": "long expansion"}]}},
        {"type": "assistant", "parentUuid": "2", "isSidechain": False, "uuid": "3", **base, "message": {"content": [
            {"type": "tool_use", "id": "T1", "name": "Task", "input": {"prompt": "p1"}},
            {"type": "tool_use", "id": "T2", "name": "Task", "input": {"prompt": "p2"}}]}},
        {"type": "user", "parentUuid": None, "isSidechain": True, "uuid": "a1", **base, "message": {"content": "p1"}},
        {"type": "user", "parentUuid": None, "isSidechain": True, "uuid": "b1", **base, "message": {"content": "p2"}},
        {"type": "assistant", "parentUuid": "b1", "isSidechain": True, "uuid": "b2", **base, "message": {"content": [
            {"type": "tool_use", "id": "Bx", "name": "Bash", "input": {"command": "ls"}}]}},
        {"type": "assistant", "parentUuid": "a1", "isSidechain": True, "uuid": "a2", **base, "message": {"content": [
            {"type": "tool_use", "id": "Ax", "name": "Read", "input": {"file_path": "/w/a"}}]}},
        {"type": "assistant", "parentUuid": ["damaged"], "isSidechain": True, "uuid": "c1", **base, "message": {
            "content": [{"type": "tool_use", "id": "Cx", "name": "Read", "input": {"file_path": "/w/c"}}]}},
    ))
    read = read_file(session, LineStats())
    assert [(t.sidechain, t.task, [c.id for c in t.calls]) for t in read.trajectories] == [
        (False, "build it", ["T1", "T2"]), (True, "p1", ["Ax"]), (True, "p2", ["Bx"]), (True, None, ["Cx"])]


def test_lines_of_many_megabytes_are_read(tmp_path):
    big = "x" * (6 * 1024 * 1024)
    path = tmp_path / "big.ndjson"
    path.write_bytes(_lines(
        {"type": "system", "subtype": "init", "cwd": "/w", "session_id": "s"},
        {"type": "assistant", "session_id": "s", "message": {"id": "m", "content": [
            {"type": "tool_use", "id": "A", "name": "Read", "input": {"file_path": "/w/a"}}]}},
        {"type": "user", "session_id": "s", "message": {"content": [
            {"type": "tool_result", "tool_use_id": "A", "content": big}]}}))
    read = read_file(path, LineStats())
    assert _all_calls(read)[0].result == big


def test_lone_surrogates_are_replaced_and_counted_not_dropped(tmp_path):
    """JSON may escape a lone UTF-16 surrogate (a tool cut an emoji in half); it cannot be written as UTF-8, so it
    becomes U+FFFD and the line is counted as repaired, nested at any depth, and the rest of the text is kept."""
    path = tmp_path / "t.ndjson"
    path.write_bytes(_lines(
        {"type": "system", "subtype": "init", "cwd": "/w", "session_id": "s"},
        {"type": "assistant", "session_id": "s", "message": {"id": "m", "content": [
            {"type": "tool_use", "id": "A", "name": "Grep", "input": {"pattern": "ok \ud83d", "path": "/w"}},
            {"type": "tool_use", "id": "B", "name": "Read", "input": {"file_path": "/w/b"}}]}},
        {"type": "user", "session_id": "s", "message": {"content": [
            {"type": "tool_result", "tool_use_id": "A", "content": [{"type": "text", "text": "head \udc00 tail"}]},
            {"type": "tool_result", "tool_use_id": "B", "content": "fine \u00e9"}]}}))
    stats = LineStats()
    calls = _all_calls(read_file(path, stats))
    assert stats.repaired_surrogates == 2 and stats.used == 2
    paired = tmp_path / "paired.ndjson"  # an escaped surrogate *pair* is a valid character: nothing to repair
    paired.write_bytes(_lines({"type": "system", "subtype": "init", "cwd": "/w", "session_id": "s"},
                              {"type": "user", "session_id": "s", "n": 1, "message": {"content": "fix \U0001F600 [x]"}}))
    assert b"\\ud83d\\ude00" in paired.read_bytes()
    paired_stats = LineStats()
    assert read_file(paired, paired_stats).trajectories[0].task == "fix \U0001F600 [x]"
    assert paired_stats.repaired_surrogates == 0
    assert calls[0].input["pattern"] == "ok \ufffd" and "head \ufffd tail" in calls[0].result
    assert calls[1].input == {"file_path": "/w/b"} and calls[1].result == "fine \u00e9"
    for call in calls:
        json.dumps(call.input, ensure_ascii=False).encode("utf-8")
        call.result.encode("utf-8")


PROMPTS = [  # (user message content, the task it gives)
    ("  fix the parser  ", "fix the parser"),
    ([{"type": "text", "text": "fix"}, {"type": "image", "source": {}}, {"type": "text", "text": "it"}], "fix\nit"),
    ([{"type": "text"}], None),
    ([{"type": "text", "text": "see"}, {"type": "tool_result", "tool_use_id": "A", "content": "x"}], None),
    ("<command-name>/fix</command-name>\n<command-args> the bug </command-args>", "the bug"),
    ("<command-name>/clear</command-name>", None),
    ("<local-command-stdout>cleared</local-command-stdout>", None),
    ("[Request interrupted by user]", None),
    ("", None),
    (42, None),
]


@pytest.mark.parametrize("content, task", PROMPTS)
def test_what_counts_as_the_users_task(content, task):
    """A user message is a task only when a human wrote it: tool results, local command output, interruptions and
    empty turns are not; a slash command's task is its arguments; text blocks join with newlines."""
    assert prompt_text(content) == task


RESULTS = [  # (tool_result content, its text)
    (None, ""),
    ("plain", "plain"),
    ([{"type": "text", "text": "a"}, {"type": "image", "source": {}}, {"type": "text"}], "a\n[image]\n"),
    ([{"x": "é", "type": "other"}, "raw"], '{"type": "other", "x": "é"}\nraw'),
    ({"b": 1, "a": "é"}, '{"a": "é", "b": 1}'),
]


@pytest.mark.parametrize("content, text", RESULTS)
def test_tool_result_text(content, text):
    assert result_text(content) == text


def test_prompts_before_the_first_call_join_into_one_task(tmp_path):
    env = {"session_id": "s", "parent_tool_use_id": None}
    path = tmp_path / "t.ndjson"
    path.write_bytes(_lines(
        {"type": "system", "subtype": "init", "cwd": "/w", **env},
        {"type": "assistant", "message": {"id": "hi", "content": [{"type": "text", "text": "Hello"}]}, **env},
        {"type": "user", "message": {"content": "first"}, **env},
        {"type": "user", "message": {"content": "second"}, **env},
        {"type": "assistant", "message": {"id": "m", "content": [
            {"type": "tool_use", "id": "A", "name": "Read", "input": {"file_path": "/w/a"}}]}, **env},
        {"type": "user", "message": {"content": "third"}, **env},
        {"type": "assistant", "message": {"id": "n", "content": [
            {"type": "tool_use", "id": "B", "name": "Read", "input": {"file_path": "/w/b"}}]}, **env}))
    read = read_file(path, LineStats())
    assert [(t.task, len(t.calls)) for t in read.trajectories] == [("first\n\nsecond", 1), ("third", 1)]


def test_repeated_compacted_and_unknown_records_are_skipped_by_name(tmp_path):
    """A resumed session repeats records (same uuid): read once. A compaction summary is not a prompt. Unknown and
    untyped records are skipped and counted by type, in both formats."""
    base = {"sessionId": "s", "cwd": "/w", "isSidechain": False}
    call = {"type": "assistant", "parentUuid": "1", "uuid": "2", **base, "message": {"content": [
        {"type": "tool_use", "id": "A", "name": "Read", "input": {"file_path": "/w/a"}}]}}
    session = tmp_path / "s.jsonl"
    session.write_bytes(_lines(
        {"type": "user", "parentUuid": None, "uuid": "1", **base, "message": {"content": "the task"}},
        call, call,
        {"type": "user", "parentUuid": "2", "uuid": "3", "isCompactSummary": True, **base,
         "message": {"content": "This session is being continued from a previous conversation..."}},
        {"type": "brand_new", "uuid": "4", **base}, {"type": "brand_new", "uuid": "5", **base}, {"uuid": "6", **base}))
    stats = LineStats()
    read = read_file(session, stats)
    assert [(t.task, [c.id for c in t.calls]) for t in read.trajectories] == [("the task", ["A"])]
    assert stats.skipped == Counter({"duplicate_uuid": 1, "compact_summary": 1, "unknown_type": 2, "no_type": 1})
    assert stats.unknown_types == Counter({"brand_new": 2}) and stats.used == 2

    stream = tmp_path / "t.ndjson"
    env = {"session_id": "s", "parent_tool_use_id": None}
    stream.write_bytes(_lines({"type": "system", "subtype": "init", "cwd": "/w", "uuid": "i", **env},
                              {"type": "user", "uuid": "u", "message": {"content": "go"}, **env},
                              {"type": "user", "uuid": "u", "message": {"content": "go"}, **env},
                              {"type": "brand_new", **env}, {"session_id": "s"}))
    stats = LineStats()
    assert read_file(stream, stats).trajectories[0].task == "go"
    assert stats.skipped == Counter({"ignored:system": 1, "duplicate_uuid": 1, "unknown_type": 1, "no_type": 1})
    assert stats.unknown_types == Counter({"brand_new": 1})


def test_a_sub_agents_task_is_its_own_prompt_else_its_callers(tmp_path):
    """A sub-agent run's task is the prompt its own first user message carries; without one, the `prompt` input of
    the call that started it; a prompt arriving after its first action still becomes the task of a run without one."""
    env = {"session_id": "s"}

    def agent(call_id, tool_input):
        return {"type": "assistant", "parent_tool_use_id": None, "message": {"id": "m" + call_id, "content": [
            {"type": "tool_use", "id": call_id, "name": "Agent", "input": tool_input}]}, **env}

    def inside(call_id, record):
        return {**record, "parent_tool_use_id": call_id, **env}

    read_call = {"type": "assistant", "message": {"id": "r", "content": [
        {"type": "tool_use", "id": "R", "name": "Read", "input": {"file_path": "/w/x"}}]}}
    path = tmp_path / "t.ndjson"
    path.write_bytes(_lines(
        {"type": "system", "subtype": "init", "cwd": "/w", **env},
        agent("T1", {"prompt": "from the caller"}), inside("T1", {"type": "user", "message": {"content": "its own"}}),
        inside("T1", {"type": "user", "message": {"content": "a follow-up"}}),
        agent("T2", {"prompt": "from the caller"}),
        inside("T2", {**read_call, "message": {"id": "r2", "content": [{**read_call["message"]["content"][0], "id": "R2"}]}}),
        agent("T3", {"prompt": ["not", "text"]}),
        inside("T3", {**read_call, "message": {"id": "r3", "content": [{**read_call["message"]["content"][0], "id": "R3"}]}}),
        inside("T3", {"type": "user", "message": {"content": "late prompt"}}),
        inside("T4", {**read_call, "message": {"id": "r4", "content": [{**read_call["message"]["content"][0], "id": "R4"}]}}),
    ))
    read = read_file(path, LineStats())
    assert [t.task for t in read.trajectories if t.sidechain] == ["its own", "from the caller", "late prompt", None]


def test_a_headless_runs_task_comes_from_the_prompt_file_beside_it(tmp_path):
    """`-p` prompts are not echoed in stream-json: the task is prompt.txt, else prompt.md, beside the transcript;
    an empty file is passed over; undecodable bytes become U+FFFD rather than losing the task."""
    transcript = tmp_path / "teacher.stream.ndjson"
    assert sibling_prompt(transcript) is None
    (tmp_path / "prompt.md").write_text("  from the md  \n")
    assert sibling_prompt(transcript) == "from the md"
    (tmp_path / "prompt.txt").write_text("\n")
    assert sibling_prompt(transcript) == "from the md"
    (tmp_path / "prompt.txt").write_bytes(b"fix caf\xe9.py")
    assert sibling_prompt(transcript) == "fix caf\ufffd.py"


def test_malformed_blocks_are_kept_and_counted_not_lost(tmp_path):
    """Blocks missing their id, name or input are kept as calls (the exporter then counts them as unmappable or
    invalid); a replayed block is skipped without losing the new block after it; results that answer no call and
    user turns that carry nothing are counted."""
    env = {"session_id": "s", "parent_tool_use_id": None}

    def assistant(message_id, *blocks):
        return {"type": "assistant", "message": {"id": message_id, "content": list(blocks)}, **env}

    def use(**block):
        return {"type": "tool_use", **block}

    path = tmp_path / "t.ndjson"
    path.write_bytes(_lines(
        {"type": "system", "subtype": "init", "cwd": "/w", **env},
        assistant("m1", use(name="Read", input={"file_path": "/w/a"}), use(name="Read", input={"file_path": "/w/b"})),
        assistant("m2", use(id="N", input={"x": 1}), use(id="I", name="Read")),
        assistant("m3", use(id="X", name="Read", input={"file_path": "/w/x"})),
        assistant("m3", use(id="X", name="Read", input={"file_path": "/w/x"}), use(id="Y", name="Bash", input={"command": "ls"})),
        {"type": "user", "message": {"content": [{"type": "tool_result", "tool_use_id": "nope", "content": "?"},
                                                 {"type": "tool_result", "tool_use_id": "gone", "content": "?"},
                                                 {"type": "tool_result", "content": "?"}]}, **env},
        {"type": "user", "message": {"content": "   "}, **env},
        {"type": "user", "message": "not an object", **env},
    ))
    stats = LineStats()
    read = read_file(path, stats)
    assert [(c.id, c.name, c.input) for c in _all_calls(read)] == [
        ("", "Read", {"file_path": "/w/a"}), ("", "Read", {"file_path": "/w/b"}), ("N", "", {"x": 1}), ("I", "Read", {}),
        ("X", "Read", {"file_path": "/w/x"}), ("Y", "Bash", {"command": "ls"})]
    assert stats.orphan_results == 3
    assert stats.skipped == Counter({"ignored:system": 1, "user_without_prompt": 2}) and stats.used == 5


def test_real_stream_json_transcript(real_transcripts):
    stats = LineStats()
    read = read_file(real_transcripts / "stream-json-2.1.154.ndjson", stats)
    assert read.format == STREAM_JSON and read.roots == ["/work"]
    calls = _all_calls(read)
    assert [(c.name, c.input, c.result) for c in calls] == [
        ("Read", {"file_path": "/work/sample.txt"}, "1\thello from a file\n2\t")]
    assert stats.read == 8 and stats.used == 5
    assert dict(stats.skipped) == {"ignored:system": 2, "ignored:result": 1}


def test_real_on_disk_session_transcript(real_transcripts):
    stats = LineStats()
    read = read_file(real_transcripts / "on-disk-session-1.0.98.jsonl", stats)
    assert read.format == SESSION and read.roots == ["/path/to/Demo"]
    calls = _all_calls(read)
    assert Counter(c.name for c in calls) == Counter({
        "Bash": 61, "Write": 33, "Read": 28, "TodoWrite": 19, "Edit": 8, "BashOutput": 5, "Task": 5, "KillBash": 3,
        "MultiEdit": 3, "Glob": 2})
    assert sum(c.is_error for c in calls) == 23 and all(c.result is not None for c in calls)
    assert stats.read == 438 and stats.orphan_results == 0
    assert dict(stats.skipped) == {"ignored:summary": 1, "meta": 1}
    side = [t for t in read.trajectories if t.sidechain]
    main = [t for t in read.trajectories if not t.sidechain]
    assert len(side) == 5 and all(t.task for t in side)
    task_prompts = sorted(c.input["prompt"] for c in calls if c.name == "Task")
    assert sorted(t.task for t in side) == sorted(p.strip() for p in task_prompts)
    assert [t.task for t in main] == ["create TODO app by Next.js", "Thanks! Please update CLAUDE.md for current changes"]
    assert sum(len(t.calls) for t in side) == 156 and sum(len(t.calls) for t in main) == 11
