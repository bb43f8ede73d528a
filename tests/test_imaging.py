"""The imaging package as a whole: its public names, its imports, the Pillow build under it."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import PIL

import imaging
from tests.conftest import ROOT

# What the app may import from `imaging`; changing this list is an API change.
PUBLIC_API = {
    "CorruptImage",
    "DEFAULT_ALLOWED_FORMATS",
    "Description",
    "Document",
    "GeometryError",
    "ImageInfo",
    "ImageTooLarge",
    "ImagingError",
    "JobSpec",
    "Output",
    "OutputFormat",
    "Plan",
    "Rendition",
    "Result",
    "Step",
    "TruncatedImage",
    "UnsupportedFormat",
    "describe",
    "plan",
    "probe",
    "process",
    "process_variants",
    "sniff_format",
}

# imaging is pure and synchronous (STYLE.md rule 4): none of these may come in with it.
FORBIDDEN_MODULES = {"trio", "anyio", "quart", "quart_trio", "hypercorn", "sqlite3", "app"}


def test_public_api_is_exactly_what_the_app_uses() -> None:
    assert set(imaging.__all__) == PUBLIC_API
    for name in PUBLIC_API:
        assert getattr(imaging, name) is not None


def test_public_signatures() -> None:
    assert list(inspect.signature(imaging.process).parameters) == ["spec", "src", "dst"]
    probe = inspect.signature(imaging.probe).parameters
    assert list(probe) == ["data", "allowed", "max_pixels"]
    assert probe["allowed"].kind is inspect.Parameter.KEYWORD_ONLY
    assert probe["allowed"].default == imaging.DEFAULT_ALLOWED_FORMATS
    assert probe["max_pixels"].default is inspect.Parameter.empty
    expected = frozenset({"JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP", "MPO", "AVIF", "HEIF"})
    assert expected == imaging.DEFAULT_ALLOWED_FORMATS


def test_import_brings_in_no_async_storage_or_app_modules() -> None:
    code = (
        "import json, sys, imaging\n"
        "roots = {name.partition('.')[0] for name in sys.modules}\n"
        "print(json.dumps(sorted(roots)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    loaded = set(json.loads(done.stdout))
    assert "imaging" in loaded
    assert "PIL" in loaded
    assert loaded.isdisjoint(FORBIDDEN_MODULES), loaded & FORBIDDEN_MODULES


def test_pillow_is_the_simd_build() -> None:
    # Stock Pillow installed over pillow-simd (by any package requiring "pillow") halves
    # resize speed without any other symptom; pillow-simd versions end in ".postN".
    assert ".post" in PIL.__version__, PIL.__version__


DOCUMENT_AT_EXIT = """
import msgspec
from imaging import Document
colours = [{"op": "resize", "width": 9, "background": "#ff000080"},
           {"op": "extend", "top": 1, "background": [1, 2, 3]},
           {"op": "rotate", "angle": 5, "background": "#000000"}]
msgspec.convert({"steps": colours}, Document)
msgspec.json.decode(msgspec.json.encode({"variants": {"a": {"steps": colours}}}), type=Document)
"""


def test_the_document_types_survive_interpreter_exit() -> None:
    # msgspec 0.22 freed the step structs' shared colour type twice at exit, killing about
    # one process in four (worker processes included) with SIGSEGV; 0.23 does not.
    for _ in range(12):
        done = subprocess.run([sys.executable, "-c", DOCUMENT_AT_EXIT], cwd=ROOT, check=False)
        assert done.returncode == 0
