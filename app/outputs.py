"""Where a job's outputs are stored, and what each variant produced.

Every output lives in `outputs/`: the `default` variant (and the seed's one output) under
`outputs/<job id>.<ext>`, as the seed service stored it, every other variant under
`outputs/<job id>.<name>.<ext>`. Keys follow from the job's id and document alone, so a
job's files can be found (and removed) in any state.
"""

from __future__ import annotations

import msgspec

from app.models import Document, OutputFormat, VariantView
from app.store import JobRecord

__all__ = ["VariantResult", "decode_results", "encode_results", "output_key", "output_keys"]

_EXTENSIONS: dict[str, str] = {
    "jpeg": "jpg",
    "png": "png",
    "webp": "webp",
    "avif": "avif",
    "gif": "gif",
}


class VariantResult(msgspec.Struct, frozen=True, kw_only=True):
    """What a worker wrote for one variant (the `results` column holds these by name)."""

    format: OutputFormat
    width: int
    height: int
    bytes: int
    key: str
    blurhash: str | None = None

    def view(self, job_id: str, name: str) -> VariantView:
        return VariantView(
            format=self.format,
            width=self.width,
            height=self.height,
            bytes=self.bytes,
            download=f"/jobs/{job_id}/variants/{name}",
            blurhash=self.blurhash,
        )


def output_key(job_id: str, name: str, output_format: str) -> str:
    extension = _EXTENSIONS[output_format]
    if name == "default":
        return f"outputs/{job_id}.{extension}"
    return f"outputs/{job_id}.{name}.{extension}"


def document_of(record: JobRecord) -> Document | None:
    return None if record.spec is None else msgspec.json.decode(record.spec, type=Document)


def output_keys(record: JobRecord) -> dict[str, str]:
    """Every output key of a job, by variant name (whether or not written yet)."""
    document = document_of(record)
    if document is None:
        return {"default": record.output_key}
    return {
        name: output_key(record.id, name, variant.output.format or record.output_format)
        for name, variant in (document.variants or {}).items()
    }


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(dict[str, VariantResult])


def encode_results(results: dict[str, VariantResult]) -> bytes:
    return _encoder.encode(results)


def decode_results(data: bytes | None) -> dict[str, VariantResult]:
    return {} if data is None else _decoder.decode(data)
