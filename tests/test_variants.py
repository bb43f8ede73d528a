"""Several outputs from one upload: one decode, named downloads, all-or-nothing failures."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from PIL import Image

from imaging import Document, JobSpec, Rendition, codec, process_variants
from imaging.geometry import CropOutsideImage
from tests.backends import stored_names
from tests.conftest import GOOD
from tests.servers import make_settings, open_server
from tests.test_api import assert_problem

PATH = GOOD / "plasma__Path__2560x1600.jpg"  # baseline JPEG, 2560x1600
PHOTO = PATH.read_bytes()
VARIANTS = {
    "large": {"steps": [{"op": "resize", "width": 1600}]},
    "small": {"steps": [{"op": "resize", "width": 400}], "output": {"format": "png"}},
    "thumb": {"steps": [{"op": "resize", "width": 200, "height": 200}]},
}


def renditions(variants: dict[str, Any]) -> dict[str, Rendition]:
    document = msgspec.convert({"variants": variants}, Document)
    return {
        name: Rendition(
            steps=variant.steps,
            output=variant.output,
            output_format="png" if variant.output.format == "png" else "jpeg",
        )
        for name, variant in document.renditions().items()
    }


def test_all_variants_come_from_one_decode_at_the_largest_scale_needed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decodes: list[tuple[int, int] | None] = []
    decode = codec.decode_first_frame

    def counting(image: Any, *, max_pixels: int, draft_size: Any = None) -> Any:
        decodes.append(draft_size)
        return decode(image, max_pixels=max_pixels, draft_size=draft_size)

    monkeypatch.setattr(codec, "decode_first_frame", counting)
    spec = JobSpec(variants=renditions(VARIANTS))
    dsts = {name: str(tmp_path / name) for name in VARIANTS}
    results = process_variants(spec, str(PATH), dsts)
    # One decode, drafted for the largest (1600 px wide, 1.25 x: 2000 px, so no DCT scaling).
    assert decodes == [(2000, 1250)]
    assert {name: (r.width, r.height) for name, r in results.items()} == {
        "large": (1600, 1000),
        "small": (400, 250),
        "thumb": (200, 200),
    }
    for name, result in results.items():
        with Image.open(dsts[name]) as image:
            assert image.size == (result.width, result.height)
            assert image.format == ("PNG" if name == "small" else "JPEG")


def test_small_variants_alone_decode_at_a_reduced_scale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes: list[tuple[int, int]] = []
    decode = codec.decode_first_frame

    def recording(image: Any, *, max_pixels: int, draft_size: Any = None) -> Any:
        box = decode(image, max_pixels=max_pixels, draft_size=draft_size)
        sizes.append(image.size)
        return box

    monkeypatch.setattr(codec, "decode_first_frame", recording)
    small = {name: VARIANTS[name] for name in ("small", "thumb")}
    process_variants(
        JobSpec(variants=renditions(small)),
        str(PATH),
        {name: str(tmp_path / name) for name in small},
    )
    assert sizes == [(640, 400)]  # 1/4 scale: still 1.25 x the 400 px wide variant


def test_a_failing_variant_fails_them_all_named_and_leaves_no_output(tmp_path: Path) -> None:
    bordered = tmp_path / "bordered.png"
    canvas = Image.new("RGB", (300, 200), (255, 255, 255))
    canvas.paste((200, 30, 30), (50, 50, 250, 150))
    canvas.save(bordered)
    variants = {
        "whole": {"steps": [{"op": "resize", "width": 100}]},
        # Planned on the untrimmed size, this crop only fails once the border is gone.
        "cut": {"steps": [{"op": "trim"}, {"op": "crop", "width": 250, "height": 100}]},
    }
    dsts = {name: str(tmp_path / f"{name}.png") for name in variants}
    with pytest.raises(CropOutsideImage, match=r"^variant 'cut': steps\[1\] \(crop\)"):
        process_variants(JobSpec(variants=renditions(variants)), str(bordered), dsts)
    assert not any(Path(dst).exists() for dst in dsts.values())


# --- over HTTP -----------------------------------------------------------------------------


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(tmp_path, max_variants=5)
    async with open_server(settings) as server, httpx.AsyncClient(base_url=server.url) as client:
        yield client


async def submit(client: httpx.AsyncClient, image: bytes, document: dict[str, Any]) -> str:
    response = await client.post(
        "/jobs",
        params={"spec": json.dumps(document)},
        content=image,
        headers={"Content-Type": "image/jpeg"},
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job_id"]
    return job_id


async def test_each_variant_is_listed_and_downloads_with_its_type_length_and_etag(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    job_id = await submit(client, PHOTO, {"variants": VARIANTS})
    view = (await client.get(f"/jobs/{job_id}", params={"wait": 30})).json()
    assert view["status"] == "completed", view
    assert set(view["variants"]) == set(VARIANTS)
    etags = set()
    for name, listed in view["variants"].items():
        assert listed["download"] == f"/jobs/{job_id}/variants/{name}"
        response = await client.get(listed["download"])
        assert response.status_code == 200
        expected_type = "image/png" if name == "small" else "image/jpeg"
        assert response.headers["content-type"] == expected_type
        assert int(response.headers["content-length"]) == listed["bytes"] == len(response.content)
        with Image.open(io.BytesIO(response.content)) as image:
            assert image.size == (listed["width"], listed["height"])
        etags.add(response.headers["etag"])
        again = await client.get(
            listed["download"], headers={"If-None-Match": response.headers["etag"]}
        )
        assert again.status_code == 304
    assert len(etags) == len(VARIANTS)
    # No default variant: /download says which there are.
    assert_problem(await client.get(f"/jobs/{job_id}/download"), 404, "large, small, thumb")
    assert_problem(await client.get(f"/jobs/{job_id}/variants/nope"), 404, "'nope'", "thumb")
    outputs = stored_names(tmp_path, "outputs")
    assert outputs == sorted(f"{job_id}.{n}.{'png' if n == 'small' else 'jpg'}" for n in VARIANTS)
    assert (await client.delete(f"/jobs/{job_id}")).status_code == 204
    assert not stored_names(tmp_path, "outputs")


async def test_top_level_steps_are_the_default_variant_and_download_serves_it(
    client: httpx.AsyncClient,
) -> None:
    document = {"steps": [{"op": "resize", "width": 300}], "variants": {"tiny": VARIANTS["thumb"]}}
    dry = await client.post(
        "/jobs",
        params={"spec": json.dumps(document), "dry_run": "true"},
        content=PHOTO,
        headers={"Content-Type": "image/jpeg"},
    )
    assert dry.json() == {
        "variants": {
            "default": {"format": "jpeg", "width": 300, "height": 188, "exact": True},
            "tiny": {"format": "jpeg", "width": 200, "height": 200, "exact": True},
        }
    }
    job_id = await submit(client, PHOTO, document)
    view = (await client.get(f"/jobs/{job_id}", params={"wait": 30})).json()
    assert (view["result_width"], view["result_height"]) == (300, 188)
    download = await client.get(f"/jobs/{job_id}/download")
    assert download.content == (await client.get(f"/jobs/{job_id}/variants/default")).content
    assert download.headers["content-disposition"] == f'attachment; filename="{job_id}.jpg"'


async def test_a_failing_variant_fails_the_job_naming_it(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    bordered = tmp_path / "bordered.jpg"
    canvas = Image.new("RGB", (300, 200), (255, 255, 255))
    canvas.paste((200, 30, 30), (50, 50, 250, 150))
    canvas.save(bordered, quality=95)
    image = bordered.read_bytes()
    document = {
        "variants": {
            "whole": {"steps": [{"op": "resize", "width": 100}]},
            "cut": {"steps": [{"op": "trim"}, {"op": "crop", "width": 250, "height": 100}]},
        }
    }
    job_id = await submit(client, image, document)
    view = (await client.get(f"/jobs/{job_id}", params={"wait": 30})).json()
    assert view["status"] == "failed"
    assert view["error"]["code"] == "crop_outside_image"
    assert view["error"]["message"].startswith("variant 'cut': ")
    assert not stored_names(tmp_path, "outputs")


@pytest.mark.parametrize(
    ("document", "words"),
    [
        ({"variants": {"Big Name": VARIANTS["thumb"]}}, ["variants", "regex"]),
        ({"variants": {f"v{n}": VARIANTS["thumb"] for n in range(6)}}, ["at most 5 variants"]),
        (
            {"variants": {"thumb": {"steps": [{"op": "resize", "width": 5000}]}}},
            ["`variants.thumb.steps[0].width`", "4096"],
        ),
        ({"steps": [], "variants": {"default": VARIANTS["thumb"]}}, ["`variants.default`"]),
        ({"variants": {"thumb": {"steps": [{"op": "blur"}]}}}, ["sigma"]),
    ],
)
async def test_bad_variants_get_400_naming_the_field(
    client: httpx.AsyncClient, document: dict[str, Any], words: list[str]
) -> None:
    response = await client.post(
        "/jobs",
        params={"spec": json.dumps(document)},
        content=PHOTO,
        headers={"Content-Type": "image/jpeg"},
    )
    assert_problem(response, 400, *words)


async def test_geometry_is_checked_per_variant_at_submit(client: httpx.AsyncClient) -> None:
    document = {
        "variants": {
            "fine": VARIANTS["thumb"],
            "wide": {"steps": [{"op": "crop", "left": 2000, "width": 600, "height": 10}]},
        }
    }
    response = await client.post(
        "/jobs",
        params={"spec": json.dumps(document)},
        content=PHOTO,
        headers={"Content-Type": "image/jpeg"},
    )
    body = assert_problem(response, 422, "variants.wide.steps[0] (crop)")
    assert body["code"] == "crop_outside_image"


async def test_every_output_format_over_http_with_its_type_and_a_blurhash(
    client: httpx.AsyncClient,
) -> None:
    codec.register_plugins()  # so that this process reads AVIF back
    formats = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "avif": "AVIF", "gif": "GIF"}
    document = {
        "variants": {
            name: {
                "steps": [{"op": "resize", "width": 160}],
                "output": {"format": name, "blurhash": name == "webp"},
            }
            for name in formats
        }
    }
    job_id = await submit(client, PHOTO, document)
    view = (await client.get(f"/jobs/{job_id}", params={"wait": 60})).json()
    assert view["status"] == "completed", view
    assert len(view["variants"]["webp"]["blurhash"]) == 28  # 4x3 components
    assert "blurhash" not in view["variants"]["jpeg"]
    for name, pillow_name in formats.items():
        response = await client.get(view["variants"][name]["download"])
        assert response.headers["content-type"] == f"image/{name}"
        with Image.open(io.BytesIO(response.content)) as image:
            assert image.format == pillow_name
            assert image.size == (160, 100)
            assert "exif" not in image.info


async def test_an_unreachable_max_bytes_fails_the_job_naming_the_variant(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    document = {
        "variants": {
            "fine": VARIANTS["thumb"],
            "tiny": {"steps": [{"op": "resize", "width": 800}], "output": {"max_bytes": 100}},
        }
    }
    job_id = await submit(client, PHOTO, document)
    view = (await client.get(f"/jobs/{job_id}", params={"wait": 60})).json()
    assert view["status"] == "failed"
    assert view["error"]["code"] == "max_bytes_unreachable"
    assert view["error"]["message"].startswith("variant 'tiny': ")
    assert not stored_names(tmp_path, "outputs")


async def test_an_animated_gif_stays_animated_over_http(client: httpx.AsyncClient) -> None:
    gif = (GOOD / "pillow__iss634.gif").read_bytes()
    document = {"steps": [{"op": "resize", "width": 64}], "output": {"animated": True}}
    dry = await client.post(
        "/jobs",
        params={"spec": json.dumps(document), "dry_run": "true"},
        content=gif,
        headers={"Content-Type": "image/gif"},
    )
    assert dry.json()["variants"]["default"]["format"] == "gif"
    job_id = await submit(client, gif, document)
    view = (await client.get(f"/jobs/{job_id}", params={"wait": 60})).json()
    assert view["status"] == "completed", view
    download = await client.get(f"/jobs/{job_id}/download")
    with Image.open(io.BytesIO(download.content)) as image:
        assert image.format == "GIF"
        assert getattr(image, "n_frames", 1) == 42
        assert image.size == (64, 64)


@pytest.mark.parametrize(
    ("output", "steps", "words"),
    [
        ({"animated": True, "format": "jpeg"}, [], ["`output`", "gif or webp, not jpeg"]),
        ({"animated": True}, [{"op": "trim"}], ["steps[0] uses `trim`"]),
        (
            {"animated": True},
            [{"op": "resize", "width": 9, "height": 9, "position": "entropy"}],
            ["position `entropy`"],
        ),
        ({"format": "jpeg", "lossless": True}, [], ["`lossless` applies to webp and avif"]),
        ({"format": "png", "quality": 50}, [], ["`quality`"]),
    ],
)
async def test_outputs_that_cannot_be_made_get_400_naming_them(
    client: httpx.AsyncClient, output: dict[str, Any], steps: list[Any], words: list[str]
) -> None:
    gif = (GOOD / "pillow__iss634.gif").read_bytes()
    response = await client.post(
        "/jobs",
        params={"spec": json.dumps({"steps": steps, "output": output})},
        content=gif,
        headers={"Content-Type": "image/gif"},
    )
    assert_problem(response, 400, *words)


async def test_a_heic_upload_is_probed_and_processed(client: httpx.AsyncClient) -> None:
    import pillow_heif

    pillow_heif.register_heif_opener()
    buffer = io.BytesIO()
    with Image.open(PATH) as photo:
        photo.convert("RGB").resize((640, 400)).save(buffer, format="HEIF", quality=80)
    heic = buffer.getvalue()
    probe = await client.post("/probe", content=heic, headers={"Content-Type": "image/heic"})
    assert probe.json()["format"] == "HEIF"
    assert (probe.json()["width"], probe.json()["height"]) == (640, 400)
    job_id = await submit(client, heic, {"steps": [{"op": "resize", "width": 320}]})
    view = (await client.get(f"/jobs/{job_id}", params={"wait": 60})).json()
    assert view["status"] == "completed", view
    assert (view["output_format"], view["result_width"], view["result_height"]) == (
        "jpeg",
        320,
        200,
    )
