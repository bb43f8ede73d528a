"""Where the image corpus (``good/`` and ``bad/``) is, for the tests and the benchmarks."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "corpus"
# Where ``python -m tests.corpus`` (``make corpus``) fetches it when there is no shared/.
CACHE = ROOT / ".cache" / "corpus"


def corpus_root() -> Path:
    """The corpus folder: ``IMGJOBS_CORPUS`` if set, else ``../shared/corpus`` beside the
    repository if it exists (read in place, never copied), else the fetched ``.cache/corpus``."""
    configured = os.environ.get("IMGJOBS_CORPUS")
    if configured:
        return Path(configured)
    return SHARED if SHARED.is_dir() else CACHE
