"""Copies of the project and fresh-process pytest runs in them, with a probe that records what was imported.

The working tree is never modified: others may be running tests in it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from harness.atomic import write_text
from mutation.claims import ROOT

# What a copy of the project holds. Copied: everything a mutant could touch or a falsifier imports.
# Symlinked: big read-only inputs; a falsifier must never write into them (a mutant could otherwise corrupt them).
COPY_ITEMS = ("harness", "mutation", "falsifiers", "contracts", "conftest.py", "pyproject.toml")
LINK_ITEMS = ("fixtures", "datasets", "docs")  # docs: the generated tables a falsifier compares


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
    """A directory holding the probe plugin (one per process), to put on PYTHONPATH. Written atomically: parallel
    workers' falsifier runs may be importing it while another worker writes it."""
    path = Path(tempfile.gettempdir()) / f"flip-probe-{os.getpid()}"
    write_text(path / f"{PROBE_NAME}.py", PROBE_PLUGIN)
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

