"""The mutation engine: proves that every falsifier declared in the claim files can fail.

A claim names a falsifier (a pytest node id) and one or more mutants: small, plausible bugs written as a text patch
on one function. For each mutant the engine copies the project to a temporary directory, applies the patch to that
function only, and runs the falsifier there in a fresh process (the working tree is never modified).

  claims.py         the claim files (CLAIMS_DIR) read into Claim and Mutant records
  patching.py       finding a target function and applying a patch inside it
  running.py        project copies, fresh-process pytest runs, the import probe, collection
  verdicts.py       killed / survived / stale / broken / ...; the Verifier and parallel runs
  ledger.py         content keys and the ledger of verified kills (incremental `make verify`)
  relocate.py       stale mutants pointed at the function their patch now lives in
  gate.py           the contract gate's checks (pytest -m contract)
  mutmut_driver.py  whole-package mutation testing with mutmut (`make mutation`)
  cli.py            `python -m mutation verify | relocate | mutmut | mutmut-report`
"""
