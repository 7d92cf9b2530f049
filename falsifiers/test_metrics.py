"""Falsifiers of contracts/claims/metrics.yaml: one metrics table (harness/metrics.py) that the summaries, the report,
the goals, tune, curve and the flip falsifier read; the reports render the bytes they rendered before it existed."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from falsifiers import report_inputs
from harness.metrics import METRICS, count_text, fill, goals, interval_text, metric, pct, rate, rate_text, rates

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "report_golden"


@pytest.mark.parametrize("name", sorted(p.name for p in GOLDEN.iterdir()))
def test_reports_render_the_bytes_they_rendered_before_the_metrics_table(name):
    """For the same inputs (falsifiers/report_inputs.py: scripted first steps and agent episodes of the committed
    held-out tasks, summarised by the real summarise), report.json, report.md, the summary lines, tune.json/tune.md and
    curve.md are byte for byte the reviewed renderings in falsifiers/report_golden/ (commit 599a05a's, before the
    metrics table, plus the Wilson intervals of FALSIFY-METRICS-004): same keys in the same order, same rates, same
    floors, same percentages."""
    assert report_inputs.rendered()[name] == (GOLDEN / name).read_text(encoding="utf-8")


def test_every_rate_of_the_flip_and_tune_reports_carries_its_wilson_interval():
    """Every rate of the metrics table that report.md shows (goals, the agent table, the first-step table) and the
    rates of flip eval's and flip agent's summary lines, base and student, are written as 'k/n (p%, 95% CI lo-hi%)'
    from the summary's own counts; each recipe row of tune.md and the agent's solves per task kind and per language as 'k/n (lo-hi%)'."""
    built = report_inputs.report()
    text = report_inputs.rendered()["report.md"]
    summaries = {"first_step": {"base": built["base"], "student": built["student"]},
                 "agent": {who: built["agent"][who] for who in ("base", "student")}}
    lines = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    shown = {"first_step": {"valid_rate": "tasks with >= 1 valid call", "grounded_rate": "grounded (of tasks naming a path)",
                            "valid_call_rate": "valid calls / calls",
                            "first_tool_match_rate": "first tool matches the teacher's"},
             "agent": {"solve_rate": "solved", "valid_call_rate": "valid calls / turns with a call",
                       "grounded_rate": "first call grounded (of tasks naming a path)",
                       "first_tool_match_rate": "first tool matches the teacher's",
                       "fix_line_rate": "an edit quotes the line the fix changes (of tasks whose fix edits lines)",
                       "invented_search_rate": "a grep for a name nothing had shown (made up)"}}
    for section, labels in shown.items():
        assert set(labels) == {row.name for row in rates(section)}  # a new rate of the table needs its report line
        for name, label in labels.items():
            cells = [interval_text(summaries[section][who], section, name) for who in ("base", "student")]
            assert f"| {label} | {cells[0]} | {cells[1]} |" in text, (section, name)
            assert "95% CI" in cells[1]
    for row in METRICS:
        if row.goal and row.denominator:
            measured = interval_text(summaries[row.section][row.who], row.section, row.name)
            assert lines[row.goal].split(" | ")[2] == measured, row.goal
    for groups in ("per_kind", "per_lang"):
        assert built["agent"]["student"][groups], groups
        for group, counts in built["agent"]["student"][groups].items():
            rows = [line for line in text.splitlines() if line.startswith(f"| {group} | ")]
            assert any(line.endswith(f" | {count_text(counts['solved'], counts['tasks'])} |") for line in rows), group
    # the summary lines flip eval and flip agent print, base and student
    summary_lines = report_inputs.rendered()["summary_lines.txt"]
    in_lines = {"first_step": {"valid_rate": "with a valid call", "grounded_rate": "grounded"},
                "agent": {"solve_rate": "solved", "valid_call_rate": "valid calls", "grounded_rate": "first call grounded",
                          "first_tool_match_rate": "first tool matches", "fix_line_rate": "an edit on the fix's line"}}
    for section, labels in in_lines.items():
        for who in ("base", "student"):
            line = next(line for line in summary_lines.splitlines()
                        if line.startswith(f"{who}: ") and (" solved " in line) == (section == "agent"))
            for name, label in labels.items():
                assert f"{label} {interval_text(summaries[section][who], section, name)}" in line, (who, name, line)
    tune = report_inputs.rendered()["tune.md"]
    for pool in report_inputs.tune_report()["pooled"]:
        agent, first = pool["agent"], pool["first_step"]
        assert (f"| {count_text(agent['solved'], agent['tasks'])} "
                f"| {count_text(first['first_tool_match'], first['tasks_with_expected_first_tool'])} "
                f"| {count_text(first['tasks_with_valid_call'], first['tasks'])} "
                f"| {count_text(agent['valid_calls'], agent['calls'])} |") in tune, pool["recipe"]["name"]
    assert count_text(7, 38) == "7/38 (9-33%)" and count_text(0, 0) == "0/0"


def _results(section: str, value) -> dict:
    """Both sections, every goal's metric at its floor, except `section`'s goals set to `value`."""
    results = {}
    for row in METRICS:
        if row.goal is None:
            continue
        part = results.setdefault(row.section, {"base": {}, "student": {}})
        part[row.who][row.name] = value(row) if row.section == section else row.floor
    return results


@pytest.mark.parametrize("section", ["first_step", "agent"])
def test_every_goal_is_met_at_its_floor_and_missed_past_it(section):
    """flip run's goal: a measured value at its floor meets it; a rate below its floor, a count off its exact value, or
    a value not measured (None) misses it; an agent goal is not checked when the agent did not run."""
    checked = [row for row in METRICS if row.goal is not None and row.section == section]
    assert checked, f"no goal in section {section}"
    at_floor = goals(_results(section, lambda row: row.floor))
    assert at_floor["met"] and all(check["met"] for check in at_floor["checks"].values()), at_floor
    for row in checked:
        for missed in (None, row.floor - 0.01 if row.op == ">=" else row.floor + 1):
            results = _results(section, lambda other: missed if other is row else other.floor)
            report = goals(results)
            assert not report["met"] and not report["checks"][row.goal]["met"], (row.goal, missed, report)
            assert [name for name, check in report["checks"].items() if not check["met"]] == [row.goal]
            assert report["checks"][row.goal] == {"floor": f"{row.op} {row.floor}", "value": missed, "met": False}
    no_agent = goals({"first_step": _results(section, lambda row: row.floor)["first_step"]})
    assert set(no_agent["checks"]) == {row.goal for row in METRICS if row.goal and row.section == "first_step"}


@pytest.mark.helper
@pytest.mark.parametrize("section", ["first_step", "agent"])
def test_fill_puts_each_rate_after_its_later_count_and_none_over_nothing(section):
    first_step, agent = report_inputs.first_step()["student"], report_inputs.agent()["student"]
    summary = first_step if section == "first_step" else agent
    keys, names = list(summary), {row.name for row in rates(section)}
    for row in rates(section):
        anchor = max(keys.index(row.numerator), keys.index(row.denominator))
        assert set(keys[anchor + 1:keys.index(row.name)]) <= names, f"{row.name} is not right after its counts"
        assert summary[row.name] == rate(summary[row.numerator], summary[row.denominator])
    counts = {key: value for key, value in summary.items() if key not in names}
    assert fill(counts, section) == summary
    assert fill({**counts, "tasks": 0, "tasks_naming_path": 0}, section)["grounded_rate"] is None
    with pytest.raises(KeyError, match="does not count"):
        fill({key: value for key, value in counts.items() if key != "tasks_naming_path"}, section)


@pytest.mark.helper
def test_rates_and_percentages_are_written_one_way():
    assert (rate(2, 3), rate(2, 3, digits=None), rate(0, 0)) == (0.6667, 2 / 3, None)
    assert (pct(None), pct(0.7143), rate_text(0, 0), rate_text(207, 360)) == ("n/a", "71%", "0/0 (n/a)",
                                                                             "207/360 (58%, 95% CI 52-62%)")
    with pytest.raises(KeyError, match="no metric"):
        metric("agent", "no_such_rate")


# ---------------------------------------------------------------------------------------------------------------------
# Where floors and rate names may be written: harness/metrics.py only
# ---------------------------------------------------------------------------------------------------------------------

ORDERING = (ast.Lt, ast.LtE, ast.Gt, ast.GtE)


def _names_a_rate(node: ast.AST) -> bool:
    """A `*_rate` key, variable or attribute anywhere in the expression."""
    for part in ast.walk(node):
        text = (part.value if isinstance(part, ast.Constant) and isinstance(part.value, str)
                else part.id if isinstance(part, ast.Name) else part.attr if isinstance(part, ast.Attribute) else "")
        if text.endswith("_rate"):
            return True
    return False


def _is_number(node: ast.AST) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        node = node.operand
    return isinstance(node, ast.Constant) and type(node.value) in (int, float)


def _rate_strings(nodes) -> list[str]:
    return [n.value for n in nodes if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and n.value.endswith("_rate")]


def floor_literals(source: str) -> list[str]:
    """What a module writes that only the metrics table may: a rate compared (<, <=, >, >=) with a number anywhere; at
    module level, a table pairing a rate name with a number (a floor table) or listing two or more rate names."""
    found = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(isinstance(op, ORDERING) for op in node.ops):
            operands = [node.left, *node.comparators]
            if any(_names_a_rate(o) for o in operands) and any(_is_number(o) for o in operands):
                found.append(f"line {node.lineno}: a rate compared with a number")
    for statement in tree.body:
        if not isinstance(statement, (ast.Assign, ast.AnnAssign)) or statement.value is None:
            continue
        for node in ast.walk(statement.value):
            if isinstance(node, ast.Dict):
                pairs = [k for k, v in zip(node.keys, node.values) if k is not None and _rate_strings([k]) and _is_number(v)]
                names = _rate_strings(node.keys)
            elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                names = _rate_strings(node.elts)
                pairs = names if names and any(_is_number(e) for e in node.elts) else []
            else:
                continue
            if pairs:
                found.append(f"line {node.lineno}: a floor table ({', '.join(_rate_strings(pairs) or pairs)})")
            elif len(set(names)) > 1:
                found.append(f"line {node.lineno}: a table of rate names ({', '.join(names)})")
    return found


def test_no_module_but_the_metrics_table_writes_a_floor_or_a_table_of_rate_names():
    """Every floor and every list of rates is written once, in harness/metrics.py: no other module of harness/ or
    falsifiers/ compares a rate with a number literal, or holds at module level a table of floors or of rate names."""
    offenders = {}
    for path in sorted([*(ROOT / "harness").glob("*.py"), *(ROOT / "falsifiers").glob("*.py")]):
        if path.name == "metrics.py":
            continue
        found = floor_literals(path.read_text(encoding="utf-8"))
        if found:
            offenders[str(path.relative_to(ROOT))] = found
    assert not offenders, f"floors or rate tables outside harness/metrics.py: {offenders}"
    # the scan sees what the metrics table replaced (commit 599a05a's run.py and test_flip.py)
    assert floor_literals('GOALS = {"student_valid_rate": ("first_step", "student", "valid_rate", ">=", 0.9)}')
    assert floor_literals('FLOORS = {"valid_rate": 0.9, "grounded_rate": 0.7}')
    assert floor_literals('def f(s):\n    return (s["valid_rate"] or 0) >= 0.9')
    assert floor_literals('FIELDS = {"tasks", "solve_rate", "grounded_rate"}')
    assert not floor_literals('def f(s, floor):\n    return s["valid_rate"] >= floor and s["valid_rate"] == 0.5')
