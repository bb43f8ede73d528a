"""Pure, synchronous image handling for imgjobs: sniff and probe uploads, process jobs."""

from __future__ import annotations

from imaging.codec import DEFAULT_ALLOWED_FORMATS, ImageInfo, probe, sniff_format
from imaging.errors import (
    CorruptImage,
    ImageTooLarge,
    ImagingError,
    TruncatedImage,
    UnsupportedFormat,
)
from imaging.process import JobSpec, Result, process

__all__ = [
    "DEFAULT_ALLOWED_FORMATS",
    "CorruptImage",
    "ImageInfo",
    "ImageTooLarge",
    "ImagingError",
    "JobSpec",
    "Result",
    "TruncatedImage",
    "UnsupportedFormat",
    "probe",
    "process",
    "sniff_format",
]
