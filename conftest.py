"""Project-wide pytest set-up: markers, and the few fixtures every falsifier file may use."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent

MARKERS = {
    "flip": "the flip claim: trains a real student and compares it with its base (pytest -m flip)",
    "agent": "base and student as agents on the held-out workspaces (pytest -m agent)",
    "student": "the committed long student (fixtures/students/) as an agent on the held-out workspaces: make test-student, CI",
    "gpu": "needs CUDA; skipped when none is present",
    "slow": "takes more than ~30 s on 2 CPU cores",
    "mutation": "mutation verification: every declared mutant must make its falsifier fail",
    "contract": "the contract gate: claims, falsifiers and mutants are consistent",
    "bench": "pytest-benchmark benchmarks (make bench), not run by make test",
    "helper": "a supporting test that backs no claim of its own in contracts/",
}


def pytest_configure(config):
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    _hypothesis_profiles()


def _hypothesis_profiles() -> None:
    """HYPOTHESIS_PROFILE=mutation (set for every mutant run: mutation/running.py): the same examples on every
    machine and no shrinking. A mutant's verdict must not depend on the draw (a kill that needs a lucky example is a
    survivor on the next CI run), and a mutant needs only one failing example: shrinking it to a minimal one can take
    minutes per mutant and tells the verdict nothing."""
    from hypothesis import Phase, settings

    settings.register_profile("mutation", phases=[Phase.explicit, Phase.generate], derandomize=True, database=None)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_collection_modifyitems(config, items):
    if any(item.get_closest_marker("gpu") for item in items):
        import torch

        if not torch.cuda.is_available():
            skip = pytest.mark.skip(reason="no CUDA device")
            for item in items:
                if item.get_closest_marker("gpu"):
                    item.add_marker(skip)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def real_transcripts() -> Path:
    """../shared/real-transcripts (or $FLIP_REAL_TRANSCRIPTS); the test is skipped when it is absent."""
    path = Path(os.environ.get("FLIP_REAL_TRANSCRIPTS", ROOT.parent / "shared" / "real-transcripts"))
    if not path.is_dir():
        pytest.skip(f"real transcripts not present at {path}")
    return path


@pytest.fixture(scope="session")
def ccpa_fixtures() -> Path:
    """../shared/ccpa-fixtures (or $FLIP_CCPA_FIXTURES): CCPA's canonical and regression traces; skipped when absent."""
    path = Path(os.environ.get("FLIP_CCPA_FIXTURES", ROOT.parent / "shared" / "ccpa-fixtures"))
    if not path.is_dir():
        pytest.skip(f"CCPA fixtures not present at {path}")
    return path
