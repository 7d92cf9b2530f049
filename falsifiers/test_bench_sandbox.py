"""Benchmark of the agent sandbox (make bench): a shell command, and the oracle over held-out tasks, under bubblewrap
against `--sandbox none` (no isolation; the same limits, timeout and output cap) in the same run. Measured numbers:
docs/evaluation.md, "Sandbox cost"."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from harness.agent import AgentOptions, OraclePolicy, run_agent
from harness.tasks import load_tasks
from harness.sandbox import Sandbox, isolation
from harness.tokens import counter

ROOT = Path(__file__).resolve().parent.parent
HOLDOUT = ROOT / "fixtures" / "holdout" / "workspaces"
# bubblewrap's cost per command over no isolation may not exceed this (it is a few milliseconds: namespaces, mounts).
COMMAND_RATIO_CEILING = 20.0
TASK_RATIO_CEILING = 3.0  # per held-out task (a few commands, whose tests compile and run code)
pytestmark = [pytest.mark.bench, pytest.mark.helper,
              pytest.mark.skipif(isolation().bwrap is None, reason=str(isolation().bwrap_problem))]


@pytest.mark.parametrize("mode", ["none", "bwrap"])
def test_one_shell_command(benchmark, tmp_path, mode):
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "a.txt").write_text("x\n")
    with Sandbox(tmp_path / "ws", parent=str(tmp_path), mode=mode) as box:
        result = benchmark.pedantic(box.run_command, args=("cat a.txt",), rounds=30, warmup_rounds=2)
        assert result.exit_code == 0 and result.output == "x\n"
    benchmark.extra_info["mode"] = mode


def _oracle_seconds(mode: str, tasks) -> float:
    started = time.perf_counter()
    _, summary = run_agent(tasks, OraclePolicy(counter()), AgentOptions(max_turns=12, progress=False, sandbox=mode))
    assert summary["solved"] == summary["tasks"], summary
    return time.perf_counter() - started


def test_cost_against_no_isolation(tmp_path):
    """Ratios in one run: one command, and the oracle over the held-out Python tasks, bubblewrap / none."""
    (tmp_path / "ws").mkdir()
    per_command = {}
    for mode in ("none", "bwrap", "none", "bwrap"):  # interleaved: the neighbours' load falls on both alike
        with Sandbox(tmp_path / "ws", parent=str(tmp_path), mode=mode) as box:
            started = time.perf_counter()
            for _ in range(20):
                box.run_command("true")
            per_command[mode] = per_command.get(mode, 0.0) + (time.perf_counter() - started) / 40
    tasks = [t for t in load_tasks(HOLDOUT) if "cargo" not in t.test]
    per_task = {mode: _oracle_seconds(mode, tasks) / len(tasks) for mode in ("none", "bwrap")}
    command_ratio = per_command["bwrap"] / per_command["none"]
    task_ratio = per_task["bwrap"] / per_task["none"]
    print(f"\nper command: bwrap {1000 * per_command['bwrap']:.1f} ms, none {1000 * per_command['none']:.1f} ms "
          f"({command_ratio:.2f}x); per task ({len(tasks)} Python tasks, oracle): bwrap "
          f"{1000 * per_task['bwrap']:.0f} ms, none {1000 * per_task['none']:.0f} ms ({task_ratio:.2f}x)")
    assert command_ratio < COMMAND_RATIO_CEILING and task_ratio < TASK_RATIO_CEILING
