"""Content-keyed incremental verification: the ledger of mutants a real run has seen killed.

Each mutant gets a key, the sha256 of everything its verdict depends on directly: its target's name and the current
source of that function, its patch, its falsifier's node id and the source of that test function, its env, and the
source of this engine. The ledger (LEDGER_FILE in the claims folder: mutant id -> key, verdict, date) holds the keys
a real run verified KILLED. `verify --changed` (`make verify`) runs only the mutants whose current key is not in it;
a change to the engine changes every key, so it re-runs them all. Only a kill is ever recorded: any other verdict
removes the mutant's entry, and an entry whose key no longer matches is not trusted. What a key does not cover (a
callee of the target, a fixture, conftest.py) is covered by the full run, `verify` (`make verify-all`).
"""
from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path

from harness.atomic import write_text
from mutation.claims import CLAIMS_DIR, ROOT, Mutant
from mutation.patching import TargetError, function_source, module_file, split_target
from mutation.verdicts import KILLED, Verdict

LEDGER_FILE = "mutation-ledger.json"
ENGINE_DIR = Path(__file__).resolve().parent


def ledger_path(root: Path = ROOT) -> Path:
    return root / CLAIMS_DIR / LEDGER_FILE


def engine_digest(engine_dir: Path = ENGINE_DIR) -> str:
    """sha256 over this package's modules (names and bytes): any change to the engine changes every key."""
    digest = hashlib.sha256()
    for path in sorted(engine_dir.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def falsifier_source(root: Path, nodeid: str) -> str:
    """The source of the test function a node id names (file::test or file::Class::test; a [case] suffix dropped)."""
    file, *names = nodeid.split("[")[0].split("::")
    path = root / file
    if not path.is_file() or not names:
        raise TargetError(f"falsifier {nodeid!r}: no test file {file}")
    return function_source(path.read_text(encoding="utf-8"), ".".join(names))


def mutant_key(root: Path, mutant: Mutant, engine: str) -> str | None:
    """The mutant's content key, or None when its target or falsifier cannot be found (then it must run: stale)."""
    module, qualname = split_target(mutant.target) if ":" in mutant.target else (mutant.target, "")
    try:
        target_source = function_source(module_file(root, module).read_text(encoding="utf-8"), qualname)
        test_source = falsifier_source(root, mutant.falsifier)
    except (TargetError, SyntaxError, OSError):
        return None
    parts = {"target": mutant.target, "target_source": target_source, "patch": [mutant.old, mutant.new],
             "falsifier": mutant.falsifier, "falsifier_source": test_source, "env": sorted(mutant.env.items()),
             "engine": engine}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode("utf-8")).hexdigest()


class Ledger:
    """mutant id -> {"key", "verdict", "date"}, read from and saved to one JSON file."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.entries: dict[str, dict] = {}
        if self.path.is_file():
            self.entries = json.loads(self.path.read_text(encoding="utf-8")).get("mutants", {})

    def trusted(self, mutant_id: str, key: str | None) -> bool:
        """A real run killed this mutant with exactly this content."""
        entry = self.entries.get(mutant_id)
        return key is not None and entry is not None and entry.get("verdict") == KILLED and entry.get("key") == key

    def record(self, verdict: Verdict, key: str | None, today: str | None = None) -> None:
        """A kill is recorded under its key; any other verdict removes what the ledger said about the mutant."""
        if verdict.kind == KILLED and key is not None:
            date = today or datetime.date.today().isoformat()
            self.entries[verdict.mutant.id] = {"key": key, "verdict": KILLED, "date": date}
        else:
            self.entries.pop(verdict.mutant.id, None)

    def keep_only(self, declared: set[str]) -> None:
        """Forget mutants no claim declares any more."""
        self.entries = {k: v for k, v in self.entries.items() if k in declared}

    def save(self) -> None:
        data = {"about": "mutants a real run verified killed, keyed by content (see mutation/ledger.py)",
                "mutants": dict(sorted(self.entries.items()))}
        write_text(self.path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def unverified(root: Path, mutants: list[Mutant], ledger: Ledger, engine: str) -> list[tuple[Mutant, str | None]]:
    """The mutants (with their keys) that the ledger does not vouch for: those `verify --changed` runs."""
    keyed = [(m, mutant_key(root, m, engine)) for m in mutants]
    return [(m, key) for m, key in keyed if not ledger.trusted(m.id, key)]
