"""Claim files: contracts/claims/<stage>.yaml read into Claim and Mutant records.

A claim names a falsifier (a pytest node id) and one or more mutants: small, plausible bugs written as a text patch
on one function. The folder holding the claim files is one constant, CLAIMS_DIR.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
# The claim ledger (the <stage>.yaml files, their schema and the mutation ledger), relative to the project root.
CLAIMS_DIR = "contracts/claims"


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
    for path in sorted((root / CLAIMS_DIR).glob("*.y*ml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "claims" in data:
            found.append(path)
    return found


def load_claim_file(path: Path, root: Path = ROOT) -> list[Claim]:
    """Read one claim file. Assumes it matches contracts/claims/claims.schema.json (the contract gate checks that)."""
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

