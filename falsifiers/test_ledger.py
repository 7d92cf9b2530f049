"""Incremental verification and stale-mutant relocation (mutation/ledger.py, mutation/relocate.py), on a tiny project
built in a temporary directory, with real falsifier runs where a verdict is needed."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mutation import cli, gate, ledger, relocate
from mutation.claims import CLAIMS_DIR, Mutant, all_mutants, load_claims

OPS = '''\
def add(a, b):
    return a + b


def clamp(x, lo, hi):
    if x < lo:
        return lo
    if x > hi:
        return hi
    return x
'''

TESTS = '''\
from harness.ops import add, clamp


def test_add():
    assert add(2, 3) == 5


def test_clamp_low():  # never checks the upper bound: a mutant there survives
    assert clamp(-1, 0, 10) == 0
'''

# Comments, quoting and layout that a YAML dump would not keep: relocation must leave them as they are.
CLAIMS = '''\
# demo claims
stage: demo
claims:
  - id: FALSIFY-DEMO-001
    claim: "add adds"   # quoted on purpose
    falsifier: falsifiers/test_ops.py::test_add
    mutants:
      - id: MUT-DEMO-001a
        target: harness.ops:add
        description: subtracts
        patch:
          old: "a + b"
          new: "a - b"
  - id: FALSIFY-DEMO-002
    claim: clamp keeps values below hi
    falsifier: falsifiers/test_ops.py::test_clamp_low
    mutants:
      - id: MUT-DEMO-002a
        target: harness.ops:clamp
        description: the upper bound returns lo
        patch:
          old: "return hi"
          new: "return lo"
'''


def _project(root: Path) -> Path:
    (root / "harness").mkdir(parents=True)
    (root / "harness" / "__init__.py").write_text("")
    (root / "harness" / "ops.py").write_text(OPS)
    (root / "falsifiers").mkdir()
    (root / "falsifiers" / "test_ops.py").write_text(TESTS)
    (root / CLAIMS_DIR).mkdir(parents=True)
    (root / CLAIMS_DIR / "demo.yaml").write_text(CLAIMS)
    (root / "conftest.py").write_text("")
    (root / "pyproject.toml").write_text('[tool.pytest.ini_options]\ntestpaths = ["falsifiers"]\n')
    return root


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1
    path.write_text(text.replace(old, new))


def _add_mutant(**changes) -> Mutant:
    fields = dict(id="MUT-DEMO-001a", target="harness.ops:add", description="subtracts", old="a + b", new="a - b",
                  claim_id="FALSIFY-DEMO-001", claim="add adds", falsifier="falsifiers/test_ops.py::test_add",
                  file=f"{CLAIMS_DIR}/demo.yaml")
    return Mutant(**{**fields, **changes})


def test_key_follows_the_mutants_content(tmp_path):
    root = _project(tmp_path)
    key = lambda mutant=_add_mutant(), engine="E": ledger.mutant_key(root, mutant, engine)  # noqa: E731
    first = key()
    assert first is not None and key() == first

    _edit(root / "harness" / "ops.py", "return hi", "return hi + 0")  # another function of the target's module
    _edit(root / "falsifiers" / "test_ops.py", "clamp(-1, 0, 10) == 0", "clamp(-2, 0, 10) == 0")  # another test
    assert key() == first, "the key depends on code the mutant's verdict does not"

    _edit(root / "harness" / "ops.py", "return a + b", "return b + a")
    target_changed = key()
    assert target_changed != first, "the target function changed but the key did not"
    _edit(root / "falsifiers" / "test_ops.py", "add(2, 3) == 5", "add(3, 2) == 5")
    assert key() != target_changed, "the falsifier changed but the key did not"

    now = key()
    assert key(_add_mutant(old="b + a", new="b - a")) != now, "the patch changed but the key did not"
    assert key(_add_mutant(env={"FLIP_TEST_STEPS": "3"})) != now, "the env changed but the key did not"
    assert key(engine="F") != now, "the engine changed but the key did not"
    assert ledger.mutant_key(root, _add_mutant(target="harness.ops:gone"), "E") is None


def test_unchanged_mutant_is_skipped(tmp_path):
    root = _project(tmp_path)
    book = ledger.Ledger(tmp_path / "ledger.json")
    mutant = _add_mutant()
    key = ledger.mutant_key(root, mutant, "E")
    book.entries[mutant.id] = {"key": key, "verdict": "killed", "date": "2026-01-01"}
    assert ledger.unverified(root, [mutant], book, "E") == [], "a mutant killed with this very content ran again"

    book.entries[mutant.id]["key"] = "0" * 64  # recorded for other content: not trusted
    assert [m.id for m, _ in ledger.unverified(root, [mutant], book, "E")] == [mutant.id]
    book.entries[mutant.id] = {"key": key, "verdict": "survived", "date": "2026-01-01"}  # a hand-edited entry
    assert [m.id for m, _ in ledger.unverified(root, [mutant], book, "E")] == [mutant.id]

    book.entries[mutant.id] = {"key": key, "verdict": "killed", "date": "2026-01-01"}
    _edit(root / "harness" / "ops.py", "return a + b", "return (a + b)")
    assert [m.id for m, _ in ledger.unverified(root, [mutant], book, "E")] == [mutant.id], \
        "the target changed, yet the ledger's old kill was trusted"


def _recorded(root: Path) -> dict:
    return json.loads(ledger.ledger_path(root).read_text())["mutants"]


def test_ledger_never_records_a_survivor(tmp_path, capsys):
    root = _project(tmp_path)
    survivor = next(m for m in all_mutants(root) if m.id == "MUT-DEMO-002a")
    # A ledger that claims the survivor was killed, under its current key: a full run must not keep that.
    lie = ledger.Ledger(ledger.ledger_path(root))
    lie.entries[survivor.id] = {"key": ledger.mutant_key(root, survivor, ledger.engine_digest()), "verdict": "killed",
                                "date": "2026-01-01"}
    lie.save()

    assert cli.verify(root, [], changed=False, jobs=2, timeout=120) == 1, "a surviving mutant must fail the run"
    assert "1/2 mutants killed, 1 not killed" in capsys.readouterr().out
    recorded = _recorded(root)
    assert sorted(recorded) == ["MUT-DEMO-001a"], f"the ledger holds {sorted(recorded)}"
    assert recorded["MUT-DEMO-001a"]["verdict"] == "killed"

    assert cli.verify(root, [], changed=True, jobs=1, timeout=120) == 1
    out = capsys.readouterr().out
    assert "1 of 2 declared mutants to verify (1 unchanged" in out and "survived         MUT-DEMO-002a" in out
    assert sorted(_recorded(root)) == ["MUT-DEMO-001a"]


def test_relocate_follows_a_moved_function(tmp_path):
    root = _project(tmp_path)
    claims_file = root / CLAIMS_DIR / "demo.yaml"
    # Move add() to another module, and give clamp's patch text a second home so that it is ambiguous once clamp goes.
    _edit(root / "harness" / "ops.py", OPS[:OPS.index("def clamp")], "")
    (root / "harness" / "arith.py").write_text("def add(a, b):\n    return a + b\n")
    assert [p for p in gate.mutant_problems(load_claims(root), root) if "MUT-DEMO-001a" in p], "setup: not stale"

    found = relocate.relocate_all(root, all_mutants(root))
    assert [(r.mutant.id, r.target) for r in found] == [("MUT-DEMO-001a", "harness.arith:add")], \
        "only the stale mutant is relocated"
    relocate.apply(root, found)
    assert claims_file.read_text() == CLAIMS.replace("target: harness.ops:add", "target: harness.arith:add"), \
        "relocation changed more of the claim file than the target line"
    assert gate.mutant_problems(load_claims(root), root) == []

    # clamp's body now lives in two modules: which one the mutant meant is not guessed.
    _edit(root / "harness" / "ops.py", "def clamp(", "def clamp_old(")
    (root / "harness" / "bounds.py").write_text(OPS[OPS.index("def clamp"):])
    (root / "harness" / "limits.py").write_text(OPS[OPS.index("def clamp"):].replace("clamp", "limit"))
    before = claims_file.read_text()
    found = relocate.relocate_all(root, all_mutants(root))
    assert [(r.mutant.id, r.target) for r in found] == [("MUT-DEMO-002a", None)]
    assert "several functions" in found[0].problem and "harness.bounds:clamp" in found[0].problem
    relocate.apply(root, found)
    assert claims_file.read_text() == before


@pytest.mark.helper
def test_rewrite_refuses_an_edit_that_changes_more_than_the_target():
    with pytest.raises(ValueError, match="no `target: harness.ops:nope` line"):
        relocate.rewrite_target(CLAIMS, "MUT-DEMO-001a", "harness.ops:nope", "harness.x:add")
    with pytest.raises(ValueError, match="found 0"):
        relocate.rewrite_target(CLAIMS, "MUT-DEMO-009a", "harness.ops:add", "harness.x:add")
