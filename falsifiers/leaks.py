"""Held-out leak detection for generated tasks: task text and function bodies, normalised.

A generated task leaks a held-out task when its prompt contains the held-out task's text (case and whitespace
ignored), or when any function in its files has the body of a held-out function once whitespace, comments, Python
docstrings and identifier names are normalised away (identifiers become ID0, ID1, ... in order of first use; keywords,
literals and operators stay). Bodies shorter than MIN_BODY_TOKENS are not compared: `return a + b` is everyone's code,
not evidence of a copy.

One regex tokenizer serves both languages (Python's `tokenize` reads only Python, and the held-out set is half Rust),
which is why this does not use `tokenize`.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOLDOUT = ROOT / "fixtures" / "holdout" / "workspaces"
MIN_BODY_TOKENS = 12

KEYWORDS = frozenset(
    # Python
    "False None True and as assert async await break class continue def del elif else except finally for from "
    "global if import in is lambda nonlocal not or pass raise return try while with yield "
    # Rust
    "as break const continue crate else enum extern false fn for if impl in let loop match mod move mut pub ref "
    "return self Self static struct super trait true type unsafe use where while dyn".split())
TOKEN = re.compile(r"""
    (?P<comment>\#[^\n]*|//[^\n]*|/\*.*?\*/)
  | (?P<string>[rbf]?"(?:\\.|[^"\\])*"|[rbf]?'(?:\\.|[^'\\\n])*')
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<number>\d[\d_]*(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<op>\S)
""", re.VERBOSE | re.DOTALL)


def normalised_tokens(code: str) -> list[str]:
    """Tokens of `code` with comments dropped and identifiers renamed ID0, ID1, ... by first use."""
    names: dict[str, str] = {}
    out = []
    for m in TOKEN.finditer(code):
        kind, text = m.lastgroup, m.group()
        if kind == "comment":
            continue
        if kind == "name" and text not in KEYWORDS:
            text = names.setdefault(text, f"ID{len(names)}")
        out.append(text)
    return out


def python_bodies(source: str) -> list[str]:
    """The body text of every function and method, docstring left out."""
    try:
        tree = ast.parse(source)
    except SyntaxError:  # a seeded syntax error: compare what the tokenizer can still see, each `def` to the next
        return [chunk for chunk in re.split(r"\n(?=\s*def )", source) if chunk.strip()]
    bodies = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                    and isinstance(body[0].value.value, str):
                body = body[1:]
            bodies.append("\n".join(ast.get_source_segment(source, stmt) or "" for stmt in body))
    return bodies


def rust_bodies(source: str) -> list[str]:
    """The text between the braces of every `fn`, found by brace matching (strings and comments are rare enough in
    the held-out crates that a brace inside one is not worth a parser)."""
    bodies = []
    for m in re.finditer(r"\bfn\s+\w+[^{;]*\{", source):
        depth, i = 1, m.end()
        while i < len(source) and depth:
            depth += {"{": 1, "}": -1}.get(source[i], 0)
            i += 1
        bodies.append(source[m.end():i - 1])
    return bodies


def bodies_of(path: str, text: str) -> list[str]:
    if path.endswith(".py"):
        return python_bodies(text)
    if path.endswith(".rs"):
        return rust_bodies(text)
    return []


def fingerprint(body: str) -> str | None:
    tokens = normalised_tokens(body)
    if len(tokens) < MIN_BODY_TOKENS:
        return None
    return hashlib.sha256(" ".join(tokens).encode()).hexdigest()


@functools.lru_cache(maxsize=4096)
def file_fingerprints(suffix: str, text: str) -> tuple[str, ...]:
    """The fingerprints of one file's function bodies; cached, as generated tasks share most of their modules."""
    return tuple(d for body in bodies_of("x" + suffix, text) if (d := fingerprint(body)))


def fingerprints(files: dict[str, str]) -> dict[str, str]:
    """fingerprint -> 'path' for every long-enough function body in files (path -> text)."""
    out = {}
    for path, text in sorted(files.items()):
        for digest in file_fingerprints(Path(path).suffix, text):
            out.setdefault(digest, path)
    return out


def squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def held_out() -> tuple[dict[str, str], dict[str, str]]:
    """(task id -> squashed task text, body fingerprint -> 'task/path') of every held-out task."""
    texts, prints = {}, {}
    for task in sorted(p for p in HOLDOUT.iterdir() if p.is_dir()):
        texts[task.name] = squash((task / "prompt.txt").read_text())
        files = {p.relative_to(task).as_posix(): p.read_text() for p in sorted((task / "workspace").rglob("*"))
                 if p.is_file() and p.suffix in (".py", ".rs")}
        for digest, path in fingerprints(files).items():
            prints.setdefault(digest, f"{task.name}/{path}")
    return texts, prints


def leaks(task_id: str, prompt: str, files: dict[str, str], texts: dict[str, str], prints: dict[str, str]) -> list[str]:
    """Why this generated task leaks a held-out one (empty when it does not)."""
    found = [f"{task_id}: prompt contains the task text of {held}" for held, text in texts.items()
             if text in squash(prompt)]
    found += [f"{task_id}: {path} has the body of held-out {prints[digest]}"
              for digest, path in fingerprints(files).items() if digest in prints]
    return found
