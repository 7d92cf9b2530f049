"""Falsifiers of contracts/agent.yaml (the sandbox): model output is hostile, and nothing outside the workspace changes.

Hostile replies are driven through the real agent loop (harness.agent.run_agent) by a scripted policy, one per task,
with a canary directory beside the sandboxes hashed before and after. The escapes found as root (issue 22) run through
the sandbox's own runner (Sandbox.run_command), past the static refusal, so they test bubblewrap's boundary, not the
refusal's patterns; their target directory lies outside /tmp (which the sandbox replaces with a private one), so a
write that got through would land on the real file system. Property tests generate paths and commands.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from falsifiers.test_atomic import tree_digest
from harness.agent import AgentOptions, AgentTask, run_agent
from harness.cli import main as flip_main
from harness.sandbox import Limits, Refused, Sandbox, isolation, shell_problem
from harness.tokens import counter
from harness.toolcall import render_tool_call


def _why_no_bwrap() -> str | None:
    if os.geteuid() != 0:
        return "not root: the escapes of issue 22 need root (CI runs as root)"
    if isolation().bwrap is None:
        return f"no usable bubblewrap: {isolation().bwrap_problem}"
    return None


BWRAP = pytest.mark.skipif(_why_no_bwrap() is not None, reason=str(_why_no_bwrap()))


class Scripted:
    """A policy that replies from a fixed script per task id (then answers without a call)."""

    def __init__(self, script: dict[str, list[str]]):
        self.script, self.counter = script, counter()

    def __call__(self, episodes, instructions):
        return [self.script[e.task.id][len(e.turns)] if len(e.turns) < len(self.script[e.task.id]) else "done."
                for e in episodes]


def _tasks(tmp_path: Path, ids) -> list[AgentTask]:
    workspace = tmp_path / "workspace"
    workspace.mkdir(exist_ok=True)
    (workspace / "main.py").write_text("print('hi')\n")
    return [AgentTask(task_id, "Do the thing.", workspace, "test -f main.py", {}) for task_id in ids]


def _run(tmp_path: Path, script: dict[str, list[str]], timeout_s: float = 5.0):
    canary = tmp_path / "canary"
    canary.mkdir(exist_ok=True)
    (canary / "file").write_text("keep me\n")
    before = tree_digest(canary)
    (tmp_path / "sandboxes").mkdir(exist_ok=True)
    options = AgentOptions(max_turns=3, limits=Limits(timeout_s=timeout_s, output_bytes=1 << 20), progress=False,
                           sandbox_dir=str(tmp_path / "sandboxes"))
    started = time.monotonic()
    lines, summary = run_agent(_tasks(tmp_path, script), Scripted(script), options)
    elapsed = time.monotonic() - started
    assert tree_digest(canary) == before, "something outside the sandbox changed"
    assert list((tmp_path / "sandboxes").iterdir()) == [], "a sandbox was left behind"
    return {line["id"]: line for line in lines}, summary, elapsed


def shell(command: str) -> str:
    return render_tool_call("shell", {"command": command})


def test_hostile_commands_are_bounded_and_the_run_goes_on(tmp_path):
    script = {
        "a-fork-bomb": [shell("b() { b | b & }; b")],
        "b-infinite-loop": [shell("while true; do :; done")],
        "c-gigabyte-output": [shell("head -c 1000000000 /dev/zero | tr '\\0' x")],
        "d-climb-out": [shell("cd .. && echo gone > canary/file"), shell("cd ../../.. && rm -rf canary")],
        "e-absolute": [render_tool_call("file_write", {"path": str(tmp_path / "canary" / "file"), "content": "x"}),
                       shell(f"rm -rf {tmp_path / 'canary'}")],
        "f-well-behaved": [shell("echo fine > out.txt")],
    }
    lines, summary, elapsed = _run(tmp_path, script)
    assert elapsed < 60, f"hostile commands were not bounded ({elapsed:.0f} s)"
    assert set(lines) == set(script) and all(line["solved"] for line in lines.values())
    loop = lines["b-infinite-loop"]["turns"][0]["observation"]
    assert "Command timed out after 5s" in loop
    big = lines["c-gigabyte-output"]["turns"][0]["observation"]
    assert "[output exceeded 1048576 bytes; the command was stopped]" in big and len(big) < 5000
    assert lines["d-climb-out"]["refused"] == 2 and lines["e-absolute"]["refused"] == 2
    assert summary["refused"] == 4
    assert "Result:\n" in lines["f-well-behaved"]["turns"][0]["observation"]


@BWRAP
def test_isolation_holds_when_the_static_check_is_evaded(tmp_path):
    """Paths built at run time pass the static check; the read-only mount and the missing network still hold."""
    received = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(8)
    port = server.getsockname()[1]

    def accept():
        try:
            received.append(server.accept())
        except OSError:
            pass

    listener = threading.Thread(target=accept)
    listener.start()
    up = "\\\\056\\\\056"  # printf's octal escapes for "..": no ".." in the command text
    script = {
        "a-built-path": [shell(f'cd "$(printf "{up}/{up}/{up}")" && echo gone > canary/file; echo rc=$?')],
        "b-network": [shell(f"python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=3)\"")],
        "c-fork-bomb-kept-busy": [shell("b() { b | b & }; b; sleep 2; echo survived")],
    }
    lines, _, _ = _run(tmp_path, script)
    listener.join()
    server.close()
    assert received == [], "a sandboxed command reached a server on the host"
    built = lines["a-built-path"]["turns"][0]
    assert built["refused"] is False and "rc=0" not in built["observation"], built["observation"]
    assert "Exit code 1" in lines["b-network"]["turns"][0]["observation"]
    assert "survived" in lines["c-fork-bomb-kept-busy"]["turns"][0]["observation"]


# ------------------------------------------------------------------------------------------------- property tests

SEGMENTS = st.sampled_from(["..", ".", "a", "b", "link", "inner", "", "~", "src", "x.py"])
PATHS = st.builds(lambda lead, parts: lead + "/".join(parts), st.sampled_from(["", "/", "./", "~/", "C:\\"]),
                  st.lists(SEGMENTS, min_size=1, max_size=6))


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    root = tmp_path_factory.mktemp("paths")
    (root / "outside").mkdir()
    (root / "ws" / "a" / "b").mkdir(parents=True)
    (root / "ws" / "src").mkdir()
    with Sandbox(root / "ws", parent=str(root)) as box:
        (box.root / "link").symlink_to(root / "outside")
        (box.root / "inner").symlink_to(box.root / "src")
        yield box


def outside(path: str) -> bool:
    """The reference answer: empty, absolute (/, ~, a drive), climbing out, or through `link` (the symlink at the top
    of the workspace that leads out)."""
    import posixpath

    normal = posixpath.normpath(path.replace("\\", "/"))
    return (not path.strip() or path.startswith(("/", "~", "C:")) or normal == ".." or normal.startswith("../")
            or normal.split("/")[0] == "link")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=PATHS)
def test_a_path_is_refused_exactly_when_it_leads_outside(sandbox, path):
    try:
        real = sandbox.resolve(path)
    except Refused:
        assert outside(path), f"{path!r} stays inside the workspace but was refused"
        return
    assert not outside(path), f"{path!r} leads outside but was accepted (resolved to {real})"
    assert real == sandbox.real_root or sandbox.real_root in real.parents, f"{path!r} resolved outside: {real}"


WORDS = st.sampled_from(["ls", "cat", "echo", "src/a.py", "-la", "..", "../x", "/etc/passwd", "/dev/null", "~/x",
                         "a/../b", "2>/dev/null", "x.txt", "|", "&&", ">", "'quoted /abs'", "$HOME"])


@settings(max_examples=300, deadline=None)
@given(words=st.lists(WORDS, min_size=1, max_size=6))
def test_shell_commands_naming_outside_paths_are_refused(words):
    command = " ".join(words)
    outside = any(w in ("..", "../x", "/etc/passwd", "~/x", "a/../b", "'quoted /abs'") for w in words)
    assert (shell_problem(command) is not None) == outside, command
