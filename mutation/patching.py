"""Locating a mutant's target function and applying its patch there, and nowhere else in the module."""
from __future__ import annotations

import ast
from pathlib import Path

from mutation.claims import Mutant


class TargetError(Exception):
    """The mutant's target or patch does not fit the current code: the mutant is stale."""


def module_file(root: Path, module: str) -> Path:
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    raise TargetError(f"module {module!r} not found (looked for {base.relative_to(root)}.py and its __init__.py)")


def split_target(target: str) -> tuple[str, str]:
    module, sep, qualname = target.partition(":")
    if not sep or not module or not qualname:
        raise TargetError(f"target {target!r} is not 'module:function' or 'module:Class.method'")
    return module, qualname


def function_span(source: str, qualname: str) -> tuple[int, int]:
    """1-based inclusive line span of the def `qualname` (dotted through classes/functions), decorators included."""
    body = ast.parse(source).body
    node = None
    for part in qualname.split("."):
        node = next((n for n in body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                     and n.name == part), None)
        if node is None:
            raise TargetError(f"no def or class named {part!r} (looking for {qualname!r})")
        body = node.body
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        raise TargetError(f"{qualname!r} is a class, not a function or method")
    start = min([node.lineno] + [d.lineno for d in node.decorator_list])
    return start, node.end_lineno


def _span_offsets(source: str, start: int, end: int) -> tuple[int, int]:
    lines = source.splitlines(keepends=True)
    begin = sum(len(line) for line in lines[: start - 1])
    return begin, begin + sum(len(line) for line in lines[start - 1: end])


def function_source(source: str, qualname: str) -> str:
    """The text of the def `qualname` in `source`, decorators included (TargetError when there is none)."""
    begin, stop = _span_offsets(source, *function_span(source, qualname))
    return source[begin:stop]


def function_names(source: str) -> list[str]:
    """Qualnames a target can name: the module's functions and the methods of its classes."""
    names = []
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.append(node.name)
        elif isinstance(node, ast.ClassDef):
            names += [f"{node.name}.{n.name}" for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return names


def patched_source(root: Path, mutant: Mutant) -> tuple[Path, str]:
    """The target file and its text with the patch applied inside the target function only.

    Raises TargetError when the target is missing or `patch.old` does not occur exactly once in it.
    """
    module, qualname = split_target(mutant.target)
    path = module_file(root, module)
    source = path.read_text(encoding="utf-8")
    start, end = function_span(source, qualname)
    begin, stop = _span_offsets(source, start, end)
    span = source[begin:stop]
    count = span.count(mutant.old)
    if count != 1:
        where = f"{mutant.target} ({path.relative_to(root)} lines {start}-{end})"
        raise TargetError(
            f"patch.old occurs {count} times in {where}, expected exactly once; "
            + ("the code changed: copy a current snippet of that function into patch.old" if count == 0
               else "make patch.old longer so it is unique within the function")
            + f"\npatch.old = {mutant.old!r}")
    if mutant.old == mutant.new:
        raise TargetError("patch.new equals patch.old: that mutant changes nothing")
    return path, source[:begin] + span.replace(mutant.old, mutant.new, 1) + source[stop:]


def check_mutant(root: Path, mutant: Mutant) -> str | None:
    """Why the mutant cannot be applied to the code in `root`, or None when it can (and compiles)."""
    try:
        path, text = patched_source(root, mutant)
    except TargetError as err:
        return str(err)
    except SyntaxError as err:
        return f"target module does not parse: {err}"
    try:
        compile(text, str(path), "exec")
    except SyntaxError as err:
        return f"the patched function is not valid Python ({err.msg}, line {err.lineno}); fix patch.new"
    return None

