"""Falsifiers of harness.tune (contracts/claims/tune.yaml): how `flip tune` chooses the training recipe."""
from __future__ import annotations

import json

import pytest

from harness import FlipError
from harness.tune import check_same_base, pooled, render_markdown, score


def _row(name: str, solved=0, first_tool=0, valid=0.5, steps=100, refused=0, absolute=0, seed=42) -> dict:
    return {"recipe": {"name": name, "mode": "full", "steps": steps, "lr": 1e-3, "targets": ["q_proj"],
                       "max_length": 1024},
            "train_seed": seed, "train_s": 1.0,
            "agent": {"solved": solved, "tasks": 18, "valid_call_rate": valid, "refused": refused,
                      "valid_calls": round(100 * valid), "calls": 100, "stop_reasons": {"answered": 18}},
            "first_step": {"first_tool_match": first_tool, "absolute_path_calls": absolute, "tasks": 18,
                           "tasks_with_valid_call": 18, "tasks_with_expected_first_tool": 18, "valid_rate": 1.0}}


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
    out = _row("agent-out", refused=2, absolute=1)
    report = {"base": "smollm2-135m", "validation_tasks": ["t"], "seed": 7, "train_seeds": [42], "train_tasks": 1, "max_turns": 8,
              "chosen": "clean", "current_default": "clean", "rows": [clean, out], "pooled": [clean, out]}
    assert "| 3 | 0/18 (0-18%) |" in render_markdown(report)  # the outside calls are shown with the row


def test_a_recipe_is_chosen_on_its_training_seeds_pooled_not_on_its_luckiest_seed():
    # "lucky" has one seed better than any run of "steady", but fewer in all; one of "reckless"'s seeds climbs out
    lucky = pooled([_row("lucky", solved=3, first_tool=12, seed=1), _row("lucky", solved=0, first_tool=2, seed=2)])
    steady = pooled([_row("steady", solved=2, first_tool=9, seed=1), _row("steady", solved=2, first_tool=9, seed=2)])
    reckless = pooled([_row("reckless", solved=5, first_tool=15, seed=1),
                       _row("reckless", solved=5, first_tool=15, refused=1, seed=2)])
    assert _chosen([lucky, steady, reckless]) == "steady"
    assert (steady["agent"]["solved"], steady["agent"]["tasks"], steady["first_step"]["first_tool_match"]) == (4, 36, 18)
    assert steady["recipe"]["train_seeds"] == [1, 2]
    uneven = pooled([_row("x", valid=0.2, seed=1), _row("x", valid=0.6, seed=2)])
    assert (uneven["agent"]["valid_calls"], uneven["agent"]["calls"], uneven["agent"]["valid_call_rate"]) == (80, 200, 0.4)
    assert uneven["agent"]["stop_reasons"] == {"answered": 36}
    report = {"base": "smollm2-135m", "validation_tasks": ["t"], "seed": 7, "train_seeds": [1, 2], "train_tasks": 1, "max_turns": 8,
              "chosen": "steady", "current_default": "steady", "pooled": [steady],
              "rows": [_row("steady", solved=2, first_tool=9, seed=s) for s in (1, 2)]}
    table = render_markdown(report)
    assert "| steady (seed 1) |" in table and "| steady (seed 2) |" in table
    assert "| **steady** (pooled) |" in table and "| 4/36 (4-25%) | 18/36 (34-66%) |" in table


def test_bad_tune_options_are_refused_before_any_work(tmp_path):
    """A tune runs for most of an hour: a turn budget or seed list that cannot work is a one-line error up front, and
    nothing is written (before, --max-turns 0 trained every recipe first)."""
    from falsifiers.test_cli import _one_line_error, flip

    out = tmp_path / "tune"
    for argv, needle in ((["--max-turns", "0"], "--max-turns must be at least 1"),
                         (["--train-seeds", "1,x"], "not a comma-separated list of integers"),
                         (["--train-seeds", ","], "--train-seeds names no seed"),
                         (["--recipes", "nope"], "unknown recipe(s) nope"),
                         (["--base", tmp_path / "nowhere"], "not found")):
        code, err = flip("tune", "--out", out, "--recipes", "full-qv", *argv, "--quiet")
        _one_line_error(code, err, needle)
        assert not out.exists()
    # a tune resumes only with the base it began with: its datasets and finished rows were made for that base
    (out / "datasets-1024").mkdir(parents=True)
    (out / "datasets-1024" / "export_stats.json").write_text(json.dumps({"options": {"tokenizer": "smollm2-135m"}}))
    check_same_base(out, "smollm2-135m")
    check_same_base(out, "smollm2-135m", "apr-prompt")  # a dataset written before dialects were recorded: the default
    with pytest.raises(FlipError, match="was tuned with --base smollm2-135m .*datasets-1024.*, not /models/qwen"):
        check_same_base(out, "/models/qwen")
    # nor with another dialect: its datasets and rows trained other field names
    with pytest.raises(FlipError, match="--dialect apr-prompt .*datasets-1024.*, not smollm2-135m with --dialect "
                                        "apr-runtime"):
        check_same_base(out, "smollm2-135m", "apr-runtime")
    (out / "recipe-a-seed42").mkdir()
    (out / "recipe-a-seed42" / "row.json").write_text(json.dumps({"base": "/models/qwen"}))
    with pytest.raises(FlipError, match=r"recipe-a-seed42.row\.json"):
        check_same_base(out, "smollm2-135m")


def _seeded(name: str, seed: int, solved: list[str], matched: list[str], refused: int = 0) -> dict:
    row = _row(name, solved=len(solved), first_tool=len(matched), refused=refused, seed=seed)
    row["per_task"] = {"solved": solved, "first_tool_match": matched}
    return row


def test_the_default_recipe_is_kept_when_the_better_one_is_within_the_noise():
    """flip tune replaces the current default only when a paired exact test (McNemar, on the same validation tasks and
    training seeds) says the candidate is better beyond noise: 3 solves against 0 (p = 0.25) keeps the default; 7
    against 0 (p = 0.016) replaces it; a default that climbs out of the workspace is replaced by a clean candidate."""
    from harness.tune import choose

    tasks = [f"t{i}" for i in range(18)]
    default = [_seeded("default", s, [], ["t0"]) for s in (1, 2)]
    lucky = [_seeded("lucky", 1, ["t1", "t2"], ["t0"]), _seeded("lucky", 2, ["t3"], ["t0"])]
    rows = default + lucky
    pools = [pooled(default), pooled(lucky)]
    assert max(pools, key=score)["recipe"]["name"] == "lucky"  # best by score ...
    kept = choose(pools, rows, tasks, "default")
    assert kept["chosen"] == "default" and "p = 0.250" in kept["reason"]  # ... but 3 to 0 is noise
    strong = [_seeded("strong", 1, tasks[:4], ["t0"]), _seeded("strong", 2, tasks[:3], ["t0"])]
    chosen = choose([pools[0], pooled(strong)], default + strong, tasks, "default")
    assert chosen["chosen"] == "strong" and "p = 0.016" in chosen["reason"]
    # equal solves: the first tools decide, by the same test
    tools = [_seeded("tools", s, [], tasks[:9]) for s in (1, 2)]
    assert choose([pools[0], pooled(tools)], default + tools, tasks, "default")["chosen"] == "tools"
    out = [_seeded("default", s, [], ["t0"], refused=1) for s in (1, 2)]
    assert choose([pooled(out), pooled(lucky)], out + lucky, tasks, "default")["chosen"] == "lucky"
