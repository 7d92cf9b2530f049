"""apr-code's real tool runtime as data (contracts/apr_runtime.yaml, read from paiml/batuta): its declared input
schemas, limits and result texts, the shell command rule, and what they mean for training targets.

A training target must be a call that runtime executes as the teacher's call was executed:
* `target_refusal` names why a call is not (its reason is counted in export_stats.json `runtime_refused`);
* `rewrite_target` makes the one exact, safe rewrite known (`cd . && X` in the working directory is `X`), counted in
  `runtime_rewritten`.
The rules are the runtime's own: the command rule's substrings, file_read's line and byte limits, grep's substring
matching (a pattern with a regular-expression metacharacter searches something else there).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from harness.contracts import apr_runtime

# The characters that make a pattern mean something else as a regular expression than as a substring (Python's and
# Rust regex's common metacharacters): a pattern without any is the same search under both.
REGEX_METACHARACTERS = frozenset(".^$*+?{}[]()|\\")
CD_HERE = re.compile(r"\Acd \.(?:/)? && ")  # the working directory, as the scrubber writes it, then `&&`


@lru_cache(maxsize=None)
def runtime_schemas() -> dict[str, dict]:
    """apr-code tool -> the input schema its runtime declares (ToolDefinition.input_schema), as JSON Schema."""
    return {name: dict(tool["input_schema"]) for name, tool in apr_runtime()["tools"].items()}


def tool_contract(tool: str) -> dict:
    return apr_runtime()["tools"][tool]


def limit(tool: str, name: str) -> int:
    return tool_contract(tool)["limits"][name]


def text(tool: str, name: str) -> str:
    return tool_contract(tool)["texts"][name]


def command_refusal(command: str) -> str | None:
    """The first substring of the shell's command rule that `command` holds, None when it passes."""
    for needle in tool_contract("shell")["command_rule"]["refuses_substrings"]:
        if needle in command:
            return needle
    return None


def target_refusal(tool: str, tool_input: dict, result: str | None) -> str | None:
    """Why apr-code's runtime would not execute this call as the teacher's was executed (`tool:reason`), or None.
    `result` is the teacher's result text: a read whose result alone is over the byte limit read a file the runtime
    refuses."""
    if tool == "shell" and command_refusal(tool_input["command"]) is not None:
        return "shell:metacharacters"
    if tool == "file_read":
        if tool_input.get("limit", 0) > limit("file_read", "max_lines"):
            return "file_read:limit_over_max_lines"
        if result is not None and len(result.encode("utf-8", "replace")) > limit("file_read", "max_bytes"):
            return "file_read:file_over_max_bytes"
    if tool == "grep" and REGEX_METACHARACTERS.intersection(tool_input["pattern"]):
        return "grep:regex_pattern"
    return None


@dataclass(frozen=True)
class Rewrite:
    input: dict
    reason: str


def rewrite_target(tool: str, tool_input: dict) -> Rewrite | None:
    """An exact rewrite that makes the call executable, or None. `cd . && X`: the shell already runs in the working
    directory, so X alone does the same; made only when X itself passes the command rule."""
    if tool != "shell":
        return None
    command = tool_input["command"]
    match = CD_HERE.match(command)
    if match is None:
        return None
    rest = command[match.end():]
    if not rest.strip() or command_refusal(rest) is not None:
        return None
    return Rewrite({**tool_input, "command": rest}, "shell:cd_working_dir")
