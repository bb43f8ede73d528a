"""Shared fixtures: where the test corpus lives; the shared backends when asked for."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from hypothesis import settings

from bench.corpus import corpus_root
from tests.backends import SHARED, open_shared_backends

# CI runs the property tests on a fixed seed, so a run fails for a change, not for luck:
# `.ci/run` picks this profile. `make test` elsewhere explores new examples on every run.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

ROOT = Path(__file__).resolve().parents[1]
CORPUS = corpus_root()
GOOD = CORPUS / "good"
BAD = CORPUS / "bad"


def corpus_files(folder: Path) -> list[Path]:
    """Every image of a corpus folder, manifest and licences left out."""
    if not folder.is_dir():
        raise pytest.UsageError(
            f"the test corpus is not at {folder}: run `make corpus` (or `python -m tests.corpus`) "
            "to fetch it into .cache/corpus, put shared/ beside the repository, "
            "or set IMGJOBS_CORPUS to the corpus folder"
        )
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix != ".tsv")


def pytest_report_header() -> str:
    backend = "PostgreSQL + S3 (RGW)" if SHARED else "SQLite + local folders"
    return f"corpus: {CORPUS}; backends: {backend}"


@pytest.fixture(scope="session", autouse=SHARED)
def shared_backends() -> Iterator[None]:
    """With IMGJOBS_BACKEND=shared: PostgreSQL and RGW for every test server."""
    with ExitStack() as stack:
        open_shared_backends(stack)
        yield


@pytest.fixture(scope="session")
def good() -> Path:
    return GOOD


@pytest.fixture(scope="session")
def bad() -> Path:
    return BAD
