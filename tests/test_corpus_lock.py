"""The lock (tests/corpus.lock.tsv) lists exactly the files of the corpus in use, hash for hash."""

from __future__ import annotations

import csv

from tests.conftest import BAD, GOOD, corpus_files
from tests.corpus import read_lock, sha256_file

LOCK = {(entry.folder, entry.name): entry for entry in read_lock()}
FILES = {(folder.name, path.name): path for folder in (GOOD, BAD) for path in corpus_files(folder)}


def test_every_corpus_file_is_locked_and_every_locked_file_is_there() -> None:
    assert sorted(FILES.keys() - LOCK.keys()) == [], "in the corpus, not in the lock"
    assert sorted(LOCK.keys() - FILES.keys()) == [], "in the lock, not in the corpus"


def test_every_corpus_file_has_its_locked_hash() -> None:
    digests = {key: sha256_file(path) for key, path in FILES.items() if key in LOCK}
    wrong = [f"{f}/{n}: {d}" for (f, n), d in digests.items() if not LOCK[f, n].accepts(d)]
    assert wrong == []


def test_the_manifest_columns_that_tests_read_are_the_locks() -> None:
    # Tests read these from good/MANIFEST.tsv; a fetched corpus's manifest is made from the lock.
    columns = ("format", "mode", "width", "height", "size_after_exif_transpose")
    with (GOOD / "MANIFEST.tsv").open(newline="") as fp:
        manifest = {row["name"]: row for row in csv.DictReader(fp, delimiter="\t")}
    wrong = [
        name
        for (folder, name), entry in LOCK.items()
        if folder == "good"
        and [manifest.get(name, {}).get(c) for c in columns] != [getattr(entry, c) for c in columns]
    ]
    assert wrong == []
