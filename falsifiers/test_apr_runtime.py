"""apr-code's real runtime (contracts/apr_runtime.yaml): the differences table docs/apr-code.md holds is generated from
it, the trained system prompt's calls validate against its declared schemas, and export trains only calls it runs.

Regenerate the table after a change to the contract, the schemas, the tool map or a prompt:
    FLIP_REGENERATE_DOCS=1 .venv/bin/python -m pytest falsifiers/test_apr_runtime.py -k docs_table
"""
from __future__ import annotations

import os

import pytest

from harness import apr_runtime as apr
from harness.contracts import ROOT, dialect_names, system_prompt, tool_map, tool_schemas

DOC = ROOT / "docs" / "apr-code.md"


def _section() -> str:
    return apr.generated_section({d: (tool_schemas(d), system_prompt(d)) for d in dialect_names()}, tool_map())


def test_docs_table_is_generated_from_the_runtime_contract():
    """docs/apr-code.md's differences table is exactly what the contract, the schemas, the tool map and the prompts
    generate; FLIP_REGENERATE_DOCS=1 rewrites it in place."""
    text = DOC.read_text(encoding="utf-8")
    begin, end = text.index(apr.TABLE_BEGIN), text.index(apr.TABLE_END) + len(apr.TABLE_END)
    generated = _section()
    if os.environ.get("FLIP_REGENERATE_DOCS") == "1" and not DOC.parent.is_symlink():  # never in a mutant's copy
        DOC.write_text(text[:begin] + generated + text[end:], encoding="utf-8")
        text = DOC.read_text(encoding="utf-8")
        end = begin + len(generated)
    assert text[begin:end] == generated, "docs/apr-code.md's table is stale: FLIP_REGENERATE_DOCS=1 regenerates it"
    # the finding the table exists for: the default dialect's file_edit fields are not the runtime's
    assert "| file_edit | system prompt (apr-prompt) | path*, old*, new* |" in generated
    assert "| file_edit | schema fields (* required) | path*, old*, new* | path*, old_string*, new_string* |" \
        in generated


def test_the_runtime_dialect_prompt_calls_validate_against_the_runtime_schemas():
    """Every tool the apr-runtime dialect's system prompt lists, called with the fields it marks required, validates
    against the input schema apr-code's runtime declares, and names no field that runtime does not declare; the
    dialect's own schemas require exactly what the runtime requires. The apr-prompt dialect's prompt fails this for
    file_edit and memory only: its known differences, recorded in the table."""
    runtime = apr.runtime_schemas()

    def failures(dialect):
        bad = {}
        for tool, (fields, required) in apr.prompt_tools(system_prompt(dialect)).items():
            schema = runtime[tool]
            errors = apr.schema_errors(apr.example_call(fields, required, schema), schema)
            errors += [f"{f} undeclared" for f in fields if f not in schema["properties"]]
            if sorted(required) != sorted(schema["required"]):
                errors.append(f"required {required} != {schema['required']}")
            if errors:
                bad[tool] = errors
        return bad

    listed = apr.prompt_tools(system_prompt("apr-runtime"))
    assert set(listed) == set(runtime)
    assert failures("apr-runtime") == {}
    for tool, schema in tool_schemas("apr-runtime").items():
        assert sorted(schema["required"]) == sorted(runtime[tool]["required"]), tool
    assert set(failures("apr-prompt")) == {"file_edit", "memory"}


@pytest.mark.helper
def test_every_contract_entry_names_its_source():
    contract = apr.apr_runtime()
    assert contract["repo"] == "paiml/batuta" and len(contract["snapshot"]) == 40
    for name, tool in contract["tools"].items():
        assert tool["path"].startswith("src/agent/") and len(tool["commit"]) == 40, name
    assert set(contract["tools"]) == set(tool_schemas())


@pytest.mark.parametrize("command, refused", [
    ("cargo test", None), ("cargo test | tail", "|"), ("a; b", ";"), ("a && b", "&&"), ("a || b", "|"),
    ("echo `id`", "`"), ("echo $(id)", "$("), ("echo $HOME", None), ("cat > f << 'EOF'\nx\nEOF", None),
])
def test_the_command_rule_is_the_runtimes(command, refused):
    """The shell command rule refuses exactly the runtime's substrings (`;`, `|`, `&&`, `||`, backtick, `$(`)."""
    assert apr.command_refusal(command) == refused


@pytest.mark.helper
def test_export_rules_refuse_and_rewrite_exactly():
    """A call the runtime would refuse or run differently gets its reason; `cd . && X` becomes X only when X passes."""
    assert apr.target_refusal("shell", {"command": "ls | wc -l"}, "3") == "shell:metacharacters"
    assert apr.target_refusal("shell", {"command": "cargo test"}, "ok") is None
    assert apr.target_refusal("file_read", {"path": "a", "limit": 2001}, "x") == "file_read:limit_over_max_lines"
    assert apr.target_refusal("file_read", {"path": "a", "limit": 2000}, "x") is None
    assert apr.target_refusal("file_read", {"path": "a"}, "x" * (128 * 1024 + 1)) == "file_read:file_over_max_bytes"
    assert apr.target_refusal("file_read", {"path": "a"}, "x" * (128 * 1024)) is None
    assert apr.target_refusal("grep", {"pattern": r"PAGE_SIZE\s*="}, "", "apr-runtime") == "grep:regex_pattern"
    assert apr.target_refusal("grep", {"pattern": r"PAGE_SIZE\s*="}, "") is None  # apr-prompt's grep is a regex
    assert apr.target_refusal("grep", {"pattern": "def mean"}, "") is None
    assert apr.rewrite_target("shell", {"command": "cd . && cargo test"}).input == {"command": "cargo test"}
    assert apr.rewrite_target("shell", {"command": "cd . && cargo test | tail"}) is None
    assert apr.rewrite_target("shell", {"command": "cd sub && cargo test"}) is None
    assert apr.rewrite_target("file_read", {"path": "cd . && x"}) is None
