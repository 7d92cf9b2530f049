"""Options as data: a stage's options are one dataclass, and a run's resolved options are a JSON file (config.json)
that can be read back, so a run can be repeated exactly.

Each option is declared once, as a dataclass field made by option(): its default and its help. add_options builds
the command line from those fields (--kebab-case, the field's type, default and help), so no parser restates a
default.

A config file holds the dataclass's fields as JSON values: paths as strings, tuples as lists. Reading one back checks
every key and value against the field's declared type, so a typo or a wrong type is a one-line error naming the key,
never a traceback minutes into the run.
"""
from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from dataclasses import MISSING, field, fields
from pathlib import Path

from harness import FlipError
from harness.sandbox import SANDBOX_HELP, SANDBOXES


def _json_value(value):
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    return value


def config_text(options, names) -> str:
    """The JSON of the named fields of a dataclass instance, in declaration order: the same options, the same bytes."""
    return json.dumps({name: _json_value(getattr(options, name)) for name in names}, indent=2) + "\n"


def default_config(cls, names) -> dict:
    """The named fields' defaults, as config_text writes their values (fields without a default left out)."""
    return {f.name: _json_value(f.default) for f in fields(cls) if f.name in names and f.default is not MISSING}


def _typed(value, kind, key: str):
    """value as a field declared `kind` holds it, or FlipError naming the key."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(kind):
            return None
        kinds = [k for k in typing.get_args(kind) if k is not type(None)]
        return _typed(value, kinds[0], key) if len(kinds) == 1 else value
    if typing.get_origin(kind) is tuple:
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return tuple(value)
        raise FlipError(f"{key}: expected a list of strings, not {json.dumps(value)}")
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is Path and isinstance(value, str):
        return Path(value)
    if kind in (int, str, bool) and type(value) is kind:
        return value
    raise FlipError(f"{key}: expected {getattr(kind, '__name__', kind)}, not {json.dumps(value)}")


def read_config(path: str | Path, cls, names) -> dict:
    """{field: value} from a config file of `cls`'s named fields; unknown keys and ill-typed values are refused."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise FlipError(f"--config {path}: not a readable JSON file ({type(err).__name__})") from None
    if not isinstance(data, dict):
        raise FlipError(f"--config {path}: expected a JSON object of options")
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise FlipError(f"--config {path}: unknown key {unknown[0]!r} (known: {', '.join(names)})")
    values = {key: _typed(value, hints[key], f"--config {path}: {key}") for key, value in data.items()}
    for spec in fields(cls):
        choices = spec.metadata.get("argparse", {}).get("choices")
        if spec.name in values and choices is not None and values[spec.name] not in choices:
            raise FlipError(f"--config {path}: {spec.name}: {json.dumps(values[spec.name])} is not one of "
                            f"{', '.join(choices)}")
    return values


def field_names(cls, exclude=()) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls) if f.name not in exclude)


def option(default=MISSING, help: str = "", *, old_names: tuple[str, ...] = (), **argparse_kwargs):
    """A dataclass field that is also a command-line option. argparse_kwargs override what add_options derives (a
    `type` that parses 0 as None, `choices`, `required`...). old_names: the names an option that takes a value had
    before (field names, e.g. "max_tokens"); users' scripts still pass them, so they still parse, hidden from --help
    and noted on stderr as deprecated."""
    return field(default=default, metadata={"help": help, "argparse": argparse_kwargs, "old_names": old_names})


DEVICES = ("auto", "cpu", "cuda", "mps")


def device_option():
    """The --device every model-running command takes, declared once."""
    return option("auto", "auto (CUDA when present), cpu, cuda, mps", choices=DEVICES)


def dialect_option():
    """The --dialect of the commands that export, train, evaluate or run a student (contracts/dialects.yaml), declared
    once: the tool field names and the system prompt it is trained and prompted with."""
    from harness.contracts import dialect_names, dialects

    return option(dialects()[0], "tool field names and system prompt: apr-prompt (apr-code's prompt: file_edit "
                                 "old/new) or apr-runtime (apr-code's tools: file_edit old_string/new_string)",
                  choices=dialect_names())


RUNTIMES = ("claude", "apr")


def runtime_option():
    """The --runtime of the commands that run agents: whose tool semantics and result texts answer the calls."""
    return option("claude", "claude: Claude Code's result texts, what the exporter trains on (harness/runtime.py); "
                            "apr: apr-code's own runtime (contracts/apr_runtime.yaml: substring grep, the command rule, "
                            "30 s, 8,192 bytes)", choices=RUNTIMES)


def sandbox_option():
    """The --sandbox of every command that runs agents (flip agent, run, tune), declared once."""
    return option(SANDBOXES[0], SANDBOX_HELP, choices=SANDBOXES)


MODEL_HELP = "smollm2-135m, gemma3-270m, a local HF directory, or a .gguf file"


def force_option(command: str, what: str = "--out"):
    """The --force of a command that writes an output directory: what it allows and what it never does, said once."""
    return option(False, f"write into a non-empty {what} holding files flip {command} did not write: the outputs go "
                         "beside them; a file there that no run of flip " + command + " recorded writing (or one "
                         "changed since) is never replaced (refused), and nothing is deleted")


def adapter_option():
    """The --adapter of the commands that run a model: a student as base + adapter."""
    return option(None, "a peft adapter directory to apply on top of --model")


def names_list(text: str) -> tuple[str, ...]:
    """A comma-separated option: `q_proj, v_proj` -> ("q_proj", "v_proj")."""
    return tuple(t.strip() for t in text.split(",") if t.strip())


def positive_or_none(text: str) -> int | None:
    """An optional count: 0 (or less) means none."""
    value = int(text)
    return value if value > 0 else None


def path_or_none(text: str) -> Path | None:
    """An optional path: an empty one means none (Path("") would be the current directory)."""
    return Path(text) if text else None


def _argument(spec, kind) -> dict:
    """argparse keywords for one field: its type, its default (required when it has none) and its help."""
    kwargs = {"help": spec.metadata["help"]}
    if spec.default is MISSING:
        kwargs["required"] = True
    else:
        kwargs["default"] = spec.default
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    if kind is bool:
        kwargs["action"] = argparse.BooleanOptionalAction if spec.default else "store_true"
    elif typing.get_origin(kind) is tuple:
        kwargs["type"] = names_list
        kwargs["default"] = ",".join(spec.default)  # shown as typed; argparse parses a string default with `type`
    elif kind is not str:
        kwargs["type"] = kind
    return {**kwargs, **spec.metadata["argparse"]}


def flag(name: str) -> str:
    """The command-line option of a field name: max_length -> --max-length."""
    return "--" + name.replace("_", "-")


class _OldName(argparse.Action):
    """An option's deprecated name: sets the option's own field, and says on stderr which name to use now."""

    def __init__(self, option_strings, dest, new_name: str, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.new_name = new_name

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: {option_string} is deprecated; it is {self.new_name} now", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_options(parser, cls) -> None:
    """One --kebab-case option per field of `cls` declared with option(), in declaration order, and its old names."""
    hints = typing.get_type_hints(cls)
    for spec in fields(cls):
        if "help" in spec.metadata:
            argument = _argument(spec, hints[spec.name])
            parser.add_argument(flag(spec.name), **argument)
            for old in spec.metadata["old_names"]:
                # the option's own parsing; no default of its own (the new name's applies) and no line in --help
                parser.add_argument(flag(old), action=_OldName, new_name=flag(spec.name), dest=spec.name,
                                    type=argument.get("type"), default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def options_of(cls, args, **extra):
    """An instance of `cls` from parsed arguments: every option field read from args."""
    values = {spec.name: getattr(args, spec.name) for spec in fields(cls) if "help" in spec.metadata}
    return cls(**{**values, **extra})
