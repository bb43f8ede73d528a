"""Animated GIF and WebP outputs: every frame, its timing and loop kept, under the limits."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import msgspec
import pytest
from PIL import Image, ImageSequence

from imaging import Document, ImageTooLarge, JobSpec, Rendition, process_variants
from imaging.animation import TooManyFrames
from tests.conftest import GOOD

GIF = GOOD / "pillow__iss634.gif"  # 245x245, 42 frames


def spec(steps: list[dict[str, Any]], output: dict[str, Any], fmt: str, **limits: Any) -> JobSpec:
    document = msgspec.convert({"steps": steps, "output": output}, Document)
    variant = document.renditions()["default"]
    rendition = Rendition(steps=variant.steps, output=variant.output, output_format=fmt)  # type: ignore[arg-type]
    return JobSpec(variants={"default": rendition}, **limits)


def source_timing(path: Path) -> tuple[list[int], int | None]:
    with Image.open(path) as image:
        loop = image.info.get("loop")
        durations = [frame.info.get("duration", 0) for frame in ImageSequence.Iterator(image)]
    return durations, loop


@pytest.mark.parametrize("fmt", ["gif", "webp"])
def test_every_frame_is_resized_with_its_timing_and_loop(tmp_path: Path, fmt: str) -> None:
    dst = tmp_path / f"out.{fmt}"
    job = spec([{"op": "resize", "width": 100}], {"animated": True}, fmt)
    result = process_variants(job, str(GIF), {"default": str(dst)})["default"]
    durations, loop = source_timing(GIF)
    with Image.open(dst) as out:
        assert out.format == fmt.upper()
        assert getattr(out, "n_frames", 1) == 42
        assert (result.width, result.height) == out.size == (100, 100)
        assert out.info.get("loop") == loop
        assert "exif" not in out.info
        written = []
        for frame in ImageSequence.Iterator(out):
            frame.load()  # WebP tells a frame's duration once it is loaded
            written.append(frame.info.get("duration"))
    assert written == durations


def test_the_frames_differ_as_the_source_frames_do(tmp_path: Path) -> None:
    """Not one frame copied 42 times: the output's frames change where the source's do."""
    dst = tmp_path / "out.webp"
    process_variants(
        spec([{"op": "flop"}], {"animated": True, "lossless": True}, "webp"),
        str(GIF),
        {"default": str(dst)},
    )
    with Image.open(GIF) as source, Image.open(dst) as out:
        for index in (0, 10, 30):
            source.seek(index)
            out.seek(index)
            expected = source.convert("RGBA").transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            assert out.convert("RGBA").tobytes() == expected.tobytes(), index


def test_without_animated_only_the_first_frame_is_written(tmp_path: Path) -> None:
    dst = tmp_path / "out.gif"
    process_variants(
        spec([{"op": "resize", "width": 50}], {}, "gif"), str(GIF), {"default": str(dst)}
    )
    with Image.open(dst) as out:
        assert getattr(out, "n_frames", 1) == 1


def test_more_frames_than_max_frames_fail_before_decoding(tmp_path: Path) -> None:
    job = spec([], {"animated": True}, "gif", max_frames=41)
    with pytest.raises(TooManyFrames, match="42 frames, over the limit of 41"):
        process_variants(job, str(GIF), {"default": str(tmp_path / "out.gif")})
    assert not (tmp_path / "out.gif").exists()


def test_the_pixel_limit_counts_every_frame(tmp_path: Path) -> None:
    one_frame = 245 * 245
    job = spec([], {"animated": True}, "gif", max_pixels=one_frame * 10)
    with pytest.raises(ImageTooLarge, match="42 frames of 245x245"):
        process_variants(job, str(GIF), {"default": str(tmp_path / "out.gif")})
    # The first frame alone is within the limit: a still output is fine.
    still = spec([], {}, "gif", max_pixels=one_frame * 10)
    process_variants(still, str(GIF), {"default": str(tmp_path / "still.gif")})


def _gif_with_huge_second_frame() -> bytes:
    """A 2-frame 8x8 GIF whose second image descriptor declares 60000x60000 pixels."""
    frames = [Image.new("P", (8, 8), index) for index in range(2)]
    for frame in frames:
        frame.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    data = bytearray(buffer.getvalue())
    position = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    descriptors = 0
    while data[position] != 0x3B:
        if data[position] == 0x21:  # extension: label, then sub-blocks
            position += 2
        else:  # 0x2C image descriptor
            descriptors += 1
            if descriptors == 2:
                data[position + 5 : position + 9] = (60000).to_bytes(2, "little") * 2
                return bytes(data)
            flags = data[position + 9]
            position += 10 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0) + 1
        while data[position]:
            position += data[position] + 1
        position += 1
    raise AssertionError("no second frame")


def test_a_second_frame_declaring_huge_extents_is_too_large_not_run(tmp_path: Path) -> None:
    src = tmp_path / "bomb.gif"
    src.write_bytes(_gif_with_huge_second_frame())
    job = spec([{"op": "resize", "width": 4}], {"animated": True}, "gif")
    with pytest.raises(ImageTooLarge):
        process_variants(job, str(src), {"default": str(tmp_path / "out.gif")})
    assert not (tmp_path / "out.gif").exists()
