"""Fetch the test corpus from the public packages pinned in ``tests/corpus.lock.tsv``.

    python -m tests.corpus [--dest DIR]     # default: .cache/corpus in the repository

Debian packages come through ``apt-get download``, PyPI distributions through ``pip
download``, both into a temporary folder that is deleted afterwards; only the files the lock
lists are taken out of them, and each is written only if its sha256 is the lock's (so is each
package). The ``handmade`` files are derived again. Files already there with the right hash
are kept: a second run downloads nothing. ``bench.corpus`` says which corpus is used.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import os
import shlex
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path

from bench.corpus import CACHE

LOCK = Path(__file__).with_name("corpus.lock.tsv")
FOLDERS = ("good", "bad")
# The fetched corpus's MANIFEST.tsv: the lock's columns that tests read from the manifest.
MANIFEST_COLUMNS = (
    "name",
    "kind",
    "package",
    "version",
    "path",
    "format",
    "mode",
    "width",
    "height",
    "size_after_exif_transpose",
    "sha256",
)


class CorpusError(Exception):
    """A download or derivation failed, or a hash is not the lock's."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One corpus file: a row of the lock."""

    folder: str  # good or bad
    name: str
    kind: str  # deb, pypi-sdist, pypi-wheel or handmade
    package: str
    version: str
    package_file: str  # the file that apt-get or pip downloads
    package_sha256: str
    path: str  # the file inside the package, or how a handmade file is derived
    sha256: str
    original_sha256: str  # the shared corpus's bytes, where they cannot be made again
    format: str
    mode: str
    width: str
    height: str
    size_after_exif_transpose: str

    def accepts(self, digest: str) -> bool:
        """Whether a file with this sha256 is this entry: as fetched, or the original."""
        return digest in (self.sha256, self.original_sha256)


def read_lock(lock: Path = LOCK) -> list[Entry]:
    """The lock's rows (lines starting with ``#`` are comments)."""
    with lock.open(newline="") as fp:
        lines = (line for line in fp if not line.startswith("#"))
        rows = csv.DictReader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [Entry(**row) for row in rows]


def sha256_file(path: Path) -> str:
    with path.open("rb") as fp:
        return hashlib.file_digest(fp, "sha256").hexdigest()


def fetch(dest: Path = CACHE, lock: Path = LOCK) -> str:
    """Make ``dest`` hold every file of the lock in ``good/`` and ``bad/``; a one-line summary."""
    entries = read_lock(lock)
    missing = [e for e in entries if not _present(dest, e)]
    for folder in FOLDERS:
        (dest / folder).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="imgjobs-corpus-") as tmp:
        for group in _by_package(e for e in missing if e.kind != "handmade"):
            package = _download(group[0], Path(tmp))
            data = _read_members(package, group[0].kind, {e.path for e in group})
            package.unlink()  # the packages add up to some 270 MB: one at a time
            for entry in group:
                _write(dest, entry, data[entry.path])
    # After the packages: a handmade file may be cut from one of their files.
    for entry in missing:
        if entry.kind == "handmade":
            _write(dest, entry, _derive(dest, entry))
    for folder in FOLDERS:
        _write_manifest(dest / folder / "MANIFEST.tsv", [e for e in entries if e.folder == folder])
    return f"corpus: {len(entries)} files verified in {dest} ({len(missing)} fetched)"


def _present(dest: Path, entry: Entry) -> bool:
    path = dest / entry.folder / entry.name
    return path.is_file() and entry.accepts(sha256_file(path))


def _by_package(entries: Iterable[Entry]) -> list[list[Entry]]:
    groups: dict[tuple[str, str], list[Entry]] = {}
    for entry in entries:
        groups.setdefault((entry.kind, entry.package_file), []).append(entry)
    return list(groups.values())


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)


def _failed(command: list[str], result: subprocess.CompletedProcess[str], hint: str = "") -> str:
    return f"`{shlex.join(command)}` failed{hint}:\n{result.stdout}{result.stderr}".rstrip()


def _download(entry: Entry, tmp: Path) -> Path:
    """Download the package that holds ``entry`` into ``tmp``; its path, hash checked."""
    if entry.kind == "deb":
        command = ["apt-get", "download", f"{entry.package}={entry.version}"]
        result = _run(command, tmp)
        # A fresh machine has empty (or old) package lists: apt-get update once, as root.
        if result.returncode != 0 and os.geteuid() == 0:
            update = ["apt-get", "update", "-qq"]
            if (updated := _run(update, tmp)).returncode != 0:
                raise CorpusError(_failed(update, updated))
            result = _run(command, tmp)
        if result.returncode != 0:
            raise CorpusError(_failed(command, result, " (as root: apt-get update first)"))
    elif entry.kind in ("pypi-sdist", "pypi-wheel"):
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest"]
        command += [str(tmp), *_pip_binary_options(entry), f"{entry.package}=={entry.version}"]
        if (result := _run(command, tmp)).returncode != 0:
            raise CorpusError(_failed(command, result))
    else:
        raise CorpusError(f"{entry.name}: unknown kind {entry.kind!r} in {LOCK.name}")
    package = tmp / entry.package_file
    if not package.is_file():
        got = ", ".join(sorted(p.name for p in tmp.iterdir())) or "nothing"
        raise CorpusError(f"`{shlex.join(command)}` gave {got}, not {entry.package_file}")
    if (digest := sha256_file(package)) != entry.package_sha256:
        raise CorpusError(
            f"{entry.package_file}: sha256 {digest}, but {LOCK.name} says {entry.package_sha256}"
        )
    return package


def _pip_binary_options(entry: Entry) -> list[str]:
    if entry.kind == "pypi-sdist":
        return ["--no-binary", ":all:"]
    # scikit-image's sdist cannot be downloaded without a meson build of it (pip prepares an
    # sdist's metadata): its wheel for the tags in its file name holds the same data files.
    python, abi, platforms = entry.package_file.removesuffix(".whl").split("-")[-3:]
    options = ["--only-binary", ":all:", "--implementation", python[:2], "--abi", abi]
    options += ["--python-version", python[2:]]
    for platform in platforms.split("."):
        options += ["--platform", platform]
    return options


def _read_members(package: Path, kind: str, paths: set[str]) -> dict[str, bytes]:
    """The listed files of a downloaded package (nothing else of it is unpacked)."""
    if kind == "pypi-wheel":
        with zipfile.ZipFile(package) as wheel:
            found = {p: wheel.read(p) for p in paths if p in wheel.NameToInfo}
    elif kind == "deb":
        # dpkg-deb reads every compression a .deb may use (xz, zstd, gzip).
        command = ["dpkg-deb", "--fsys-tarfile", str(package)]
        with subprocess.Popen(command, stdout=subprocess.PIPE) as process:
            assert process.stdout is not None
            with tarfile.open(fileobj=process.stdout, mode="r|") as tar:
                found = _read_tar(tar, paths)
            process.stdout.read()  # the padding after the archive's end, so dpkg-deb ends well
        if process.returncode != 0:
            raise CorpusError(f"`{shlex.join(command)}` failed ({process.returncode})")
    else:
        with tarfile.open(package, mode="r|*") as tar:
            found = _read_tar(tar, paths)
    if missing := paths - found.keys():
        raise CorpusError(f"{package.name} has no {', '.join(sorted(missing))}")
    return found


def _read_tar(tar: tarfile.TarFile, paths: set[str]) -> dict[str, bytes]:
    found = {}
    for member in tar:  # a stream: each member is read as it passes
        name = member.name.removeprefix("./")
        if name in paths and member.isfile():
            reader = tar.extractfile(member)
            assert reader is not None
            found[name] = reader.read()
    return found


def _derive(dest: Path, entry: Entry) -> bytes:
    """A handmade file's bytes, from the derivation in the lock's ``path`` column."""
    how, _, argument = entry.path.partition(" ")
    if how == "empty":
        return b""
    if how == "text":
        return argument.encode().decode("unicode_escape").encode()
    if how == "random":
        # Reproducible: the original came from /dev/urandom (its hash is original_sha256).
        return hashlib.shake_256(entry.name.encode()).digest(int(argument))
    if how == "first-half":
        data = (dest / argument).read_bytes()
        return data[: len(data) // 2]
    raise CorpusError(f"{entry.name}: unknown derivation {entry.path!r} in {LOCK.name}")


def _write(dest: Path, entry: Entry, data: bytes) -> None:
    """Write one corpus file, only if its sha256 is the lock's."""
    if (digest := hashlib.sha256(data).hexdigest()) != entry.sha256:
        raise CorpusError(
            f"{entry.folder}/{entry.name} ({entry.package} {entry.version}: {entry.path}): "
            f"sha256 {digest}, but {LOCK.name} says {entry.sha256}"
        )
    target = dest / entry.folder / entry.name
    partial = target.with_name(f".{target.name}.partial")
    partial.write_bytes(data)
    partial.replace(target)


def _write_manifest(path: Path, entries: list[Entry]) -> None:
    text = io.StringIO()
    writer = csv.writer(text, delimiter="\t", lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for entry in entries:
        writer.writerow(getattr(entry, column) for column in MANIFEST_COLUMNS)
    if not path.is_file() or path.read_text() != text.getvalue():
        path.write_text(text.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.corpus", description="Fetch the test corpus from its packages."
    )
    parser.add_argument(
        "--dest", type=Path, default=CACHE, help="folder for good/ and bad/ (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    try:
        print(fetch(args.dest))
    except CorpusError as error:
        print(f"corpus: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
