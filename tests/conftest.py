"""Shared fixtures: where the test corpus lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("IMGJOBS_CORPUS", ROOT.parent / "shared" / "corpus"))
GOOD = CORPUS / "good"
BAD = CORPUS / "bad"


def corpus_files(folder: Path) -> list[Path]:
    """Every image of a corpus folder, manifest and licences left out."""
    if not folder.is_dir():
        raise pytest.UsageError(
            f"the test corpus is not at {folder}: put shared/ beside the repository "
            "or set IMGJOBS_CORPUS to the corpus folder"
        )
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix != ".tsv")


@pytest.fixture(scope="session")
def good() -> Path:
    return GOOD


@pytest.fixture(scope="session")
def bad() -> Path:
    return BAD
