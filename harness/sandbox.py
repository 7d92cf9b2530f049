"""The agent's sandbox: a fresh copy of a task's workspace, in which model-chosen tool calls run.

Model output is untrusted input. Two layers keep it inside its workspace:

1. **Refusal** (everywhere): every path a call names must resolve inside the workspace. Absolute paths (`/x`, `~/x`,
   `C:\\x`), `..` escapes and symlinks that lead out are refused before anything runs (`Refused`, counted by the
   agent). A shell command naming an absolute path (other than /dev/null and friends), a `~` path or any `..`
   component is refused the same way: what the command would do there cannot be known without running it.
2. **Isolation** (where the machine allows it, probed once): shell commands run in new mount, network and PID
   namespaces (util-linux `unshare`) in which every file system is remounted read-only except the workspace and a
   private home, there is no network (a fresh network namespace has only a down loopback), and every process dies with
   the command. Resource limits (`prlimit`): CPU seconds, address space, file size, processes; a pids cgroup caps the
   process count where one can be created (root is exempt from RLIMIT_NPROC). Always: a new session whose whole process
   group is killed at the timeout, capped output, a scrubbed environment (an allow-list: no tokens, a fresh HOME).

This is damage control for a model that emits a bad command by mistake, NOT a security boundary against a determined
attacker (a command can still read files outside the workspace, and the static check can be evaded by a command that
builds a path at run time). Run untrusted models in a container or VM.
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

# Build outputs and caches: never copied into a sandbox, never kept with a final workspace, never listed by grep/glob.
SKIP_DIRS = frozenset({"target", "__pycache__", ".git", ".pytest_cache", ".mypy_cache", "node_modules"})
HARMLESS_ABSOLUTE = frozenset({"/dev/null", "/dev/stdout", "/dev/stderr", "/dev/zero", "/dev/urandom"})
_SHELL_TOKEN = re.compile(r"[^\s'\"`;&|<>()=:,]+")
_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")
# Variables a toolchain needs to be found with a fresh HOME; everything else in the caller's environment is dropped.
_TOOLCHAIN_VARS = ("CARGO_HOME", "RUSTUP_HOME", "RUSTUP_TOOLCHAIN", "PYENV_ROOT", "PYENV_VERSION")
_TOOLCHAIN_HOMES = {"CARGO_HOME": ".cargo", "RUSTUP_HOME": ".rustup", "PYENV_ROOT": ".pyenv"}


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 120.0  # wall clock per shell command (the whole process group is killed)
    cpu_s: int = 120  # CPU seconds per process
    memory_bytes: int = 4 << 30  # address space per process
    file_bytes: int = 256 << 20  # largest file a command may write
    processes: int = 256  # processes at once
    output_bytes: int = 1 << 20  # combined output kept; past it the command is stopped


class Refused(Exception):
    """A path or command that leaves the workspace: never executed, answered with an error observation."""


@dataclass
class ShellResult:
    exit_code: int | None  # None when killed at the timeout or the output cap
    output: str  # stdout and stderr merged, in arrival order
    timed_out: bool = False
    truncated: bool = False  # the output cap was reached and the command stopped


# ---------------------------------------------------------------------------------------------------------------------
# Isolation: what this machine allows, probed once per process
# ---------------------------------------------------------------------------------------------------------------------

# $1: cgroup.procs to join ("" for none), then the command line to exec. Joining the cgroup before anything forks means
# no process of the command escapes the pids limit.
_OUTER = 'cg=$1; shift; [ -z "$cg" ] || echo $$ > "$cg" || exit 125; exec "$@"'
# Inside the namespaces: the workspace and home bound onto themselves (writable mounts of their own), every other mount
# read-only, then the command under prlimit. Arguments: root home command prlimit-options...
_ISOLATED = r'''root=$1; home=$2; cmd=$3; shift 3
mount --make-rprivate / 2>/dev/null
mount --bind "$root" "$root" && mount --bind "$home" "$home" || exit 125
while read -r dev mnt rest; do
  case "$mnt" in "$root"|"$home") ;; *) mount -o remount,bind,ro "$mnt" 2>/dev/null ;; esac
done < /proc/self/mounts
[ -w / ] && exit 125
cd "$root" || exit 125
exec "$@" /bin/sh -c "$cmd"'''
_PLAIN = r'''root=$1; home=$2; cmd=$3; shift 3
cd "$root" || exit 125
exec "$@" /bin/sh -c "$cmd"'''


@dataclass(frozen=True)
class Isolation:
    namespaces: tuple[str, ...]  # the unshare command prefix, () when namespaces are unavailable
    prlimit: bool
    pids_cgroup: str | None  # the cgroup directory under which per-command cgroups are made

    def describe(self) -> str:
        parts = ["read-only file system outside the workspace, no network, own PID namespace" if self.namespaces
                 else "no namespaces (unshare unavailable): refusal and process-group kill only"]
        parts.append("rlimits (CPU, memory, file size, processes)" if self.prlimit else "no rlimits (prlimit missing)")
        parts.append("pids cgroup" if self.pids_cgroup else "no pids cgroup")
        return "; ".join(parts)


def _unshare_prefixes() -> list[tuple[str, ...]]:
    unshare = shutil.which("unshare")
    if unshare is None:
        return []
    common = ("--mount", "--net", "--pid", "--fork", "--kill-child")
    as_root = (unshare, *common, "--")
    as_user = (unshare, "--user", "--map-root-user", *common, "--")
    return [as_root, as_user] if os.geteuid() == 0 else [as_user]


def _pids_cgroup_root() -> str | None:
    """A cgroup directory (v1 pids hierarchy, or v2 with the pids controller) in which we may make children."""
    candidates = []
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if "pids" in controllers.split(","):
                candidates.append(Path("/sys/fs/cgroup/pids") / path.lstrip("/"))
            elif controllers == "" and "pids" in _read("/sys/fs/cgroup/cgroup.subtree_control"):
                candidates.append(Path("/sys/fs/cgroup") / path.lstrip("/"))
    except (OSError, ValueError):
        return None
    for candidate in candidates:
        probe = candidate / f"apr-flip-probe-{os.getpid()}"
        try:
            probe.mkdir()
            (probe / "pids.max").write_text("64")
            probe.rmdir()
            return str(candidate)
        except OSError:
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
    """Probe once: which namespace prefix works here, whether prlimit exists, whether a pids cgroup can be made."""
    has_prlimit = shutil.which("prlimit") is not None
    chosen: tuple[str, ...] = ()
    with tempfile.TemporaryDirectory(prefix="flip-probe-") as tmp:
        root, home = Path(tmp, "ws"), Path(tmp, "home")
        root.mkdir()
        home.mkdir()
        for prefix in _unshare_prefixes():
            try:
                proc = subprocess.run(["/bin/sh", "-c", _OUTER, "flip-sandbox", "", *prefix, "/bin/sh", "-c",
                                       _ISOLATED, "flip-sandbox", str(root), str(home), "echo ok > probe.txt"],
                                      capture_output=True, timeout=30)
            except (OSError, subprocess.SubprocessError):
                continue
            if proc.returncode == 0 and (root / "probe.txt").is_file():
                chosen = prefix
                break
    return Isolation(chosen, has_prlimit, _pids_cgroup_root())


# ---------------------------------------------------------------------------------------------------------------------
# The sandbox
# ---------------------------------------------------------------------------------------------------------------------

def copy_workspace(source: Path, target: Path) -> None:
    """Copy a workspace without build outputs; symlinks are copied as links (and refused later if they lead out)."""
    shutil.copytree(source, target, symlinks=True, ignore=shutil.ignore_patterns(*SKIP_DIRS, "*.pyc"))


def shell_problem(command: str) -> str | None:
    """Why a shell command is refused without running, or None. Conservative by design (see the module docstring)."""
    if "\0" in command:
        return "the command contains a NUL byte"
    for token in _SHELL_TOKEN.findall(command):
        path = token.rstrip(".,")
        if path.startswith("~"):
            return f"{token!r} names a path in a home directory, outside the workspace"
        if path.startswith("/") and posixpath.normpath(path) not in HARMLESS_ABSOLUTE:
            return f"{token!r} is an absolute path, outside the workspace"
        if ".." in re.split(r"[/\\]", token):
            return f"{token!r} climbs out with '..'"
    return None


class Sandbox:
    """A private directory holding `ws/` (the workspace, the only place calls may touch) and `home/` (HOME, TMPDIR)."""

    def __init__(self, workspace: str | os.PathLike, limits: Limits | None = None, parent: str | None = None):
        self.limits = limits or Limits()
        self.base = Path(tempfile.mkdtemp(prefix="flip-agent-", dir=parent))  # 0700: nobody else writes here
        self.root = self.base / "ws"
        self.home = self.base / "home"
        copy_workspace(Path(workspace), self.root)
        (self.home / "tmp").mkdir(parents=True)
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
        """Run a command in the workspace under the isolation this machine allows. Refused for shell_problem()."""
        problem = shell_problem(command)
        if problem:
            raise Refused(problem)
        return self._run(command, timeout_s or self.limits.timeout_s)

    def run_test(self, command: str, timeout_s: float | None = None) -> ShellResult:
        """A task's own test command (trusted: it comes from task.json, not from the model), under the same isolation."""
        return self._run(command, timeout_s or self.limits.timeout_s)

    def _argv(self, command: str, cgroup_procs: str) -> list[str]:
        iso = isolation()
        limits = self.limits
        prlimit = (["prlimit", f"--cpu={limits.cpu_s}", f"--as={limits.memory_bytes}", f"--fsize={limits.file_bytes}",
                    f"--nproc={limits.processes}", "--core=0", "--"] if iso.prlimit else [])
        script = _ISOLATED if iso.namespaces else _PLAIN
        return ["/bin/sh", "-c", _OUTER, "flip-sandbox", cgroup_procs, *iso.namespaces, "/bin/sh", "-c", script,
                "flip-sandbox", str(self.root), str(self.home), command, *prlimit]

    def _run(self, command: str, timeout_s: float) -> ShellResult:
        cgroup = _make_cgroup(self.limits.processes)
        try:
            proc = subprocess.Popen(self._argv(command, str(cgroup / "cgroup.procs") if cgroup else ""),
                                    cwd=self.root, env=self.environment(), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
            output, timed_out, truncated = _collect(proc, timeout_s, self.limits.output_bytes)
            _kill_group(proc.pid)
            code = proc.wait()
        finally:
            _remove_cgroup(cgroup)
        text = output.decode("utf-8", "replace")
        return ShellResult(None if (timed_out or truncated) else code, text, timed_out, truncated)


def _collect(proc: subprocess.Popen, timeout_s: float, cap: int) -> tuple[bytes, bool, bool]:
    """Read the merged output until EOF, the deadline or the cap: (output, timed out, truncated)."""
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    chunks, size = [], 0
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return b"".join(chunks), True, False
            ready, _, _ = select.select([fd], [], [], min(remaining, 1.0))
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


def _make_cgroup(processes: int) -> Path | None:
    root = isolation().pids_cgroup
    if root is None:
        return None
    path = Path(root) / f"apr-flip-{os.getpid()}-{next(_CGROUP_SERIAL)}"
    try:
        path.mkdir()
        (path / "pids.max").write_text(str(processes))
        return path
    except OSError:
        _remove_cgroup(path)
        return None


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
