"""Falsifiers of contracts/claims/parity.yaml: CCPA's traces in (flip export) and out (flip agent --ccpa-trace), and CCPA's
action parity score (flip parity), checked against CCPA's own fixtures (../shared/ccpa-fixtures, skipped when absent).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from harness import FlipError
from harness.ccpa import read_records, trace_errors
from harness.cli import main
from harness.contracts import tool_map
from harness.export import ExportOptions, export
from harness.parity import DRIFT, parity_score
from harness.tokens import counter

ROOT = Path(__file__).resolve().parent.parent
# regression/README.md's table: `| \`NNNN-name\` | what drifts | \`DriftCategory\` |`
README_ROW = re.compile(r"^\|\s*`(\d{4}-[a-z0-9-]+)`\s*\|.*\|\s*`([A-Za-z]+)`\s*\|\s*$", re.M)


def _pair(folder: Path) -> tuple[list[dict], list[dict]]:
    return read_records(folder / "teacher.ccpa-trace.jsonl"), read_records(folder / "student.ccpa-trace.jsonl")


def _folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir())


# ------------------------------------------------------------------------------------------------ the score

def test_every_canonical_pair_scores_what_ccpa_measured(ccpa_fixtures):
    """CCPA's measured-parity.json gives each canonical pair's score and drift count: ours are the same."""
    measured = json.loads((ccpa_fixtures / "canonical" / "measured-parity.json").read_text())
    expected = {row["id"]: (row["score"], row["drift_count"]) for row in measured["per_fixture"]}
    folders = _folders(ccpa_fixtures / "canonical")
    assert sorted(expected) == [f.name for f in folders] and len(folders) == 30
    got = {}
    for folder in folders:
        report = parity_score(*_pair(folder))
        got[folder.name] = (report.score, len(report.drifts))
    assert got == expected
    assert all(score == 1.0 for score, _ in got.values())


def test_every_regression_pair_drifts_as_its_readme_names(ccpa_fixtures):
    """Each regression pair drifts with exactly the category regression/README.md names, and scores below 1.0 unless
    its only drift is an extra action: score.rs divides matched actions by the teacher's, so an extra call or hook
    leaves 1.0 (0003, 0006); CCPA's corpus gate (mean >= 0.95) fails the set as a whole."""
    named = dict(README_ROW.findall((ccpa_fixtures / "regression" / "README.md").read_text()))
    folders = _folders(ccpa_fixtures / "regression")
    assert sorted(named) == [f.name for f in folders] and len(folders) == 11
    scores = []
    for folder in folders:
        report = parity_score(*_pair(folder))
        categories = [d.category for d in report.drifts]
        assert categories == [named[folder.name]], (folder.name, categories)
        extra_only = categories[0].startswith("Extra") and report.teacher_count > 0
        assert report.score == 1.0 if extra_only else report.score < 1.0, (folder.name, report)
        scores.append(report.score)
    assert sum(scores) / len(scores) < 0.95, "CCPA's corpus gate would pass the regression set"
    assert {named[f.name] for f in folders} == set(DRIFT) - {"MismatchedFileState"}


@pytest.mark.parametrize("teacher, student, equivalent", [
    ({"command": " ls  -la ;; "}, {"command": "ls -la"}, True),
    ({"command": "ls\u001c-la"}, {"command": "ls -la"}, False),  # U+001C is no whitespace to Rust
    ({"command": "ls; "}, {"command": "ls"}, True),
    ({"command": "ls ; ;"}, {"command": "ls ;"}, False),  # "ls ;" against "ls": one trailing run is dropped
    ({"command": "ls -la"}, {"command": "ls -l"}, False),
])
@pytest.mark.helper
def test_bash_rule(teacher, student, equivalent):
    drift = parity_score(_trace(("Bash", teacher)), _trace(("Bash", student))).drifts
    assert (not drift) is equivalent


def _trace(*calls) -> list[dict]:
    return [{"v": 1, "kind": "assistant_turn", "turn": i + 1, "stop_reason": "tool_use",
             "blocks": [{"type": "tool_use", "id": f"t{i}", "name": name, "input": tool_input}]}
            for i, (name, tool_input) in enumerate(calls)]


RULE_CASES = [
    # (tool, teacher input, student input, equivalent): what equivalence.rs compares, and what it ignores
    ("Read", {"path": "a.py"}, {"path": "a.py", "offset": 0}, False),
    ("Read", {"path": "a.py", "offset": 3.0}, {"path": "a.py"}, True),  # as_u64: a float is no offset
    ("Read", {"file_path": "a.py"}, {"file_path": "b.py"}, True),  # path_str reads `path` only
    ("Read", {"path": "a.py", "limit": 5}, {"path": "a.py", "limit": 6}, False),
    ("Write", {"path": "a", "content": "x"}, {"path": "a", "content": "x "}, False),
    ("Edit", {"path": "a", "old_string": "x", "new_string": "y", "replace_all": True},
     {"path": "a", "old_string": "x", "new_string": "y"}, True),
    ("Edit", {"path": "a", "old_string": "x", "new_string": "y", "post_state_sha256": "1"},
     {"path": "a", "old_string": "q", "new_string": "r", "post_state_sha256": "1"}, True),
    ("Edit", {"path": "a", "old_string": "x", "new_string": "y"}, {"path": "a", "old_string": "x", "new_string": "z"},
     False),
    ("Glob", {"pattern": "*.py", "path": "src"}, {"pattern": "*.py"}, True),
    ("Glob", {"pattern": "*.py"}, {"pattern": "*.rs"}, False),
    ("Grep", {"pattern": " fn main \n", "path": "src"}, {"pattern": "fn main", "path": "src", "regex": False}, True),
    ("Grep", {"pattern": "fn", "path": "src"}, {"pattern": "fn", "path": "."}, False),
    ("Grep", {"pattern": "fn", "regex": True}, {"pattern": "fn"}, False),
    ("Agent", {"subagent_type": "explore", "prompt": "p", "x": 1}, {"subagent_type": "explore", "prompt": "p"}, True),
    ("Agent", {"subagent_type": "explore", "prompt": "p"}, {"subagent_type": "plan", "prompt": "p"}, False),
    ("WebFetch", {"url": "u", "n": [1, {"b": 2, "a": True}]}, {"n": [1, {"a": True, "b": 2}], "url": "u"}, True),
    ("WebFetch", {"n": 1}, {"n": 1.0}, False),
    ("WebFetch", {"n": 1}, {"n": True}, False),
]


@pytest.mark.parametrize("tool, teacher, student, equivalent", RULE_CASES)
def test_each_tool_compares_what_equivalence_rs_compares(tool, teacher, student, equivalent):
    report = parity_score(_trace((tool, teacher)), _trace((tool, student)))
    assert [d.category for d in report.drifts] == ([] if equivalent else ["MismatchedToolInput"])
    assert report.score == (1.0 if equivalent else 0.0)


@pytest.mark.helper
def test_alignment_is_by_position_over_every_action_kind():
    hook = {"v": 1, "kind": "hook_event", "turn": 1, "event": "PreToolUse", "decision": "allow", "exit_code": 0}
    teacher = _trace(("Bash", {"command": "ls"})) + [hook] + _trace(("Read", {"path": "a"}))
    student = _trace(("Bash", {"command": "ls"}), ("Read", {"path": "a"})) + [hook]
    report = parity_score(teacher, student)
    assert report.score == pytest.approx(1 / 3)
    assert [(d.category, d.position) for d in report.drifts] == [("MismatchedActionKind", 1),
                                                                  ("MismatchedActionKind", 2)]
    assert parity_score([], []).score == 1.0 and parity_score([], student).score == 0.0


# ------------------------------------------------------------------------------------------------ reading

def _count_expected(files: list[Path]) -> dict:
    """What an exact export of these CCPA traces must count, from the raw lines (not through harness.ccpa)."""
    expected = {"read": 0, "skipped": Counter(), "raw_tool_use": 0, "unmappable": Counter(), "without_result": 0,
                "failed": Counter()}
    for path in files:
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        calls = [b for r in lines if r["kind"] == "assistant_turn" for b in r["blocks"] if b["type"] == "tool_use"]
        results = {r["tool_use_id"]: r for r in lines if r["kind"] == "tool_result"}  # ids are unique within a file
        mapped = [b for b in calls if b["name"] in tool_map()]
        expected["read"] += len(lines)
        expected["skipped"].update(f"ignored:{r['kind']}" for r in lines
                                   if r["kind"] in ("session_start", "session_end", "hook_event", "skill_invocation"))
        expected["raw_tool_use"] += len(calls)
        expected["unmappable"].update(b["name"] for b in calls if b["name"] not in tool_map())
        expected["without_result"] += sum(1 for b in mapped if b["id"] not in results)
        expected["failed"].update(b["name"] for b in mapped if b["id"] in results and not results[b["id"]]["ok"]
                                  and b["name"] != "Bash")  # a failing command is a target, not a failed call
    return expected


def test_export_reads_the_canonical_teacher_traces_with_exact_accounting(ccpa_fixtures, tmp_path):
    files = sorted((ccpa_fixtures / "canonical").glob("*/teacher.ccpa-trace.jsonl"))
    assert len(files) == 30
    stats = export(files, tmp_path / "out", ExportOptions(mode="full", jobs=1, progress=False), counter=counter())
    expected = _count_expected(files)
    lines = stats["lines"]
    assert stats["formats"] == {"ccpa-trace": 30} and stats["files"] == 30 and not stats["files_skipped"]
    assert lines["read"] == expected["read"] == lines["used"] + sum(lines["skipped"].values())
    assert lines["skipped"] == expected["skipped"] and not lines["unknown_types"]
    assert stats["raw_tool_use"] == expected["raw_tool_use"] == stats["remappable"] + sum(stats["unmappable"].values())
    assert stats["unmappable"] == expected["unmappable"]
    assert stats["calls_without_result"] == expected["without_result"]
    assert stats["failed"] == expected["failed"]
    samples = [json.loads(line) for line in (tmp_path / "out" / "apr_code_sft_full.jsonl").read_text().splitlines()]
    calls = [s for s in samples if not s["metadata"].get("final")]
    assert calls and stats["samples"]["full"] == len(samples)
    # every exported call names its file: CCPA's `path` went through the tool map
    for sample in calls:
        body = json.loads(sample["response"].split("\n")[1])
        if body["name"] in ("file_read", "file_write", "file_edit"):
            assert body["input"].get("path"), sample["response"]
    first = {s["metadata"]["source"]: s for s in samples if s["metadata"]["step"] == 0}
    readme = first["0001-edit-readme/teacher.ccpa-trace.jsonl"]
    assert json.loads(readme["response"].split("\n")[1]) == {"name": "file_read", "input": {"path": "README.md"}}
    assert readme["instruction"].startswith("Task:\nAdd a one-line intro sentence to README.md")


# ------------------------------------------------------------------------------------------------ the schema

@pytest.mark.helper
def test_the_schema_takes_every_ccpa_fixture_and_refuses_broken_records(ccpa_fixtures):
    files = sorted(ccpa_fixtures.glob("*/*/*.ccpa-trace.jsonl"))
    assert len(files) == 82
    for path in files:
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        assert not trace_errors(records, formats=False), path
    good = {"v": 1, "kind": "tool_result", "turn": 2, "tool_use_id": "t", "ok": True, "content": ""}
    assert not trace_errors([good])
    for broken in ({**good, "ok": "yes"}, {**good, "turn": 1}, {**good, "v": 2}, {**good, "kind": "tool_call"},
                   {k: v for k, v in good.items() if k != "content"}):
        assert trace_errors([broken]), broken


# ------------------------------------------------------------------------------------------------ writing

HOLDOUT = ROOT / "fixtures" / "holdout" / "workspaces"
# Python held-out tasks of every kind (fast tests): read, grep, shell, write, edit all run.
PYTHON_KINDS = ("h-age-birthday", "h-py-garage-vacancies", "h-py-sensor-stdlib", "h-py-backup-retention",
                "h-luhn-new", "h-py-rename-pitch", "h-py-haversine-tests")


@pytest.fixture(scope="module")
def oracle_episodes(tmp_path_factory):
    """The oracle (the teacher's canonical steps as apr-code calls, really executed) on the Python held-out tasks."""
    from harness.agent import AgentOptions, OraclePolicy, run_agent
    from harness.tasks import load_task

    tasks = [load_task(HOLDOUT / name) for name in PYTHON_KINDS]
    lines, _ = run_agent(tasks, OraclePolicy(counter()), AgentOptions(max_turns=8, progress=False))
    return tasks, lines


def test_agent_traces_pass_the_schema_and_read_back_as_the_calls_made(oracle_episodes, tmp_path):
    """Each episode's CCPA trace validates (formats included), holds one tool_use per executed call under Claude
    Code's name, and `flip export` reads it back into exactly the apr-code calls the agent made."""
    from harness.apr_runtime import target_refusal
    from harness.ccpa import write_traces

    tasks, lines = oracle_episodes
    names = write_traces(lines, tasks, tmp_path / "ccpa", "oracle", "2026-12-01T00:00:00Z")
    assert names == [f"{t.id}.ccpa-trace.jsonl" for t in tasks]
    for line in lines:
        path = tmp_path / "ccpa" / f"{line['id']}.ccpa-trace.jsonl"
        records = [json.loads(text) for text in path.read_text().splitlines()]
        assert not trace_errors(records)
        assert records[0]["actor"] == "apr-code" and records[1] == {"v": 1, "kind": "user_prompt", "turn": 0,
                                                                     "text": line["task"]}
        made = [(t["call"]["name"], t["call"]["input"]) for t in line["turns"] if t["call"]]
        uses = [b for r in records if r["kind"] == "assistant_turn" for b in r["blocks"] if b["type"] == "tool_use"]
        assert len(uses) == len(made) and {b["name"] for b in uses} <= {"Read", "Edit", "Write", "Bash", "Grep"}
        assert all("path" in b["input"] for b in uses if b["name"] in ("Read", "Edit", "Write"))
        results = [r for r in records if r["kind"] == "tool_result"]
        assert [r["ok"] for r in results] == [not t["observation"].split("\n</tool_call>\n", 1)[1].startswith(
            "Result (error):") for t in line["turns"] if t["call"]]
        assert records[-1]["kind"] == "session_end" and records[-1]["stop_reason"] == "end_turn"
        out = tmp_path / "export" / line["id"]
        export([path], out, ExportOptions(mode="full", jobs=1, progress=False), counter=counter())
        samples = [json.loads(s) for s in (out / "apr_code_sft_full.jsonl").read_text().splitlines()]
        read_back = [json.loads(s["response"].split("\n")[1]) for s in samples if not s["metadata"].get("final")]
        # a call apr-code's runtime would run differently (a regex grep) is an observation there, never a target
        targets = [(name, tool_input) for name, tool_input in made if target_refusal(name, tool_input, None) is None]
        assert [(c["name"], c["input"]) for c in read_back] == targets
    again = tmp_path / "again"
    write_traces(lines, tasks, again, "oracle", "2026-12-01T00:00:00Z")
    assert all((again / n).read_bytes() == (tmp_path / "ccpa" / n).read_bytes() for n in names), "not byte-identical"


@pytest.mark.helper
def test_an_agent_trace_against_itself_scores_one_and_a_step_short_drifts(oracle_episodes):
    from harness.ccpa import episode_records

    tasks, lines = oracle_episodes
    for line in lines:
        records = episode_records(line, "oracle", "2026-12-01T00:00:00Z", "0" * 64)
        assert parity_score(records, records).score == 1.0
        shorter = dict(line, turns=line["turns"][:-2] + line["turns"][-1:])  # the last call before the answer dropped
        report = parity_score(records, episode_records(shorter, "oracle", "2026-12-01T00:00:00Z", "0" * 64))
        assert report.score < 1.0 and report.drifts[-1].category == "MissingToolCall"


def test_flip_agent_writes_ccpa_traces_that_pass_the_schema(tmp_path):
    """`flip agent --ccpa-trace DIR` with a real (tiny, random) model: one trace per task, each valid."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from harness.models import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m")
    model = tmp_path / "tiny"
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(model)
    tokenizer.save_pretrained(model)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "h-age-birthday").symlink_to(HOLDOUT / "h-age-birthday")
    code = main(["agent", "--model", str(model), "--tasks", str(tasks), "--out", str(tmp_path / "t.jsonl"),
                 "--ccpa-trace", str(tmp_path / "ccpa"), "--max-turns", "2", "--max-new-tokens", "8", "--quiet"])
    assert code == 0
    written = sorted(p.name for p in (tmp_path / "ccpa").iterdir() if not p.name.startswith("."))
    assert written == ["h-age-birthday.ccpa-trace.jsonl"]
    records = [json.loads(text) for text in (tmp_path / "ccpa" / written[0]).read_text().splitlines()]
    assert not trace_errors(records) and records[0]["model"] == str(model) and records[-1]["tokens_out"] > 0
    line = json.loads((tmp_path / "t.jsonl").read_text())
    assert sum(r["kind"] == "assistant_turn" for r in records) == len(line["turns"])


def test_the_oracle_matches_the_teachers_held_out_trajectories_but_for_the_grep_path(oracle_episodes, tmp_path):
    """Per held-out task, the teacher's canonical trajectory (fixtures/teacher.py, recorded as stream-json with real
    tools) scored against the oracle's CCPA trace: the oracle takes the teacher's steps, so every action matches,
    except that the teacher greps with a `path` (the named file or the project) and the oracle without one, which
    CCPA's Grep rule counts as a different input."""
    import random

    from fixtures.teacher import ALWAYS, load_tasks, run_session
    from harness.ccpa import episode_records, transcript_records

    tasks, lines = oracle_episodes
    specs = {task["id"]: (task, workspace) for task, workspace in load_tasks(HOLDOUT)}
    for line in lines:
        task, workspace = specs[line["id"]]
        session = run_session(task, workspace, ALWAYS[task["kind"]][0], random.Random(f"42/{task['id']}"))
        recording = tmp_path / line["id"] / "teacher.stream.ndjson"
        recording.parent.mkdir()
        recording.write_text(session.rec.dump())
        report = parity_score(transcript_records(recording), episode_records(line, "oracle", "2026-12-01T00:00:00Z",
                                                                             "0" * 64))
        assert report.teacher_count == report.student_count == sum(1 for t in line["turns"] if t["call"])
        greps_first = task["kind"] in ("constant", "rename", "search")
        assert [(d.category, d.position, d.tool_name) for d in report.drifts] == (
            [("MismatchedToolInput", 0, "Grep")] if greps_first else []), line["id"]


TEACHER_TRACES = ROOT / "fixtures" / "holdout" / "teacher"


def test_each_agent_episode_is_scored_against_the_teachers_trajectory_of_its_task(tmp_path):
    """`flip agent --parity-teacher DIR` scores each episode's CCPA action parity against DIR/<id>.ccpa-trace.jsonl,
    the teacher's trajectory of that task (fixtures/holdout/teacher, written by fixtures/teacher.py --holdout-out
    with real tools): the oracle, which takes the teacher's steps, matches every action but the grep-first kinds'
    grep (the teacher greps with a path, the oracle without), so each task's score is exactly that, and the summary's
    mean is the mean of the tasks scored. A task without a teacher trace is not scored; a directory holding no trace
    of the tasks is refused before any episode runs."""
    from harness.agent import AgentOptions, OraclePolicy, run_agent
    from harness.tasks import load_task

    tasks = [load_task(HOLDOUT / name) for name in PYTHON_KINDS]
    teachers = tmp_path / "teachers"
    teachers.mkdir()
    for task in tasks[1:]:  # the first task has no teacher trace here
        (teachers / f"{task.id}.ccpa-trace.jsonl").symlink_to(TEACHER_TRACES / f"{task.id}.ccpa-trace.jsonl")
    options = AgentOptions(max_turns=8, progress=False, parity_teacher=teachers)
    lines, summary = run_agent(tasks, OraclePolicy(counter()), options)
    assert lines[0]["parity"] is None
    expected = {}
    for line in lines[1:]:
        calls = sum(1 for t in line["turns"] if t["call"])
        greps_first = line["kind"] in ("constant", "rename", "search")
        expected[line["id"]] = ((calls - 1) / calls if greps_first else 1.0,
                                [["MismatchedToolInput", 0, "Grep"]] if greps_first else [])
    got = {line["id"]: (line["parity"]["score"], [[d["category"], d["position"], d["tool_name"]]
                                                   for d in line["parity"]["drifts"]]) for line in lines[1:]}
    assert got == expected
    assert any(score < 1.0 for score, _ in got.values()) and any(score == 1.0 for score, _ in got.values())
    scores = [score for score, _ in got.values()]
    assert summary["parity"] == {"mean": round(sum(scores) / len(scores), 4), "tasks_scored": len(tasks) - 1,
                                 "tasks": len(tasks), "teacher": str(teachers)}
    (tmp_path / "none").mkdir()
    with pytest.raises(FlipError, match="holds no teacher trajectory of these tasks"):
        run_agent(tasks, OraclePolicy(counter()), AgentOptions(progress=False, parity_teacher=tmp_path / "none"))


def test_the_committed_teacher_traces_are_the_teachers_held_out_trajectories(tmp_path):
    """fixtures/holdout/teacher holds one valid CCPA teacher trace per held-out task (actor claude-code, the task's
    workspace hash, its prompt as the user prompt, a session end), and fixtures/teacher.py's canonical variant,
    run today with real tools, writes the same trace record for record (checked on the Python tasks, seconds: the
    only difference allowed is the test runs' timings in the results' text)."""
    import random

    from fixtures.teacher import ALWAYS, TEACHER_MODEL, load_tasks, run_session
    from harness.ccpa import teacher_trace, workspace_sha256

    def without_results(records):
        return [{k: v for k, v in r.items() if not (r["kind"] == "tool_result" and k == "content")} for r in records]

    specs = {task["id"]: (task, workspace) for task, workspace in load_tasks(HOLDOUT)}
    assert sorted(p.name for p in TEACHER_TRACES.iterdir()) == sorted(f"{i}.ccpa-trace.jsonl" for i in specs)
    for task_id, (task, workspace) in specs.items():
        records = read_records(TEACHER_TRACES / f"{task_id}.ccpa-trace.jsonl")
        assert not trace_errors(records)
        assert records[0]["actor"] == "claude-code" and records[0]["cwd_sha256"] == workspace_sha256(workspace)
        assert records[1] == {"v": 1, "kind": "user_prompt", "turn": 0, "text": task["prompt"]}
        assert records[-1]["kind"] == "session_end" and len([r for r in records if r["kind"] == "assistant_turn"]) >= 2
        if task_id in PYTHON_KINDS:
            session = run_session(task, workspace, ALWAYS[task["kind"]][0], random.Random(f"42/{task_id}"))
            recording = tmp_path / f"{task_id}.stream.ndjson"
            recording.write_text(session.rec.dump())
            today = teacher_trace(recording, task_id, task["prompt"], workspace, TEACHER_MODEL, records[0]["ts"])
            assert without_results(today) == without_results(records), task_id
