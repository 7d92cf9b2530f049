"""Falsifiers of contracts/claims/passk.yaml: `flip passk` pools sampled agent runs into the unbiased pass@k with its
interval, and refuses runs it cannot pool.

The runs are real `flip agent` episodes in the sandbox (run_agent) on three held-out tasks: a policy that follows the
oracle's solution on some tasks and only looks on the others, so which run solves which task is known by
construction and the expected pass@k is worked out by hand below, not by the code under test.
"""
from __future__ import annotations

import json

import pytest

from harness.agent import AgentOptions, OraclePolicy, run_agent
from harness.cli import main
from harness.evaluate import write_trace
from harness.tasks import load_tasks
from harness.tokens import counter

from falsifiers.test_flip import HOLDOUT

TASKS = load_tasks(HOLDOUT)[:3]


class SolveOnly(OraclePolicy):
    """The oracle's steps on the tasks in `solve`; on the others a call-free answer, which leaves their tests failing."""

    def __init__(self, solve: set[str]):
        super().__init__(counter())
        self.solve = solve

    def __call__(self, episodes, instructions):
        oracle = super().__call__(episodes, instructions)
        return [out if e.task.id in self.solve else "I looked at it." for e, out in zip(episodes, oracle)]


def write_run(path, solve: set[str], **summary_fields):
    lines, summary = run_agent(TASKS, SolveOnly(solve), AgentOptions(progress=False))
    summary = {"model": "m", "adapter": None, "tasks_dir": str(HOLDOUT), "dialect": "apr-prompt", "runtime": "claude",
               "temperature": 0.8, "sample_seed": len(solve), **summary_fields, **summary}
    write_trace(lines, summary, path)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three runs: run r solves the first 3 - r tasks, so the tasks were solved 3, 2 and 1 times."""
    base = tmp_path_factory.mktemp("passk")
    ids = [task.id for task in TASKS]
    return [write_run(base / f"run{r}.jsonl", set(ids[:3 - r])) for r in range(3)]


def passk(capsys, *argv) -> tuple[int, dict | None, str]:
    code = main(["passk", "--quiet", *map(str, argv)])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if code == 0 else None, captured.err


def test_pass_at_k_of_real_runs_is_the_unbiased_estimate(runs, capsys):
    code, report, _ = passk(capsys, *runs)
    assert code == 0
    assert report["samples"] == 3 and report["tasks"] == 3 and report["solved_per_run"] == [3, 2, 1]
    assert sorted(report["solved_by_task"].values()) == [1, 2, 3]
    # by hand: c = 3, 2, 1 of n = 3. pass@1 = mean(c / n) = 2/3. pass@2 = mean(1 - C(n-c, 2) / C(3, 2)) =
    # mean(1, 1, 1 - 1/3) = 8/9. pass@3: every task solved at least once = 1, a count (3/3), so a Wilson interval.
    assert set(report["pass_at"]) == {"1"}  # the default k are 1, 5, 10: 5 and 10 exceed the 3 runs
    assert passk(capsys, *runs, "--k", "1,4")[1]["pass_at"].keys() == {"1"}  # 4 > 3 runs: left out
    assert report["pass_at"]["1"]["value"] == pytest.approx(2 / 3, abs=1e-4)
    code, report, _ = passk(capsys, *runs, "--k", "1,2,3")
    assert set(report["pass_at"]) == {"1", "2", "3"}
    assert report["pass_at"]["2"]["value"] == pytest.approx(8 / 9, abs=1e-4)
    assert report["pass_at"]["3"] == {"value": 1.0, "interval": [0.4385, 1.0], "interval_method": "wilson",
                                      "tasks_solved": 3}
    low, high = report["pass_at"]["1"]["interval"]
    assert report["pass_at"]["1"]["interval_method"] == "bootstrap" and 0.333 <= low < 2 / 3 < high <= 1  # between the smallest and largest per-task value
    assert sum(row["tasks"] for row in report["per_kind"].values()) == 3
    # two of the runs: c = 2, 1, 1 of n = 2
    code, report, _ = passk(capsys, runs[0], runs[2], "--k", "1,2")
    assert code == 0 and report["solved_per_run"] == [3, 1]
    assert report["pass_at"]["1"]["value"] == pytest.approx((1 + 0.5 + 0.5) / 3, abs=1e-4)
    assert report["pass_at"]["2"]["value"] == 1.0 and report["pass_at"]["2"]["tasks_solved"] == 3


def test_runs_that_cannot_be_pooled_are_refused_in_one_line(runs, tmp_path, capsys):
    ids = [task.id for task in TASKS]
    greedy = write_run(tmp_path / "greedy.jsonl", set(ids[:1]), temperature=0.0, sample_seed=None)
    other_model = write_run(tmp_path / "other.jsonl", set(ids[:1]), model="another")
    summary = json.loads((tmp_path / "other.summary.json").read_text())
    lines = (tmp_path / "other.jsonl").read_text().splitlines()
    (tmp_path / "fewer.jsonl").write_text(lines[0] + "\n")
    (tmp_path / "fewer.summary.json").write_text(json.dumps({**summary, "model": "m"}))
    cases = {
        "same run twice": ([runs[0], runs[0]], "same run"),
        "a greedy run": ([runs[0], greedy], "greedy"),
        "another model": ([runs[0], other_model], "differ in model"),
        "other tasks": ([runs[0], tmp_path / "fewer.jsonl"], "different tasks"),
        "not a trace": ([runs[0], HOLDOUT / TASKS[0].id / "prompt.txt"], "not a flip agent trace"),
        "k above the runs": ([runs[0], runs[1], "--k", "3"], "exceeds"),
        "--out over a run's summary": ([runs[0], runs[1], "--out", runs[1].with_name("run1.summary.json")], "--out"),
    }
    for name, (argv, says) in cases.items():
        code, _, err = passk(capsys, *argv)
        assert code == 2 and says in err and err.count("\n") == 1 and "Traceback" not in err, (name, err)
