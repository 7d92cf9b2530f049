"""The apr-code `<tool_call>` format: render one call, parse model output by the apr-code runtime's rules, validate.

Runtime rules (docs/apr-code.md §1): scan for `<tool_call>` ... `</tool_call>`; an unclosed final block runs to the end of
the text; the body is whitespace-trimmed and parsed as JSON; `name` must be a string; `input` defaults to `{}`;
several blocks are several calls in order; parsing stops at the first block that is not valid JSON.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache

import jsonschema

from harness.contracts import tool_schemas

OPEN = "<tool_call>"
CLOSE = "</tool_call>"


@dataclass
class ToolCall:
    name: str
    input: dict = field(default_factory=dict)
    closed: bool = True  # False when the block ran to the end of the text without `</tool_call>`


def render_tool_call(name: str, tool_input: dict) -> str:
    """One literal block, `name` first (the reference put `input` first and students learned the wrong order)."""
    body = json.dumps({"name": name, "input": tool_input}, ensure_ascii=False)
    # A literal `</tool_call>` inside a string (a file that mentions the tag) would end the block early for the
    # runtime's scanner; `<\/` is the same JSON string, and the scanner does not see it.
    body = body.replace(CLOSE, "<\\/" + CLOSE[2:])
    return f"{OPEN}\n{body}\n{CLOSE}"


def _blocks(text: str):
    """Yield (body, closed) for every `<tool_call>` block, in order."""
    pos = 0
    while True:
        start = text.find(OPEN, pos)
        if start < 0:
            return
        body_start = start + len(OPEN)
        end = text.find(CLOSE, body_start)
        if end < 0:
            yield text[body_start:], False
            return
        yield text[body_start:end], True
        pos = end + len(CLOSE)


def parse_tool_calls(text: str) -> list[ToolCall]:
    calls = []
    for body, closed in _blocks(text):
        try:
            obj = json.loads(body.strip())
        except ValueError:
            break
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            break
        tool_input = obj.get("input")
        calls.append(ToolCall(obj["name"], {} if tool_input is None else tool_input, closed))
    return calls


@lru_cache(maxsize=None)
def _validator(tool: str, dialect: str | None = None) -> jsonschema.protocols.Validator:
    schema = tool_schemas(dialect)[tool]
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def call_errors(call: ToolCall, dialect: str | None = None) -> list[str]:
    """Why this call would not run in apr-code; empty when it is valid for its tool (in the dialect's schemas)."""
    if call.name not in tool_schemas(dialect):
        return [f"unknown tool {call.name!r}"]
    if not isinstance(call.input, dict):
        return [f"input is {type(call.input).__name__}, not an object"]
    return [e.message for e in _validator(call.name, dialect).iter_errors(call.input)]


def is_valid(call: ToolCall, dialect: str | None = None) -> bool:
    return not call_errors(call, dialect)
