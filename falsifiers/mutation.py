"""Mutation verification: prove that every falsifier declared in contracts/<stage>.yaml can fail.

A claim names a falsifier (a pytest node id) and one or more mutants: small, plausible bugs written as a text patch
on one function. For each mutant we copy the project to a temporary directory, apply the patch to that function
only, and run the falsifier there in a fresh process. The mutant is *killed* when pytest exits 1 (a test failed).
Anything else is not a kill: exit 0 means it *survived*, exit 2/3/4/5 (collection error, internal error, usage
error, nothing collected) means the run was *broken*, and a patch whose `old` text does not occur exactly once in
the target function is *stale*. The falsifier must also pass on the unmutated copy (the *baseline*), or a kill
would prove nothing.

The working tree is never modified: others may be running tests in it.

Also a command line (``python -m falsifiers.mutation --help``):
  verify [MUTANT_ID ...]   run the declared mutants and print a verdict per mutant
  mutmut [MODULE ...]      mutmut over the given harness modules (default: all of harness/) in a scratch copy,
                           then the report below
  mutmut-report            per-file mutmut score and surviving mutants, from `mutmut results`
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CONTRACTS_DIR = "contracts"

# What a copy of the project holds. Copied: everything a mutant could touch or a falsifier imports.
# Symlinked: big read-only inputs; a falsifier must never write into them (a mutant could otherwise corrupt them).
COPY_ITEMS = ("harness", "falsifiers", "contracts", "conftest.py", "pyproject.toml")
LINK_ITEMS = ("fixtures", "datasets", "docs")  # docs: the generated tables a falsifier compares

DEFAULT_TIMEOUT_S = float(os.environ.get("FLIP_MUTATION_TIMEOUT", "900"))

# pytest exit codes (pytest.ExitCode): only TESTS_FAILED is a kill.
EXIT_OK, EXIT_TESTS_FAILED = 0, 1
EXIT_NAMES = {0: "all passed", 1: "tests failed", 2: "interrupted (usually a collection error)",
              3: "pytest internal error", 4: "pytest usage error", 5: "no tests collected"}


# ---------------------------------------------------------------------------------------------------------------------
# Claim files
# ---------------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Mutant:
    id: str
    target: str  # "module:function" or "module:Class.method"
    description: str
    old: str
    new: str
    env: dict = field(default_factory=dict)  # extra environment for the falsifier run, e.g. a reduced training budget
    claim_id: str = ""
    claim: str = ""
    falsifier: str = ""
    file: str = ""  # the claim file, relative to the project root, for messages


@dataclass(frozen=True)
class Claim:
    id: str
    claim: str
    falsifier: str
    mutants: tuple[Mutant, ...]
    stage: str
    file: str


def claim_files(root: Path = ROOT) -> list[Path]:
    """Every yaml file in contracts/ whose top level is a mapping with a `claims` key."""
    found = []
    for path in sorted((root / CONTRACTS_DIR).glob("*.y*ml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "claims" in data:
            found.append(path)
    return found


def load_claim_file(path: Path, root: Path = ROOT) -> list[Claim]:
    """Read one claim file. Assumes it matches contracts/claims.schema.json (the contract gate checks that)."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    rel = path.relative_to(root).as_posix()
    stage = data.get("stage", path.stem)
    claims = []
    for raw in data["claims"]:
        mutants = tuple(
            Mutant(
                id=m["id"], target=m["target"], description=m.get("description", ""),
                old=m["patch"]["old"], new=m["patch"]["new"],
                env={str(k): str(v) for k, v in (m.get("env") or {}).items()},
                claim_id=raw["id"], claim=raw["claim"], falsifier=raw["falsifier"], file=rel,
            )
            for m in raw.get("mutants") or ()
        )
        claims.append(Claim(raw["id"], raw["claim"], raw["falsifier"], mutants, stage, rel))
    return claims


def load_claims(root: Path = ROOT) -> list[Claim]:
    return [claim for path in claim_files(root) for claim in load_claim_file(path, root)]


def all_mutants(root: Path = ROOT) -> list[Mutant]:
    return [m for claim in load_claims(root) for m in claim.mutants]


# ---------------------------------------------------------------------------------------------------------------------
# Locating and patching the target function
# ---------------------------------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------------------------------
# Copies and fresh-process pytest runs
# ---------------------------------------------------------------------------------------------------------------------

# A pytest plugin loaded into every falsifier run (-p _flip_probe). It records where the package under test was
# imported from, so the runner can prove the run exercised the copy and not the editable install in the working tree;
# and, for the contract gate, which tests were collected with which markers.
PROBE_PLUGIN = '''
import importlib, json, os, sys

def pytest_collection_finish(session):
    out = os.environ.get("FLIP_PROBE_COLLECT")
    if out:
        items = [{"nodeid": i.nodeid, "markers": sorted({m.name for m in i.iter_markers()})} for i in session.items]
        with open(out, "w") as f:
            json.dump(items, f)

def pytest_sessionfinish(session):
    out, pkg = os.environ.get("FLIP_PROBE_MODULES"), os.environ.get("FLIP_PROBE_PACKAGE")
    if out and pkg:
        importlib.import_module(pkg)  # resolves it even when the falsifier failed before importing it
        files = {n: getattr(m, "__file__", None) for n, m in list(sys.modules.items())
                 if n == pkg or n.startswith(pkg + ".")}
        with open(out, "w") as f:
            json.dump(files, f)
'''
PROBE_NAME = "_flip_probe"


def probe_dir() -> Path:
    """A directory holding the probe plugin (created once per process), to put on PYTHONPATH."""
    path = Path(tempfile.gettempdir()) / f"flip-probe-{os.getpid()}"
    path.mkdir(exist_ok=True)
    (path / f"{PROBE_NAME}.py").write_text(PROBE_PLUGIN, encoding="utf-8")
    return path


def make_copy(root: Path, dest: Path) -> Path:
    """Copy (or symlink) the parts of the project a falsifier run needs into dest, which must not exist yet."""
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in COPY_ITEMS:
        src = root / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        elif src.is_file():
            shutil.copy2(src, dest / name)
    for name in LINK_ITEMS:
        if (root / name).exists():
            (dest / name).symlink_to((root / name).resolve())
    return dest


@dataclass
class RunResult:
    exit_code: int | None  # None: timed out
    output: str
    seconds: float
    tests: int = 0
    failed: int = 0  # failures + errors
    skipped: int = 0
    modules: dict = field(default_factory=dict)  # module name -> file it was imported from

    @property
    def timed_out(self) -> bool:
        return self.exit_code is None

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output.splitlines()[-lines:])


def _base_env(root: Path, extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_") and k != "COV_CORE_SOURCE"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.setdefault("HYPOTHESIS_PROFILE", "mutation")  # see conftest.py: a verdict that does not depend on the draw
    env["PYTHONPATH"] = os.pathsep.join([str(probe_dir())] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    # conftest.py finds the real transcripts beside the project root; a copy lives elsewhere, so point at them.
    transcripts = root.parent / "shared" / "real-transcripts"
    if "FLIP_REAL_TRANSCRIPTS" not in env and transcripts.is_dir():
        env["FLIP_REAL_TRANSCRIPTS"] = str(transcripts)
    ccpa = root.parent / "shared" / "ccpa-fixtures"
    if "FLIP_CCPA_FIXTURES" not in env and ccpa.is_dir():
        env["FLIP_CCPA_FIXTURES"] = str(ccpa)
    env.update(extra)
    return env


def run_pytest(copy: Path, nodeid: str, *, package: str, env: dict, timeout: float, origin: Path) -> RunResult:
    """`python -m pytest -q -x <nodeid>` in `copy`, in a fresh process, recording where `package` was imported from."""
    report, modules = copy / ".flip-junit.xml", copy / ".flip-modules.json"
    run_env = _base_env(origin, env)
    run_env.update({"FLIP_PROBE_MODULES": str(modules), "FLIP_PROBE_PACKAGE": package})
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-p", PROBE_NAME,
           f"--junitxml={report}", nodeid]
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=copy, env=run_env, capture_output=True, text=True, timeout=timeout)
        code, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as err:
        code, output = None, f"timed out after {timeout:.0f} s\n{_text(err.stdout)}{_text(err.stderr)}"
    result = RunResult(code, output, time.monotonic() - start)
    _read_junit(report, result)
    if modules.is_file():
        result.modules = json.loads(modules.read_text(encoding="utf-8"))
    return result


def _text(data) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def _read_junit(path: Path, result: RunResult) -> None:
    if not path.is_file():
        return
    for suite in ET.parse(path).getroot().iter("testsuite"):
        result.tests += int(suite.get("tests", 0))
        result.failed += int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        result.skipped += int(suite.get("skipped", 0))


def foreign_modules(result: RunResult, copy: Path) -> list[str]:
    """Modules of the package under test that were NOT imported from the copy (the run tested the wrong code)."""
    copy = copy.resolve()
    bad = [f"{name} from {file}" for name, file in sorted(result.modules.items())
           if file and not Path(file).resolve().is_relative_to(copy)]
    if not result.modules and result.exit_code is not None:
        bad.append("the import probe did not report (was the `-p _flip_probe` plugin loaded?)")
    return bad


# ---------------------------------------------------------------------------------------------------------------------
# Verdicts
# ---------------------------------------------------------------------------------------------------------------------

KILLED, SURVIVED, STALE, BROKEN, TIMEOUT, BASELINE_FAILED, BASELINE_SKIPPED = (
    "killed", "survived", "stale", "broken", "timeout", "baseline-failed", "baseline-skipped")


@dataclass
class Verdict:
    mutant: Mutant
    kind: str
    detail: str = ""
    seconds: float = 0.0

    @property
    def killed(self) -> bool:
        return self.kind == KILLED

    def message(self) -> str:
        m = self.mutant
        head = {
            KILLED: "killed",
            SURVIVED: "SURVIVED: the falsifier still passes with this bug in place; strengthen the falsifier",
            STALE: "STALE: the mutant no longer fits the code; update its patch in the claim file",
            BROKEN: "BROKEN: the falsifier run errored instead of failing; a collection/usage error is not a kill",
            TIMEOUT: "TIMEOUT: the falsifier did not finish; a hang is not a kill (lower its budget with `env`)",
            BASELINE_FAILED: "BASELINE FAILED: the falsifier does not pass on the unmutated code, so no kill counts",
            BASELINE_SKIPPED: "BASELINE SKIPPED: the falsifier was skipped here, so it cannot be verified here",
        }[self.kind]
        return (f"{m.id} ({m.file}) {head}\n  claim {m.claim_id}: {m.claim}\n  falsifier: {m.falsifier}\n"
                f"  mutant: {m.target}: {m.description}\n{self.detail}".rstrip())


def classify(run: RunResult, copy: Path) -> tuple[str, str]:
    """Kind and detail of one mutant run: only pytest's 'tests failed' (exit 1) with a real failure is a kill."""
    foreign = foreign_modules(run, copy)
    if foreign:
        return BROKEN, "the falsifier imported code outside the mutated copy:\n  " + "\n  ".join(foreign)
    if run.timed_out:
        return TIMEOUT, run.tail()
    if run.exit_code == EXIT_TESTS_FAILED and run.failed > 0:
        return KILLED, ""
    if run.exit_code == EXIT_OK:
        return SURVIVED, f"pytest exit 0 ({run.tests} passed/skipped)"
    name = EXIT_NAMES.get(run.exit_code, "unknown")
    return BROKEN, f"pytest exit {run.exit_code} ({name})\n{run.tail()}"


class Verifier:
    """Runs mutants against one project root; the baseline of each (falsifier, env) is run once and cached."""

    def __init__(self, root: Path = ROOT, timeout: float = DEFAULT_TIMEOUT_S, workdir: Path | None = None):
        self.root = Path(root).resolve()
        self.timeout = timeout
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="flip-mutation-"))
        self._baselines: dict[tuple, RunResult] = {}
        self._count = 0

    def _fresh_copy(self, label: str) -> Path:
        self._count += 1
        return make_copy(self.root, self.workdir / f"{self._count:03d}-{re.sub(r'[^A-Za-z0-9_.-]', '_', label)}")

    def baseline(self, mutant: Mutant) -> tuple[RunResult, Path]:
        key = (mutant.falsifier, tuple(sorted(mutant.env.items())), _package(mutant))
        if key not in self._baselines:
            copy = self._fresh_copy("baseline")
            self._baselines[key] = (self._run(copy, mutant), copy)
        return self._baselines[key]

    def _run(self, copy: Path, mutant: Mutant) -> RunResult:
        return run_pytest(copy, mutant.falsifier, package=_package(mutant), env=mutant.env,
                          timeout=self.timeout, origin=self.root)

    def verify(self, mutant: Mutant) -> Verdict:
        start = time.monotonic()
        problem = check_mutant(self.root, mutant)
        if problem:
            return Verdict(mutant, STALE, problem)
        base, base_copy = self.baseline(mutant)
        kind, detail = classify(base, base_copy)
        if kind == SURVIVED and base.skipped:
            return Verdict(mutant, BASELINE_SKIPPED, base.tail(5))
        if kind != SURVIVED:  # for the baseline, "survived" means "passed"
            return Verdict(mutant, BASELINE_FAILED, f"baseline: {kind}: {detail}\n{base.tail()}")
        copy = self._fresh_copy(mutant.id)
        path, text = patched_source(copy, mutant)
        path.write_text(text, encoding="utf-8")
        run = self._run(copy, mutant)
        kind, detail = classify(run, copy)
        if kind == SURVIVED and run.skipped:
            detail += "; the falsifier SKIPPED under the mutant, which is not a failure"
        verdict = Verdict(mutant, kind, detail, time.monotonic() - start)
        shutil.rmtree(copy, ignore_errors=True)
        return verdict

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


def _package(mutant: Mutant) -> str:
    """The top-level package the mutant patches: the runner checks that the falsifier imported it from the copy."""
    return split_target(mutant.target)[0].split(".")[0] if ":" in mutant.target else "harness"


# ---------------------------------------------------------------------------------------------------------------------
# Collection (for the contract gate)
# ---------------------------------------------------------------------------------------------------------------------

@dataclass
class Collection:
    items: dict[str, list[str]]  # node id -> marker names
    exit_code: int
    output: str


def collect(root: Path = ROOT, timeout: float = 600) -> Collection:
    """`pytest --collect-only` over the whole project in a fresh process: every test and its markers."""
    with tempfile.TemporaryDirectory(prefix="flip-collect-") as tmp:
        out = Path(tmp) / "items.json"
        env = _base_env(root, {"FLIP_PROBE_COLLECT": str(out)})
        cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-p", PROBE_NAME]
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
        items = json.loads(out.read_text()) if out.is_file() else []
    return Collection({i["nodeid"]: i["markers"] for i in items}, proc.returncode, proc.stdout + proc.stderr)


# ---------------------------------------------------------------------------------------------------------------------
# The contract gate's checks: each returns a list of actionable problems, empty when all is well
# ---------------------------------------------------------------------------------------------------------------------

MIN_CLAIMS = 20  # the project promises at least this many falsifiable claims across all stages
SCHEMA_FILE = "claims.schema.json"


def schema_problems(root: Path = ROOT) -> list[str]:
    """Every claim file parses and matches contracts/claims.schema.json; its `stage` is its file name."""
    import jsonschema

    schema = json.loads((root / CONTRACTS_DIR / SCHEMA_FILE).read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    problems = []
    for path in sorted((root / CONTRACTS_DIR).glob("*.y*ml")):
        rel = path.relative_to(root).as_posix()
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            problems.append(f"{rel}: not valid YAML: {err}")
            continue
        if not isinstance(data, dict) or "claims" not in data:
            continue  # not a claim file
        for err in sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path)):
            where = "/".join(str(p) for p in err.absolute_path) or "(top level)"
            problems.append(f"{rel}: at {where}: {err.message}")
        if data.get("stage") != path.stem:
            problems.append(f"{rel}: stage is {data.get('stage')!r} but the file is named {path.name}; "
                            f"set `stage: {path.stem}`")
    return problems


def id_problems(claims: list[Claim]) -> list[str]:
    """Claim and mutant ids are unique across all files and carry their file's stage."""
    problems, seen = [], {}
    for claim in claims:
        stage = claim.stage.upper()
        entries = [(claim.id, f"FALSIFY-{stage}-")] + [(m.id, f"MUT-{stage}-") for m in claim.mutants]
        for ident, prefix in entries:
            if ident in seen:
                problems.append(f"{ident} is declared twice: in {seen[ident]} and in {claim.file}; ids are stable "
                                f"forever, give the new one the next free number")
            seen.setdefault(ident, claim.file)
            if not ident.startswith(prefix):
                problems.append(f"{ident} ({claim.file}) should start with {prefix} (the file's stage)")
    return problems


def _collected_match(falsifier: str, collected) -> bool:
    """A falsifier is collected if pytest lists it, or (without a [param] suffix) lists parametrized cases of it."""
    return falsifier in collected or any(n.startswith(falsifier + "[") for n in collected)


def falsifier_problems(claims: list[Claim], collected) -> list[str]:
    problems = []
    for claim in claims:
        if not _collected_match(claim.falsifier, collected):
            near = sorted(n for n in collected if n.split("[")[0].split("::")[0] == claim.falsifier.split("::")[0])
            hint = (f"; tests collected from that file: {', '.join(near[:8])}" if near
                    else "; pytest collected nothing from that file (does it exist? run pytest --collect-only)")
            problems.append(f"{claim.id} ({claim.file}): falsifier {claim.falsifier} is not collected by pytest{hint}")
    return problems


def mutant_problems(claims: list[Claim], root: Path = ROOT) -> list[str]:
    """Every mutant's target function exists and its patch applies exactly once (see check_mutant)."""
    return [f"{m.id} ({m.file}, claim {m.claim_id}): {problem}"
            for claim in claims for m in claim.mutants
            for problem in [check_mutant(root, m)] if problem]


def _is_claimed(nodeid: str, falsifiers: set[str]) -> bool:
    return nodeid in falsifiers or nodeid.split("[")[0] in falsifiers


def unclaimed_tests(claims: list[Claim], collection: dict[str, list[str]]) -> list[str]:
    """Tests that back no claim and are not marked `helper`: every test must either falsify a claim or say it helps."""
    falsifiers = {c.falsifier for c in claims}
    return [f"{nodeid}: is no claim's falsifier and is not marked helper"
            for nodeid, markers in sorted(collection.items())
            if "helper" not in markers and not _is_claimed(nodeid, falsifiers)]


def count_problems(claims: list[Claim], minimum: int = MIN_CLAIMS) -> list[str]:
    if len(claims) >= minimum:
        return []
    per_file = {}
    for c in claims:
        per_file[c.file] = per_file.get(c.file, 0) + 1
    return [f"only {len(claims)} claims across contracts/*.yaml, at least {minimum} are required "
            f"(per file: {per_file or 'none'})"]


# ---------------------------------------------------------------------------------------------------------------------
# mutmut report
# ---------------------------------------------------------------------------------------------------------------------

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
    for name in ("falsifiers", "contracts"):
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


# ---------------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------------

def _cmd_verify(args) -> int:
    mutants = [m for m in all_mutants() if not args.ids or m.id in args.ids]
    verifier = Verifier(timeout=args.timeout)
    bad = 0
    try:
        for mutant in mutants:
            verdict = verifier.verify(mutant)
            bad += not verdict.killed
            print(f"{verdict.kind:<16} {mutant.id:<22} {verdict.seconds:6.1f}s  {mutant.target}")
            if not verdict.killed and args.verbose:
                print(verdict.message(), "\n")
    finally:
        verifier.cleanup()
    print(f"{len(mutants) - bad}/{len(mutants)} mutants killed")
    return 1 if bad else 0


def _cmd_mutmut(args) -> int:
    for module in args.modules:
        if not (ROOT / module).is_file() or not module.startswith("harness/"):
            raise SystemExit(f"{module}: not a module under harness/")
    name = "-".join(Path(m).stem for m in args.modules) or "harness"
    return run_mutmut(args.modules, Path(args.workdir or ROOT / "build" / f"mutmut-{name}"), args.children,
                      survivors=args.survivors, sample=args.sample)


def _cmd_mutmut_report(args) -> int:
    print(mutmut_report(_mutmut_results(str(Path(sys.executable).with_name("mutmut")), Path(args.workdir))))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m falsifiers.mutation", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="run the declared mutants (default: all) and print verdicts")
    verify.add_argument("ids", nargs="*", metavar="MUTANT_ID")
    verify.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per falsifier run")
    verify.add_argument("-v", "--verbose", action="store_true", help="explain every mutant that was not killed")
    run = sub.add_parser("mutmut", help="mutmut over harness modules in a scratch copy (build/mutmut-<modules>/), "
                                        "resumed when that copy exists; then the report")
    run.add_argument("modules", nargs="*", metavar="MODULE", help="e.g. harness/export.py (default: all of harness/)")
    run.add_argument("--workdir", help="the scratch copy (default: build/mutmut-<module names>)")
    run.add_argument("--children", type=int, default=os.cpu_count() or 1, help="parallel mutant runs")
    run.add_argument("--survivors", action="store_true",
                     help="refresh the copy's tests from the working tree and re-run only the mutants not caught")
    run.add_argument("--sample", type=int, default=0,
                     help="run only this many mutants, drawn uniformly (seed 0): a score estimate for big modules")
    report = sub.add_parser("mutmut-report", help="mutmut score and survivors per module of a finished run")
    report.add_argument("--workdir", required=True, help="where `mutmut run` ran, e.g. build/mutmut-export")
    args = parser.parse_args(argv)
    commands = {"verify": _cmd_verify, "mutmut": _cmd_mutmut, "mutmut-report": _cmd_mutmut_report}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
