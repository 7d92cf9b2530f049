"""What the model sees: the apr-code prompt format shared by export (training samples), train, eval and agent.

A step of an apr-code session is shown to the model as one user turn: the task, the running observations (each earlier
call as `Action: <tool_call>...` and its result), then the request for the next action. The exporter renders
training samples with these functions, and the agent (harness.agent) renders its live prompts with the very same ones,
so the two formats cannot drift apart:

* `render_instruction` / `render_observation` / `render_chatml`: the text (the turn format around it is the model
  family's, contracts/families.yaml: ChatML for SmolLM2, Gemma's own turns for Gemma 3);
* `Scrubber`: recording (or sandbox) paths made workspace-relative, secrets redacted, long results cut to their head and
  tail around a visible marker;
* `Budget` / `fit_instruction`: the instruction fitted to the trainer's token budget, oldest observations dropped first
  behind an omission marker, then the task shortened.

No torch, no transformers: token counts come from a `tokenizers` counter (harness.tokens) or any object with
`count(text)` and `count_many(texts)`.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from harness.contracts import redaction
from harness.families import Turn, families
from harness.toolcall import render_tool_call

NEXT_ACTION = "Reply with the next tool call."
NO_RESULT = "(no result recorded)"
# Token budget of one whole sample (system, prompt and reply): what export fits a sample into, the longest sample
# training keeps, and the most an agent's prompt plus reply may take, so the student is never asked beyond what it
# was trained on. One number, one name for all three: --max-length of export, train and agent.
SAMPLE_TOKENS = 1024
# Margin (tokens per joined piece) under which a sample's summed piece counts are trusted without counting the
# whole sample again: BPE may split a "\n\n" between two pieces one token differently than inside one piece.
PIECE_SLACK = 2
# Extra characters scrubbed around a cut so a secret or path crossing it is still caught whole (secrets longer
# than this that straddle a cut, e.g. a private key whose BEGIN line was cut away, can leak partly).
CUT_MARGIN = 1024


# --------------------------------------------------------------------------------------- rendering (public)

def render_result(result: str | None, is_error: bool = False) -> str:
    """A call's result as the model reads it: a label saying whether the call failed, then the result's text."""
    label = "Result (error):" if is_error else "Result:"
    return f"{label}\n{NO_RESULT if result is None else result}"


def render_observation(tool: str, tool_input: dict, result: str | None, is_error: bool = False) -> str:
    return f"Action: {render_tool_call(tool, tool_input)}\n{render_result(result, is_error)}"


def omitted_marker(count: int) -> str:
    return f"[{count} earlier action{'s' if count != 1 else ''} and result{'s' if count != 1 else ''} omitted]"


def render_instruction(task: str | None, observations=(), omitted: int = 0) -> str:
    """The user turn: the task, the running observations (oldest first), then the request for the next action.

    The evaluation stage calls `render_instruction(task)` to build the first-step prompt of a held-out task.
    """
    parts = []
    if task:
        parts.append(f"Task:\n{task}")
    if omitted:
        parts.append(omitted_marker(omitted))
    parts.extend(observations)
    parts.append(NEXT_ACTION)
    return "\n\n".join(parts)


def default_turn() -> Turn:
    """The turn format of the first family in contracts/families.yaml (ChatML): a counter that cannot say its own."""
    return families()[0].turn


def render_chatml(system: str, instruction: str, response: str, turn: Turn | None = None) -> str:
    """The whole sample as the trainer renders it; the token budget counts exactly this."""
    return (turn or default_turn()).render(system, instruction, response)


# -------------------------------------------------------------------------------- relativisation & redaction

_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")  # a Windows recording: C:\tmp\ws


# Where a root alone ends: before no name character, or before a full stop that ends a sentence (Claude Code's "your
# current working directory is ROOT."), not before one inside a sibling's name (ROOT.bak). A root that ends a sentence
# is prose and is named in words: as "." the sentence would read "is ..", showing the student the one path that climbs
# out of its workspace.
_SENTENCE_END = r"(?P<prose>(?=\.(?:\s|<|$)))"
_ROOT_ENDS = r"(?![\w\-]|\.[\w\-])"
PROJECT_DIR = "the project directory"


def _root_alone(match: re.Match) -> str:
    return PROJECT_DIR if match.group("prose") is not None else "."


def _root_pattern(roots) -> re.Pattern | None:
    roots = sorted({r for r in roots if r and r != "/" and not _DRIVE.match(r)}, key=len, reverse=True)
    if not roots:
        return None  # longest first (above): nested roots
    alternatives = "|".join(re.escape(r) for r in roots)
    # ROOT/x -> x ; ROOT alone -> . (ending a sentence: the project directory)
    return re.compile(rf"(?:{alternatives})(?:(/)(?=[^\s/\"'`])|{_SENTENCE_END}|{_ROOT_ENDS})")


def _windows_pattern(roots) -> re.Pattern | None:
    """Windows roots (C:\\tmp\\ws, or written with /): the root and the path after it, whose separators become /."""
    roots = sorted({r for r in roots if _DRIVE.match(r)}, key=len, reverse=True)
    if not roots:
        return None
    separator = r"[\\/]"
    alternatives = "|".join(separator.join(re.escape(part) for part in re.split(r"[\\/]", r)) for r in roots)
    return re.compile(rf"(?:{alternatives})(?:{separator}([^\s\"'`<>|]+)|{_SENTENCE_END}|{_ROOT_ENDS})")


def _windows_relative(match: re.Match) -> str:
    return match.group(1).replace("\\", "/") if match.group(1) else _root_alone(match)


class Scrubber:
    """Makes recording paths workspace-relative, then redacts secrets; counts redactions per pattern."""

    def __init__(self, roots, counts: Counter):
        self.roots = [r for r in roots if r and r != "/"]
        self.pattern = _root_pattern(self.roots)
        self.windows = _windows_pattern(self.roots)
        # cheap literal tests first (most texts hold no root); a Windows root may be written with either separator
        self.needles = sorted({needle for r in self.roots for needle in (r, r.replace("\\", "/"))})
        self.placeholder, self.secrets = redaction()
        self.counts = counts

    def text(self, text: str) -> str:
        if any(needle in text for needle in self.needles):
            if self.windows is not None:
                text = self.windows.sub(_windows_relative, text)
            if self.pattern is not None:
                text = self.pattern.sub(lambda m: "" if m.group(1) else _root_alone(m), text)
        lowered = text.lower() if text.isascii() else None  # one lower-casing serves every (?i) prefilter
        for secret in self.secrets:
            if secret.may_match(text, lowered):  # most texts hold no needle: the regex is not run at all
                redacted = self._redact(secret, text)
                if redacted != text:
                    text, lowered = redacted, redacted.lower() if redacted.isascii() else None
        return text

    def _redact(self, secret, text: str) -> str:
        placeholder = self.placeholder.format(name=secret.name)
        count = 0

        def replace(match):
            nonlocal count
            count += 1
            if secret.group:
                start, end = match.span(secret.group)
                offset = match.start()
                whole = match.group(0)
                return whole[: start - offset] + placeholder + whole[end - offset:]
            return placeholder

        text = secret.regex.sub(replace, text)
        if count:
            self.counts[secret.name] += count
        return text

    def value(self, value):
        """Every string inside a JSON value (keys stay: they are the tool's field names)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.value(v) for v in value]
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        return value

    def shortened(self, text: str, limit: int) -> tuple[str, bool]:
        """Scrubbed text of at most ~limit characters: head and tail kept around a visible marker.

        Only the kept ends (plus a margin, so nothing that crosses a cut escapes) are scrubbed: a 5 MB tool output
        costs what its kept 2 KB cost.
        """
        if len(text) <= limit + 2 * CUT_MARGIN:
            text = self.text(text)
            if len(text) <= limit:
                return text, False
            return _cut(text, limit, len(text)), True
        head_n, tail_n = _cut_lengths(limit)
        head = self.text(text[: head_n + CUT_MARGIN])[:head_n]
        tail = self.text(text[-(tail_n + CUT_MARGIN):])[-tail_n:]
        return _marked(head, len(text) - head_n - tail_n, tail), True


def _cut_lengths(limit: int) -> tuple[int, int]:
    """Characters kept at the head and at the tail of a text cut to `limit`: the head holds what a reader needs first
    (a command's first errors, a task's request), the tail how it ended."""
    head_n = limit * 2 // 3
    return head_n, limit - head_n


def _marked(head: str, omitted: int, tail: str) -> str:
    return f"{head}\n[... {omitted} characters omitted ...]\n{tail}"


def _cut(text: str, limit: int, original: int) -> str:
    head_n, tail_n = _cut_lengths(limit)
    return _marked(text[:head_n], original - head_n - tail_n, text[len(text) - tail_n:])


# ------------------------------------------------------------------------------------------ token budgeting

class Budget:
    """Fits samples into `max_length` tokens of the rendered sample, counting each piece once. The turn format is the
    counter's tokenizer's family (`counter.family()`), else ChatML."""

    def __init__(self, counter, max_length: int, system: str):
        self.counter = counter
        self.max_length = max_length
        self.system = system
        self.turn = counter.family().turn if hasattr(counter, "family") else default_turn()
        self.fixed = counter.count(self.turn.opening(system)) + counter.count(
            NEXT_ACTION + self.turn.middle) + counter.count(self.turn.end)

    def count(self, text: str) -> int:
        return self.counter.count(text)

    def exact(self, instruction: str, response: str) -> int:
        return self.counter.count(render_chatml(self.system, instruction, response, self.turn))


@dataclass
class Step:
    tool: str
    input: dict
    response: str
    response_tokens: int
    observation: str  # how this step appears in later instructions
    observation_tokens: int | None  # None: not counted yet (count_observations)
    result: str = ""  # render_result of the call's result: a whole conversation's tool message
    target: bool = True  # False: the tool rejected the call (exported as an observation, never as a response)




def count_steps(counter, steps: list[Step], observed: int | None = None) -> None:
    """Fill in each step's token counts (as pieces of an instruction: a response line, an observation paragraph).

    Only the first `observed` steps' observations are counted (all by default): a sample for step i reads the
    observations before i alone, so the exporter leaves the last one (and, for first actions only, every one)
    uncounted, as None, until a final answer needs it (`count_observations`)."""
    if not steps:
        return
    observed = len(steps) if observed is None else observed
    counts = counter.count_many([s.response + "\n" for s in steps] +
                                [s.observation + "\n\n" for s in steps[:observed]])
    for i, step in enumerate(steps):
        step.response_tokens = counts[i]
        step.observation_tokens = counts[len(steps) + i] if i < observed else None


def count_observations(counter, steps: list[Step]) -> None:
    """Count the observations count_steps left uncounted."""
    missing = [s for s in steps if s.observation_tokens is None]
    for step, tokens in zip(missing, counter.count_many([s.observation + "\n\n" for s in missing])):
        step.observation_tokens = tokens


def fit_instruction(budget: Budget, task: str | None, task_tokens: int, steps: list[Step], index: int,
                    truncated: Counter) -> str | None:
    """The largest instruction for step `index` that fits: oldest observations dropped first, then the task
    shortened; None when even the bare request cannot fit (the sample is dropped)."""
    step = steps[index]
    base = budget.fixed + step.response_tokens
    if base > budget.max_length:
        truncated["samples_dropped_too_long"] += 1
        return None
    task_cost = task_tokens + 2 if task else 0
    # Keep the newest observations that fit by their counted pieces.
    room = budget.max_length - base - task_cost
    first = index
    used = 0
    while first > 0:
        cost = steps[first - 1].observation_tokens + PIECE_SLACK
        if used + cost + 16 > room:  # 16: room for the omitted marker
            break
        used += cost
        first -= 1
    while True:
        observations = [s.observation for s in steps[first:index]]
        instruction = render_instruction(task, observations, omitted=first)
        estimate = base + task_cost + used + (12 if first else 0)
        if estimate + PIECE_SLACK * (index - first + 3) <= budget.max_length:
            break  # comfortably inside: the exact count cannot exceed the budget
        if budget.exact(instruction, step.response) <= budget.max_length:
            break
        if first == index:
            return _shortened_task(budget, task, step, index, truncated)
        used -= steps[first].observation_tokens + PIECE_SLACK
        first += 1
    if first:
        truncated["samples_with_observations_dropped"] += 1
        truncated["observations_dropped"] += first
    return instruction


def _shortened_task(budget: Budget, task: str | None, step: Step, index: int, truncated: Counter) -> str | None:
    """Only the task and the request remain and they overflow: keep the task's head and tail around a marker."""
    if task:
        keep = len(task)
        while keep > 32:
            keep = keep * 3 // 4
            instruction = render_instruction(_cut(task, keep, len(task)), (), omitted=index)
            if budget.exact(instruction, step.response) <= budget.max_length:
                truncated["tasks_shortened"] += 1
                if index:
                    truncated["samples_with_observations_dropped"] += 1
                    truncated["observations_dropped"] += index
                return instruction
    truncated["samples_dropped_too_long"] += 1
    return None
