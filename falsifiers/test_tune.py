"""Falsifiers of harness.tune (contracts/tune.yaml): how `flip tune` chooses the training recipe."""
from __future__ import annotations

from harness.tune import render_markdown, score


def _row(name: str, solved=0, first_tool=0, valid=0.5, steps=100, refused=0, absolute=0) -> dict:
    return {"recipe": {"name": name, "mode": "full", "steps": steps, "lr": 1e-3, "targets": ["q_proj"],
                       "max_length": 1024},
            "train_s": 1.0,
            "agent": {"solved": solved, "tasks": 18, "valid_call_rate": valid, "refused": refused, "valid_calls": 1,
                      "calls": 2, "stop_reasons": {}},
            "first_step": {"first_tool_match": first_tool, "absolute_path_calls": absolute,
                           "tasks_with_expected_first_tool": 18, "valid_rate": 1.0}}


def _chosen(rows: list[dict]) -> str:
    return max(rows, key=score)["recipe"]["name"]


def test_a_student_that_climbs_out_is_never_chosen_over_one_that_does_not():
    clean = _row("clean", solved=0, first_tool=8, valid=0.5)
    # better on every other count, but one agent call (or one first-step call) named a path outside the workspace
    assert _chosen([_row("agent-out", solved=3, first_tool=12, valid=0.9, refused=1), clean]) == "clean"
    assert _chosen([clean, _row("first-out", solved=3, first_tool=12, valid=0.9, absolute=1)]) == "clean"
    # among clean candidates: solved first, then first tools, then the valid-call rate, then fewer steps
    assert _chosen([_row("a", solved=1, first_tool=2), _row("b", solved=0, first_tool=9)]) == "a"
    assert _chosen([_row("a", first_tool=9, valid=0.1), _row("b", first_tool=8, valid=0.9)]) == "a"
    assert _chosen([_row("a", valid=0.4), _row("b", valid=0.6)]) == "b"
    assert _chosen([_row("a", steps=200), _row("b", steps=60)]) == "b"
    report = {"validation_tasks": ["t"], "seed": 7, "train_tasks": 1, "max_turns": 8, "chosen": "clean",
              "current_default": "clean", "rows": [clean, _row("agent-out", refused=2, absolute=1)]}
    assert "| 3 | 0/18 |" in render_markdown(report)  # the outside calls are shown with the row
