"""Falsifiers of contracts/claims/agent.yaml: `flip agent` runs tasks end to end and measures what it claims.

The oracle (the scripted teacher's solution steps, driven through the agent loop and the runtime, not through the
teacher's code) must solve every held-out task: that proves the tasks, their test commands and the runtime. The base
model must solve none. The agent's prompts are the exporter's training instructions, step for step.
"""
from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from falsifiers.test_runtime import TASKS, exported_steps, normalise
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.agent import (AgentOptions, OraclePolicy, act, fix_line_edits, invented_searches, next_instruction,
                           oracle_calls, open_episode, run_agent)
from harness.tasks import AgentTask, fix_lines, load_tasks
from harness.cli import main
from harness.contracts import system_prompt
from harness.export import ExportOptions, export
from harness.metrics import rates
from harness.prompt import Budget
from harness.tokens import counter
from harness.toolcall import render_tool_call

ROOT = Path(__file__).resolve().parent.parent
HOLDOUT = ROOT / "fixtures" / "holdout" / "workspaces"
TRACE_FIELDS = {"id", "task", "kind", "lang", "solved", "stop_reason", "turns", "first_tool", "grounded",
                "calls_by_tool", "invalid_calls", "refused", "fix_line_edits", "invented_searches"}
SUMMARY_FIELDS = {"tasks", "solved", "mean_turns", "calls_per_tool", "refused", "stop_reasons", "tasks_per_minute",
                  "per_kind", "per_lang", *(row.name for row in rates("agent"))}  # every rate of the metrics table


def test_the_oracle_solves_every_held_out_task():
    tasks = load_tasks(HOLDOUT)
    lines, summary = run_agent(tasks, OraclePolicy(counter()), AgentOptions(max_turns=12, progress=False))
    unsolved = {line["id"]: line["test"]["output_tail"][-300:] for line in lines if not line["solved"]}
    assert not unsolved, f"the oracle failed {len(unsolved)} held-out tasks: {unsolved}"
    assert summary["solved"] == summary["tasks"] == len(tasks) >= 30
    assert summary["first_tool_match"] == len(tasks), "a held-out task's recorded first tool is not the teacher's"
    assert summary["invalid_calls"] == summary["refused"] == 0
    assert summary["stop_reasons"] == {"answered": len(tasks)}
    kinds = Counter(task.kind for task in tasks)
    assert len(kinds) == 9 and all(n >= 2 for n in kinds.values()), kinds
    languages = Counter(task.lang for task in tasks)
    assert set(languages) == {"python", "rust"}, languages
    assert summary["per_lang"] == {lang: {"tasks": n, "solved": n} for lang, n in sorted(languages.items())}
    for line in lines:
        assert TRACE_FIELDS <= set(line)
        assert line["turns"][-1]["call"] is None and line["turns"][-1]["observation"] is None  # the final answer
    assert SUMMARY_FIELDS <= set(summary)
    # the teacher's own edits quote the lines its fix changes, on every task whose fix has such lines
    assert summary["tasks_editing_fix_line"] == summary["tasks_with_fix_lines"] >= 30


def test_an_edit_counts_as_finding_the_fix_only_when_it_quotes_the_faulty_line():
    """h-wrap-width's bug is `<= width + 1`: an edit of another line of the file (the first body line, the students'
    commonest `old`) is not on the fix line, and an edit quoting the faulty line is, even one that changes nothing."""
    task = next(t for t in load_tasks(HOLDOUT) if t.id == "h-wrap-width")
    assert task.fix_lines == ("if len(candidate) <= width + 1:",)
    source = (task.workspace / task.spec["file"]).read_text()
    other = next(line for line in source.splitlines()[1:] if line.strip() and line.strip() not in task.fix_lines[0])

    def edit(old, new, key="old"):
        return {"name": "file_edit", "input": {"path": task.spec["file"], key: old, key.replace("old", "new"): new}}

    assert fix_line_edits(task, [edit(other, other + "  # changed")]) == 0
    assert fix_line_edits(task, [edit("        if len(candidate) <= width + 1:", "        if len(candidate) <= width + 1:")]) == 1
    assert fix_line_edits(task, [edit("<= width + 1", "<= width", "old_string"), edit(other, other)]) == 1
    assert fix_line_edits(task, [edit("1", "2"), {"name": "file_read", "input": {"path": "x"}}]) == 0
    prompt = (task.workspace.parent / "prompt.txt").read_text()
    outside = {"file": "../prompt.txt", "edits": [{"old": prompt.split()[0], "new": "x"}]}
    assert fix_lines(outside, task.workspace) == (), "a task.json's file outside the workspace is never read"
    no_fix = next(t for t in load_tasks(HOLDOUT) if t.kind == "create")
    assert no_fix.fix_lines == () and fix_line_edits(no_fix, [edit(other, "x")]) is None



def test_a_search_is_invented_only_when_nothing_shown_named_what_it_looks_for():
    r"""The students' commonest first failure on hand-written tasks: a grep for a name the task never gave (`def
    discount_to_100\b`, `DAILY_OFFER\s*=`), finding nothing. A name the prompt or an earlier tool result showed is
    not invented; regex escapes and the languages' keywords are not names."""
    prompt = "Orders of exactly 100 should get the discount: see apply_discount."

    def grep(pattern, observation="No files found"):
        return {"call": {"name": "grep", "input": {"pattern": pattern}}, "observation": observation}

    read = {"call": {"name": "file_read", "input": {"path": "shop/prices.py"}},
            "observation": "1\tDAILY_OFFER = 100\n2\tdef apply_discount(total):"}
    assert invented_searches(prompt, [grep(r"def apply_discount\b"), grep(r"\bapply_discount\s*\(")]) == 0
    assert invented_searches(prompt, [grep(r"const \w+\s*=\s*100"), grep("= 100"), grep("discount")]) == 0
    assert invented_searches(prompt, [grep(r"def discount_to_100\b")]) == 1
    assert invented_searches(prompt, [grep(r"DAILY_OFFER\s*="), read, grep(r"DAILY_OFFER\s*=")]) == 1, \
        "before the read the name was made up; after it, it was shown"
    assert invented_searches(prompt, [grep(r"fn apply_discount\b"), grep(r"pub const DAILY_OFFER")]) == 1
    assert invented_searches(prompt, [{"call": {"name": "grep", "input": {"pattern": 7}}, "observation": "x"},
                                      {"call": {"name": "grep", "input": "made_up_name"}, "observation": None},
                                      {"call": None, "observation": None}]) == 0

WRAP = HOLDOUT / "h-wrap-width" / "workspace"
_ANYTHING = (st.none() | st.integers() | st.text(max_size=12) | st.lists(st.integers(), max_size=2)
             | st.sampled_from(["text_utils/wrap.py", "../prompt.txt", "../task.json", "/etc/hostname", ".", ""]))
_PIECE = st.sampled_from((WRAP / "text_utils" / "wrap.py").read_text().split("\n")) | st.text(max_size=12)
_EDIT = st.fixed_dictionaries({"old": _PIECE | _ANYTHING, "new": _PIECE | _ANYTHING}, optional={"file": _ANYTHING})


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({}, optional={"edits": st.lists(_EDIT | _ANYTHING, max_size=3) | _ANYTHING,
                                           "file": _ANYTHING}))
def test_fix_lines_of_any_task_json_is_a_tuple_and_never_reads_outside(spec):
    """task.json is the user's: whatever its `edits` and `file` hold, fix_lines answers (a tuple of lines of the
    workspace's own files), never raises, and never reads a file outside the workspace."""
    lines = fix_lines(spec, WRAP)
    assert isinstance(lines, tuple)
    inside = "\n".join(p.read_text() for p in WRAP.rglob("*") if p.is_file() and p.suffix in (".py", ".rs"))
    assert all(line in inside for line in lines)


def test_an_unsolved_task_is_not_counted_solved(tmp_path):
    """The oracle stopped one step short (no edit) leaves the tests failing: solved is the test's verdict."""
    task = load_tasks(HOLDOUT)[0]

    class ReadOnly(OraclePolicy):
        def __call__(self, episodes, instructions):
            return [render_tool_call(*oracle_calls(e.task.spec)[0]) if not e.turns else "I looked." for e in episodes]

    lines, summary = run_agent([task], ReadOnly(counter()), AgentOptions(progress=False))
    assert summary["solved"] == 0 and lines[0]["solved"] is False and lines[0]["test"]["exit_code"] not in (0, None)


def test_agent_prompts_are_the_exported_training_instructions(tmp_path):
    """Replaying a teacher transcript through the agent, each step's prompt equals the instruction the exporter
    wrote for that step (the timings of test output aside): one code path for training and evaluation."""
    transcript = ROOT / "fixtures" / "transcripts" / "head-py" / "grep-read-edit-test" / "teacher.stream.ndjson"
    export([transcript], tmp_path / "out", ExportOptions(mode="full", progress=False))
    samples = [json.loads(line) for line in (tmp_path / "out" / "apr_code_sft_full.jsonl").read_text().splitlines()]
    steps = exported_steps(transcript)
    assert len(samples) == len(steps) + 1 >= 4 and samples[-1]["metadata"]["final"], "every step and the final answer"
    task = AgentTask("head-py", (transcript.parent / "prompt.txt").read_text().strip(), TASKS / "head-py" / "workspace",
                     "true", {})
    episode = open_episode(task, AgentOptions())
    budget = Budget(counter(), 1024 - 0, system_prompt())
    try:
        for sample, (tool, tool_input, _, _) in zip(samples, steps):
            assert normalise(next_instruction(episode, budget)) == normalise(sample["instruction"])
            act(episode, render_tool_call(tool, tool_input), counter(), AgentOptions())
        assert normalise(next_instruction(episode, budget)) == normalise(samples[-1]["instruction"])
    finally:
        episode.sandbox.close()


def test_repeats_and_turn_limits_stop_an_episode(tmp_path):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "a.txt").write_text("a\n")
    read = render_tool_call("file_read", {"path": "a.txt"})

    class Fixed:
        counter = counter()

        def __init__(self, replies):
            self.replies = replies

        def __call__(self, episodes, instructions):
            return [self.replies[e.task.id] for e in episodes]

    tasks = [AgentTask(i, "Look at a.txt.", workspace, "true", {}) for i in ("loop", "broken")]
    replies = {"loop": read, "broken": '<tool_call>\n{"name": "file_read", "input": {"path": 3}}\n</tool_call>'}
    lines, summary = run_agent(tasks, Fixed(replies), AgentOptions(max_turns=5, progress=False))
    by_id = {line["id"]: line for line in lines}
    assert by_id["loop"]["stop_reason"] == "repeated" and len(by_id["loop"]["turns"]) == 3
    assert by_id["loop"]["turns"][2]["observation"] is None, "the third identical call must not run"
    assert by_id["broken"]["stop_reason"] == "repeated" and by_id["broken"]["invalid_calls"] == 2
    assert "InputValidationError" in by_id["broken"]["turns"][0]["observation"]
    replies["loop"] = "<tool_call>not json"
    lines, _ = run_agent(tasks[:1], Fixed(replies), AgentOptions(max_turns=2, progress=False))
    assert lines[0]["stop_reason"] == "max_turns" and lines[0]["invalid_calls"] == 2
    assert "Could not parse a tool call" in lines[0]["turns"][0]["observation"]


@pytest.mark.slow
def test_base_model_solves_no_held_out_task_and_the_cli_leaves_rechecked_workspaces(tmp_path):
    """`flip agent` with the bundled base on a few held-out tasks (small: 2 turns, short replies): 0 solved; the trace
    and summary hold every promised field; --keep leaves each final workspace, whose test gives the traced verdict."""
    picked = tmp_path / "tasks"
    picked.mkdir()
    for name in ("h-transpose", "h-py-meeting-gaps", "h-rs-thumbnail-width"):
        (picked / name).symlink_to(HOLDOUT / name)
    trace, keep = tmp_path / "base.jsonl", tmp_path / "kept"
    code = main(["agent", "--model", "smollm2-135m", "--tasks", str(picked), "--out", str(trace), "--keep", str(keep),
                 "--max-turns", "2", "--max-new-tokens", "48", "--quiet"])
    assert code == 0
    lines = [json.loads(line) for line in trace.read_text().splitlines()]
    summary = json.loads((tmp_path / "base.summary.json").read_text())
    assert [line["id"] for line in lines] == sorted(p.name for p in picked.iterdir())
    assert summary["solved"] == 0 and summary["tasks"] == 3, "the base solved a held-out task"
    assert SUMMARY_FIELDS <= set(summary)
    for line in lines:
        assert TRACE_FIELDS <= set(line) and line["solved"] is False
        assert not (keep / line["id"] / "target").exists(), "build outputs were kept"
        rerun = subprocess.run(line["test"]["command"], shell=True, cwd=keep / line["id"], capture_output=True)
        assert rerun.returncode == line["test"]["exit_code"] != 0


def _kinds_first_tasks():
    tasks, seen = [], set()
    for task in load_tasks(HOLDOUT):
        if task.kind not in seen:
            seen.add(task.kind)
            tasks.append(task)
    return tasks


def test_apr_runtime_pairings_of_dialect_and_runtime():
    """`--runtime apr` answers with apr-code's own runtime (contracts/apr_runtime.yaml), executing for real: the
    oracle in the apr-runtime dialect (file_edit old_string/new_string) solves one held-out task of every kind there,
    with apr-code's texts; in the apr-prompt dialect (old/new) every file_edit is answered `missing required field
    'old_string'` and changes nothing, so no task that needs an edit is solved."""
    tasks = _kinds_first_tasks()
    apr = AgentOptions(max_turns=12, progress=False, runtime="apr", dialect="apr-runtime")
    lines, summary = run_agent(tasks, OraclePolicy(counter(), "apr-runtime"), apr)
    assert summary["solved"] == len(tasks) == 9, {l["id"]: l["test"]["output_tail"][-200:] for l in lines}
    observations = [t["observation"] or "" for line in lines for t in line["turns"]]
    assert any(o.startswith("Action:") and "Replaced 1 occurrence" in o for o in observations)
    assert not any("old_string' " in o for o in observations)
    prompt = AgentOptions(max_turns=12, progress=False, runtime="apr", dialect="apr-prompt")
    lines, summary = run_agent(tasks, OraclePolicy(counter(), "apr-prompt"), prompt)
    edits = [t for line in lines for t in line["turns"] if t["call"] and t["call"]["name"] == "file_edit"]
    assert edits and all("missing required field 'old_string'" in t["observation"] and not t["valid"] for t in edits)
    needs_edit = {line["id"] for line in lines if any(t["call"] and t["call"]["name"] == "file_edit"
                                                     for t in line["turns"])}
    assert needs_edit and not any(line["solved"] for line in lines if line["id"] in needs_edit)
