"""The contract gate's checks (pytest -m contract, falsifiers/test_contracts.py): each returns a list of actionable
problems, empty when all is well."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from mutation.claims import CLAIMS_DIR, ROOT, Claim
from mutation.patching import check_mutant

MIN_CLAIMS = 20  # the project promises at least this many falsifiable claims across all stages
SCHEMA_FILE = "claims.schema.json"


def schema_problems(root: Path = ROOT) -> list[str]:
    """Every claim file parses and matches contracts/claims/claims.schema.json; its `stage` is its file name."""
    import jsonschema

    schema = json.loads((root / CLAIMS_DIR / SCHEMA_FILE).read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    problems = []
    for path in sorted((root / CLAIMS_DIR).glob("*.y*ml")):
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
    return [f"only {len(claims)} claims across contracts/claims/*.yaml, at least {minimum} are required "
            f"(per file: {per_file or 'none'})"]

