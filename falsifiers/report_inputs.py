"""Fixed inputs for the report falsifiers (falsifiers/test_metrics.py): first-step traces and agent trace lines of the
committed held-out tasks (fixtures/holdout/workspaces), with scripted outputs instead of a model's, summarised by the
real `summarise` of harness.evaluate and harness.agent and rendered by the real report, tune and curve code.

`rendered()` returns every rendered output by file name. falsifiers/report_golden/ holds what commit 599a05a's code
(before harness/metrics.py) rendered from these same inputs, re-rendered since only for the reviewed changes named in
contracts/claims/metrics.yaml (the Wilson intervals of FALSIFY-METRICS-004, the fix-line rate of FALSIFY-AGENT-025, the made-up
grep rate of FALSIFY-AGENT-027). The first rendering was:

    git archive 599a05a | tar -x -C /tmp/main && cd /tmp/main && cp $WT/falsifiers/report_inputs.py falsifiers/ \
      && PYTHONPATH=/tmp/main $WT/.venv/bin/python -m falsifiers.report_inputs $WT/falsifiers/report_golden

so a change to the metrics or the report that changes a byte of report.json, report.md, a summary, tune.md or curve.md
for the same inputs fails the test. A deliberate change (a new metric, a new report line) re-renders them with the
current code, `python -m falsifiers.report_inputs falsifiers/report_golden`, and its diff is reviewed with the change. Only what the report reads of RunOptions is given (a namespace), so the test does
not depend on how the options are declared.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

from harness.contracts import FIXTURES

HOLDOUT = FIXTURES / "holdout" / "workspaces"
# summarise describes this machine's sandbox; the report is compared on a fixed description
ISOLATION = "fixed isolation description (report_inputs.py)"


def call(name: str, **fields) -> str:
    return "<tool_call>" + json.dumps({"name": name, "input": fields}) + "</tool_call>"


def student_output(index: int, prompt: dict) -> str:
    """A spread of first steps: prose, a grounded read, a shell call, a path outside the workspace, an invalid call."""
    from harness.evaluate import task_paths

    paths = task_paths(prompt["task"]) or ["README.md"]
    return [
        "I would open the file and fix the bug.",
        call("file_read", path=paths[0]),
        call("shell", command="python -m pytest -q"),
        call("file_read", path="/etc/hosts"),
        call("file_read", file=paths[0]),
        call("grep", pattern="def ", path=paths[0]),
        call("file_read", path=paths[0]),
    ][index % 7]


def first_step() -> dict:
    from harness.evaluate import load_prompts, summarise, trace_record

    prompts = load_prompts(HOLDOUT)
    summaries = {}
    for who, output in (("base", lambda i, p: "Here is how to fix it:\n\n```python\npass\n```"),
                        ("student", student_output)):
        records = [trace_record(p["id"], p["task"], output(i, p), kind=p["kind"], expected_first_tool=p["first_tool"],
                                hit_token_limit=i % 11 == 0) for i, p in enumerate(prompts)]
        summaries[who] = {"model": who, "adapter": None, **summarise(records), "max_new_tokens": 128, "seconds": 12.5}
    return summaries


def agent_line(index: int, prompt: dict, student: bool) -> dict:
    """One episode's trace line, in the shape harness.agent.trace_line writes, scripted by the task's index."""
    turns = []
    if student:
        for turn in range(1 + index % 4):
            valid = (index + turn) % 3 != 0
            turns.append({"output": f"turn {turn} of {prompt['id']}", "call": {"name": "file_read", "input": {}},
                          "observation": f"file_read\n\n\nresult {turn}\nmore" if valid else "invalid call",
                          "valid": valid, "refused": index == 5 and turn == 0, "applied": turn == 2})
    else:
        turns.append({"output": "I would fix it.", "call": None, "observation": None, "valid": False,
                      "refused": False})
    solved = student and index % 6 == 1
    return {
        "id": prompt["id"], "task": prompt["task"], "kind": prompt["kind"],
        "lang": json.loads((HOLDOUT / prompt["id"] / "task.json").read_text(encoding="utf-8"))["lang"], "solved": solved,
        "stop_reason": "answered" if not student else ("max_turns" if index % 2 else "answered"),
        "turns": turns, "first_tool": "file_read" if student else None, "expected_first_tool": prompt["first_tool"],
        "first_tool_match": (student and prompt["first_tool"] == "file_read") if prompt["first_tool"] else None,
        "grounded": None if index % 4 == 3 else (student and index % 3 == 1),
        "calls_by_tool": {"file_read": len(turns)} if student else {},
        "invalid_calls": sum(1 for t in turns if t["observation"] is not None and not t["valid"]),
        "refused": sum(1 for t in turns if t["refused"]), "edits_applied": sum(1 for t in turns if t.get("applied")),
        "fix_line_edits": None if prompt["kind"].startswith("create") else int(student and index % 5 == 0),
        "invented_searches": int(student and index % 7 == 2),
        "test": {"command": "true", "exit_code": 0 if solved else 1, "timed_out": False, "output_tail": ""},
        "seconds": 1.5,
    }


def agent() -> dict:
    from harness.agent import summarise
    from harness.evaluate import load_prompts

    prompts = load_prompts(HOLDOUT)
    result = {"max_turns": 8}
    for who in ("base", "student"):
        lines = [agent_line(i, p, who == "student") for i, p in enumerate(prompts)]
        result[who] = {**summarise(lines, 95.0 if who == "base" else 321.0, "none"), "isolation": ISOLATION}
        result[f"{who}_lines"] = lines
    lines = result.pop("student_lines")
    base_lines = result.pop("base_lines")
    result["parity_per_task"] = {line["id"]: {"base": None, "student": round(0.125 * (i % 5), 3)}
                                 for i, (line, _) in enumerate(zip(lines, base_lines))}
    result["solved_example"] = next((line for line in lines if line["solved"]), None)
    result["unsolved_example"] = next((line for line in lines if not line["solved"]), None)
    return result


def report() -> dict:
    from harness.run import build_report

    results = {"first_step": first_step(), "agent": agent()}
    options = SimpleNamespace(base="smollm2-135m", dialect="apr-code", mode="full", holdout=Path("fixtures/holdout/workspaces"),
                              timings={"export": 0.5, "train": 394.0, "total": 830.2},
                              cpu_times={"export": 0.4, "train": 700.1, "total": 1560.0})
    train_summary = {"samples": {"train": 900, "val": 26, "dropped": 0, "prose": 0}, "steps": 140,
                     "final_train_loss": 0.1234, "final_val_loss": 0.2345, "tokens_per_s": 250.0, "steps_per_s": 0.4,
                     "packed": False, "device": "cpu", "config": {"rank": 16}}
    progress = [{"step": step, "tasks_with_call": 30 + i, "tasks_with_valid_call": 29 + i,
                 "valid_rate": round((29 + i) / 38, 4), "tasks_grounded": 18 + i,
                 "grounded_rate": round((18 + i) / 27, 4), "seconds": 12.0} for i, step in enumerate((35, 70, 105))]
    return build_report(options, Path("datasets/apr_code_sft_full.jsonl"), {"samples": 926}, train_summary, progress,
                        {"adapter": "adapter/"}, results)


def tune_rows() -> list[dict]:
    def row(name: str, seed: int, solved: int, first_tool: int, valid_calls: int, calls: int, refused: int) -> dict:
        return {"recipe": {"name": name, "mode": "full", "pack": False, "steps": 140, "lr": 2e-4,
                           "targets": ["q_proj", "v_proj"], "max_length": 1024}, "train_seed": seed, "train_s": 300.0,
                "agent": {"solved": solved, "tasks": 18, "refused": refused, "valid_calls": valid_calls, "calls": calls,
                          "valid_call_rate": round(valid_calls / calls, 4), "stop_reasons": {"max_turns": 18}},
                "first_step": {"first_tool_match": first_tool, "tasks_with_expected_first_tool": 18,
                               "absolute_path_calls": 0, "tasks": 18, "tasks_with_valid_call": 17,
                               "valid_rate": round(17 / 18, 4)}}

    return [row("a", 1, 1, 9, 200, 300, 0), row("a", 2, 0, 7, 190, 299, 0), row("b", 1, 1, 8, 203, 301, 1),
            row("b", 2, 0, 8, 150, 287, 0)]


def tune_report() -> dict:
    from harness.tune import pooled, score

    rows = tune_rows()
    pools = [pooled([r for r in rows if r["recipe"]["name"] == name]) for name in ("a", "b")]
    return {"base": "smollm2-135m", "dialect": "apr-code", "seed": 7, "train_seeds": [1, 2],
            "validation_tasks": ["t1", "t2"], "train_tasks": 40, "max_turns": 8, "current_default": "a",
            "chosen": max(pools, key=score)["recipe"]["name"], "pooled": pools, "rows": rows}


def curve_report() -> dict:
    def row(n: int, solved: int, valid_calls: int, plain: int, edit: int, calls: int = 207) -> dict:
        return {"n": n, "train_s": 100.0 * n, "task_ids": ["t1", "t2", "t3"], "greedy_solved_ids": ["t1"][:solved],
                "greedy": {"tasks": 41, "solved": solved, "valid_calls": valid_calls, "calls": calls,
                           "edits_applied": 3},
                "pass_at": {"1": 0.0244, "5": 0.1} if n else {}, "diagnostic": {"cases": 13, "plain_solved": plain,
                                                                               "edit_step_solved": edit}}

    return {"base": "smollm2-135m", "recipe": "packed-all-linear", "steps": 300, "validation_tasks": 41, "samples": 10,
            "temperature": 0.8, "rows": [row(0, 0, 0, 1, 0), row(64, 1, 120, 5, 2), row(250, 1, 207, 7, 3, calls=360)]}  # 207/360: 57.5%, where 100*k/n and 100*(k/n) round apart


def rendered() -> dict[str, str]:
    """Every output these inputs give, by file name, as the commands write them."""
    from harness import curve, tune
    from harness.agent import format_summary as agent_line_text
    from harness.evaluate import format_summary as eval_line_text
    from harness.run import render_markdown

    built = report()
    tuned = tune_report()
    lines = [eval_line_text(built[who], who) for who in ("base", "student")]
    lines += [agent_line_text(built["agent"][who], who) for who in ("base", "student")]
    return {"report.json": json.dumps(built, indent=2) + "\n", "report.md": render_markdown(built),
            "summary_lines.txt": "\n".join(lines) + "\n",
            "tune.json": json.dumps(tuned, indent=2) + "\n", "tune.md": tune.render_markdown(tuned),
            "curve.md": curve.render_markdown(curve_report())}


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name, text in rendered().items():
        (out / name).write_text(text, encoding="utf-8")
