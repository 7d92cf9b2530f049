"""A flip agent run's outcomes, per task, small enough to commit: `python tools/agent_outcomes.py TRACE.jsonl OUT.json`.

A trace (harness.agent.trace_line, every turn's text) is megabytes and stays under runs/; this keeps its summary
(harness.agent.summarise) and, per task, the fields a paired test needs (solved, first tool, the fix's line, made-up
greps, ...), so a later run can be paired with it by task id (harness.stats.mcnemar_exact) after runs/ is gone.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from harness.evaluate import summary_file

FIELDS = ("id", "kind", "lang", "solved", "stop_reason", "first_tool", "first_tool_match", "grounded", "edits_applied",
          "fix_line_edits", "invented_searches", "invalid_calls", "calls_by_tool")


def outcomes(trace: Path) -> dict:
    summary = json.loads(summary_file(trace).read_text(encoding="utf-8"))
    summary.pop("isolation", None)  # this machine's sandbox description, not an outcome
    lines = [json.loads(line) for line in trace.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {"summary": summary, "tasks": [{key: line.get(key) for key in FIELDS} for line in lines]}


if __name__ == "__main__":
    trace, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.write_text(json.dumps(outcomes(trace), indent=1, sort_keys=True) + "\n", encoding="utf-8")
