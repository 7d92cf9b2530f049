"""The mutants `mutation verify --changed` would run (ids and targets), without running them: a dry run."""
import sys
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
from pathlib import Path
from mutation.claims import all_mutants
from mutation.ledger import Ledger, engine_digest, ledger_path, unverified
root = Path(".").resolve()
for m, key in unverified(root, all_mutants(root), Ledger(ledger_path(root)), engine_digest()):
    print(m.id, m.target, "STALE" if key is None else "")
