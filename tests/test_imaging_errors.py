"""imaging.errors: codes, messages, pickling, and the translation of Pillow's exceptions."""

from __future__ import annotations

import pickle
import struct

import pytest
from PIL import Image, UnidentifiedImageError

from imaging.errors import (
    CorruptImage,
    ImageTooLarge,
    ImagingError,
    TruncatedImage,
    UnsupportedFormat,
    translate_pillow_errors,
)

ALLOWED = frozenset({"JPEG", "PNG"})

EXAMPLES = [
    ImagingError(),
    UnsupportedFormat(),
    UnsupportedFormat.detected("PSD", ALLOWED),
    ImageTooLarge.for_size(10_000, 9_000, 50_000_000),
    ImageTooLarge.for_pixels(4_364_696_535, 50_000_000),
    ImageTooLarge.for_pixels(None, 50_000_000),
    CorruptImage(),
    CorruptImage("the PNG image data is corrupt"),
    TruncatedImage(),
]


@pytest.mark.parametrize("error", EXAMPLES, ids=repr)
def test_errors_survive_a_pickle_round_trip(error: ImagingError) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert copy.code == error.code
    assert copy.message == error.message
    assert str(copy) == error.message


def test_codes_are_stable() -> None:
    assert ImagingError.code == "imaging_error"
    assert UnsupportedFormat.code == "unsupported_format"
    assert ImageTooLarge.code == "image_too_large"
    assert CorruptImage.code == "corrupt_image"
    assert TruncatedImage.code == "truncated_image"
    for cls in (UnsupportedFormat, ImageTooLarge, CorruptImage, TruncatedImage):
        assert issubclass(cls, ImagingError)


def test_unsupported_format_names_what_was_detected_and_what_is_allowed() -> None:
    error = UnsupportedFormat.detected(
        "PSD", frozenset({"JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP", "MPO"})
    )
    assert error.message == (
        "PSD images are not supported (allowed: BMP, GIF, JPEG, MPO, PNG, TIFF, WEBP)"
    )
    assert UnsupportedFormat().message == "not a recognised image format"


def test_image_too_large_gives_pixel_count_and_limit() -> None:
    message = ImageTooLarge.for_size(10_000, 9_000, 50_000_000).message
    assert "10000x9000" in message
    assert "90,000,000" in message
    assert "50,000,000" in message


TRANSLATIONS: list[tuple[BaseException, type[ImagingError]]] = [
    (OSError("image file is truncated (8 bytes not processed)"), TruncatedImage),
    (OSError("Truncated File Read"), TruncatedImage),
    (EOFError(), TruncatedImage),
    (OSError("decoder error -2"), CorruptImage),
    (OSError("broken data stream when reading image file"), CorruptImage),
    (UnidentifiedImageError("cannot identify image file '/srv/data/secret.png'"), CorruptImage),
    (SyntaxError("not a PNG file"), CorruptImage),
    (ValueError("Unable to seek to frame"), CorruptImage),
    (struct.error("unpack requires a buffer of 4 bytes"), CorruptImage),
    (KeyError(273), CorruptImage),
    (ZeroDivisionError(), CorruptImage),
    (
        Image.DecompressionBombError("Image size (4364696535 pixels) exceeds limit of 10"),
        ImageTooLarge,
    ),
    (Image.DecompressionBombWarning("Image size (120 pixels) exceeds limit of 100"), ImageTooLarge),
]


@pytest.mark.parametrize(("raised", "expected"), TRANSLATIONS, ids=repr)
def test_pillow_exceptions_become_imaging_errors(
    raised: BaseException, expected: type[ImagingError]
) -> None:
    with pytest.raises(expected) as caught, translate_pillow_errors("PNG", limit=100):
        raise raised
    assert caught.value.__cause__ is raised
    # Our own words only: never Pillow's message, which may hold a path.
    assert str(raised) == "" or str(raised) not in caught.value.message
    assert "/srv/data" not in caught.value.message


def test_bomb_message_keeps_the_pixel_count() -> None:
    with pytest.raises(ImageTooLarge) as caught, translate_pillow_errors("GIF", limit=100):
        raise Image.DecompressionBombError("Image size (4364696535 pixels) exceeds limit")
    assert "4,364,696,535" in caught.value.message
    assert "100" in caught.value.message


def test_imaging_errors_pass_through_unchanged() -> None:
    original = ImageTooLarge.for_size(100, 100, 10)
    with pytest.raises(ImageTooLarge) as caught, translate_pillow_errors("PNG", limit=10):
        raise original
    assert caught.value is original


def test_cancellation_style_exceptions_are_not_translated() -> None:
    with pytest.raises(KeyboardInterrupt), translate_pillow_errors("PNG", limit=10):
        raise KeyboardInterrupt


def test_running_out_of_memory_is_not_blamed_on_the_image() -> None:
    with pytest.raises(MemoryError), translate_pillow_errors("PNG", limit=10):
        raise MemoryError
