"""Stale mutants found again (`python -m mutation relocate`): after a refactor moved or renamed a function, a mutant
whose patch.old no longer occurs in its target is pointed at the one function of the code packages (SEARCHED) whose
source contains patch.old exactly once. Nothing is guessed: no such function, or several, is reported and the claim file is left
as it is. Only the mutant's `target:` line changes; the rest of the claim file keeps its bytes (a YAML dump would
reformat every string and drop the comments).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from harness.atomic import write_text
from mutation.claims import Mutant
from mutation.patching import TargetError, function_names, function_source, module_file, split_target


# The packages whose functions mutants patch (the tests in falsifiers/ are not targets).
SEARCHED = ("harness", "mutation")


@dataclass(frozen=True)
class Relocation:
    mutant: Mutant
    target: str | None  # the new target, or None when none was found
    problem: str = ""


def occurrences(root: Path, mutant: Mutant) -> int:
    """How often patch.old occurs in the mutant's current target (0 when the target is gone)."""
    try:
        module, qualname = split_target(mutant.target)
        return function_source(module_file(root, module).read_text(encoding="utf-8"), qualname).count(mutant.old)
    except (TargetError, SyntaxError, OSError):
        return 0


def candidates(root: Path, old: str) -> list[str]:
    """Every 'module:function' of the searched packages whose source contains `old` exactly once."""
    found = []
    for path in sorted(p for package in SEARCHED for p in (root / package).rglob("*.py")):
        module = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        source = path.read_text(encoding="utf-8")
        try:
            names = function_names(source)
        except SyntaxError:
            continue
        found += [f"{module}:{name}" for name in names if function_source(source, name).count(old) == 1]
    return found


def relocate(root: Path, mutant: Mutant) -> Relocation | None:
    """Where a stale mutant's patch now lives; None when the mutant is not stale (its patch.old is in its target)."""
    if occurrences(root, mutant):
        return None
    found = candidates(root, mutant.old)
    if len(found) == 1:
        return Relocation(mutant, found[0])
    problem = (f"patch.old occurs exactly once in no function of {', '.join(SEARCHED)}" if not found
               else f"patch.old occurs exactly once in several functions: {', '.join(found)}; not guessing")
    return Relocation(mutant, None, problem)


TARGET_LINE = re.compile(r"^(?P<lead>\s*target:\s*)(?P<value>.*?)\s*$")


def rewrite_target(text: str, mutant_id: str, old_target: str, new_target: str) -> str:
    """The claim file's text with one mutant's `target:` value replaced, every other byte unchanged."""
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if re.match(rf"^\s*-?\s*id:\s*['\"]?{re.escape(mutant_id)}['\"]?\s*$", line)]
    if len(starts) != 1:
        raise ValueError(f"{mutant_id}: found {len(starts)} `id: {mutant_id}` lines, expected one")
    for i in range(starts[0] + 1, len(lines)):
        if re.match(r"^\s*-?\s*id:", lines[i]):
            break
        match = TARGET_LINE.match(lines[i])
        if match and yaml.safe_load(match["value"]) == old_target:
            ending = lines[i][len(lines[i].rstrip("\r\n")):]
            lines[i] = match["lead"] + new_target + ending
            new_text = "".join(lines)
            _check_only_target_changed(text, new_text, mutant_id, new_target)
            return new_text
    raise ValueError(f"{mutant_id}: no `target: {old_target}` line in its entry")


def _check_only_target_changed(before: str, after: str, mutant_id: str, new_target: str) -> None:
    """The edit must mean exactly: this mutant's target is now new_target, nothing else."""
    expected = yaml.safe_load(before)
    for claim in expected["claims"]:
        for mutant in claim.get("mutants") or ():
            if mutant["id"] == mutant_id:
                mutant["target"] = new_target
    if yaml.safe_load(after) != expected:
        raise ValueError(f"{mutant_id}: rewriting its target line changed more than its target")


def apply(root: Path, relocations: list[Relocation]) -> None:
    """Write the found targets into their claim files."""
    by_file: dict[str, list[Relocation]] = {}
    for r in relocations:
        if r.target:
            by_file.setdefault(r.mutant.file, []).append(r)
    for file, found in by_file.items():
        path = root / file
        text = path.read_text(encoding="utf-8")
        for r in found:
            text = rewrite_target(text, r.mutant.id, r.mutant.target, r.target)
        write_text(path, text)


def relocate_all(root: Path, mutants: list[Mutant]) -> list[Relocation]:
    return [r for m in mutants for r in [relocate(root, m)] if r is not None]

