"""The agent's sandbox: a fresh copy of a task's workspace, in which model-chosen tool calls run.

Model output is untrusted input. Two layers keep it inside its workspace:

1. **Refusal** (everywhere): every path a call names must resolve inside the workspace. Absolute paths (`/x`, `~/x`,
   `C:\\x`), `..` escapes and symlinks that lead out are refused before anything runs (`Refused`, counted by the
   agent). A shell command naming an absolute path (other than /dev/null and friends), a `~` path, any `..`
   component, a `/proc/<n>/root`-style path or a program that changes namespaces or mounts (nsenter, mount, unshare,
   chroot...) is refused the same way: what it would do cannot be known without running it. This layer is defence in
   depth only: a command can build any path at run time.
2. **Isolation** (the boundary): every shell command, the model's and the task's own test, runs under bubblewrap
   (`bwrap`): the whole file system bound read-only except the workspace and the sandbox's own HOME, a private /tmp,
   its own PID, mount, network, IPC, UTS (and, where the kernel allows, user and cgroup) namespaces with their own
   /proc and /dev, every capability dropped (also when flip runs as root), a new session, and death with flip. With
   `--sandbox none` (an explicit opt-out) commands run without any of that.

Always, in both modes: limits that hold for the whole command however many processes it starts: a pids cgroup and a
memory cgroup where this machine lets flip make them (cgroup v1 or v2), otherwise a watcher that samples the
command's process tree (psutil) and stops the whole command when it holds too many processes or too much resident
memory (sampled, so a burst between two samples can briefly exceed the limit); per process, rlimits (`prlimit`: CPU
seconds, address space, file size); a timeout and an output cap that kill every process of the command; a scrubbed
environment (an allow-list: no tokens, a fresh HOME).
"""
from __future__ import annotations

import os
import posixpath
import re
import select
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import psutil

from harness import FlipError
from harness.tasks import SPECIAL_FILE, is_special

# Build outputs and caches: never copied into a sandbox, never kept with a final workspace, never listed by grep/glob.
SKIP_DIRS = frozenset({"target", "__pycache__", ".git", ".pytest_cache", ".mypy_cache", "node_modules"})
HARMLESS_ABSOLUTE = frozenset({"/dev/null", "/dev/stdout", "/dev/stderr", "/dev/zero", "/dev/urandom"})
# Programs that enter or make namespaces, mounts or roots: a coding task never needs them.
NAMESPACE_PROGRAMS = frozenset({"nsenter", "mount", "umount", "unshare", "chroot", "pivot_root", "switch_root"})
_PROC_ROOT = re.compile(r"proc/[^/\s'\"]+/(root|cwd)\b")
_SHELL_TOKEN = re.compile(r"[^\s'\"`;&|<>()=:,]+")
_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")
# Variables a toolchain needs to be found with a fresh HOME; everything else in the caller's environment is dropped.
_TOOLCHAIN_VARS = ("CARGO_HOME", "RUSTUP_HOME", "RUSTUP_TOOLCHAIN", "PYENV_ROOT", "PYENV_VERSION")
_TOOLCHAIN_HOMES = {"CARGO_HOME": ".cargo", "RUSTUP_HOME": ".rustup", "PYENV_ROOT": ".pyenv"}

SANDBOXES = ("bwrap", "none")
SANDBOX_HELP = (
    "bwrap: shell commands (the model's and each task's test) run under bubblewrap: read-only file system but the "
    "workspace, private /tmp, own PID/mount/network/IPC/UTS namespaces and /proc, no capabilities. none gives all of "
    "that up: commands run as flip's own user (root if flip is root) and can write anywhere that user can, reach the "
    "network and see and signal every process; only the path refusal, timeout, output cap and task limits remain")
BWRAP_PACKAGE = "bubblewrap"
WATCH_INTERVAL_S = 0.05  # how often the process-tree watcher samples, where no cgroup holds the limits


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 120.0  # wall clock per shell command (every process of the command is killed)
    cpu_s: int = 120  # CPU seconds per process
    memory_bytes: int = 4 << 30  # memory of the whole command (cgroup); also each process's address space (rlimit)
    file_bytes: int = 256 << 20  # largest file a command may write
    processes: int = 256  # processes of the whole command at once
    output_bytes: int = 1 << 20  # combined output kept; past it the command is stopped


class Refused(Exception):
    """A path or command that leaves the workspace: never executed, answered with an error observation."""


@dataclass
class ShellResult:
    exit_code: int | None  # None when killed at the timeout, the output cap or a limit of the watcher
    output: str  # stdout and stderr merged, in arrival order
    timed_out: bool = False
    truncated: bool = False  # the output cap was reached and the command stopped
    over_limit: str | None = None  # the watcher stopped the command: which limit it went over


# ---------------------------------------------------------------------------------------------------------------------
# Isolation: what this machine allows, probed once per process
# ---------------------------------------------------------------------------------------------------------------------

# $1: how many cgroup.procs files to join, then those files, then the command line to exec. Joining the cgroups before
# anything forks means no process of the command escapes their limits.
_OUTER = ('n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; shift; n=$((n - 1)); done; '
          'exec "$@"')
# (controller, limit file in cgroup v1, limit file in cgroup v2, a value the probe writes)
_CONTROLLERS = (("pids", "pids.max", "pids.max", "64"), ("memory", "memory.limit_in_bytes", "memory.max", "67108864"))


@dataclass(frozen=True)
class Isolation:
    bwrap: str | None  # the bwrap that passed the probe; None when missing or unable to make a sandbox here
    bwrap_problem: str | None  # why bwrap cannot be used: the one-line refusal
    prlimit: bool
    pids_cgroup: str | None  # the cgroup directory under which per-command pids cgroups are made
    memory_cgroup: str | None  # the same for memory

    def describe(self, mode: str = "bwrap") -> str:
        parts = ["bubblewrap: read-only file system outside the workspace, no network, own PID namespace and /proc, "
                 "no capabilities" if mode == "bwrap" else "no isolation (--sandbox none): path refusal only"]
        parts.append("rlimits (CPU, address space, file size)" if self.prlimit else "no rlimits (prlimit missing)")
        for name, cgroup in (("pids", self.pids_cgroup), ("memory", self.memory_cgroup)):
            parts.append(f"{name} cgroup per command" if cgroup else f"{name} limit by a process-tree watcher")
        return "; ".join(parts)


def bwrap_args(root: Path, home: Path) -> list[str]:
    """bubblewrap's options: everything read-only, then a private /tmp, /proc and /dev, then the workspace and HOME
    writable (bound after /tmp, since they usually live under it); every namespace and every capability dropped."""
    return ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
            "--bind", str(home), str(home), "--bind", str(root), str(root),
            "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--chdir", str(root)]


def _probe_bwrap() -> tuple[str | None, str | None]:
    """(bwrap, None) when bwrap makes a sandbox that writes its workspace here, else (None, the refusal)."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return None, (f"the agent sandbox needs bubblewrap, and bwrap is not installed: apt-get install "
                      f"{BWRAP_PACKAGE} (or pass --sandbox none to run commands without isolation)")
    with tempfile.TemporaryDirectory(prefix="flip-probe-") as tmp:
        root, home = Path(tmp, "ws"), Path(tmp, "home")
        root.mkdir()
        home.mkdir()
        try:
            proc = subprocess.run([bwrap, *bwrap_args(root, home), "--", "/bin/sh", "-c", "echo ok > probe.txt"],
                                  capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as err:
            proc, why = None, str(err)
        if proc is not None and proc.returncode == 0 and (root / "probe.txt").is_file():
            return bwrap, None
        if proc is not None:
            lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            why = lines[-1] if lines else f"exit code {proc.returncode}"
    return None, (f"bubblewrap cannot make a sandbox on this machine ({why}): run flip as root or where unprivileged "
                  f"user namespaces are allowed (or pass --sandbox none to run commands without isolation)")


def _cgroup_candidates(controller: str) -> list[tuple[Path, str]]:
    """(directory, limit file) where this process's cgroup for `controller` is: its v1 hierarchy, or v2 when the
    controller is delegated to children there."""
    v1_file, v2_file = next((v1, v2) for name, v1, v2, _ in _CONTROLLERS if name == controller)
    v2_mounts = [line.split()[1] for line in _read("/proc/self/mounts").splitlines() if line.split()[2:3] == ["cgroup2"]]
    candidates = []
    for line in _read("/proc/self/cgroup").splitlines():
        try:
            _, controllers, path = line.split(":", 2)
        except ValueError:
            continue
        if controller in controllers.split(","):
            candidates.append((Path("/sys/fs/cgroup", controller) / path.lstrip("/"), v1_file))
        elif controllers == "":
            for mount in v2_mounts:
                directory = Path(mount) / path.lstrip("/")
                if controller in _read(str(directory / "cgroup.subtree_control")).split():
                    candidates.append((directory, v2_file))
    return candidates


def _cgroup_root(controller: str) -> str | None:
    """A cgroup directory in which we may make children holding a `controller` limit, or None."""
    value = next(probe_value for name, _, _, probe_value in _CONTROLLERS if name == controller)
    for candidate, limit_file in _cgroup_candidates(controller):
        probe = candidate / f"apr-flip-probe-{os.getpid()}"
        try:
            probe.mkdir()
            (probe / limit_file).write_text(value)
            return str(candidate)
        except OSError:
            pass
        finally:
            try:
                probe.rmdir()
            except OSError:
                pass
    return None


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


@lru_cache(maxsize=1)
def isolation() -> Isolation:
    """Probe once: whether bwrap makes a sandbox here, whether prlimit exists, which cgroups can be made."""
    bwrap, problem = _probe_bwrap()
    return Isolation(bwrap, problem, shutil.which("prlimit") is not None, _cgroup_root("pids"),
                     _cgroup_root("memory"))


def check_sandbox(mode: str) -> None:
    """Refuse, before any work, a sandbox this machine cannot make (FlipError: one line, exit 2)."""
    if mode not in SANDBOXES:
        raise FlipError(f"--sandbox must be one of {', '.join(SANDBOXES)}, not {mode!r}")
    if mode == "bwrap" and isolation().bwrap is None:
        raise FlipError(isolation().bwrap_problem)


# ---------------------------------------------------------------------------------------------------------------------
# The sandbox
# ---------------------------------------------------------------------------------------------------------------------

def copy_workspace(source: Path, target: Path) -> None:
    """Copy a workspace without build outputs; symlinks are copied as links (and refused later if they lead out). A
    FIFO, socket or device in it is an input error (copying a FIFO would block or fail half way): FlipError."""
    skipped = shutil.ignore_patterns(*SKIP_DIRS, "*.pyc")

    def ignore(directory: str, names: list[str]) -> set[str]:
        for name in names:
            if is_special(os.path.join(directory, name)):
                raise FlipError(f"{os.path.join(directory, name)}: {SPECIAL_FILE}")
        return skipped(directory, names)

    shutil.copytree(source, target, symlinks=True, ignore=ignore)


def shell_problem(command: str) -> str | None:
    """Why a shell command is refused without running, or None. Conservative by design (see the module docstring)."""
    if "\0" in command:
        return "the command contains a NUL byte"
    if _PROC_ROOT.search(command):
        return "it names another process's root or working directory under /proc"
    for token in _SHELL_TOKEN.findall(command):
        path = token.rstrip(".,")
        if path.startswith("~"):
            return f"{token!r} names a path in a home directory, outside the workspace"
        if path.startswith("/") and posixpath.normpath(path) not in HARMLESS_ABSOLUTE:
            return f"{token!r} is an absolute path, outside the workspace"
        if ".." in re.split(r"[/\\]", token):
            return f"{token!r} climbs out with '..'"
        if posixpath.basename(path) in NAMESPACE_PROGRAMS:
            return f"{token!r} enters or makes namespaces or mounts"
    return None


class Sandbox:
    """A private directory holding `ws/` (the workspace, the only place calls may touch) and `home/` (HOME, TMPDIR).
    `mode` is one of SANDBOXES; check_sandbox(mode) says beforehand whether this machine can make it."""

    def __init__(self, workspace: str | os.PathLike, limits: Limits | None = None, parent: str | None = None,
                 mode: str = "bwrap"):
        if mode not in SANDBOXES:
            raise ValueError(f"unknown sandbox {mode!r}")
        self.limits = limits or Limits()
        self.mode = mode
        self.base = Path(tempfile.mkdtemp(prefix="flip-agent-", dir=parent))  # 0700: nobody else writes here
        self.root = self.base / "ws"
        self.home = self.base / "home"
        try:
            copy_workspace(Path(workspace), self.root)
            (self.home / "tmp").mkdir(parents=True)
        except BaseException:
            self.close()  # a sandbox that could not be made leaves no directory behind
            raise
        self.real_root = Path(os.path.realpath(self.root))

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)

    # ----------------------------------------------------------------------------------------------------- paths

    def resolve(self, given) -> Path:
        """The real path inside the workspace that `given` (workspace-relative) names; Refused otherwise."""
        if not isinstance(given, str) or not given.strip():
            raise Refused("empty path")
        if "\0" in given:
            raise Refused("the path contains a NUL byte")
        if given.startswith(("/", "~")) or _DRIVE.match(given) or given.startswith("\\"):
            raise Refused(f"{given} is an absolute path; paths are relative to the project directory")
        normal = posixpath.normpath(given.replace("\\", "/"))
        if normal == ".." or normal.startswith("../"):
            raise Refused(f"{given} is outside the project directory")
        real = Path(os.path.realpath(self.root / normal))
        if real != self.real_root and self.real_root not in real.parents:
            raise Refused(f"{given} leads outside the project directory (through a symbolic link)")
        return real

    def relative(self, path: Path) -> str:
        return Path(os.path.realpath(path)).relative_to(self.real_root).as_posix()

    # ----------------------------------------------------------------------------------------------------- shell

    def environment(self) -> dict[str, str]:
        """An allow-list: PATH, a fresh HOME and TMPDIR, a plain terminal, and where the toolchains live."""
        env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "HOME": str(self.home),
               "TMPDIR": str(self.home / "tmp"), "LANG": "C.UTF-8", "TERM": "dumb", "NO_COLOR": "1",
               "CARGO_TERM_COLOR": "never", "PYTHONDONTWRITEBYTECODE": "1", "RUSTUP_AUTO_INSTALL": "0"}
        real_home = Path.home()
        for name in _TOOLCHAIN_VARS:
            if os.environ.get(name):
                env[name] = os.environ[name]
            elif name in _TOOLCHAIN_HOMES and (real_home / _TOOLCHAIN_HOMES[name]).is_dir():
                env[name] = str(real_home / _TOOLCHAIN_HOMES[name])
        return env

    def shell(self, command: str, timeout_s: float | None = None) -> ShellResult:
        """Run a model's command in the workspace, in the sandbox. Refused for shell_problem()."""
        problem = shell_problem(command)
        if problem:
            raise Refused(problem)
        return self.run_command(command, timeout_s)

    def run_test(self, command: str, timeout_s: float | None = None) -> ShellResult:
        """A task's own test command (it comes from task.json, not from the model): no static refusal, but the same
        sandbox, since the test runs the code the model wrote."""
        return self.run_command(command, timeout_s)

    def _argv(self, command: str, cgroup_procs: list[str]) -> list[str]:
        iso = isolation()
        limits = self.limits
        prlimit = (["prlimit", f"--cpu={limits.cpu_s}", f"--as={limits.memory_bytes}", f"--fsize={limits.file_bytes}",
                    f"--nproc={limits.processes}", "--core=0", "--"] if iso.prlimit else [])
        bwrap = [] if self.mode == "none" else [iso.bwrap or "bwrap", *bwrap_args(self.root, self.home), "--"]
        return ["/bin/sh", "-c", _OUTER, "flip-sandbox", str(len(cgroup_procs)), *cgroup_procs, *bwrap, *prlimit,
                "/bin/sh", "-c", command]

    def run_command(self, command: str, timeout_s: float | None = None) -> ShellResult:
        """Run any command in the sandbox (no static refusal: shell() and run_test() decide what may run); every
        process it started is killed before this returns."""
        cgroups = _make_cgroups(self.limits)
        watch = TreeWatch(self.limits, processes=isolation().pids_cgroup is None,
                          memory=isolation().memory_cgroup is None)
        try:
            proc = subprocess.Popen(self._argv(command, [str(c / "cgroup.procs") for c in cgroups]),
                                    cwd=self.root, env=self.environment(), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
            watch.pid = proc.pid
            output, timed_out, truncated = _collect(proc, timeout_s or self.limits.timeout_s,
                                                    self.limits.output_bytes, watch)
            watch.kill_all()
            _kill_group(proc.pid)
            code = proc.wait()
        finally:
            for cgroup in cgroups:
                _empty_cgroup(cgroup)
                _remove_cgroup(cgroup)
        text = output.decode("utf-8", "replace")
        stopped = timed_out or truncated or watch.over is not None
        return ShellResult(None if stopped else code, text, timed_out, truncated, watch.over)


class TreeWatch:
    """The process and memory limits of a command where no cgroup holds them: the command's process tree is sampled
    every WATCH_INTERVAL_S and killed as a whole when it holds more processes or more resident memory than allowed."""

    def __init__(self, limits: Limits, processes: bool, memory: bool):
        self.limits, self.processes, self.memory = limits, processes, memory
        self.pid: int | None = None
        self.over: str | None = None

    @property
    def active(self) -> bool:
        return self.processes or self.memory

    def tree(self) -> list[psutil.Process]:
        try:
            parent = psutil.Process(self.pid)
            return [parent, *parent.children(recursive=True)]
        except psutil.Error:
            return []

    def check(self) -> bool:
        """Sample the tree; True (and the tree killed) when it is over a limit."""
        tree = self.tree()
        if self.processes and len(tree) > self.limits.processes:
            self.over = f"more than {self.limits.processes} processes"
        elif self.memory and _resident(tree) > self.limits.memory_bytes:
            self.over = f"more than {self.limits.memory_bytes} bytes of memory"
        if self.over:
            self.kill_all()
        return self.over is not None

    def kill_all(self) -> None:
        """The process group first (under bubblewrap that is bwrap itself, whose PID namespace dies with it), then
        whatever of the tree left the group."""
        if self.pid is None:
            return
        _kill_group(self.pid)
        for process in reversed(self.tree()):
            try:
                process.kill()
            except psutil.Error:
                pass


def _resident(tree: list[psutil.Process]) -> int:
    total = 0
    for process in tree:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            pass
    return total


def _collect(proc: subprocess.Popen, timeout_s: float, cap: int, watch: TreeWatch) -> tuple[bytes, bool, bool]:
    """Read the merged output until EOF, the deadline, the cap or a watched limit: (output, timed out, truncated)."""
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    chunks, size = [], 0
    deadline = time.monotonic() + timeout_s
    wait = WATCH_INTERVAL_S if watch.active else 1.0
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return b"".join(chunks), True, False
            if watch.active and watch.check():
                return b"".join(chunks), False, False
            ready, _, _ = select.select([fd], [], [], min(remaining, wait))
            if not ready:
                continue
            try:
                data = os.read(fd, 1 << 16)
            except BlockingIOError:
                continue
            if not data:
                return b"".join(chunks), False, False
            chunks.append(data[: max(0, cap - size)])
            size += len(data)
            if size > cap:
                return b"".join(chunks), False, True
    finally:
        proc.stdout.close()


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


_CGROUP_SERIAL = iter(range(1 << 62))


def _make_cgroups(limits: Limits) -> list[Path]:
    """One fresh cgroup per controller this machine lets us use (one for both where they share a v2 hierarchy),
    holding the command's pids and memory limits; swap is not allowed to stretch the memory limit."""
    iso = isolation()
    wanted = {"pids": iso.pids_cgroup, "memory": iso.memory_cgroup}
    made: dict[str, Path] = {}
    name = f"apr-flip-{os.getpid()}-{next(_CGROUP_SERIAL)}"
    for controller, root in wanted.items():
        if root is None:
            continue
        path = made.get(root) or Path(root) / name
        try:
            path.mkdir(exist_ok=True)
            if controller == "pids":
                (path / "pids.max").write_text(str(limits.processes))
            elif (path / "memory.max").exists():
                (path / "memory.max").write_text(str(limits.memory_bytes))
                _try_write(path / "memory.swap.max", "0")
            else:
                (path / "memory.limit_in_bytes").write_text(str(limits.memory_bytes))
                _try_write(path / "memory.memsw.limit_in_bytes", str(limits.memory_bytes))
            made[root] = path
        except OSError:
            if root not in made:
                _remove_cgroup(path)
    return list(dict.fromkeys(made.values()))


def _try_write(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError:
        pass


def _empty_cgroup(path: Path) -> None:
    """Kill every process still in a command's cgroup (in another session or PID namespace than the one killed)."""
    _try_write(path / "cgroup.kill", "1")  # cgroup v2 kills them all at once; v1 has no such file
    for _ in range(50):
        pids = [int(p) for p in _read(str(path / "cgroup.procs")).split()]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.01)


def _remove_cgroup(path: Path | None) -> None:
    """A cgroup can be removed once it is empty; the processes were killed, so wait briefly for them to be reaped."""
    if path is None:
        return
    for _ in range(50):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.02)
