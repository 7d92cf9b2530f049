"""The command line: `python -m mutation --help`.

  verify [MUTANT_ID ...]   run the declared mutants (all, the given ones, or with --changed those the ledger does
                           not vouch for), print a verdict per mutant and record each in the ledger
  relocate                 point stale mutants at the function their patch.old now lives in
  mutmut [MODULE ...]      mutmut over the given harness modules (default: all of harness/) in a scratch copy,
                           then the report below
  mutmut-report            per-file mutmut score and surviving mutants, from `mutmut results`
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from mutation import relocate as relocation
from mutation.claims import ROOT, all_mutants
from mutation.ledger import Ledger, engine_digest, ledger_path, mutant_key, unverified
from mutation.mutmut_driver import _mutmut_results, mutmut_report, run_mutmut
from mutation.verdicts import BASELINE_SKIPPED, DEFAULT_TIMEOUT_S, Verdict, verify_many


def verify(root: Path, ids: list[str], *, changed: bool, jobs: int, timeout: float, verbose: bool = False,
           record: bool = True) -> int:
    """Run the selected mutants and record each verdict in the ledger; 1 when any was not killed (a falsifier
    skipped here, e.g. without a GPU, is reported and not counted either way)."""
    declared = all_mutants(root)
    unknown = sorted(set(ids) - {m.id for m in declared})
    if unknown:
        print(f"no such mutant: {', '.join(unknown)}", file=sys.stderr)
        return 2
    ledger, engine = Ledger(ledger_path(root)), engine_digest()
    chosen = [m for m in declared if not ids or m.id in ids]
    keyed = unverified(root, chosen, ledger, engine) if changed else [(m, mutant_key(root, m, engine)) for m in chosen]
    keys = {m.id: key for m, key in keyed}
    print(f"{len(keyed)} of {len(declared)} declared mutants to verify"
          + (f" ({len(chosen) - len(keyed)} unchanged since the ledger's kill)" if changed else ""), flush=True)
    counts = {"killed": 0, "skipped": 0, "not killed": 0}

    def on_verdict(verdict: Verdict) -> None:
        m = verdict.mutant
        counts["killed" if verdict.killed else "skipped" if verdict.kind == BASELINE_SKIPPED else "not killed"] += 1
        print(f"{verdict.kind:<16} {m.id:<22} {verdict.seconds:6.1f}s  {m.target}", flush=True)
        if not verdict.killed and verbose:
            print(verdict.message(), "\n", flush=True)
        if record:
            ledger.record(verdict, keys[m.id])
            ledger.save()  # after each verdict: an interrupted run keeps what it verified

    start = time.monotonic()
    verify_many(root, [m for m, _ in keyed], jobs, on_verdict, timeout=timeout)
    if record:
        ledger.keep_only({m.id for m in declared})
        ledger.save()
    print(f"{counts['killed']}/{len(keyed)} mutants killed, {counts['not killed']} not killed, "
          f"{counts['skipped']} skipped here, in {time.monotonic() - start:.0f} s")
    return 1 if counts["not killed"] else 0


def _cmd_verify(args) -> int:
    return verify(ROOT, args.ids, changed=args.changed, jobs=args.jobs, timeout=args.timeout, verbose=args.verbose,
                  record=not args.no_record)


def _cmd_relocate(args) -> int:
    found = relocation.relocate_all(ROOT, all_mutants(ROOT))
    for r in found:
        print(f"{r.mutant.id:<22} {r.mutant.target} -> {r.target}" if r.target
              else f"{r.mutant.id:<22} {r.mutant.target}: NOT RELOCATED: {r.problem}")
    if not args.dry_run:
        relocation.apply(ROOT, found)
    print(f"{sum(1 for r in found if r.target)} relocated, {sum(1 for r in found if not r.target)} left to fix by hand"
          + (" (dry run: nothing written)" if args.dry_run else ""))
    return 1 if any(not r.target for r in found) else 0


def _cmd_mutmut(args) -> int:
    for module in args.modules:
        if not (ROOT / module).is_file() or not module.startswith("harness/"):
            raise SystemExit(f"{module}: not a module under harness/")
    name = "-".join(Path(m).stem for m in args.modules) or "harness"
    return run_mutmut(args.modules, Path(args.workdir or ROOT / "build" / f"mutmut-{name}"), args.children,
                      survivors=args.survivors, sample=args.sample)


def _cmd_mutmut_report(args) -> int:
    print(mutmut_report(_mutmut_results(str(Path(sys.executable).with_name("mutmut")), Path(args.workdir))))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mutation", description="Mutation verification of the claims.")
    sub = parser.add_subparsers(dest="command", required=True)
    verify_ = sub.add_parser("verify", help="run the declared mutants (default: all) and record verdicts in the ledger")
    verify_.add_argument("ids", nargs="*", metavar="MUTANT_ID")
    verify_.add_argument("--changed", action="store_true",
                         help="only the mutants whose content key the ledger does not hold as killed")
    verify_.add_argument("-j", "--jobs", type=int, default=1,
                         help="mutants verified side by side")
    verify_.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                         help="seconds per falsifier run")
    verify_.add_argument("--no-record", action="store_true",
                         help="leave the ledger as it is")
    verify_.add_argument("-v", "--verbose", action="store_true",
                         help="explain every mutant that was not killed")
    reloc = sub.add_parser("relocate", help="point stale mutants at the one function their patch.old now occurs in")
    reloc.add_argument("--dry-run", action="store_true",
                       help="print what would change, write nothing")
    run = sub.add_parser("mutmut", help="mutmut over harness modules in a scratch copy (build/mutmut-<modules>/), "
                                        "resumed when that copy exists; then the report")
    run.add_argument("modules", nargs="*", metavar="MODULE",
                     help="e.g. harness/export.py (default: all of harness/)")
    run.add_argument("--workdir",
                     help="the scratch copy (default: build/mutmut-<module names>)")
    run.add_argument("--children", type=int, default=os.cpu_count() or 1,
                     help="parallel mutant runs")
    run.add_argument("--survivors", action="store_true",
                     help="refresh the copy's tests from the working tree and re-run only the mutants not caught")
    run.add_argument("--sample", type=int, default=0,
                     help="run only this many mutants, drawn uniformly (seed 0): a score estimate for big modules")
    report = sub.add_parser("mutmut-report", help="mutmut score and survivors per module of a finished run")
    report.add_argument("--workdir", required=True,
                        help="where `mutmut run` ran, e.g. build/mutmut-export")
    args = parser.parse_args(argv)
    if getattr(args, "jobs", 1) < 1:
        parser.error("--jobs must be at least 1")
    commands = {"verify": _cmd_verify, "relocate": _cmd_relocate, "mutmut": _cmd_mutmut,
                "mutmut-report": _cmd_mutmut_report}
    return commands[args.command](args)
