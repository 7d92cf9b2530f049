"""The contract gate (pytest -m contract): claims, falsifiers and mutants in contracts/claims/*.yaml are consistent.

Each check lists every problem it finds, with what to change, so one run tells you everything to fix.
The checks themselves live in mutation/gate.py; the tests at the bottom prove that they can fail.
"""
from __future__ import annotations

import pytest

from mutation import claims as claim_ledger, gate, running
from mutation.claims import ROOT, Claim, Mutant

pytestmark = pytest.mark.contract


def _report(problems: list[str], what: str) -> None:
    assert not problems, f"{len(problems)} {what}:\n" + "\n".join(f"- {p}" for p in problems)


@pytest.fixture(scope="module")
def claims() -> list[Claim]:
    try:
        return claim_ledger.load_claims(ROOT)
    except Exception as err:  # noqa: BLE001 - any malformed file; test_claim_files_match_schema says which
        pytest.fail(f"claim files do not load ({type(err).__name__}: {err}); see test_claim_files_match_schema")


@pytest.fixture(scope="module")
def collection() -> running.Collection:
    return running.collect(ROOT)


@pytest.mark.helper
def test_claim_files_match_schema():
    _report(gate.schema_problems(ROOT), "claim-file problems (schema: contracts/claims/claims.schema.json)")


@pytest.mark.helper
def test_ids_are_unique_and_carry_their_stage(claims):
    _report(gate.id_problems(claims), "id problems")


@pytest.mark.helper
def test_every_stage_file_has_claims():
    empty = [f"{p.relative_to(ROOT)} declares no claims" for p in claim_ledger.claim_files(ROOT)
             if not claim_ledger.load_claim_file(p, ROOT)]
    _report(empty, "stage files without claims")


@pytest.mark.helper
def test_enough_claims(claims):
    _report(gate.count_problems(claims), "claim-count problems")


@pytest.mark.helper
def test_collection_is_clean(collection):
    assert collection.exit_code == 0, (
        f"pytest --collect-only exited {collection.exit_code}; fix these collection errors first:\n"
        + "\n".join(collection.output.splitlines()[-40:]))


@pytest.mark.helper
def test_every_falsifier_is_collected(claims, collection):
    _report(gate.falsifier_problems(claims, collection.items), "falsifiers pytest does not collect")


@pytest.mark.helper
def test_every_mutant_applies_to_its_target(claims):
    _report(gate.mutant_problems(claims, ROOT), "stale or broken mutants")


@pytest.mark.helper
def test_every_test_backs_a_claim_or_is_a_helper(claims, collection):
    _report(gate.unclaimed_tests(claims, collection.items),
            "tests that back no claim; for each, add a claim naming it as falsifier in contracts/claims/<stage>.yaml, or "
            "mark it @pytest.mark.helper (`pytestmark = pytest.mark.helper` marks a whole file)")


# --- the gate's own falsifiers (claims in contracts/claims/contracts.yaml) ---------------------------------------------------

def _claim(falsifier: str, **mutant) -> Claim:
    m = Mutant(id="MUT-DEMO-001a", target="harness.demo:f", description="demo", old="a", new="b", claim_id="FALSIFY-DEMO-001",
               claim="demo claim", falsifier=falsifier, file="contracts/demo.yaml", **mutant)
    return Claim("FALSIFY-DEMO-001", "demo claim", falsifier, (m,), "demo", "contracts/demo.yaml")


def test_gate_rejects_uncollected_falsifier():
    collected = {"falsifiers/test_demo.py::test_a", "falsifiers/test_demo.py::test_p[x]"}
    assert gate.falsifier_problems([_claim("falsifiers/test_demo.py::test_a")], collected) == []
    assert gate.falsifier_problems([_claim("falsifiers/test_demo.py::test_p")], collected) == []
    problems = gate.falsifier_problems([_claim("falsifiers/test_demo.py::test_gone")], collected)
    assert len(problems) == 1 and "test_gone is not collected" in problems[0] and "test_a" in problems[0]


def test_gate_rejects_test_without_claim_or_helper_marker():
    claims = [_claim("falsifiers/test_demo.py::test_p")]
    items = {
        "falsifiers/test_demo.py::test_p[x]": [],  # a parametrized case of a falsifier
        "falsifiers/test_demo.py::test_support": ["helper"],
        "falsifiers/test_demo.py::test_orphan": ["slow"],
    }
    problems = gate.unclaimed_tests(claims, items)
    assert len(problems) == 1 and problems[0].startswith("falsifiers/test_demo.py::test_orphan:")


def test_gate_rejects_duplicate_and_misstaged_ids():
    a, b = _claim("falsifiers/test_demo.py::test_a"), _claim("falsifiers/test_demo.py::test_b")
    problems = gate.id_problems([a, b])
    assert any("FALSIFY-DEMO-001 is declared twice" in p for p in problems)
    assert any("MUT-DEMO-001a is declared twice" in p for p in problems)
    wrong = Claim("FALSIFY-EXPORT-001", "x", a.falsifier, a.mutants, "demo", a.file)
    assert any("FALSIFY-EXPORT-001 (contracts/demo.yaml) should start with FALSIFY-DEMO-" in p
               for p in gate.id_problems([wrong]))
