"""The hostile corpus: every bad file ends in one known ImagingError, at submit or in the job.

``probe`` runs in-process (it only reads headers). Files that get past it go through
``process`` in a spawned child with a timeout, as the app runs them in worker processes, so
a decoder that hangs or crashes fails its own test instead of hanging or killing pytest.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

from imaging import ImagingError, JobSpec, probe, process
from tests.conftest import BAD, corpus_files

Job = Callable[[str, str, Connection], None]
LIMIT = 50_000_000
CHILD_TIMEOUT_S = 30

# What each file does, as observed with pillow-simd 12.1.1 (libjpeg-turbo 2.1.5, libtiff
# 4.5.0) and pillow-heif 1.8.1 (libheif 1.23.6): (stage, outcome). stage "probe" = rejected
# at submit; stage "process" = accepted at submit, then the job ends with this code, or "ok"
# (a valid image despite its name or its damaged metadata). "crash" / "hang" would mark a
# file that kills or stalls the worker: none does today.
EXPECTED: dict[str, tuple[str, str]] = {
    "gnome__oceans.svg": ("probe", "unsupported_format"),
    "handmade__Storm_first_half.jpg": ("process", "truncated_image"),
    "handmade__empty.jpg": ("probe", "unsupported_format"),
    "handmade__hopper_png_named.jpg": ("process", "ok"),  # a PNG: the name does not matter
    "handmade__random_4096.jpg": ("probe", "unsupported_format"),
    "handmade__text.jpg": ("probe", "unsupported_format"),
    "pillow8__crash-0c7e0e8e11ce787078f00b5b0ca409a167f070e0.tif": ("process", "corrupt_image"),
    "pillow8__crash-0da013a13571cc8eb457a39fee8db18f8a3c7127.tif": ("process", "corrupt_image"),
    "pillow__GHSA-5x8w-8jj5-q52h_oob_fpx_write.fpx": ("probe", "unsupported_format"),
    "pillow__broken.png": ("probe", "corrupt_image"),
    "pillow__broken_data_stream.png": ("process", "corrupt_image"),
    "pillow__crash-6b7f2244da6d0ae297ee0754a424213444e92778.sgi": ("probe", "unsupported_format"),
    "pillow__decompression_bomb.gif": ("probe", "image_too_large"),
    "pillow__decompression_bomb.ico": ("probe", "unsupported_format"),
    "pillow__duplicate_xref_entry.pdf": ("probe", "unsupported_format"),
    "pillow__hopper.heif": ("process", "ok"),  # a valid HEIC (Pillow tests AVIF refusing it)
    "pillow__hopper_bad_exif.jpg": ("process", "ok"),  # corrupt EXIF, fine pixels
    "pillow__hopper_unknown_pixel_mode.tif": ("probe", "corrupt_image"),
    "pillow__invalid-exif.jpg": ("process", "ok"),
    "pillow__junk_jpeg_header.jpg": ("process", "ok"),
    "pillow__libtiff_segfault.tif": ("probe", "corrupt_image"),
    "pillow__negative_size.ppm": ("probe", "unsupported_format"),
    "pillow__oom-225817ca0f8c663be7ab4b9e717b02c661e66834.tif": ("probe", "corrupt_image"),
    "pillow__seek_too_large.tif": ("probe", "corrupt_image"),
    "pillow__sugarshack_bad_mpo_header.jpg": ("process", "ok"),  # read as plain JPEG
    "pillow__tiff_overflow_rows_per_strip.tif": ("probe", "corrupt_image"),
    "pillow__timeout-1ee28a249896e05b83840ae8140622de8e648ba9.psd": ("probe", "unsupported_format"),
    "pillow__timeout-6646305047838720": ("process", "truncated_image"),
    "pillow__timeout-bff0a9dc7243a8e6ede2408d2ffa6a9964698b87.fli": ("probe", "unsupported_format"),
    "pillow__timeout-c8efc3fded6426986ba867a399791bae544f59bc.psd": ("probe", "unsupported_format"),
    "pillow__truncated_end_chunk.png": ("process", "truncated_image"),
    "pillow__truncated_image.png": ("process", "truncated_image"),
    "pillow__truncated_jpeg.jpg": ("process", "truncated_image"),
    "pillow__ultrahdr.jpg": ("process", "truncated_image"),
    "pillow__unknown_compression_method.png": ("probe", "corrupt_image"),
    "pillow__zero_height.j2k": ("probe", "unsupported_format"),
    "pillow__zero_width.gif": ("probe", "corrupt_image"),
}


def _run_job(src: str, dst: str, send: Connection) -> None:
    """Child process body: run one job and report its outcome through ``send``."""
    spec = JobSpec.seed("thumbnail", 200, 200, "jpeg")
    try:
        process(spec, src, dst)
    except ImagingError as error:
        send.send(error)  # pickled: the same trip an error makes back from a worker
    except BaseException as error:
        send.send(f"unexpected {type(error).__name__}: {error}")
    else:
        send.send("ok")


def run_in_child(target: Job, src: Path, dst: Path) -> ImagingError | str:
    """The outcome of ``target`` in a spawned child: an ImagingError or a string, "ok",
    "hang", "crash" or "unexpected ..."."""
    receive, send = multiprocessing.Pipe(duplex=False)
    child = multiprocessing.get_context("spawn").Process(
        target=target, args=(str(src), str(dst), send), daemon=True
    )
    child.start()
    send.close()
    try:
        if not receive.poll(CHILD_TIMEOUT_S):
            return "crash" if child.exitcode not in (None, 0) else "hang"
        outcome: ImagingError | str = receive.recv()
        return outcome
    except EOFError:
        return "crash"
    finally:
        receive.close()
        child.kill()
        child.join()


def test_every_bad_file_has_an_expectation() -> None:
    assert set(EXPECTED) == {p.name for p in corpus_files(BAD)}


@pytest.mark.parametrize("path", corpus_files(BAD), ids=lambda p: p.name)
def test_bad_file(path: Path, tmp_path: Path) -> None:
    stage, expected = EXPECTED[path.name]
    data = path.read_bytes()
    if stage == "probe":
        with pytest.raises(ImagingError) as caught:
            probe(data, max_pixels=LIMIT)
        assert caught.value.code == expected, caught.value.message
        assert path.name not in caught.value.message
        return
    probe(data, max_pixels=LIMIT)  # accepted at submit: anything raised here fails the test

    dst = tmp_path / "out.jpg"
    outcome = run_in_child(_run_job, path, dst)
    if isinstance(outcome, ImagingError):
        assert outcome.code == expected, outcome.message
        assert path.name not in outcome.message
        assert str(BAD) not in outcome.message
        assert not dst.exists()
    else:
        assert outcome == expected  # "ok", or a "hang"/"crash" recorded in EXPECTED
        if outcome == "ok":
            assert dst.stat().st_size > 0


def _segfault(src: str, dst: str, send: Connection) -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def test_a_crashing_child_is_reported_not_fatal(tmp_path: Path) -> None:
    assert run_in_child(_segfault, tmp_path / "in", tmp_path / "out") == "crash"
