"""Falsifiers of contracts/claims/curve.yaml: the learning curve's statistics, its sampled decoding, and its split (no
held-out text reaches a student's training data)."""
from __future__ import annotations

import json
import random
from pathlib import Path
from itertools import combinations
from math import sqrt

import pytest
from hypothesis import given, settings, strategies as st

from harness import FlipError
from harness.stats import mcnemar_exact, pass_at_k, wilson

Z95 = 1.959963984540054


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 9).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_is_the_mean_over_every_k_subset(case):
    """pass@k is unbiased: the share of all k-subsets of the n samples that hold at least one correct sample."""
    n, c, k = case
    outcomes = [True] * c + [False] * (n - c)
    subsets = list(combinations(range(n), k))
    exact = sum(any(outcomes[i] for i in subset) for subset in subsets) / len(subsets)
    assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)


@pytest.mark.parametrize("k,n", [(0, 38), (1, 38), (20, 38), (38, 38), (3, 10)])
def test_wilson_interval_is_the_closed_form(k, n):
    """The 95% Wilson score interval (Wilson 1927), from its formula."""
    p = k / n
    centre = (p + Z95 ** 2 / (2 * n)) / (1 + Z95 ** 2 / n)
    half = Z95 / (1 + Z95 ** 2 / n) * sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n ** 2))
    low, high = wilson(k, n)
    assert low == pytest.approx(max(0.0, centre - half), abs=1e-4)
    assert high == pytest.approx(min(1.0, centre + half), abs=1e-4)


def test_mcnemar_exact_counts_only_the_discordant_tasks():
    """Two-sided exact McNemar: the binomial test on the tasks exactly one student solved; agreement is no evidence."""
    assert mcnemar_exact([True, False] * 5, [True, False] * 5) == 1.0
    ten_one_way = [True] * 10 + [False] * 20
    assert mcnemar_exact(ten_one_way, [False] * 30) == pytest.approx(2 * 0.5 ** 10)
    assert mcnemar_exact([True] * 3 + [False] * 27, [False] * 30) == pytest.approx(0.25)  # 3-0 is noise
    with pytest.raises(ValueError):
        mcnemar_exact([True], [True, False])


def test_sampled_decoding_is_seeded_and_greedy_at_zero(tmp_path):
    """Temperature 0 is the greedy decoder; a sampled run repeats exactly with its seed and differs with another."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from falsifiers.test_remap import tiny_base
    from harness.decode import generate

    directory = tiny_base(tmp_path, "llama")
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    texts = ["The quick brown fox", "def main():", "x"]
    greedy = [r["output"] for r in generate(model, tokenizer, texts, 16, 3)]
    assert [r["output"] for r in generate(model, tokenizer, texts, 16, 3, temperature=0.0, seed=5)] == greedy
    first = [r["output"] for r in generate(model, tokenizer, texts, 16, 3, temperature=1.5, seed=1)]
    again = [r["output"] for r in generate(model, tokenizer, texts, 16, 3, temperature=1.5, seed=1)]
    other = [r["output"] for r in generate(model, tokenizer, texts, 16, 3, temperature=1.5, seed=2)]
    assert first == again
    assert first != other
    assert first != greedy


def test_curve_refuses_training_data_holding_held_out_text(tmp_path):
    """A dataset whose instruction holds a held-out task's text never trains a curve student."""
    from harness.contracts import FIXTURES
    from harness.curve import check_not_held_out

    held_out = json.loads((FIXTURES / "holdout" / "tasks.jsonl").read_text(encoding="utf-8").splitlines()[0])
    validation = [{"id": "v1", "task": "Make the greeting say hello to every name."}]
    clean = tmp_path / "clean.jsonl"
    clean.write_text(json.dumps({"instruction": "Task:\nFix the bug in util.py.", "response": "x"}) + "\n")
    check_not_held_out(clean, validation)
    leaked = tmp_path / "leaked.jsonl"
    leaked.write_text(json.dumps({"instruction": f"Task:\n{held_out['task']}", "response": "x"}) + "\n")
    with pytest.raises(FlipError, match="never train on the eval set"):
        check_not_held_out(leaked, validation)
    with pytest.raises(FlipError, match="never train on the eval set"):
        check_not_held_out(clean, [{"id": "v2", "task": "Fix the bug in util.py."}])


def _generated_set(root: Path, ids: list[str], fix_ids: set[str]) -> Path:
    """A generated task set's layout (manifest split, tasks/<id>/task.json and workspace) without transcripts."""
    for task_id in ids:
        folder = root / "tasks" / task_id
        (folder / "workspace").mkdir(parents=True)
        (folder / "workspace" / "m.py").write_text(f"def {task_id}(x):\n    return x + 2\n")
        spec = {"kind": "fix" if task_id in fix_ids else "search", "lang": "python", "file": "m.py", "test": "true",
                "edits": [{"old": "    return x + 2", "new": "    return x + 1"}], "summary": f"fixed {task_id}"}
        (folder / "task.json").write_text(json.dumps(spec))
    (root / "manifest.json").write_text(json.dumps({"seed": 1, "split": {"train": ids, "validation": []}}))
    return root


def test_no_training_order_holds_a_hand_written_validation_prompt(tmp_path):
    """A generated training task whose prompt is word for word a prompt of flip tune's validation split of the
    hand-written tasks (which flip curve validates on) is in no training order: not in a curve row's, not in the
    tasks `flip run --train-tasks` exports; every other training task is, in the same seeded order."""
    from harness.contracts import FIXTURE_TASKS
    from harness.tasks import task_folders, training_order, training_transcripts, validation_split

    ids = [f"t{i}" for i in range(8)]
    tasks = _generated_set(tmp_path / "gen", ids, fix_ids=set())
    validation_id = validation_split(task_folders(FIXTURE_TASKS))[1][0]
    for task_id in ids:
        text = (FIXTURE_TASKS / validation_id / "prompt.txt").read_text() if task_id in ("t2", "t5") else f"Fix {task_id}."
        (tasks / "tasks" / task_id / "prompt.txt").write_text(text)
        (tasks / "transcripts" / task_id).mkdir(parents=True)
    order = training_order(tasks, ids, 42)
    assert sorted(order) == ["t0", "t1", "t3", "t4", "t6", "t7"]
    unfiltered = sorted(ids)
    random.Random(42).shuffle(unfiltered)
    assert order == [task_id for task_id in unfiltered if task_id in order], "the others keep their seeded order"
    assert [folder.name for folder in training_transcripts(tasks, None, 42)] == order
    assert [folder.name for folder in training_transcripts(tasks, 3, 42)] == order[:3]
    with pytest.raises(FlipError, match="between 1 and 6"):
        training_transcripts(tasks, 7, 42)


def test_worked_examples_stay_out_of_every_size_and_rows_resume_only_as_made(tmp_path):
    """The diagnostic's worked examples are the last fix tasks of the training order, whatever --sizes says; a size
    that would train on one is refused before anything is written; a finished row made with another base, recipe,
    steps or examples is refused rather than mixed into the curve."""
    from harness.curve import CurveOptions, curve, resumed_row, worked_examples
    from harness.tasks import training_order

    ids = [f"t{i}" for i in range(12)]
    tasks = _generated_set(tmp_path / "gen", ids, fix_ids={"t1", "t4", "t6", "t8", "t9", "t11"})
    order = training_order(tasks, ids, 42)
    examples, chosen = worked_examples(tasks / "tasks", order)
    fixes_from_end = [task_id for task_id in reversed(order) if task_id in {"t1", "t4", "t6", "t8", "t9", "t11"}]
    assert chosen == fixes_from_end[:3] and [bug for bug, _, _ in examples] == [f"fixed {i}" for i in chosen]
    limit = min(order.index(task_id) for task_id in chosen)
    with pytest.raises(FlipError, match="the diagnostic's worked examples"):
        curve(CurveOptions(tasks=tasks, out=tmp_path / "curve", sizes=f"1,{limit + 1}"))
    assert not (tmp_path / "curve").exists()

    made = {"n": 40, "base": "smollm2-135m", "recipe": "packed-all-linear", "steps": 160, "examples": chosen}
    row = tmp_path / "row.json"
    row.write_text(json.dumps({**made, "greedy": {}}))
    assert resumed_row(row, made)["greedy"] == {}
    for key, other in (("steps", 1000), ("base", "gemma3-270m"), ("recipe", "full-qv"), ("examples", ["t0"])):
        with pytest.raises(FlipError, match=f"was made with {key}"):
            resumed_row(row, {**made, key: other})
    row.write_text(json.dumps({key: value for key, value in made.items() if key != "examples"}))
    assert resumed_row(row, made)["steps"] == 160  # a row from before the examples were recorded


@pytest.mark.helper
def test_enclosing_function_and_plain_answer():
    from harness.curve import enclosing_function, plain_answer

    source = "import os\n\ndef f(x):\n    y = x + 1\n\n    return y\n\n\ndef g():\n    return 2\n"
    assert enclosing_function(source, "    y = x + 1") == "def f(x):\n    y = x + 1\n\n    return y\n"
    assert enclosing_function(source, "import os") is None
    assert plain_answer("def f(x):\n    return x\n\n# Bug: next\n") == "def f(x):\n    return x\n"


def _curve_report(base: str, solved: list[str], tasks: list[str]) -> dict:
    row = {"n": 0, "greedy": {"solved": len(solved), "tasks": len(tasks)}, "pass_at": {}, "task_ids": tasks,
           "greedy_solved_ids": solved}
    return {"base": base, "steps": 160, "rows": [row, dict(row, n=160)]}


def test_compared_curves_share_one_figure_and_their_validation_tasks(tmp_path):
    """`flip curve --compare DIR` draws the other base's finished curve beside this one (one line per base), and
    refuses a curve measured on other validation tasks: two bases are compared on the same tasks or not at all."""
    from harness.curve import compared_reports, plot

    tasks = ["a", "b", "c"]
    other = tmp_path / "gemma"
    other.mkdir()
    (other / "curve.json").write_text(json.dumps(_curve_report("gemma3-270m", ["a"], tasks)))
    reports = compared_reports(_curve_report("smollm2-135m", [], tasks), (other,))
    labels = plot(reports, tmp_path / "curve.png")
    assert labels == ["smollm2-135m, 160 steps: solved (greedy)", "gemma3-270m, 160 steps: solved (greedy)"]
    assert (tmp_path / "curve.png").read_bytes().startswith(b"\x89PNG")
    (other / "curve.json").write_text(json.dumps(_curve_report("gemma3-270m", ["a"], ["a", "b", "d"])))
    with pytest.raises(FlipError, match="other validation tasks"):
        compared_reports(_curve_report("smollm2-135m", [], tasks), (other,))
