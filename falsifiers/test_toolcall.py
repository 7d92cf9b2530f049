"""Falsifiers of the apr-code `<tool_call>` format (harness/toolcall.py) against the runtime rules of docs/apr-code.md §1."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from harness.toolcall import ToolCall, call_errors, is_valid, parse_tool_calls, render_tool_call

json_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
inputs = st.dictionaries(st.sampled_from(["path", "command", "pattern", "old", "new", "x"]), json_text, max_size=4)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["file_read", "shell", "grep", "weird"]), inputs)
def test_render_then_parse_round_trips_one_call(name, tool_input):
    text = render_tool_call(name, tool_input)
    assert text.startswith('<tool_call>\n{"name": ') and text.endswith("\n</tool_call>")
    calls = parse_tool_calls(text)
    assert [(c.name, c.input, c.closed) for c in calls] == [(name, tool_input, True)]


def test_unclosed_final_block_runs_to_the_end_as_one_call():
    text = 'x <tool_call>{"name": "shell", "input": {"command": "ls"}}</tool_call> y <tool_call>\n{"name": "glob", "input": {"pattern": "*"}}\n'
    calls = parse_tool_calls(text)
    assert [(c.name, c.closed) for c in calls] == [("shell", True), ("glob", False)]
    assert parse_tool_calls('<tool_call>{"name": "a"} <tool_call>{"name": "b"}') == []


def test_parsing_stops_at_the_first_invalid_block():
    text = ('<tool_call>{"name": "shell", "input": {"command": "a"}}</tool_call>'
            '<tool_call>{not json}</tool_call>'
            '<tool_call>{"name": "shell", "input": {"command": "b"}}</tool_call>')
    assert [c.input["command"] for c in parse_tool_calls(text)] == ["a"]
    assert parse_tool_calls('<tool_call>{"name": 3}</tool_call>') == []
    assert parse_tool_calls('<tool_call>["shell"]</tool_call>') == []


def test_input_defaults_to_an_empty_object():
    assert parse_tool_calls('<tool_call>{"name": "rag"}</tool_call>')[0].input == {}
    assert parse_tool_calls('<tool_call>{"name": "rag", "input": null}</tool_call>')[0].input == {}


def test_calls_are_validated_against_the_contract_schemas():
    assert call_errors(ToolCall("file_edit", {"path": "a", "old": "x", "new": "y"})) == []
    assert call_errors(ToolCall("file_edit", {"path": "a", "new": "y"}))  # old is required
    assert call_errors(ToolCall("shell", {"command": "ls", "cwd": "/"}))  # no extra fields
    assert call_errors(ToolCall("shell", {"command": ""}))
    assert call_errors(ToolCall("memory", {"action": "forget"}))
    assert call_errors(ToolCall("nope", {})) == ["unknown tool 'nope'"]
    assert call_errors(ToolCall("shell", ["ls"])) == ["input is list, not an object"]
    assert is_valid(ToolCall("grep", {"pattern": "fn", "case_insensitive": True}))


def test_tag_text_inside_strings_never_splits_a_call():
    """A file that mentions `</tool_call>` is written as `<\\/tool_call>` (the same JSON string), so the runtime's
    scanner does not end the block early; a string that mentions `<tool_call>` does not open a block; non-ASCII text
    stays literal UTF-8 (fewer tokens than \\u escapes, and what the student should write)."""
    tricky = {"path": "notes.md", "content": "see </tool_call> and <tool_call> here, café"}
    text = render_tool_call("file_write", tricky)
    assert text.count("</tool_call>") == 1 and "café" in text
    second = render_tool_call("shell", {"command": "echo <tool_call>"})
    calls = parse_tool_calls(text + "\n" + second + "\n" + render_tool_call("file_read", {"path": "a.py"}))
    assert [(c.name, c.input) for c in calls] == [("file_write", tricky), ("shell", {"command": "echo <tool_call>"}),
                                                  ("file_read", {"path": "a.py"})]
