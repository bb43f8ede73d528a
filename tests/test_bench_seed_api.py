"""bench.seed_api end to end with tiny settings: the photo, a server, polled jobs, the report."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from PIL import Image

from bench.seed_api import SeedApiReport, main
from bench.seed_photos import CASES, make_photo


def test_the_photos_have_the_sizes_the_issue_names(good: Path, tmp_path: Path) -> None:
    recipe = CASES["24mp-resize"]
    path = make_photo(recipe, good, tmp_path)
    with Image.open(path) as photo:
        assert photo.size == (6000, 4000)
        assert photo.format == "JPEG"
    # 0.5 MB as base64: about 375 kB of JPEG.
    assert 300_000 < path.stat().st_size < 450_000


def test_a_tiny_run_reports_the_seed_rows(
    good: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "seed_api.json"
    main(
        [
            "--case=24mp-resize",
            "--jobs=3",
            "--repeats=1",
            "--ceiling-duration-s=0.5",
            "--quiet-wait-s=0",
            f"--corpus={good}",
            f"--output={output}",
        ]
    )
    report = msgspec.json.decode(output.read_bytes(), type=SeedApiReport)
    (case,) = report.cases
    assert case.photo.recipe.case == "24mp-resize"
    assert case.photo.body_bytes > case.photo.image_bytes * 4 // 3
    assert len(case.ceiling) == 1
    assert case.ceiling[0].images_per_s > 0
    (batch,) = case.batches
    assert batch.completed == batch.jobs == 3
    assert batch.polls >= 3
    assert batch.server_cpu_s > 0
    assert batch.workers_cpu_s > 0
    assert batch.efficiency > 0
    (figures,) = case.figures
    assert figures.failures == 0
    assert report.exit_codes == {"imgjobs": 0}
    assert "| 24 MP JPEG, 0.51 MB as base64 JSON, resize 800x600 | imgjobs |" in (
        capsys.readouterr().out
    )
