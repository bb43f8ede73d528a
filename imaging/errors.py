"""The imaging error tree, and the one place where Pillow's exceptions become ours.

::

    ImagingError            imaging_error       base; never raised for a bad image by itself
    ├── UnsupportedFormat   unsupported_format  not an image, or a format outside the allowlist
    ├── ImageTooLarge       image_too_large     width x height over the pixel limit
    ├── CorruptImage        corrupt_image       header or pixel data cannot be decoded
    └── TruncatedImage      truncated_image     the data ends before the image does

Every error carries a stable ``code`` (for machines) and a ``message`` (for people) that we
write ourselves: it never quotes Pillow, so it never contains a file path, a traceback or a
library version. The errors cross process boundaries by pickle; ``__reduce__`` keeps the round
trip exact.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

from PIL import Image, UnidentifiedImageError

__all__ = [
    "CorruptImage",
    "ImageTooLarge",
    "ImagingError",
    "TruncatedImage",
    "UnsupportedFormat",
    "translate_pillow_errors",
]


class ImagingError(Exception):
    """Base of every error this package raises for an image it cannot process."""

    code: ClassVar[str] = "imaging_error"
    default_message: ClassVar[str] = "the image could not be processed"

    def __init__(self, message: str | None = None) -> None:
        self.message: str = message if message is not None else self.default_message
        super().__init__(self.message)

    def __reduce__(self) -> tuple[type[ImagingError], tuple[str]]:
        return (type(self), (self.message,))

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class UnsupportedFormat(ImagingError):
    """The data is not an image we recognise, or its format is not in the allowlist."""

    code: ClassVar[str] = "unsupported_format"
    default_message: ClassVar[str] = "not a recognised image format"

    @classmethod
    def detected(cls, detected: str, allowed: frozenset[str]) -> UnsupportedFormat:
        """The error for a recognised format that is not allowed."""
        names = ", ".join(sorted(allowed)) or "none"
        return cls(f"{detected} images are not supported (allowed: {names})")


class ImageTooLarge(ImagingError):
    """The image (or one of its frames) has more pixels than the configured limit."""

    code: ClassVar[str] = "image_too_large"
    default_message: ClassVar[str] = "the image has more pixels than allowed"

    @classmethod
    def for_size(cls, width: int, height: int, limit: int) -> ImageTooLarge:
        """The error for an image of ``width`` x ``height`` over ``limit`` pixels."""
        return cls(
            f"the image is {width}x{height} = {width * height:,} pixels, "
            f"over the limit of {limit:,} pixels"
        )

    @classmethod
    def for_pixels(cls, pixels: int | None, limit: int) -> ImageTooLarge:
        """The error when only the pixel count (if even that) is known."""
        if pixels is None:
            return cls(f"the image has more than the limit of {limit:,} pixels")
        return cls(f"the image has {pixels:,} pixels, over the limit of {limit:,} pixels")


class CorruptImage(ImagingError):
    """The header or the pixel data is invalid: the decoder refused it."""

    code: ClassVar[str] = "corrupt_image"
    default_message: ClassVar[str] = "the image data is corrupt"


class TruncatedImage(ImagingError):
    """The file ends before all of the image's data."""

    code: ClassVar[str] = "truncated_image"
    default_message: ClassVar[str] = "the image file is truncated"


# Pillow reports truncation as OSError with one of these openings (JPEG/GIF/FLI decoders, and
# PNG chunk reads respectively); any other OSError from a decoder is corruption.
_TRUNCATED_PREFIXES = ("image file is truncated", "Truncated File Read")
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


def _bomb_pixels(exc: BaseException) -> int | None:
    match = _BOMB_PIXELS.search(str(exc))
    return int(match.group(1)) if match else None


@contextmanager
def translate_pillow_errors(what: str, *, limit: int) -> Iterator[None]:
    """Turn whatever Pillow raises inside the block into an :class:`ImagingError`.

    ``what`` names the image in messages (e.g. the sniffed format, "JPEG"); ``limit`` is the
    pixel limit reported if Pillow's own decompression-bomb check fires. Decoders fed hostile
    data raise almost anything (OSError, ValueError, SyntaxError, struct.error, EOFError,
    IndexError, KeyError, ZeroDivisionError...), so every ``Exception`` is caught: keep these
    blocks around Pillow's reading calls only, not around our own code. ``MemoryError`` is
    the exception: the pixel limits have passed by then, so it means the process lacks memory
    for a legitimate image, and it propagates for the caller to report as such.
    """
    try:
        yield
    except ImagingError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # The warning arrives here as an exception when the worker's filter makes it one.
        raise ImageTooLarge.for_pixels(_bomb_pixels(exc), limit) from exc
    except UnidentifiedImageError as exc:
        raise CorruptImage(f"the {what} image header is invalid") from exc
    except MemoryError:
        raise
    except OSError as exc:
        if str(exc).startswith(_TRUNCATED_PREFIXES):
            raise TruncatedImage(f"the {what} image file is truncated") from exc
        raise CorruptImage(f"the {what} image data is corrupt") from exc
    except (SyntaxError, ValueError, struct.error) as exc:
        raise CorruptImage(f"the {what} image header is invalid") from exc
    except EOFError as exc:
        raise TruncatedImage(f"the {what} image file ends unexpectedly") from exc
    except Exception as exc:  # hostile input reaches odd corners of the plugins
        raise CorruptImage(f"the {what} image could not be decoded") from exc
