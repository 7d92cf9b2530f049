"""Mutation verification (pytest -m mutation): every mutant declared in contracts/claims/*.yaml makes its falsifier fail.

One test per mutant, named by the mutant's id: `pytest -m mutation -k MUT-EXPORT-001a` checks one.
Each runs the falsifier in a fresh process in a temporary copy of the project (see the mutation/ package).

Below those, the runner's own tests build a tiny synthetic project and check every verdict it can give.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from mutation import claims, mutmut_driver, patching, running, verdicts
from mutation.claims import ROOT, Mutant
from mutation.running import RunResult
from mutation.verdicts import Verifier


def _declared_mutants():
    try:
        mutants = claims.all_mutants(ROOT)
    except Exception as err:  # noqa: BLE001 - a broken claim file must fail loudly, not silently yield no tests
        return [pytest.param(None, err, id="claim-files-do-not-load")]
    return [pytest.param(m, None, id=m.id) for m in mutants]


@pytest.fixture(scope="session")
def verifier():
    v = Verifier(ROOT)  # baselines are cached in it: each falsifier passes once per session on unmutated code
    yield v
    v.cleanup()


@pytest.mark.mutation
@pytest.mark.helper
@pytest.mark.parametrize("mutant, load_error", _declared_mutants())
def test_mutant_is_killed(verifier, mutant, load_error):
    assert load_error is None, f"contracts/claims/*.yaml does not load: {load_error}; run pytest -m contract"
    verdict = verifier.verify(mutant)
    if verdict.kind == verdicts.BASELINE_SKIPPED:
        pytest.skip(verdict.message())
    assert verdict.killed, verdict.message()


# --- the runner's own tests ------------------------------------------------------------------------------------------

OPS = '''\
def add(a, b):
    return a + b


def clamp(x, lo, hi):
    if x < lo:
        return lo
    if x > hi:
        return hi
    return x


class Box:
    @staticmethod
    def double(x):
        return x + x


def other(a, b):
    return a + b
'''

TESTS = {
    "test_ops.py": '''\
from harness.ops import Box, add, clamp

def test_add():
    assert add(2, 3) == 5

def test_clamp_low():  # never checks the upper bound: a mutant there survives
    assert clamp(-1, 0, 10) == 0

def test_double():
    assert Box.double(4) == 8

def test_wrong():  # fails on correct code
    assert add(1, 1) == 3
''',
    "test_skipped.py": '''\
import pytest
from harness.ops import add

@pytest.mark.skip(reason="needs something absent here")
def test_add_skipped():
    assert add(2, 3) == 5
''',
    "test_at_import.py": '''\
from harness.ops import add

TWO = add(1, 1)  # evaluated at collection: a mutant that raises here is a collection error

def test_two():
    assert TWO == 2
''',
}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A tiny project laid out like this one; its package is called `harness` too, so the probe must tell the copy's
    harness from the editable install's."""
    root = tmp_path_factory.mktemp("synthetic")
    (root / "harness").mkdir()
    (root / "harness" / "__init__.py").write_text("")
    (root / "harness" / "ops.py").write_text(OPS)
    (root / "falsifiers").mkdir()
    for name, text in TESTS.items():
        (root / "falsifiers" / name).write_text(text)
    (root / "contracts").mkdir()
    (root / "conftest.py").write_text("")
    (root / "pyproject.toml").write_text('[tool.pytest.ini_options]\ntestpaths = ["falsifiers"]\n')
    return root


@pytest.fixture(scope="module")
def synthetic(project):
    v = Verifier(project, timeout=120)
    yield v
    v.cleanup()


def _mutant(falsifier: str, old: str, new: str, target: str = "harness.ops:add", **kw) -> Mutant:
    return Mutant(id="MUT-DEMO-001a", target=target, description="demo bug", old=old, new=new,
                  claim_id="FALSIFY-DEMO-001", claim="demo claim", falsifier=falsifier, file="contracts/demo.yaml", **kw)


def test_killing_mutant_is_reported_killed(synthetic, project):
    before = (project / "harness" / "ops.py").read_text()
    verdict = synthetic.verify(_mutant("falsifiers/test_ops.py::test_add", "a + b", "a - b"))
    assert verdict.kind == verdicts.KILLED, verdict.message()
    assert (project / "harness" / "ops.py").read_text() == before, "the runner modified the project it verifies"


def test_surviving_mutant_is_reported(synthetic):
    verdict = synthetic.verify(_mutant("falsifiers/test_ops.py::test_clamp_low", "return hi", "return lo",
                                       target="harness.ops:clamp"))
    assert verdict.kind == verdicts.SURVIVED, verdict.message()
    assert not verdict.killed
    assert "MUT-DEMO-001a" in verdict.message() and "demo claim" in verdict.message()


def test_stale_patch_is_reported_and_not_run(synthetic):
    absent = synthetic.verify(_mutant("falsifiers/test_ops.py::test_add", "a * b", "a / b"))
    assert absent.kind == verdicts.STALE and "occurs 0 times" in absent.detail
    twice = synthetic.verify(_mutant("falsifiers/test_ops.py::test_clamp_low", "return ", "return -",
                                     target="harness.ops:clamp"))
    assert twice.kind == verdicts.STALE and "occurs 3 times" in twice.detail
    missing = synthetic.verify(_mutant("falsifiers/test_ops.py::test_add", "a + b", "a - b", target="harness.ops:gone"))
    assert missing.kind == verdicts.STALE and "no def or class named 'gone'" in missing.detail


def test_collection_error_is_broken_not_killed(synthetic):
    verdict = synthetic.verify(_mutant("falsifiers/test_at_import.py::test_two", "return a + b",
                                       "raise RuntimeError('boom')"))
    # pytest exits 2 (or 4 when a node id was given) on a collection error; either way, not 1
    assert verdict.kind == verdicts.BROKEN and "RuntimeError: boom" in verdict.detail, verdict.message()


def test_failing_baseline_is_not_a_kill(synthetic):
    verdict = synthetic.verify(_mutant("falsifiers/test_ops.py::test_wrong", "a + b", "a - b"))
    assert verdict.kind == verdicts.BASELINE_FAILED, verdict.message()


@pytest.mark.helper
def test_skipped_baseline_is_reported(synthetic):
    verdict = synthetic.verify(_mutant("falsifiers/test_skipped.py::test_add_skipped", "a + b", "a - b"))
    assert verdict.kind == verdicts.BASELINE_SKIPPED, verdict.message()


def test_patch_applies_inside_the_target_only(project):
    path, text = patching.patched_source(project, _mutant("x", "a + b", "a - b"))
    assert path == project / "harness" / "ops.py"
    assert "    return a - b\n\n\ndef clamp" in text
    assert text.endswith("def other(a, b):\n    return a + b\n"), "the patch leaked into another function"
    _, method = patching.patched_source(project, _mutant("x", "x + x", "x * x", target="harness.ops:Box.double"))
    assert "return x * x" in method


@pytest.mark.helper
def test_function_span_includes_decorators():
    assert patching.function_span(OPS, "Box.double") == (14, 16)
    assert patching.function_span(OPS, "add") == (1, 2)
    with pytest.raises(patching.TargetError, match="is a class"):
        patching.function_span(OPS, "Box")


@pytest.mark.helper
def test_patch_that_breaks_syntax_is_reported(project):
    problem = patching.check_mutant(project, _mutant("x", "return a + b", "return a +"))
    assert problem and "not valid Python" in problem


@pytest.mark.helper
def test_falsifier_runs_import_the_copy(synthetic, project, tmp_path):
    """The editable install maps `harness` to the working tree; the copy's harness must win, and the probe shows it."""
    copy = running.make_copy(project, tmp_path / "copy")
    run = running.run_pytest(copy, "falsifiers/test_ops.py::test_add", package="harness", env={"FLIP_DEMO": "1"},
                              timeout=120, origin=project)
    assert run.exit_code == 0, run.output
    assert Path(run.modules["harness.ops"]).resolve() == (copy / "harness" / "ops.py").resolve()
    assert running.foreign_modules(run, copy) == []


def test_code_imported_outside_the_copy_is_broken(tmp_path):
    run = RunResult(exit_code=1, output="", seconds=0.1, tests=1, failed=1,
                    modules={"harness": str(ROOT / "harness" / "__init__.py")})
    kind, detail = verdicts.classify(run, tmp_path)
    assert kind == verdicts.BROKEN and "outside the mutated copy" in detail
    inside = RunResult(exit_code=1, output="", seconds=0.1, tests=1, failed=1,
                       modules={"harness": str(tmp_path / "harness" / "__init__.py")})
    assert verdicts.classify(inside, tmp_path)[0] == verdicts.KILLED


@pytest.mark.helper
def test_timeout_and_usage_errors_are_not_kills(tmp_path):
    here = {"harness": str(tmp_path / "harness" / "__init__.py")}
    assert verdicts.classify(RunResult(None, "", 9.0, modules=here), tmp_path)[0] == verdicts.TIMEOUT
    for code in (2, 3, 4, 5):
        assert verdicts.classify(RunResult(code, "", 0.1, failed=1, modules=here), tmp_path)[0] == verdicts.BROKEN


@pytest.mark.helper
def test_mutant_env_reaches_the_falsifier(synthetic, project):
    (project / "falsifiers" / "test_env.py").write_text(
        "import os\ndef test_env():\n    assert os.environ['FLIP_TEST_STEPS'] == '3'\n")
    verdict = synthetic.verify(_mutant("falsifiers/test_env.py::test_env", "a + b", "a - b",
                                       env={"FLIP_TEST_STEPS": "3"}))
    # the baseline passes only if the variable arrived; the mutant cannot fail this test, so it survives
    assert verdict.kind == verdicts.SURVIVED, verdict.message()


@pytest.mark.helper
def test_mutmut_report_scores_each_module():
    """A mutant no test reaches counts as not caught; mutants that were not run do not count at all."""
    text = textwrap.dedent("""\
        harness.toolcall.x_parse_tool_calls__mutmut_1: killed
        harness.toolcall.x_parse_tool_calls__mutmut_2: survived
        harness.toolcall.x_parse_tool_calls__mutmut_3: timeout
        harness.toolcall.xǁToolCallǁ__init____mutmut_1: no tests
        harness.toolcall.x_render__mutmut_1: not checked
        harness.atomic.x_write_text__mutmut_1: timeout
    """)
    report = mutmut_driver.mutmut_report(text)
    rows = {line.split()[0]: line.split()[1:] for line in report.splitlines()[1:3]}
    assert rows == {"harness.atomic": ["100.0%", "1", "1", "0", "0", "0"],
                    "harness.toolcall": ["50.0%", "2", "4", "1", "1", "1"]}
    assert "harness.toolcall.x_parse_tool_calls__mutmut_2  (survived)" in report
    assert "harness.toolcall.xǁToolCallǁ__init____mutmut_1  (no tests)" in report
    assert "x_render__mutmut_1" not in report


@pytest.mark.helper
def test_narrowed_mutmut_config_mutates_only_the_given_modules(repo_root):
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    text = mutmut_driver.narrow_mutmut_config((repo_root / "pyproject.toml").read_text(), ["harness/export.py"])
    config = tomllib.loads(text)["tool"]["mutmut"]
    assert config["source_paths"] == ["harness/export.py"]
    assert config["also_copy"][0] == "harness/" and "falsifiers/" in config["also_copy"]
