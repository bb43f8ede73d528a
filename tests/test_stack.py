"""The stack is what the project says it is: pillow-simd with its codecs, light workers."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import PIL
from PIL import features


def test_no_stock_pillow_distribution_is_installed() -> None:
    # Any dependency requiring "pillow" would silently install it over pillow-simd.
    assert importlib.metadata.version("pillow-simd") == PIL.__version__
    installed = {dist.metadata["Name"].lower() for dist in importlib.metadata.distributions()}
    assert "pillow" not in installed


def test_pillow_has_the_codecs_the_corpus_needs() -> None:
    for codec in ("jpg", "zlib", "libtiff"):
        assert features.check_codec(codec), codec
    for module in ("webp", "littlecms2"):
        assert features.check_module(module), module


def test_the_worker_side_of_the_runner_imports_no_web_stack() -> None:
    code = (
        "import sys, app.runner; "
        "bad = {'quart', 'hypercorn', 'sqlite3', 'app.server', 'PIL'} & set(sys.modules); "
        "print(sorted(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
