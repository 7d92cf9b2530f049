"""Verdicts: a mutant is *killed* when its falsifier passes on the unmutated copy (the *baseline*) and pytest exits 1
(a test failed) on the mutated one. Anything else is not a kill: exit 0 means it *survived*, exit 2/3/4/5 (collection
error, internal error, usage error, nothing collected) means the run was *broken*, and a patch whose `old` text does
not occur exactly once in the target function is *stale*.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from mutation.claims import ROOT, Mutant
from mutation.patching import check_mutant, patched_source, split_target
from mutation.running import RunResult, foreign_modules, make_copy, run_pytest

DEFAULT_TIMEOUT_S = float(os.environ.get("FLIP_MUTATION_TIMEOUT", "900"))

# pytest exit codes (pytest.ExitCode): only TESTS_FAILED is a kill.
EXIT_OK, EXIT_TESTS_FAILED = 0, 1
EXIT_NAMES = {0: "all passed", 1: "tests failed", 2: "interrupted (usually a collection error)",
              3: "pytest internal error", 4: "pytest usage error", 5: "no tests collected"}


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



def verify_many(root: Path, mutants: list[Mutant], jobs: int, on_verdict, timeout: float = DEFAULT_TIMEOUT_S) -> None:
    """Verify the mutants on `jobs` threads (each falsifier runs in its own process, so threads suffice), calling
    on_verdict(verdict) as each one finishes. Mutants sharing a baseline go to one worker, which runs it once."""
    groups: dict[tuple, list[Mutant]] = {}
    for mutant in mutants:
        groups.setdefault((mutant.falsifier, tuple(sorted(mutant.env.items())), _package(mutant)), []).append(mutant)
    lock = threading.Lock()

    def run_group(group: list[Mutant]) -> None:
        verifier = Verifier(root, timeout=timeout)
        try:
            for mutant in group:
                verdict = verifier.verify(mutant)
                with lock:
                    on_verdict(verdict)
        finally:
            verifier.cleanup()

    # The biggest groups first, so that the last worker is not left with a long one.
    ordered = sorted(groups.values(), key=len, reverse=True)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for future in [pool.submit(run_group, group) for group in ordered]:
            future.result()
