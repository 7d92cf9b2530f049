"""Falsifiers of `flip export` on sessions: refused calls, calls their tool rejected, resumed sessions."""
from __future__ import annotations

import json

from harness.contracts import system_prompt
from harness.toolcall import call_errors, parse_tool_calls

from export_helpers import _export, _samples, _stream, _session


# --------------------------------------------------------------------------------------- refused calls, resumed sessions

REFUSED = "The user doesn't want to proceed with this tool use. The tool use was rejected (eg. if it was a file edit, " \
          "the new_string was NOT written to the file). STOP what you are doing and wait for the user to tell you how to proceed."


def test_refused_calls_are_counted_never_targets_and_later_steps_stay(tmp_path):
    """A call a person refused (Claude Code's rejection texts, a result line's permission_denials, a record's
    tool_result_meta) never ran: it is counted under `refused` as part of `remappable`, is neither a target nor an
    observation, and the trajectory's later steps are still exported."""
    cwd = "/w"
    _session(tmp_path / "in" / "a.jsonl", cwd, [
        ("Edit", {"file_path": "/w/a.py", "old_string": "x", "new_string": "y"}, REFUSED, True),
        ("Read", {"file_path": "/w/a.py"}, "1\tx", False),
        ("Bash", {"command": "rm -rf /"},
         "<tool_use_error>Permission to use Bash with command rm -rf / has been denied.</tool_use_error>", True),
        ("Bash", {"command": "pytest"}, "Exit code 1\nfailed", True)], task="fix a.py")
    _stream(tmp_path / "in" / "b.ndjson", cwd, [("Bash", {"command": "make deploy"}, "Error"),
                                                ("Bash", {"command": "make test"}, "ok")], task="test it")
    lines = (tmp_path / "in" / "b.ndjson").read_text().splitlines()
    lines[3] = json.dumps({**json.loads(lines[3]), "tool_result_meta": [{"tool_use_id": "t0",
                                                                          "non_execution_kind": "user-rejected"}]})
    lines.append(json.dumps({"type": "result", "subtype": "success", "session_id": "s",
                             "permission_denials": [{"tool_name": "Bash", "tool_use_id": "t0", "tool_input": {}}]}))
    (tmp_path / "in" / "b.ndjson").write_text("\n".join(lines) + "\n")
    stats = _export([tmp_path / "in"], tmp_path / "out", mode="full")
    assert stats["raw_tool_use"] == stats["remappable"] + sum(stats["unmappable"].values()) == 6
    assert stats["refused"] == {"Bash": 2, "Edit": 1}
    text = (tmp_path / "out" / "apr_code_sft_full.jsonl").read_text()
    assert "rm -rf" not in text and "make deploy" not in text and '"old": "x"' not in text
    responses = [parse_tool_calls(s["response"])[0] for s in _samples(tmp_path / "out" / "apr_code_sft_full.jsonl")
                 if not s["metadata"].get("final")]
    assert [(c.name, c.input) for c in responses] == [("file_read", {"path": "a.py"}), ("shell", {"command": "pytest"}),
                                                       ("shell", {"command": "make test"})]


MISSING = "<tool_use_error>File does not exist. Note: your current working directory is /w.</tool_use_error>"


def test_calls_their_tool_rejected_are_observations_never_targets(tmp_path):
    """A call its tool rejected (is_error on a Read, Edit, Write, Grep or Glob: a missing file, an old string not in
    the file) is counted under `failed`, never trained as a response, and shown to the later steps, which are exported
    (the recovery is what the student should learn). A failing shell command stays a target. In curated mode the
    trajectory's first call is its first call that did not fail."""
    cwd = "/w"
    _session(tmp_path / "in" / "a.jsonl", cwd, [
        ("Read", {"file_path": "/w/src/main.py"}, MISSING, True),
        ("Glob", {"pattern": "**/*.py"}, "/w/app/core.py", False),
        ("Edit", {"file_path": "/w/app/core.py", "old_string": "x = 1", "new_string": "x = 2"},
         "<tool_use_error>String to replace not found in file.</tool_use_error>", True),
        ("Bash", {"command": "pytest"}, "Exit code 1\nfailed", True)], task="fix the constant")
    stats = _export([tmp_path / "in"], tmp_path / "out", mode="all")
    assert stats["failed"] == {"Edit": 1, "Read": 1} and stats["refused"] == {}
    full = _samples(tmp_path / "out" / "apr_code_sft_full.jsonl")
    calls = [parse_tool_calls(s["response"])[0] for s in full if not s["metadata"].get("final")]
    assert [c.name for c in calls] == ["glob", "shell"]
    assert "File does not exist" in full[0]["instruction"] and "String to replace not found" in full[1]["instruction"]
    _export([tmp_path / "in"], tmp_path / "curated", mode="curated")  # alone: the exporter reads first actions only
    for out in ("out", "curated"):
        curated = _samples(tmp_path / out / "apr_code_sft_curated.jsonl")
        assert [parse_tool_calls(s["response"])[0].name for s in curated] == ["glob"], out


def test_a_session_resumed_into_a_second_file_yields_each_sample_once(tmp_path):
    cwd = "/w"
    calls = [("Read", {"file_path": "/w/a.py"}, "1\tx", False), ("Bash", {"command": "pytest"}, "ok", False)]
    first = _session(tmp_path / "in" / "one.jsonl", cwd, calls, task="fix a.py")
    more = [("Read", {"file_path": "/w/b.py"}, "1\ty", False)]
    resumed = _session(tmp_path / "in" / "two.jsonl", cwd, calls + more, task="fix a.py")
    assert resumed[:len(first)] == first  # the second file repeats the first one's records, then goes on
    alone = _export([tmp_path / "in" / "two.jsonl"], tmp_path / "alone", mode="full")
    both = _export([tmp_path / "in"], tmp_path / "both", mode="full")
    assert both["samples"]["full"] == alone["samples"]["full"] == 3
    assert both["duplicates"]["full"] == 2


def test_calls_apr_code_runtime_would_not_run_are_never_targets(tmp_path):
    """A call apr-code's runtime (contracts/apr_runtime.yaml) would refuse or run differently (a command its command
    rule refuses, a regular-expression grep on a substring matcher, a read over its line limit) is counted by reason
    under `runtime_refused`, never trained, and stays an observation; `cd <working dir> && X` is trained as X, counted
    under `runtime_rewritten`; the accounting identity holds with both."""
    cwd = "/w"
    _session(tmp_path / "in" / "a.jsonl", cwd, [
        ("Bash", {"command": "ls | wc -l"}, "3", False),
        ("Grep", {"pattern": "PAGE_SIZE\\s*=", "path": "/w"}, "Found 1 file\n/w/a.py", False),
        ("Read", {"file_path": "/w/a.py", "limit": 5000}, "1\tx", False),
        ("Bash", {"command": "cd /w && cargo test"}, "ok", False),
        ("Read", {"file_path": "/w/a.py", "limit": 2000}, "1\tx", False)], task="fix a.py")
    regex = _export([tmp_path / "in"], tmp_path / "regex", mode="full")  # apr-prompt: its grep takes a regex
    assert regex["runtime_refused"] == {"file_read:limit_over_max_lines": 1, "shell:metacharacters": 1}
    assert ("grep", {"pattern": "PAGE_SIZE\\s*=", "path": "."}) in [
        (c.name, c.input) for c in (parse_tool_calls(s["response"])[0]
                                    for s in _samples(tmp_path / "regex" / "apr_code_sft_full.jsonl")
                                    if not s["metadata"].get("final"))]
    stats = _export([tmp_path / "in"], tmp_path / "out", mode="full", dialect="apr-runtime")
    assert stats["runtime_refused"] == {"file_read:limit_over_max_lines": 1, "grep:regex_pattern": 1,
                                        "shell:metacharacters": 1}
    assert stats["runtime_rewritten"] == {"shell:cd_working_dir": 1}
    assert stats["candidates"] == stats["remappable"] - sum(stats["runtime_refused"].values()) \
        + stats["final_candidates"] - sum(stats["finals_dropped"].values())
    full = _samples(tmp_path / "out" / "apr_code_sft_full.jsonl")
    calls = [(c.name, c.input) for c in (parse_tool_calls(s["response"])[0] for s in full
                                         if not s["metadata"].get("final"))]
    assert calls == [("shell", {"command": "cargo test"}), ("file_read", {"path": "a.py", "limit": 2000})]
    assert "ls | wc -l" in full[0]["instruction"]  # the teacher ran it: an observation


def test_the_apr_runtime_dialect_trains_the_runtimes_field_names(tmp_path):
    """--dialect apr-runtime: every file_edit target and observation carries old_string/new_string (never old/new),
    every response validates in that dialect's schemas and against apr-code's declared ones, and the samples carry
    that dialect's system prompt; the default dialect keeps old/new."""
    from harness.apr_runtime import runtime_schemas, schema_errors

    cwd = "/w"
    _session(tmp_path / "in" / "a.jsonl", cwd, [
        ("Read", {"file_path": "/w/a.py"}, "1\tx = 1", False),
        ("Edit", {"file_path": "/w/a.py", "old_string": "x = 1", "new_string": "x = 2"}, "ok", False),
        ("Bash", {"command": "pytest"}, "ok", False)], task="fix a.py")
    _export([tmp_path / "in"], tmp_path / "runtime", mode="full", dialect="apr-runtime")
    full = _samples(tmp_path / "runtime" / "apr_code_sft_full.jsonl")
    calls = [parse_tool_calls(s["response"])[0] for s in full if not s["metadata"].get("final")]
    assert ("file_edit", {"path": "a.py", "old_string": "x = 1", "new_string": "x = 2"}) in [(c.name, c.input)
                                                                                             for c in calls]
    for call in calls:
        assert call_errors(call, "apr-runtime") == [] and schema_errors(call.input, runtime_schemas()[call.name]) == []
    assert all(s["system"] == system_prompt("apr-runtime") for s in full)
    assert '"old_string": "x = 1"' in full[-1]["instruction"]  # the observations speak the dialect too
    assert not any('"old": "x = 1"' in s["instruction"] + s["response"] for s in full)
    _export([tmp_path / "in"], tmp_path / "prompt", mode="full")
    edits = [parse_tool_calls(s["response"])[0] for s in _samples(tmp_path / "prompt" / "apr_code_sft_full.jsonl")
             if s["metadata"]["tool"] == "file_edit"]
    assert [c.input for c in edits] == [{"path": "a.py", "old": "x = 1", "new": "x = 2"}]
