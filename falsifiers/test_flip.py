"""The flip (contracts/flip.yaml): trained for real on the exported fixture transcripts, the student emits tool calls
on held-out tasks where its base emits none.

CPU-sized: FLIP_TEST_STEPS optimizer steps (default 40) on the curated export, no merge (the student is base +
adapter; `make flip` measures the merged student), shorter decoding than `make flip`. Everything is written under
pytest's tmp dir, never into `make flip`'s output. FLIP_BASE_MODEL=/path (HF dir or .gguf) runs the same claim for
another base (on a GPU runner: the device is `auto`).
"""
from __future__ import annotations

import json
import os

import pytest

from harness.contracts import ROOT

STEPS = int(os.environ.get("FLIP_TEST_STEPS", "40"))
BASE = os.environ.get("FLIP_BASE_MODEL", "smollm2-135m")
HOLDOUT = ROOT / "fixtures" / "holdout" / "tasks.jsonl"


@pytest.mark.flip
@pytest.mark.slow
def test_student_calls_tools_where_base_does_not(tmp_path, record_property):
    from harness.run import RunOptions, run

    options = RunOptions(out=tmp_path / "run", base=BASE, steps=STEPS, eval_every=None, merge=False,
                         max_new_tokens=64, progress_tokens=64, holdout=HOLDOUT)
    report = run(options)
    base, student = report["base"], report["student"]
    rates = {
        "base_model": BASE, "steps": report["steps_trained"], "held_out_tasks": base["tasks"],
        "base_tasks_with_call": base["tasks_with_call"], "base_valid_rate": base["valid_rate"],
        "student_tasks_with_call": student["tasks_with_call"], "student_valid_rate": student["valid_rate"],
        "student_grounded_rate": student["grounded_rate"], "student_calls_per_tool": student["calls_per_tool"],
        "wall_time_s": report["wall_time_s"],
    }
    print("flip rates:", json.dumps(rates))
    (tmp_path / "flip_rates.json").write_text(json.dumps(rates, indent=2) + "\n")
    for key, value in rates.items():
        record_property(key, json.dumps(value) if isinstance(value, dict) else value)

    traces = [json.loads(line) for line in (tmp_path / "run" / "traces" / "base.jsonl").read_text().splitlines()]
    assert len(traces) == base["tasks"] > 0
    assert [t["id"] for t in traces if t["tool_use_count"]] == [], "the base already calls tools: nothing to flip"
    assert student["tasks_with_call"] >= 1, f"the student never called a tool: {rates}"
