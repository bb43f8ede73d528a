"""Pure, synchronous image handling for imgjobs: sniff and probe uploads, process jobs."""

from __future__ import annotations

from imaging.codec import (
    DEFAULT_ALLOWED_FORMATS,
    Description,
    ImageInfo,
    OutputFormat,
    describe,
    probe,
    sniff_format,
)
from imaging.document import Document, Output, Step
from imaging.errors import (
    CorruptImage,
    ImageTooLarge,
    ImagingError,
    TruncatedImage,
    UnsupportedFormat,
)
from imaging.geometry import GeometryError, Plan, plan
from imaging.process import JobSpec, Rendition, Result, process, process_variants

__all__ = [
    "DEFAULT_ALLOWED_FORMATS",
    "CorruptImage",
    "Description",
    "Document",
    "GeometryError",
    "ImageInfo",
    "ImageTooLarge",
    "ImagingError",
    "JobSpec",
    "Output",
    "OutputFormat",
    "Plan",
    "Rendition",
    "Result",
    "Step",
    "TruncatedImage",
    "UnsupportedFormat",
    "describe",
    "plan",
    "probe",
    "process",
    "process_variants",
    "sniff_format",
]
