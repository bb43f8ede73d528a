"""bench.overhead end to end with tiny settings: both servers, every upload form, the report."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from bench.overhead import FORMS, OverheadReport, main, multipart_body


def test_multipart_body_puts_the_fields_then_the_image() -> None:
    body, content_type = multipart_body(
        {"operation": "thumbnail"}, b"\xff\xd8\xffJPEG", "image/jpeg"
    )
    boundary = content_type.partition("boundary=")[2]
    assert content_type.startswith("multipart/form-data; boundary=")
    assert body.startswith(f"--{boundary}\r\n".encode())
    assert body.index(b'name="operation"') < body.index(b'name="image"')
    assert body.endswith(b"\xff\xd8\xffJPEG\r\n--" + boundary.encode() + b"--\r\n")


def test_a_tiny_run_reports_every_form_against_the_floor(
    good: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "overhead.json"
    main(
        [
            "--size=1mb",
            "--jobs=4",
            "--repeats=1",
            "--gets=100",
            "--quiet-wait-s=0",
            f"--corpus={good}",
            f"--output={output}",
        ]
    )
    report = msgspec.json.decode(output.read_bytes(), type=OverheadReport)
    assert [point.form for point in report.points] == list(FORMS)
    for point in report.points:
        assert point.size == "1mb"
        assert point.body_bytes >= point.image_bytes > 1_000_000
        assert len(point.imgjobs) == len(point.floor) == 1
        assert point.server_ms.imgjobs.median > 0
        assert point.server_ms.floor.median > 0
        assert point.server_ms.ratio > 0
        assert point.imgjobs_workers_ms.median > 0
        assert all(batch.workers_cpu_s == 0 for batch in point.floor)
    status = report.status
    assert status.server_ms.imgjobs.median > 0
    assert status.server_ms.floor.median > 0
    assert status.server_ms.ratio > 0
    assert report.imgjobs_exit_code == 0
    assert report.floor_exit_code == 0
    table = capsys.readouterr().out
    for form in FORMS:
        assert f"| {form} | 1mb |" in table
    assert "| GET /jobs/{id} |" in table
