"""Falsifiers of contracts/claims/agent.yaml (the sandbox): model output is hostile, and nothing outside the workspace changes.

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
from harness.agent import AgentOptions, run_agent
from harness.tasks import AgentTask
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


LEAVING = ("..", "../x", "/etc/passwd", "~/x", "a/../b", "'quoted /abs'", "nsenter", "mount", "unshare", "chroot",
           "proc/1/root/x", "proc/self/cwd")
WORDS = st.sampled_from(["ls", "cat", "echo", "src/a.py", "-la", "/dev/null", "2>/dev/null", "x.txt", "|", "&&", ">",
                         "$HOME", "amount", "mount_point.py", "proc/1/status", *LEAVING])


@settings(max_examples=300, deadline=None)
@given(words=st.lists(WORDS, min_size=1, max_size=6))
def test_shell_commands_naming_outside_paths_are_refused(words):
    command = " ".join(words)
    outside = any(w in LEAVING for w in words)
    assert (shell_problem(command) is not None) == outside, command


# ------------------------------------------------------------------------------------- issue 22: escapes as root

@pytest.fixture
def outside_dir():
    """A directory on the real file system outside /tmp: the sandbox sees it read-only, as it sees everything."""
    path = Path(tempfile.mkdtemp(prefix="flip-outside-", dir="/var/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def host_listener():
    """A TCP server on the host's 127.0.0.1: (port, the connections it accepted)."""
    accepted = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(0.2)
    done = threading.Event()

    def accept():
        while not done.is_set():
            with contextlib.suppress(OSError):
                accepted.append(server.accept())

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        yield server.getsockname()[1], accepted
    finally:
        done.set()
        thread.join()
        server.close()


def connect(port: int) -> str:
    return f"python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=3); print('reached')\""


@BWRAP
def test_root_escapes_write_nothing_outside(tmp_path, outside_dir):
    """The three escapes issue 22 found as root, each run past the static refusal: a remount of /, nsenter into this
    (the flip) process's mount and network namespaces, and a write through /proc/<pid>/root."""
    me = os.getpid()
    escapes = {
        "remount": f"mount -o remount,rw / && echo x > {outside_dir}/remount",
        "nsenter": f'nsenter -t {me} -m -n -- sh -c "echo x > {outside_dir}/nsenter"',
        "proc-root": f"echo x > /proc/{me}/root{outside_dir}/proc-root",
        "plain": f"echo x > {outside_dir}/plain",
    }
    (tmp_path / "ws").mkdir()
    with host_listener() as (port, accepted), Sandbox(tmp_path / "ws", parent=str(tmp_path)) as box:
        results = {name: box.run_command(command) for name, command in escapes.items()}
        results["nsenter-net"] = box.run_command(f"nsenter -t {me} -n -- {connect(port)}")
        results["net"] = box.run_command(connect(port))
    assert sorted(os.listdir(outside_dir)) == [], {name: r.output for name, r in results.items()}
    for name, result in results.items():
        assert result.exit_code not in (0, None), (name, result)
    assert accepted == [], "a sandboxed command reached a server on the host's loopback"
    assert "reached" not in results["net"].output + results["nsenter-net"].output


@BWRAP
def test_no_capabilities_and_its_own_proc(tmp_path):
    """Inside: every capability set is 0 (also when flip is root), /proc shows the sandbox's few processes, not the
    host's (this test process is not among them), and there is no route to the host's loopback."""
    (tmp_path / "ws").mkdir()
    with host_listener() as (port, accepted), Sandbox(tmp_path / "ws", parent=str(tmp_path)) as box:
        caps = box.run_command("grep ^Cap /proc/self/status")
        procs = box.run_command("ls /proc")
        net = box.run_command(connect(port))
    sets = dict(re.findall(r"^(Cap\w+):\s*([0-9a-f]+)$", caps.output, re.M))
    assert set(sets) >= {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"}, caps.output
    assert all(int(value, 16) == 0 for value in sets.values()), sets
    pids = [int(name) for name in procs.output.split() if name.isdigit()]
    assert 0 < len(pids) <= 8 and os.getpid() not in pids, pids
    assert accepted == [] and net.exit_code != 0 and "reached" not in net.output


def _allocate(megabytes: int, together: int = 1) -> str:
    """A process that allocates `megabytes` of touched memory and holds it until `together` such processes hold theirs
    (a marker file each; at most 10 s, so that a loaded machine cannot run them one after another), holds it 1 s more
    (a sampling watcher on a loaded machine gets many looks at the sum), then prints ok."""
    return ("python3 -c \"import glob, os, time\n"
            f"x = b'x' * ({megabytes} << 20)\nopen(f'held.{{os.getpid()}}', 'w').close()\n"
            f"deadline = time.monotonic() + 10\nwhile len(glob.glob('held.*')) < {together} and "
            "time.monotonic() < deadline:\n    time.sleep(0.05)\ntime.sleep(1)\nprint('ok')\"")


# A bounded fork bomb: up to 150 processes that each sleep 3 s, counting the forks that succeeded; the parent waits
# for them, so the whole bomb lives 3 s (a sampling watcher on a loaded machine gets many looks). Bounded so that a
# mutant without the process limit makes 150 processes, not the machine's whole PID space (CI runs as root, which
# RLIMIT_NPROC does not hold, and shares the machine with the other mutants' runs).
SPAWN = ("python3 -c \"import os, time\nn = 0\nfor _ in range(150):\n    try:\n        pid = os.fork()\n"
         "    except OSError:\n        break\n    if pid == 0:\n        time.sleep(3)\n        os._exit(0)\n"
         "    n += 1\nprint('forked', n, flush=True)\nfor _ in range(n):\n    os.wait()\"; echo survived")


@BWRAP
def test_limits_hold_for_the_whole_command(tmp_path):
    """Memory and processes are limited for the command as a whole: one allocation fits, three at once do not (issue
    22's 3 x 1.5 GB under a 4 GB limit, scaled down so that CI needs no gigabytes free), and a fork bomb is held at
    the process limit while the command goes on (the bomb is bounded: see SPAWN)."""
    (tmp_path / "ws").mkdir()
    limits = Limits(memory_bytes=1 << 30, processes=64, timeout_s=60)
    with Sandbox(tmp_path / "ws", limits, parent=str(tmp_path)) as box:
        one = box.run_command(_allocate(400))
        three = box.run_command("rm -f held.*; " + " & ".join([f"({_allocate(400, together=3)})"] * 3) + " & wait")
        bomb = box.run_command(SPAWN)
    assert one.exit_code == 0 and one.output.count("ok") == 1, one
    assert three.output.count("ok") < 3, three
    forked = re.search(r"forked (\d+)", bomb.output)
    assert forked and int(forked.group(1)) < limits.processes and "survived" in bomb.output, bomb.output[-300:]


@BWRAP
def test_the_process_tree_watcher_holds_the_limits_without_cgroups(tmp_path, monkeypatch):
    """Where no cgroup can be made, the watcher stops a command whose processes together hold too much memory, or
    which has too many processes."""
    import dataclasses

    import harness.sandbox as sandbox_module

    bare = dataclasses.replace(isolation(), pids_cgroup=None, memory_cgroup=None)
    monkeypatch.setattr(sandbox_module, "isolation", lambda: bare)
    (tmp_path / "ws").mkdir()
    limits = Limits(memory_bytes=1 << 30, processes=64, timeout_s=60)
    with Sandbox(tmp_path / "ws", limits, parent=str(tmp_path)) as box:
        one = box.run_command(_allocate(400))
        three = box.run_command("rm -f held.*; " + " & ".join([f"({_allocate(400, together=3)})"] * 3) + " & wait")
        bomb = box.run_command(SPAWN)
    assert one.exit_code == 0 and one.over_limit is None, one
    assert three.output.count("ok") < 3 and three.over_limit and "memory" in three.over_limit, three
    assert bomb.over_limit and "processes" in bomb.over_limit and bomb.exit_code is None, bomb


# ------------------------------------------------------------------------------------- no bubblewrap: a refusal

def _flip(*argv) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = flip_main([str(a) for a in argv])
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 2
    return code, err.getvalue()


@pytest.fixture
def no_bwrap(tmp_path, monkeypatch):
    """A PATH without bwrap (nor anything else), with the probe forgotten before and after."""
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    isolation.cache_clear()
    yield
    monkeypatch.undo()
    isolation.cache_clear()


def test_without_bubblewrap_commands_refuse_before_any_work(tmp_path, no_bwrap):
    """flip agent and flip run refuse in one line naming the package (exit 2) before reading tasks, loading a model
    or writing anything; --sandbox none, the explicit opt-out, goes past the check."""
    missing_tasks, missing_model = tmp_path / "no-tasks", tmp_path / "no-model"
    code, err = _flip("agent", "--model", missing_model, "--tasks", missing_tasks, "--out", tmp_path / "t.jsonl")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "apt-get install bubblewrap" in err and "--sandbox none" in err, err
    code, err = _flip("run", "--out", tmp_path / "run", "--base", missing_model)
    assert code == 2 and "apt-get install bubblewrap" not in err, err  # the model is checked first: it is cheap
    code, err = _flip("run", "--out", tmp_path / "run")
    assert code == 2 and err.count("\n") == 1 and "apt-get install bubblewrap" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty-path"], "a refused command wrote something"
    code, err = _flip("agent", "--model", missing_model, "--tasks", missing_tasks, "--out", tmp_path / "t.jsonl",
                      "--sandbox", "none")
    assert code == 2 and "apt-get" not in err and str(missing_tasks) in err, err
