"""Falsifiers of contracts/claims/package.yaml: the wheel is the product, and nothing reaches for the network.

The wheel is built from this checkout and installed, without its dependencies (they come from the project's own
environment through a path file, never through the editable install), into a fresh virtual environment; `flip` then
runs from a directory outside the checkout. A socket guard in the test process records every name lookup and
connection while the commands run.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import sysconfig
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv (outside the checkout) holding the built wheel; returns its bin/ directory."""
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT),
                    "-w", str(root / "dist")], check=True, capture_output=True, cwd=root)
    wheel = next((root / "dist").glob("apr_flip-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    purelib = Path(subprocess.run([str(root / "venv" / "bin" / "python"), "-c",
                                   "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    # the dependencies (torch, transformers, ...) of this environment, as a plain path: its .pth files, the editable
    # install of this checkout among them, are not processed, so `harness` can only come from the wheel
    (purelib / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(purelib),
                    str(wheel)], check=True, capture_output=True)
    return root / "venv" / "bin"


def test_an_installed_wheel_runs_outside_the_checkout(installed, tmp_path):
    python = installed / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}

    def flip(*argv):
        return subprocess.run([str(python), "-m", "harness.cli", *argv], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)

    where = subprocess.run([str(python), "-c", "import harness, harness.contracts as c; print(harness.__file__); "
                            "print(c.CONTRACTS); print(c.FIXTURES)"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, check=True).stdout.split()
    assert all(str(ROOT) not in path for path in where), f"the checkout leaked into the installed wheel: {where}"
    version = flip("--version")
    assert version.returncode == 0 and version.stdout.startswith("apr-flip ")
    transcripts = Path(where[2]) / "transcripts" / "head-py"
    export = flip("export", str(transcripts), "--out", "out", "--quiet")
    assert export.returncode == 0, export.stderr
    stats = json.loads((tmp_path / "out" / "export_stats.json").read_text())
    assert stats["files"] >= 3 and stats["samples"]["full"] > 0
    for command in ("eval", "agent", "run", "tune"):
        shown = flip(command, "--help")
        assert shown.returncode == 0 and "--quiet" in shown.stdout, (command, shown.stderr)
    refused = flip("run", "--out", "r", "--base", "nothing-here")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr and "nothing-here" in refused.stderr


def test_no_command_opens_a_network_connection(monkeypatch, tmp_path):
    """export, train, eval, remap and merge on tiny models, in process, with every lookup and connection recorded."""
    from falsifiers.test_cli import flip
    from falsifiers.test_remap import tiny_adapter
    from falsifiers.test_remap import tiny_base as random_base

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[:2])
        raise OSError("the network is off limits in this test")

    for name in ("getaddrinfo", "create_connection"):
        monkeypatch.setattr(socket, name, refuse)
    monkeypatch.setattr(socket.socket, "connect", lambda self, *a: refuse(*a))
    base = random_base(tmp_path / "base", "llama", seed=3)
    adapter = tiny_adapter(base, tmp_path / "adapter", seed=4)
    (tmp_path / "p.jsonl").write_text('{"id": "a", "task": "Fix src/lib.rs"}\n')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert flip("export", ROOT / "fixtures" / "transcripts" / "head-py", "--out", tmp_path / "ds", "--quiet")[0] == 0
        # the bundled model by name: its adapter names "smollm2-135m" as its base, which peft would look up on the hub
        assert flip("train", "--data", tmp_path / "ds" / "apr_code_sft_curated.jsonl", "--base", "smollm2-135m",
                    "--out", tmp_path / "trained", "--max-steps", "1", "--save-every", "0", "--quiet")[0] == 0
        assert flip("eval", "--model", "smollm2-135m", "--adapter", tmp_path / "trained", "--prompts",
                    tmp_path / "p.jsonl", "--out", tmp_path / "t.jsonl", "--max-new-tokens", "4", "--quiet")[0] == 0
        assert flip("merge", "--base", base, "--adapter", adapter, "--out", tmp_path / "merged", "--quiet")[0] == 0
        assert flip("remap", adapter, "--out", tmp_path / "a.safetensors", "--base", base, "--quiet")[0] == 0
    assert attempts == [], f"network lookups or connections: {attempts}"
    assert not [w for w in caught if "Unable to fetch remote file" in str(w.message)]
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        assert os.environ[name] == "1"
