"""Whole-package mutation testing with mutmut (`make mutation`): a scratch copy, the run, and a per-module report."""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

from mutation.claims import ROOT
from mutation.running import make_copy

# mutmut's statuses that count as the tests catching the mutant, and those of mutants that were not run at all.
# "no tests" is neither: the mutant was generated and no test reaches its function, so it counts as not caught.
MUTMUT_CAUGHT = {"killed", "timeout", "caught by type check"}
MUTMUT_NOT_RUN = {"skipped", "not checked"}
MUTMUT_LINE = re.compile(r"^\s*(?P<name>\S+__mutmut_\d+): (?P<status>.+?)\s*$")


def mutmut_summary(results_text: str) -> dict[str, dict]:
    """Parse `mutmut results --all true` into {module: {status: [mutant names]}}."""
    per_module: dict[str, dict] = {}
    for line in results_text.splitlines():
        match = MUTMUT_LINE.match(line)
        if match:
            # mutmut names a mutant `<module>.x_<function>__mutmut_<n>` or `<module>.xǁ<Class>ǁ<method>__mutmut_<n>`
            module = re.split(r"\.x[_ǁ]", match["name"], maxsplit=1)[0]
            per_module.setdefault(module, {}).setdefault(match["status"], []).append(match["name"])
    return per_module


def mutmut_report(results_text: str) -> str:
    """Score per module = caught / (every mutant that was run, "no tests" included); then the mutants not caught."""
    lines = [f"{'module':<28} {'score':>7} {'caught':>7} {'of':>6} {'survived':>9} {'no tests':>9} {'not run':>8}"]
    survivors = []
    for module, by_status in sorted(mutmut_summary(results_text).items()):
        count = {status: len(names) for status, names in by_status.items()}
        caught = sum(n for status, n in count.items() if status in MUTMUT_CAUGHT)
        not_run = sum(n for status, n in count.items() if status in MUTMUT_NOT_RUN)
        scored = sum(count.values()) - not_run
        score = f"{100 * caught / scored:.1f}%" if scored else "-"
        lines.append(f"{module:<28} {score:>7} {caught:>7} {scored:>6} {count.get('survived', 0):>9} "
                     f"{count.get('no tests', 0):>9} {not_run:>8}")
        survivors += [f"  {name}  ({status})" for status, names in sorted(by_status.items())
                      if status not in MUTMUT_CAUGHT | MUTMUT_NOT_RUN for name in names]
    if survivors:
        lines += ["", "mutants not caught (`mutmut show NAME` in the run directory prints the diff):"] + survivors
    return "\n".join(lines)


def narrow_mutmut_config(pyproject: str, modules: list[str]) -> str:
    """pyproject.toml text with [tool.mutmut] source_paths set to `modules`; the rest of harness/ is then copied
    unmutated (also_copy), because the mutated modules import it."""
    source = re.compile(r"^source_paths = .*$", re.M)
    also = re.compile(r'^also_copy = \[', re.M)
    if len(source.findall(pyproject)) != 1 or len(also.findall(pyproject)) != 1:
        raise ValueError("[tool.mutmut] must have exactly one source_paths line and one also_copy line")
    pyproject = source.sub("source_paths = " + json.dumps(modules), pyproject)
    return also.sub('also_copy = ["harness/", ', pyproject)


def _mutmut_results(mutmut: str, workdir: Path) -> str:
    results = subprocess.run([mutmut, "results", "--all", "true"], cwd=workdir, capture_output=True, text=True)
    if results.returncode:
        raise SystemExit(results.stdout + results.stderr)
    return results.stdout


def _refresh_tests(workdir: Path) -> None:
    """Bring the copy's tests up to date with the working tree; the modules it mutates must not have changed (the
    scores it reports are for them)."""
    import tomllib

    config = tomllib.loads((workdir / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["mutmut"]
    sources = [workdir / source for source in config["source_paths"]]
    mutated = [p for source in sources for p in ([source] if source.is_file() else sorted(source.rglob("*.py")))]
    changed = [str(p.relative_to(workdir)) for p in mutated
               if p.read_bytes() != (ROOT / p.relative_to(workdir)).read_bytes()]
    if changed:
        raise SystemExit(f"{', '.join(changed)} changed since {workdir} was made: delete it and run again")
    for name in ("mutation", "falsifiers", "contracts"):
        shutil.copytree(ROOT / name, workdir / name, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy2(ROOT / "conftest.py", workdir / "conftest.py")


def run_mutmut(modules: list[str], workdir: Path, children: int, survivors: bool = False, sample: int = 0) -> int:
    """mutmut over `modules` in `workdir` (a copy of the project made on the first call; later calls resume it).
    With `survivors`, the copy's tests are refreshed from the working tree and only the mutants not yet caught run
    again (new tests for old survivors, without re-running thousands of caught mutants). With `sample`, only that
    many mutants, drawn uniformly with a fixed seed, are run: the score is then an estimate (the rest are reported
    as not run)."""
    mutmut = str(Path(sys.executable).with_name("mutmut"))
    names = []
    if sample or survivors:
        if not (workdir / "mutants").is_dir():
            raise SystemExit(f"{workdir} has no mutants yet: start a full run (for --sample, stop it once it says "
                             "'Running mutation testing')")
        if survivors:
            _refresh_tests(workdir)
        status = {name: state for by_status in mutmut_summary(_mutmut_results(mutmut, workdir)).values()
                  for state, found in by_status.items() for name in found}
        if sample:  # those of the draw not run yet (a resumed sample)
            drawn = random.Random(0).sample(sorted(status), min(sample, len(status)))
            names = sorted(name for name in drawn if status[name] == "not checked")
        else:
            names = sorted(name for name, state in status.items() if state not in MUTMUT_CAUGHT | MUTMUT_NOT_RUN)
        if not names:  # nothing left to run: without names, `mutmut run` would run every mutant
            print(mutmut_report(_mutmut_results(mutmut, workdir)))
            return 0
    elif not workdir.exists():
        make_copy(ROOT, workdir)
        if modules:
            config = workdir / "pyproject.toml"
            config.write_text(narrow_mutmut_config(config.read_text(encoding="utf-8"), modules), encoding="utf-8")
    # The copy has no ../shared beside it: point the real-transcript tests at this checkout's.
    env = {"FLIP_REAL_TRANSCRIPTS": str(ROOT.parent / "shared" / "real-transcripts"),
           "FLIP_CCPA_FIXTURES": str(ROOT.parent / "shared" / "ccpa-fixtures"), **os.environ,
           "HYPOTHESIS_PROFILE": "mutation"}  # see conftest.py
    proc = subprocess.run([mutmut, "run", "--max-children", str(children), *names], cwd=workdir, env=env)
    if proc.returncode:
        return proc.returncode
    print(mutmut_report(_mutmut_results(mutmut, workdir)))
    return 0

