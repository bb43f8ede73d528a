"""`imgjobs`: serve, or submit images and fetch results from the command line.

Exit codes: 0 all done, 1 a job failed (or its result could not be written), 2 a usage
error, 3 the server unreachable or an HTTP error; anything but 0 says why on stderr, one
line per problem. On a terminal, progress is drawn with rich; otherwise every job is one
JSON line on stdout, for scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple, Protocol, TypeVar

# Only the standard library at import: the server's worker processes import the main
# module again (as __mp_main__), and `imgjobs serve` makes this module the main one.
if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from app.client import AsyncClient, Client
    from app.models import JobView

__all__ = ["main"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
# 2, a usage error, is argparse's own.
EXIT_ERROR: Final = 3
FITS: Final = ("inside", "cover", "contain", "fill", "outside")
FORMATS: Final = ("jpeg", "jpg", "png", "webp", "avif", "gif")
#: Uploads at least this big get a progress bar of their own.
BIG_UPLOAD_BYTES: Final = 1024 * 1024
EXTENSIONS: Final = {"jpeg": "jpg"}

Status = Literal["pending", "completed", "failed", "error"]
E = TypeVar("E", bound=BaseException)


class Result(NamedTuple):
    """What became of one file of `imgjobs submit`: one JSON line, or one line of text."""

    file: str
    status: Status
    job_id: str | None = None
    error: dict[str, Any] | None = None
    variants: dict[str, Any] | None = None
    saved: dict[str, str] | None = None

    def json(self) -> str:
        return json.dumps({k: v for k, v in self._asdict().items() if v is not None})

    def text(self) -> str:
        """The line shown on a terminal (rich markup)."""
        from rich.markup import escape

        job = f" job {self.job_id}" if self.job_id else ""
        if self.status == "pending":
            return f"[cyan]•[/] {escape(self.file)}{job} pending"
        if self.status != "completed":
            return f"[red]✗[/] {escape(self.file)}{job}: {escape(self.problem())}"
        outputs = ", ".join(
            f"{view['width']}x{view['height']} {view['format']} {view['bytes']:,} B"
            + (f" → {escape(self.saved[name])}" if self.saved and name in self.saved else "")
            for name, view in (self.variants or {}).items()
        )
        return f"[green]✓[/] {escape(self.file)}{job}: {outputs}"

    def problem(self) -> str:
        error = self.error or {}
        status = f"HTTP {error['http_status']} " if "http_status" in error else ""
        return f"{status}{error.get('code') or 'error'}: {error.get('message', '')}"


class Report(Protocol):
    """How `imgjobs submit` shows what it does: rich on a terminal, JSON lines otherwise."""

    def start(self, file: Path) -> Any: ...
    def uploaded(self, task: Any, sent: int, total: int) -> None: ...
    def waiting(self, task: Any) -> None: ...
    def downloading(self, task: Any) -> None: ...
    def finish(self, task: Any, result: Result) -> None: ...


class Lines:
    """One JSON line per job on stdout, as each finishes; nothing else."""

    def start(self, file: Path) -> None:
        return None

    def uploaded(self, task: None, sent: int, total: int) -> None:
        pass

    def waiting(self, task: None) -> None:
        pass

    def downloading(self, task: None) -> None:
        pass

    def finish(self, task: None, result: Result) -> None:
        print(result.json(), flush=True)


class Bars:
    """A row per file in flight (an upload bar for big files, then a spinner while the job
    runs), an overall bar for a batch, and a line per file as it finishes."""

    def __init__(self, progress: Progress, files: Sequence[Path]) -> None:
        self.progress = progress
        self.count = len(files)
        self.finished: list[Result] = []
        #: Each row's file name, and whether it has an upload bar.
        self.names: dict[TaskID, tuple[str, bool]] = {}
        self.overall = (
            progress.add_task("all files", total=self.count, detail=f"0/{self.count}")
            if self.count > 1
            else None
        )

    def start(self, file: Path) -> TaskID:
        size = file.stat().st_size
        total = size if size >= BIG_UPLOAD_BYTES else None
        task = self.progress.add_task(f"{file.name}: uploading", total=total, detail="")
        self.names[task] = (file.name, total is not None)
        return task

    def uploaded(self, task: TaskID, sent: int, total: int) -> None:
        if self.names[task][1]:
            from rich.filesize import decimal

            self.progress.update(task, completed=sent, detail=f"{decimal(sent)}/{decimal(total)}")

    def waiting(self, task: TaskID) -> None:
        self.progress.reset(task, total=None, description=self._doing(task, "processing"))
        self.progress.update(task, detail="")

    def downloading(self, task: TaskID) -> None:
        self.progress.update(task, description=self._doing(task, "downloading"))

    def _doing(self, task: TaskID, what: str) -> str:
        return f"{self.names[task][0]}: {what}"

    def finish(self, task: TaskID, result: Result) -> None:
        self.progress.remove_task(task)
        self.progress.console.print(result.text(), highlight=False, soft_wrap=True)
        self.finished.append(result)
        if self.overall is not None:
            done = f"{len(self.finished)}/{self.count}"
            self.progress.update(self.overall, advance=1, detail=done)

    def summary(self, elapsed_s: float) -> str:
        counts: dict[str, int] = {}
        for result in self.finished:
            counts[result.status] = counts.get(result.status, 0) + 1
        parts = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
        return f"{self.count} file{'s' if self.count != 1 else ''}: {parts} in {elapsed_s:.1f} s"


def _size(text: str) -> tuple[int | None, int | None]:
    match = re.fullmatch(r"(\d*)x(\d*)", text.strip().lower())
    if match is None or match.group(0) == "x":
        raise argparse.ArgumentTypeError(f"expected WxH, Wx or xH (e.g. 800x600), not {text!r}")
    width, height = (int(side) if side else None for side in match.groups())
    if width == 0 or height == 0:
        raise argparse.ArgumentTypeError(f"sides must be at least 1, not {text!r}")
    return width, height


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, not {text!r}")
    return int(text)


def _url(text: str) -> str:
    if not re.match(r"https?://[^/]", text):
        raise argparse.ArgumentTypeError(f"expected an http:// or https:// URL, not {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgjobs", description="Serve imgjobs, or submit images to a server and fetch results."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "serve",
        help="serve the API (configured by the environment, as `python -m app`)",
        description="Serve the API on PORT, configured by the environment (see the README).",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        type=_url,
        default=os.environ.get("IMGJOBS_URL") or "http://localhost:8080",
        help="the server (default: $IMGJOBS_URL, else http://localhost:8080)",
    )
    submit = commands.add_parser(
        "submit",
        parents=[common],
        help="submit images as jobs",
        description="Submit images as jobs; the API key comes from $IMGJOBS_API_KEY.",
    )
    submit.set_defaults(parser=submit)
    submit.add_argument("files", nargs="+", type=Path, metavar="FILE")
    submit.add_argument(
        "--resize",
        type=_size,
        metavar="WxH",
        help="resize to fit W x H (800x600), or to one side (800x, x600)",
    )
    submit.add_argument(
        "--fit",
        choices=FITS,
        help="how --resize fits a WxH box (default: inside: within it, the aspect ratio kept)",
    )
    submit.add_argument("--format", choices=FORMATS, help="the output format")
    submit.add_argument("--spec", type=Path, metavar="FILE", help="a whole job document (JSON)")
    submit.add_argument("--wait", action="store_true", help="wait for each job to end")
    submit.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        help="with --wait, save the results: a file for one FILE, else a directory",
    )
    submit.add_argument(
        "--concurrency",
        type=_positive,
        default=4,
        metavar="N",
        help="files in flight at once (default: 4)",
    )
    status = commands.add_parser("status", parents=[common], help="show a job")
    status.add_argument("job_id", metavar="ID")
    download = commands.add_parser("download", parents=[common], help="download a job's output")
    download.add_argument("job_id", metavar="ID")
    download.add_argument(
        "-o", "--output", metavar="PATH", help="where to write it (default: <ID>.<ext>; - stdout)"
    )
    download.add_argument("--variant", metavar="NAME", help="the variant (default: its only one)")
    probe = commands.add_parser("probe", parents=[common], help="describe an image")
    probe.set_defaults(parser=probe)
    probe.add_argument("file", type=Path, metavar="FILE")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The `imgjobs` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        from app.__main__ import main as serve

        serve()
        return EXIT_OK
    from app.client import ClientError

    try:
        if args.command == "submit":
            return submit_command(args.parser, args)
        if args.command == "status":
            return status_command(args)
        if args.command == "download":
            return download_command(args)
        return probe_command(args.parser, args)
    except ClientError as exc:
        return complain(str(exc), EXIT_ERROR)
    except KeyboardInterrupt:
        return complain("interrupted", 130)


def complain(message: str, code: int) -> int:
    print(f"imgjobs: {' '.join(message.split())}", file=sys.stderr)
    return code


def is_terminal() -> bool:
    """Is stdout a terminal? `TTY_COMPATIBLE=1` or `0` (rich's variable) says so instead."""
    forced = os.environ.get("TTY_COMPATIBLE")
    return forced == "1" if forced in ("0", "1") else sys.stdout.isatty()


def console() -> Console:
    from rich.console import Console

    return Console(force_terminal=is_terminal())


def print_json(data: bytes) -> None:
    if is_terminal():
        console().print_json(data.decode())
    else:
        print(data.decode(), flush=True)


def submit_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    document = job_document(parser, args)
    files: list[Path] = args.files
    for file in files:
        if not file.is_file():
            parser.error(f"no such file: {file}")
    targets = output_targets(parser, files, args.output, waiting=args.wait)
    import trio

    results = trio.run(submit_all, args, files, document, targets)
    for result in results:
        if result.status in ("failed", "error"):
            job = f" job {result.job_id}" if result.job_id else ""
            complain(f"{result.file}:{job} {result.status} ({result.problem()})", EXIT_OK)
    if any(result.status == "error" for result in results):
        return EXIT_ERROR
    return EXIT_FAILED if any(result.status == "failed" for result in results) else EXIT_OK


def job_document(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """The job document the options describe."""
    if args.spec is not None:
        if args.resize or args.fit or args.format:
            parser.error("--spec is a whole document: give --resize, --fit and --format in it")
        try:
            document = json.loads(args.spec.read_text())
        except (OSError, ValueError) as exc:
            parser.error(f"--spec {args.spec}: {exc}")
        if not isinstance(document, dict):
            parser.error(f"--spec {args.spec}: a job document is a JSON object")
        return document
    if args.fit and not args.resize:
        parser.error("--fit goes with --resize")
    document = {}
    if args.resize:
        width, height = args.resize
        # One side keeps the aspect ratio whatever the fit: none is sent then, unless asked.
        fit = args.fit or ("inside" if width and height else None)
        step = {"op": "resize", "width": width, "height": height, "fit": fit}
        document["steps"] = [{name: value for name, value in step.items() if value is not None}]
    if args.format:
        document["output"] = {"format": args.format}
    return document


def output_targets(
    parser: argparse.ArgumentParser, files: Sequence[Path], option: str | None, *, waiting: bool
) -> dict[Path, Target] | None:
    """Where each file's results go: `-o` itself for one file (unless it is a directory or
    ends with a slash), else `<DIR>/<stem>.<ext>`. Sources are never overwritten."""
    if option is None:
        return None
    if not waiting:
        parser.error("-o needs --wait")
    output = Path(option)
    if len(files) == 1 and not output.is_dir() and not option.endswith(os.sep):
        if output.resolve() == files[0].resolve():
            parser.error(f"-o {output}: that is the source file")
        return {files[0]: Target(output, exact=True)}
    if output.exists() and not output.is_dir():
        parser.error(f"-o {output}: not a directory (several files need one)")
    stems = [file.stem for file in files]
    if len(set(stems)) != len(stems):
        parser.error("-o DIR: two files have the same name; their results would collide")
    if any(file.resolve().parent == output.resolve() for file in files):
        parser.error(f"-o {output}: results would be written beside their sources")
    output.mkdir(parents=True, exist_ok=True)
    return {file: Target(output / file.stem, exact=False) for file in files}


async def submit_all(
    args: argparse.Namespace,
    files: Sequence[Path],
    document: dict[str, Any],
    targets: dict[Path, Target] | None,
) -> list[Result]:
    """Every file through submit (then wait and download), `--concurrency` at a time, in
    the order given; an unreachable server stops them all."""
    import trio

    from app.client import AsyncClient, Unreachable

    limiter = trio.CapacityLimiter(args.concurrency)
    results: dict[int, Result] = {}
    unreachable: list[Unreachable] = []

    async def run(index: int, file: Path, report: Report, client: AsyncClient) -> None:
        async with limiter:
            task = report.start(file)
            target = targets[file] if targets else None
            results[index] = await run_job(client, file, document, args.wait, target, report, task)
            report.finish(task, results[index])

    with live_report(files) as report:
        try:
            async with AsyncClient(args.url) as client, trio.open_nursery() as nursery:
                for index, file in enumerate(files):
                    nursery.start_soon(run, index, file, report, client)
        except* Unreachable as group:
            unreachable.extend(leaves(group))
    if unreachable:
        raise unreachable[0]
    return [results[index] for index in sorted(results)]


async def run_job(
    client: AsyncClient,
    file: Path,
    document: dict[str, Any],
    wait: bool,
    target: Target | None,
    report: Report,
    task: Any,
) -> Result:
    """One file: submit it; with `wait`, wait for its end; with a target, save its outputs."""
    from app.client import HTTPError

    name = str(file)
    job_id: str | None = None
    try:
        submitted = await client.submit(
            file, document=document, progress=lambda sent, total: report.uploaded(task, sent, total)
        )
        job_id = submitted.job_id
        if not wait:
            return Result(name, "pending", job_id)
        report.waiting(task)
        job = await client.wait(job_id)
        if job.status == "failed":
            reason = job.error
            failure = {"code": reason.code, "message": reason.message} if reason else None
            return Result(name, "failed", job_id, error=failure)
        outputs = variants_of(job)
        saved = None
        if target is not None:
            report.downloading(task)
            saved = await save(client, job, outputs, target)
        return Result(name, "completed", job_id, variants=outputs, saved=saved)
    except HTTPError as exc:
        problem = {"code": exc.code, "message": exc.message, "http_status": exc.status}
        return Result(name, "error", job_id, error=problem)
    except OSError as exc:
        return Result(name, "failed", job_id, error={"code": "io_error", "message": str(exc)})


def variants_of(job: JobView) -> dict[str, Any]:
    """A completed job's outputs by variant name (a seed job's one output as `default`)."""
    import msgspec

    if job.variants:
        return {name: msgspec.to_builtins(view) for name, view in job.variants.items()}
    return {
        "default": {
            "format": job.output_format,
            "width": job.result_width,
            "height": job.result_height,
            "bytes": job.result_bytes,
        }
    }


class Target(NamedTuple):
    """Where a file's results go: `path` itself, or `<path>.<ext>` (`<path>.<variant>.<ext>`
    for each variant of a job that has several)."""

    path: Path
    exact: bool


async def save(
    client: AsyncClient, job: JobView, outputs: dict[str, Any], target: Target
) -> dict[str, str]:
    if target.exact:  # the default (or only) variant, where -o says
        await client.download_to(job.id, target.path)
        return {"default" if "default" in outputs else next(iter(outputs)): str(target.path)}
    saved: dict[str, str] = {}
    for name, view in outputs.items():
        middle = "" if len(outputs) == 1 else f".{name}"
        extension = EXTENSIONS.get(view["format"], view["format"])
        path = target.path.with_name(f"{target.path.name}{middle}.{extension}")
        await client.download_to(job.id, path, name if job.variants else None)
        saved[name] = str(path)
    return saved


def leaves(group: BaseExceptionGroup[E]) -> list[E]:
    found: list[E] = []
    for exc in group.exceptions:
        found.extend(leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


@contextmanager
def live_report(files: Sequence[Path]) -> Iterator[Report]:
    if not is_terminal():
        yield Lines()
        return
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn())
    detail = TextColumn("{task.fields[detail]}")
    with Progress(*columns, detail, TimeElapsedColumn(), console=console(), transient=True) as bar:
        started = time.monotonic()
        bars = Bars(bar, files)
        yield bars
        bar.console.print(bars.summary(time.monotonic() - started), highlight=False)


def status_command(args: argparse.Namespace) -> int:
    import msgspec

    from app.client import Client

    with Client(args.url) as client:
        job = client.job(args.job_id)
    print_json(msgspec.json.encode(job))
    if job.status == "failed":
        reason = f"{job.error.code}: {job.error.message}" if job.error else "no reason given"
        return complain(f"job {job.id} failed ({reason})", EXIT_FAILED)
    return EXIT_OK


def download_command(args: argparse.Namespace) -> int:
    from app.client import Client

    with Client(args.url) as client:
        if args.output == "-":
            sys.stdout.buffer.write(client.download(args.job_id, args.variant))
            sys.stdout.flush()
            return EXIT_OK
        path = Path(args.output or ".")
        if args.output is None or path.is_dir():
            path = path / default_name(client, args.job_id, args.variant)
        size = client.download_to(args.job_id, path, args.variant)
    if is_terminal():
        console().print(f"saved {path} ({size:,} bytes)", highlight=False)
    else:
        print(json.dumps({"job_id": args.job_id, "path": str(path), "bytes": size}), flush=True)
    return EXIT_OK


def default_name(client: Client, job_id: str, variant: str | None) -> str:
    """`<id>.<ext>` (`<id>.<variant>.<ext>`), as the server names its downloads."""
    job = client.job(job_id)
    outputs = variants_of(job)
    view = outputs.get(variant or "default") or next(iter(outputs.values()))
    middle = f".{variant}" if variant else ""
    return f"{job.id}{middle}.{EXTENSIONS.get(view['format'], view['format'])}"


def probe_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    import msgspec

    from app.client import Client

    if not args.file.is_file():
        parser.error(f"no such file: {args.file}")
    with Client(args.url) as client:
        description = client.probe(args.file)
    print_json(msgspec.json.encode(description))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
