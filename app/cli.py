"""`imgjobs`: serve, or submit images and fetch results from the command line.

Exit codes: 0 all done, 1 a job failed (or its result could not be written), 2 a usage
error, 3 the server unreachable or an HTTP error; anything but 0 says why on stderr, one
line per problem. On a terminal, progress is drawn with rich; otherwise every job is one
JSON line on stdout, for scripts. A submit answered 429 or 503 (a rate limit, a full queue)
is sent again after its Retry-After, under the same idempotency key (one per file), so that
no file ever makes two jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NamedTuple, TypeVar

# Only the standard library at import: the server's worker processes import the main
# module again (as __mp_main__), and `imgjobs serve` makes this module the main one.
if TYPE_CHECKING:
    from app.client import AsyncClient, Client
    from app.client_types import JobView, Submitted

from app.cli_report import (
    Report,
    Result,
    console,
    is_terminal,
    live_report,
    print_json,
)

__all__ = ["main"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
# 2, a usage error, is argparse's own.
EXIT_ERROR: Final = 3
FITS: Final = ("inside", "cover", "contain", "fill", "outside")
FORMATS: Final = ("jpeg", "jpg", "png", "webp", "avif", "gif")
EXTENSIONS: Final = {"jpeg": "jpg"}
#: A submit answered 429 (rate limit) or 503 (queue full) is sent again after its
#: Retry-After, at most this many times, under the same idempotency key.
SUBMIT_RETRIES: Final = 5
RETRY_STATUSES: Final = frozenset({429, 503})
#: The wait before a retry when the answer gives no Retry-After, and the longest obeyed.
DEFAULT_RETRY_S: Final = 1.0
MAX_RETRY_S: Final = 60.0
MAX_IDEMPOTENCY_KEY: Final = 255

E = TypeVar("E", bound=BaseException)


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


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {text[:60]!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object ({{...}}), not {text[:60]!r}")
    return value


def _idempotency_key(text: str) -> str:
    if not (1 <= len(text) <= MAX_IDEMPOTENCY_KEY and text.isascii() and text.isprintable()):
        raise argparse.ArgumentTypeError(
            f"expected 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters, not {text[:60]!r}"
        )
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
    submit.add_argument(
        "--callback-url",
        type=_url,
        metavar="URL",
        help="where the server POSTs each job's end (a signed webhook)",
    )
    submit.add_argument(
        "--metadata",
        type=_json_object,
        metavar="JSON",
        help="a JSON object kept with each job, shown in its view and webhook",
    )
    submit.add_argument(
        "--idempotency-key",
        type=_idempotency_key,
        metavar="KEY",
        help="with one FILE: submitting again with the same KEY (within 24 h) answers the"
        " same job instead of making another (default: a new key per file, kept across the"
        " retries of a busy server)",
    )
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


def submit_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    document = job_document(parser, args)
    files: list[Path] = args.files
    for file in files:
        if not file.is_file():
            parser.error(f"no such file: {file}")
    if args.idempotency_key is not None and len(files) > 1:
        parser.error("--idempotency-key goes with one FILE (with several, each gets a key)")
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
    """The job document the options describe, with its callback and metadata."""
    document = what_to_make(parser, args)
    extras = {"callback_url": args.callback_url, "metadata": args.metadata}
    for name, value in extras.items():
        if value is None:
            continue
        if name in document:
            option = "--" + name.replace("_", "-")
            parser.error(f"--spec {args.spec} has a {name} already: leave out {option}")
        document[name] = value
    return document


def what_to_make(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """The job document of `--spec`, or of `--resize`, `--fit` and `--format`."""
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
        # One key per file, kept across retries: a retried submit never makes a second job.
        key = args.idempotency_key or str(uuid.uuid4())
        async with limiter:
            task = report.start(file)
            target = targets[file] if targets else None
            job = Job(file, document, key, target)
            results[index] = await run_job(client, job, args.wait, report, task)
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


class Job(NamedTuple):
    """One file of `imgjobs submit`: what to make of it, the idempotency key of its submit,
    and where its results go."""

    file: Path
    document: dict[str, Any]
    idempotency_key: str
    target: Target | None


async def run_job(client: AsyncClient, order: Job, wait: bool, report: Report, task: Any) -> Result:
    """One file: submit it; with `wait`, wait for its end; with a target, save its outputs."""
    from app.client import HTTPError

    name = str(order.file)
    target = order.target
    job_id: str | None = None
    try:
        submitted = await submit_file(client, order, report, task)
        job_id = submitted.job_id
        replayed = True if submitted.replayed else None
        if not wait:
            return Result(name, "pending", job_id, replayed=replayed)
        report.waiting(task)
        job = await client.wait(job_id)
        if job.status == "failed":
            reason = job.error
            failure = {"code": reason.code, "message": reason.message} if reason else None
            return Result(name, "failed", job_id, error=failure, replayed=replayed)
        outputs = variants_of(job)
        saved = None
        if target is not None:
            report.downloading(task)
            saved = await save(client, job, outputs, target)
        return Result(name, "completed", job_id, variants=outputs, saved=saved, replayed=replayed)
    except HTTPError as exc:
        problem = {"code": exc.code, "message": exc.message, "http_status": exc.status}
        return Result(name, "error", job_id, error=problem)
    except OSError as exc:
        return Result(name, "failed", job_id, error={"code": "io_error", "message": str(exc)})


async def submit_file(client: AsyncClient, order: Job, report: Report, task: Any) -> Submitted:
    """Submit a file, again after the Retry-After of a busy server (429 or 503), at most
    SUBMIT_RETRIES times; under the same idempotency key each time, so that no retry can
    make a second job (were a refused submit ever taken after all, it is answered again)."""
    import trio

    from app.client import HTTPError

    retries = 0
    while True:
        try:
            return await client.submit(
                order.file,
                document=order.document,
                idempotency_key=order.idempotency_key,
                progress=lambda sent, total: report.uploaded(task, sent, total),
            )
        except HTTPError as exc:
            if exc.status not in RETRY_STATUSES or retries >= SUBMIT_RETRIES:
                raise
            retries += 1
            delay_s = DEFAULT_RETRY_S if exc.retry_after_s is None else exc.retry_after_s
            delay_s = min(delay_s, MAX_RETRY_S)
            report.retrying(task, retries, delay_s)
            await trio.sleep(delay_s)


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


def status_command(args: argparse.Namespace) -> int:
    import msgspec

    from app.client import Client

    with Client(args.url) as client:
        job = client.job(args.job_id)
    print_json(msgspec.json.encode(job))
    if job.webhook is not None and is_terminal():  # piped, the JSON has its `webhook`
        console().print(webhook_line(job), highlight=False)
    if job.status == "failed":
        reason = f"{job.error.code}: {job.error.message}" if job.error else "no reason given"
        return complain(f"job {job.id} failed ({reason})", EXIT_FAILED)
    return EXIT_OK


def webhook_line(job: JobView) -> str:
    """The state of a job's webhook, as one line of rich markup."""
    from rich.markup import escape

    hook = job.webhook
    assert hook is not None
    colour = {"delivered": "green", "failed": "red"}.get(hook.status, "yellow")
    said = [f"{hook.attempts} attempt{'' if hook.attempts == 1 else 's'}"]
    if hook.last_status:
        said.append(f"last answer {escape(hook.last_status)}")
    if hook.next_attempt_at is not None:
        said.append(f"next at {hook.next_attempt_at.isoformat(timespec='seconds')}")
    target = f" to {escape(job.callback_url)}" if job.callback_url else ""
    return f"webhook{target}: [{colour}]{hook.status}[/] ({', '.join(said)})"


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
