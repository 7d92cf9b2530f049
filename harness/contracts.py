"""Loads the data in contracts/: the tool map, the apr-code tool schemas, the system prompt, the redaction patterns,
the training recipes. Also where the bundled fixtures are.

These are data, not code: each table lives in exactly one file there, and every stage reads it through here. In a
checkout they are the repository's contracts/ and fixtures/; an installed wheel carries both as package data
(harness.contracts_data, harness.fixtures_data: pyproject.toml maps the two folders), so `flip` works anywhere.
"""
from __future__ import annotations

import importlib.resources
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _data_dir(package: str, folder: str) -> Path:
    checkout = ROOT / folder
    if (checkout / "__init__.py").is_file():
        return checkout
    return Path(str(importlib.resources.files(package)))


CONTRACTS = _data_dir("harness.contracts_data", "contracts")
FIXTURES = _data_dir("harness.fixtures_data", "fixtures")
# The hand-written tasks (prompt, workspace, test) and the teacher's recorded transcripts of them: flip tune splits them
# into training and validation (harness.tasks.validation_split); flip run exports their transcripts by default.
FIXTURE_TASKS = FIXTURES / "tasks"
FIXTURE_TRANSCRIPTS = FIXTURES / "transcripts"


@dataclass(frozen=True)
class ToolMapping:
    tool: str  # the apr-code tool name
    fields: dict[str, str]  # Claude Code input key -> apr-code input key


@lru_cache(maxsize=None)
def tool_map() -> dict[str, ToolMapping]:
    raw = json.loads((CONTRACTS / "tool_map.json").read_text(encoding="utf-8"))
    return {name: ToolMapping(entry["tool"], dict(entry["fields"])) for name, entry in raw.items() if not name.startswith("$")}


@lru_cache(maxsize=None)
def dialects() -> tuple[str, dict[str, dict]]:
    """(the default dialect, {name: dialect}) from contracts/dialects.yaml: the field names a student is trained and
    run with."""
    import yaml

    raw = yaml.safe_load((CONTRACTS / "dialects.yaml").read_text(encoding="utf-8"))
    return raw["default"], raw["dialects"]


def dialect_names() -> tuple[str, ...]:
    return tuple(dialects()[1])


def _dialect(dialect: str | None) -> dict:
    default, table = dialects()
    return table[dialect or default]


@lru_cache(maxsize=None)
def tool_schemas(dialect: str | None = None) -> dict[str, dict]:
    """apr-code tool name -> its JSON Schema in a dialect (the default: contracts/schemas as they are)."""
    schemas = {
        path.name.removesuffix(".schema.json"): json.loads(path.read_text(encoding="utf-8"))
        for path in sorted((CONTRACTS / "schemas").glob("*.schema.json"))
    }
    spec = _dialect(dialect)
    for tool in spec["runtime_schemas"]:
        declared = apr_runtime()["tools"][tool]
        schemas[tool] = {"title": tool, "description": declared["description"], **declared["input_schema"]}
    for tool, renames in spec["rename"].items():
        schemas[tool] = renamed_schema(schemas[tool], renames)
    return schemas


def renamed_schema(schema: dict, renames: dict[str, str]) -> dict:
    """The schema with its properties renamed (order, descriptions and constraints kept)."""
    return {**schema,
            "properties": {renames.get(k, k): v for k, v in schema["properties"].items()},
            "required": [renames.get(k, k) for k in schema.get("required", [])]}


def runtime_observations(dialect: str | None) -> bool:
    """Whether the dialect shows results in apr-code's runtime texts (else in the teacher's own)."""
    return _dialect(dialect)["observations"] == "runtime"


def dialect_renames(dialect: str | None) -> dict[str, dict[str, str]]:
    """tool -> {project field: the dialect's field}; empty for the default dialect."""
    return _dialect(dialect)["rename"]


def dialect_input(tool: str, tool_input: dict, dialect: str | None) -> dict:
    """A call in the project's field names, in a dialect's."""
    renames = dialect_renames(dialect).get(tool, {})
    return {renames.get(k, k): v for k, v in tool_input.items()}


@lru_cache(maxsize=None)
def system_prompt(dialect: str | None = None) -> str:
    return (CONTRACTS / _dialect(dialect)["system_prompt"]).read_text(encoding="utf-8").strip()


def dialect_of_system(system: str | None) -> str:
    """The dialect whose system prompt a sample carries (flip export writes each sample's `system`); the default
    dialect for a sample with none or another one."""
    default, table = dialects()
    return next((name for name in table if system_prompt(name) == (system or "").strip()), default)


@lru_cache(maxsize=None)
def refusal_prefixes() -> tuple[str, ...]:
    """The texts with which Claude Code answers a call that a person or a permission rule refused."""
    raw = json.loads((CONTRACTS / "refusals.json").read_text(encoding="utf-8"))
    return tuple(raw["prefixes"])


@lru_cache(maxsize=None)
def recipes() -> tuple[str, dict[str, dict]]:
    """(the default recipe's name, {name: recipe}) from contracts/recipes.yaml."""
    import yaml

    raw = yaml.safe_load((CONTRACTS / "recipes.yaml").read_text(encoding="utf-8"))
    shared = raw.get("every_recipe") or {}
    return raw["default"], {name: {**shared, **recipe} for name, recipe in raw["recipes"].items()}


def default_recipe() -> dict:
    default, table = recipes()
    return table[default]


@dataclass(frozen=True)
class SecretPattern:
    name: str
    regex: re.Pattern
    group: int  # 0: replace the whole match; n: replace only group n
    needles: tuple[str, ...] = ()  # literals every match contains (lower-case when the regex ignores case)
    ignore_case: bool = False  # the regex's (?i), read once: a flag test per text costs more than the search

    def may_match(self, text: str, lowered: str | None) -> bool:
        """False only when the regex cannot match `text`: it holds none of the needles. `lowered` is `text.lower()`
        for an ASCII text, else None: under (?i) Unicode folds more than lower() does (the long s matches s, the Kelvin
        sign k), so a non-ASCII text is always searched with the regex itself."""
        if not self.needles:
            return True
        if not self.ignore_case:
            return any(needle in text for needle in self.needles)
        if lowered is None:
            return True
        return any(needle in lowered for needle in self.needles)


@lru_cache(maxsize=None)
def redaction() -> tuple[str, tuple[SecretPattern, ...]]:
    raw = json.loads((CONTRACTS / "redaction.json").read_text(encoding="utf-8"))
    patterns = []
    for entry in raw["patterns"]:
        regex = re.compile(entry["regex"])
        ignore_case = bool(regex.flags & re.IGNORECASE)
        needles = tuple(n.lower() if ignore_case else n for n in entry.get("needles", ()))
        patterns.append(SecretPattern(entry["name"], regex, int(entry.get("group", 0)), needles, ignore_case))
    return raw["placeholder"], tuple(patterns)


@lru_cache(maxsize=None)
def apr_runtime() -> dict:
    """apr-code's real tool runtime as its source declares it (contracts/apr_runtime.yaml; harness.apr_runtime)."""
    import yaml

    return yaml.safe_load((CONTRACTS / "apr_runtime.yaml").read_text(encoding="utf-8"))
