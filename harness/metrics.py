"""The metrics table: every rate and every goal floor apr-flip reports, in one place.

A row names a metric of one summary section (`first_step`: `flip eval`'s summary; `agent`: `flip agent`'s; `diagnostic`:
`flip curve`'s fix diagnostic), the counts it divides, and, when the report checks it, its floor: the goal `flip run`
states and exits 1 on (`floor`), and the lower one the test-sized student of falsifiers/test_flip.py must reach
(`test_floor`). evaluate.summarise and agent.summarise fill their rates from it (`fill`); run.py's goals, tune.py's
pooled rates, curve.py's interval texts and the flip falsifier read it. Adding a metric is a row here, the counts in
the summarise that produces them, and the line of the report that shows it (docs/architecture.md).

The table is a tuple of frozen dataclass rows rather than a YAML file in contracts/: it is read only by Python, its
rows are checked by the type checker and the constructor, and a floor sits beside the comment that says why it is
that value. Rates are stored rounded to RATE_DIGITS; the 95% Wilson interval of a rate comes from harness.stats
(statsmodels).
"""
from __future__ import annotations

from dataclasses import dataclass

from harness.stats import wilson

RATE_DIGITS = 4  # summaries store rates to 4 decimals (0.7105): a stable JSON value, finer than any report shows
FLIP_THRESHOLD = 0.9  # steps-to-flip: the first eval step with >= 90% of held-out tasks holding a valid call
OPERATORS = (">=", "==")  # a floor is a minimum (rates) or an exact count (calls that must never happen)


@dataclass(frozen=True)
class Metric:
    section: str  # the summary it is part of: "first_step", "agent" or "diagnostic"
    name: str  # its key in that summary
    numerator: str  # the count it divides; a count metric (denominator None) is this key itself
    denominator: str | None = None  # None: a count, not a rate
    goal: str | None = None  # the check's name in report.json's "goal"; None: reported, never checked
    who: str = "student"  # whose summary the goal checks: "base" or "student"
    op: str = ">="
    floor: float | int | None = None  # flip run's goal (the targets, not tuned to)
    # the floor falsifiers/test_flip.py holds its students to (None: not asserted): the test-sized student's first step,
    # the committed long student's agent episodes (fixtures/students/)
    test_floor: float | None = None

    def __post_init__(self):
        if self.op not in OPERATORS or (self.goal is None) != (self.floor is None):
            raise ValueError(f"metric {self.section}.{self.name}: a goal needs a floor and an operator in {OPERATORS}")


METRICS = (
    # the first step (flip eval): one reply per held-out task
    Metric("first_step", "tasks_with_call", "tasks_with_call",
           goal="base_tasks_with_call", who="base", op="==", floor=0),  # the base must not act already
    Metric("first_step", "valid_rate", "tasks_with_valid_call", "tasks",
           goal="student_valid_rate", floor=0.9, test_floor=0.9),
    # 0.8 is the target, not met yet (make flip: 20/27, 74%); test_flip holds its student (unmerged, 64 reply
    # tokens) to 0.7, below what the default recipe reached, so a regression fails it while the goal stays 0.8
    Metric("first_step", "grounded_rate", "tasks_grounded", "tasks_naming_path",
           goal="student_grounded_rate", floor=0.8, test_floor=0.7),
    Metric("first_step", "valid_call_rate", "valid_calls", "total_calls"),
    Metric("first_step", "first_tool_match_rate", "first_tool_match", "tasks_with_expected_first_tool",
           goal="student_first_tool_match_rate", floor=0.7),
    Metric("first_step", "absolute_path_calls", "absolute_path_calls",
           goal="student_outside_path_calls", op="==", floor=0),
    # as agents (flip agent): whole tasks, up to max_turns turns
    Metric("agent", "solved", "solved", goal="base_agent_solved", who="base", op="==", floor=0),
    # the committed long student (fixtures/students/smollm2-135m-n1000) solved 1 of the 38 held-out tasks greedily: the test
    # holds it to that one task (1/38 > 0.026), a regression floor, while the goal stays the 20%, not met
    Metric("agent", "solve_rate", "solved", "tasks", goal="student_agent_solve_rate", floor=0.2, test_floor=0.026),
    Metric("agent", "valid_call_rate", "valid_calls", "calls"),  # over the turns that hold a call
    # the first step's grounding again, of the agent's first call; its count keeps the agent summary's own key
    Metric("agent", "grounded_rate", "first_call_grounded", "tasks_naming_path"),
    Metric("agent", "first_tool_match_rate", "first_tool_match", "tasks_with_expected_first_tool"),
    Metric("agent", "refused", "refused", goal="student_agent_refused", op="==", floor=0),
    # of the tasks whose own fix edits known lines: those where some file_edit quoted one (found the bug, whatever it wrote)
    Metric("agent", "fix_line_rate", "tasks_editing_fix_line", "tasks_with_fix_lines"),
    # tasks where some grep looked for a name neither the prompt nor a tool result had shown (made up; lower is better)
    Metric("agent", "invented_search_rate", "tasks_with_invented_search", "tasks_checked_for_search"),
    # flip curve's fix diagnostic: the validation fix tasks as plain code and as a file_edit step
    Metric("diagnostic", "plain_fix_rate", "plain_solved", "cases"),
    Metric("diagnostic", "edit_step_fix_rate", "edit_step_solved", "cases"),
)


def metric(section: str, name: str) -> Metric:
    for row in METRICS:
        if (row.section, row.name) == (section, name):
            return row
    raise KeyError(f"no metric {name!r} in section {section!r} of harness/metrics.py")


def rates(section: str) -> tuple[Metric, ...]:
    return tuple(row for row in METRICS if row.section == section and row.denominator is not None)


def rate(numerator: int, denominator: int, digits: int | None = RATE_DIGITS) -> float | None:
    """numerator / denominator rounded to `digits` (None: unrounded); None when there is nothing to divide by."""
    if not denominator:
        return None
    value = numerator / denominator
    return value if digits is None else round(value, digits)


def fill(counts: dict, section: str) -> dict:
    """The summary: `counts` in their order, each rate of the section right after the later of its two counts."""
    keys, after = list(counts), {}
    for row in rates(section):
        missing = [key for key in (row.numerator, row.denominator) if key not in counts]
        if missing:
            raise KeyError(f"metric {section}.{row.name} divides {', '.join(missing)}, which the summary does not count")
        last = max(keys.index(row.numerator), keys.index(row.denominator))
        after.setdefault(keys[last], []).append(row)
    summary = {}
    for key, value in counts.items():
        summary[key] = value
        for row in after.get(key, []):
            summary[row.name] = rate(counts[row.numerator], counts[row.denominator])
    return summary


def _percent(hundreds: float) -> str:
    return f"{hundreds:.0f}%"


def pct(value: float | None) -> str:
    """A rate as a whole percentage ('71%'), 'n/a' for None."""
    return "n/a" if value is None else _percent(100 * value)


def rate_text(successes: int, trials: int) -> str:
    """'k/n (p%, 95% CI lo-hi%)': a count with its rate and 95% Wilson interval."""
    if not trials:
        return f"{successes}/0 (n/a)"
    # 100 * k / n, not 100 * (k / n): the two round differently at a half (207/360 is 57.5 and 57.4999...)
    return f"{successes}/{trials} ({_percent(100 * successes / trials)}, 95% CI {interval_bounds(successes, trials)})"


def count_text(successes: int, trials: int) -> str:
    """'k/n (lo-hi%)': a count with its 95% Wilson interval, for a table cell (the rate itself is k/n)."""
    if not trials:
        return f"{successes}/0"
    return f"{successes}/{trials} ({interval_bounds(successes, trials)})"


def interval_bounds(successes: int, trials: int) -> str:
    """'lo-hi%': the 95% Wilson interval of successes/trials in whole percents (trials must be positive)."""
    low, high = wilson(successes, trials)
    return f"{100 * low:.0f}-{100 * high:.0f}%"


def interval_text(summary: dict, section: str, name: str) -> str:
    """rate_text of a rate of the table, from the counts in a summary."""
    row = metric(section, name)
    return rate_text(summary[row.numerator], summary[row.denominator])


def goals(results: dict) -> dict:
    """Each goal with its measured value; `met` only when every measured one holds. `results` maps a section to
    {"base": summary, "student": summary}; a section not run (the agent, without --agent) is not checked."""
    checks = {}
    for row in METRICS:
        if row.goal is None or row.section not in results:
            continue
        value = results[row.section][row.who].get(row.name)
        met = value is not None and (value == row.floor if row.op == "==" else value >= row.floor)
        checks[row.goal] = {"floor": f"{row.op} {row.floor}", "value": value, "met": met}
    return {"met": all(check["met"] for check in checks.values()), "checks": checks}


def floors_for_tests(section: str = "first_step") -> dict[str, float]:
    """The floors falsifiers/test_flip.py holds a student to in one summary section, by rate name."""
    return {row.name: row.test_floor for row in METRICS if row.section == section and row.test_floor is not None}
