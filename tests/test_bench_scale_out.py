"""bench.scale_out end to end with tiny settings: PostgreSQL, RGW, an API node and two
worker nodes, the report."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from bench.scale_out import ScaleOutReport, main


def test_a_tiny_run_completes_every_job_on_the_worker_nodes(
    good: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "scale_out.json"
    jobs = 6
    main(
        [
            "--config=2x1",
            "--workload=thumbnail",
            f"--jobs={jobs}",
            "--concurrency=3",
            "--repeats=1",
            "--quiet-wait-s=0",
            f"--corpus={good}",
            f"--output={output}",
        ]
    )
    report = msgspec.json.decode(output.read_bytes(), type=ScaleOutReport)
    [point] = report.points
    assert (point.config, point.workload) == ("2x1", "thumbnail")
    assert point.completed == point.submitted == jobs
    [batch] = point.batches
    assert batch.output_bytes > 0
    assert [use.role for use in batch.nodes] == ["api", "worker", "worker"]
    # Every job was started by a worker node, none by the API node.
    assert sum(point.split[0]) == jobs
    assert batch.nodes[0].jobs_started == 0
    assert point.jobs_per_s.median > 0
    assert point.api_ms.median > 0
    assert point.image_workers_ms.median > 0
    assert point.rgw_ms.median > 0
    assert report.exit_codes == [0, 0, 0]
    table = capsys.readouterr().out
    assert "| 2x1: PostgreSQL + S3, 1 API node + 2 worker nodes of pool 1 | thumbnail" in table
    assert "| 2x1 | thumbnail |" in table
