"""Job documents (`steps` + `output`), dry runs and `POST /probe` over real HTTP, against a
real hypercorn server on a free port, on each of the three upload forms:

* ``json``: ``application/json`` with the image as base64 ``image_data`` beside the document;
* ``raw``: the image as the body, the document as ``?spec=<JSON>``;
* ``multipart``: an ``image`` file part and a ``spec`` form field.

A dry run must promise exactly what the job then produces, and create nothing; a bad
document is a 400 naming the field's path; a document that does not fit the image is a 422
at submit; `/probe` answers for an upload what `POST /jobs` would.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple

import httpx
import msgspec
import pytest
from PIL import Image

from app.settings import Settings
from imaging.document import Output, Step
from tests.backends import stored_names
from tests.conftest import BAD, GOOD, corpus_files
from tests.servers import RunningServer, job_body, make_settings, open_server

Form = Literal["json", "raw", "multipart"]
FORMS: tuple[Form, ...] = ("json", "raw", "multipart")
Spec = Mapping[str, Any] | str

CAMERA = GOOD / "skimage__camera.png"  # 512x512, grey
ELEPHANTS = GOOD / "mate__Elephants.jpg"  # 1920x1080
HOPPER_6 = GOOD / "pillow__hopper_orientation_6.jpg"  # 128x128, EXIF orientation 6
ANIMATED_GIF = GOOD / "pillow__iss634.gif"  # 245x245, 42 frames
RGBA_PNG = GOOD / "mate__Gulp.png"  # 1920x1200 RGBA


def oriented_jpeg(stored: tuple[int, int] = (200, 120), orientation: int = 6) -> bytes:
    """A JPEG stored at `stored` whose EXIF orientation turns it on display (6: a quarter
    turn, so it is displayed `stored` swapped). Not square, unlike the corpus's hopper."""
    image = Image.linear_gradient("L").resize(stored).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif)
    return buffer.getvalue()


PORTRAIT_6 = oriented_jpeg()  # displayed 120x200


class Api(NamedTuple):
    client: httpx.AsyncClient
    server: RunningServer
    settings: Settings


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    settings = make_settings(tmp_path, job_timeout_s=30)
    async with (
        open_server(settings) as server,
        httpx.AsyncClient(base_url=server.url, timeout=60) as client,
    ):
        yield Api(client, server, settings)


@pytest.fixture
def client(api: Api) -> httpx.AsyncClient:
    return api.client


# --- helpers -------------------------------------------------------------------------------


def image_bytes(image: Path | bytes) -> bytes:
    return image if isinstance(image, bytes) else image.read_bytes()


def spec_text(spec: Spec) -> str:
    return spec if isinstance(spec, str) else json.dumps(spec)


def json_body(image: bytes, spec: str | None) -> bytes:
    """The JSON form: `image_data` spliced into the document's object (kept as text, so that
    literals such as NaN or 1e999 reach the server as written). A document that is not an
    object is sent alone, as the body."""
    head = '{"image_data": "' + base64.b64encode(image).decode() + '"'
    if spec is None:
        return (head + "}").encode()
    text = spec.strip()
    if not text.startswith("{"):
        return text.encode()
    rest = text[1:].lstrip()
    return (head + ("" if rest.startswith("}") else ", ") + rest).encode()


async def upload(
    client: httpx.AsyncClient,
    path: str,
    form: Form,
    image: Path | bytes,
    spec: Spec | None = None,
    *,
    params: Mapping[str, str] | None = None,
    fields: Mapping[str, str] | None = None,
) -> httpx.Response:
    """POST `image` (with the document `spec`, if any) to `path` in one upload form;
    `fields` are extra parameters sent where the form sends `spec` (query or form field)."""
    data = image_bytes(image)
    text = None if spec is None else spec_text(spec)
    query = dict(params or {})
    extra = dict(fields or {})
    if form == "json":
        assert not extra, "the JSON form has no parameters beside the document"
        return await client.post(
            path,
            params=query,
            content=json_body(data, text),
            headers={"Content-Type": "application/json"},
        )
    if text is not None:
        extra["spec"] = text
    if form == "raw":
        return await client.post(
            path,
            params=query | extra,
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
    return await client.post(
        path,
        params=query,
        data=extra,
        files={"image": ("upload", data, "application/octet-stream")},
    )


async def post_job(
    client: httpx.AsyncClient,
    form: Form,
    image: Path | bytes,
    spec: Spec,
    *,
    dry_run: bool = False,
    fields: Mapping[str, str] | None = None,
) -> httpx.Response:
    params = {"dry_run": "true"} if dry_run else {}
    return await upload(client, "/jobs", form, image, spec, params=params, fields=fields)


async def planned(
    client: httpx.AsyncClient, form: Form, image: Path | bytes, spec: Spec
) -> dict[str, Any]:
    """The dry run's plan of the default variant (asserting a 200 of the documented shape)."""
    response = await post_job(client, form, image, spec, dry_run=True)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"variants"}
    assert set(body["variants"]) == {"default"}
    plan: dict[str, Any] = body["variants"]["default"]
    assert set(plan) == {"format", "width", "height", "exact"}
    return plan


async def submit_document(
    client: httpx.AsyncClient, form: Form, image: Path | bytes, spec: Spec
) -> str:
    response = await post_job(client, form, image, spec)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job_id"]
    assert response.headers["location"] == f"/jobs/{job_id}"
    return job_id


async def finished(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    """The job once it has completed or failed (the server waits: `?wait=`)."""
    response = await client.get(f"/jobs/{job_id}", params={"wait": "60"})
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    assert job["status"] in ("completed", "failed"), job
    return job


async def download(client: httpx.AsyncClient, job_id: str) -> tuple[str, tuple[int, int]]:
    """The result's format and size, decoded by Pillow."""
    response = await client.get(f"/jobs/{job_id}/download")
    assert response.status_code == 200, response.text
    with Image.open(io.BytesIO(response.content)) as image:
        image.load()
        return (image.format or "").lower(), image.size


def canonical(document: Mapping[str, Any]) -> dict[str, Any]:
    """`steps` and `output` as the job view echoes them: every field, defaults filled in."""
    steps = msgspec.convert(document.get("steps", []), list[Step])
    output = msgspec.convert(document.get("output", {}), Output)
    return {"steps": msgspec.to_builtins(steps), "output": msgspec.to_builtins(output)}


def echoed(job: Mapping[str, Any]) -> dict[str, Any]:
    """The document a job view echoes, as `canonical` puts it: `steps` and `output` beside
    the other fields (or, where the view names variants, the `default` one in `spec`)."""
    document = job.get("spec", job)
    return canonical((document.get("variants") or {}).get("default", document))


def assert_problem(
    response: httpx.Response, status: int, code: str | None = None, *words: str, where: str = ""
) -> dict[str, Any]:
    """A problem+json answer of `status` (and `code`) whose message holds every word."""
    assert response.status_code == status, f"{where} {response.text}"
    assert response.headers["content-type"] == "application/problem+json", where
    body: dict[str, Any] = response.json()
    assert body["status"] == status, where
    assert body["error"], f"{where} {body}"
    assert body["error"] == body["detail"], where
    if code is not None:
        assert body["code"] == code, f"{where} {body}"
    for word in words:
        assert word in body["error"], f"{where} {body}"
    return body


async def assert_nothing_created(api: Api) -> None:
    """No job row, nothing queued, no file (not even a temporary one) in the storage."""
    assert await api.server.app.service.store.count() == 0
    health = (await api.client.get("/health")).json()
    assert (health["queue_depth"], health["busy_workers"]) == (0, 0)
    for folder in (api.settings.upload_dir, api.settings.output_dir):
        assert [p.name for p in folder.iterdir() if p.name != ".imgjobs.lock"] == []
    for area in ("uploads", "outputs"):  # (with S3, the bucket too)
        assert stored_names(api.settings.upload_dir.parent, area) == []


def displayed(image: Path | bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(image_bytes(image))) as opened:
        width, height = opened.size
        return (
            (height, width) if opened.getexif().get(0x0112, 1) in (5, 6, 7, 8) else (width, height)
        )


# --- 1. one document on every upload form -------------------------------------------------

CHAIN = {
    "steps": [
        {"op": "crop", "left": 0.1, "top": 0.1, "width": 0.8, "height": 0.6},
        {"op": "resize", "width": 160, "height": 90, "fit": "cover", "position": "north"},
        {"op": "rotate", "angle": 90},
        {"op": "sharpen"},
        {"op": "grayscale"},
    ],
    "output": {"format": "png", "colors": 64},
}


@pytest.mark.parametrize("form", FORMS)
async def test_a_document_completes_on_every_upload_form(
    client: httpx.AsyncClient, form: Form
) -> None:
    # 1920x1080 -> crop 1536x648 -> cover 160x90 -> a quarter turn: 90x160.
    plan = await planned(client, form, ELEPHANTS, CHAIN)
    assert plan == {"format": "png", "width": 90, "height": 160, "exact": True}
    job_id = await submit_document(client, form, ELEPHANTS, CHAIN)
    job = await finished(client, job_id)
    assert job["status"] == "completed", job
    assert job["operation"] == "steps"
    assert job["output_format"] == "png"
    assert (job["width"], job["height"]) == (plan["width"], plan["height"])
    assert (job["result_width"], job["result_height"]) == (plan["width"], plan["height"])
    assert job["result_bytes"] > 0
    assert echoed(job) == canonical(CHAIN)
    assert canonical(CHAIN)["output"] == {"format": "png", "colors": 64}
    assert await download(client, job_id) == ("png", (90, 160))


# --- 2. dry runs ---------------------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
async def test_a_dry_run_answers_the_plan_and_creates_nothing(api: Api, form: Form) -> None:
    document = {"steps": [{"op": "resize", "width": 100}, {"op": "trim"}]}
    plan = await planned(api.client, form, HOPPER_6, document)
    # A JPEG stays JPEG; after a trim the size is the most it can be.
    assert plan == {"format": "jpeg", "width": 100, "height": 100, "exact": False}
    refused: list[tuple[Path, Spec, int]] = [
        (CAMERA, {"steps": [{"op": "crop", "width": 1000, "height": 1}]}, 422),
        (CAMERA, {"steps": [{"op": "blur", "sigma": 0}]}, 400),
        (BAD / "handmade__text.jpg", {"steps": []}, 415),
    ]
    for image, spec, status in refused:
        response = await post_job(api.client, form, image, spec, dry_run=True)
        assert_problem(response, status)
    await assert_nothing_created(api)


CHAINS: dict[str, list[dict[str, Any]]] = {
    "cover": [{"op": "resize", "width": 100, "height": 60, "fit": "cover"}],
    "contain": [
        {"op": "resize", "width": 100, "height": 60, "fit": "contain", "position": "north"}
    ],
    "fill": [{"op": "resize", "width": 100, "height": 60, "fit": "fill"}],
    "inside": [{"op": "resize", "width": 100, "height": 60, "fit": "inside"}],
    "outside": [{"op": "resize", "width": 100, "height": 60, "fit": "outside"}],
    "width-only": [{"op": "resize", "width": 77}],
    "height-only-enlarged": [{"op": "resize", "height": 333, "enlarge": True}],
    "crop-fractions-then-resize": [
        {"op": "crop", "left": 0.1, "top": 0.2, "width": 0.5, "height": 0.6},
        {"op": "resize", "width": 50},
    ],
    "rotate-90": [{"op": "rotate", "angle": 90}],
    "rotate-30": [{"op": "rotate", "angle": 30}],
    "extend": [
        {"op": "extend", "top": 5, "right": 7, "bottom": 11, "left": 13, "background": "#00ff0080"}
    ],
    "flop-crop-turn-contain": [
        {"op": "flop"},
        {"op": "crop", "left": 10, "top": 3, "width": 40, "height": 50},
        {"op": "rotate", "angle": 270},
        {"op": "resize", "width": 30, "height": 24, "fit": "contain"},
    ],
}


@pytest.mark.parametrize(
    "image",
    [HOPPER_6, PORTRAIT_6, ELEPHANTS, ANIMATED_GIF],
    ids=["hopper-orientation-6", "portrait-orientation-6", "elephants", "animated-gif"],
)
async def test_a_dry_run_promises_exactly_what_the_job_produces(
    client: httpx.AsyncClient, image: Path | bytes
) -> None:
    plans: dict[str, dict[str, Any]] = {}
    jobs: dict[str, str] = {}
    for index, (name, steps) in enumerate(CHAINS.items()):
        form = FORMS[index % len(FORMS)]
        plans[name] = await planned(client, form, image, {"steps": steps})
        jobs[name] = await submit_document(client, form, image, {"steps": steps})
    problems = []
    for name, job_id in jobs.items():
        plan = plans[name]
        want = (plan["width"], plan["height"])
        job = await finished(client, job_id)
        if job["status"] != "completed":
            problems.append(f"{name}: {job['status']} {job.get('error')}")
            continue
        got = {
            "view": (job["width"], job["height"]),
            "result": (job["result_width"], job["result_height"]),
            "download": await download(client, job_id),
        }
        if got != {"view": want, "result": want, "download": (plan["format"], want)}:
            problems.append(f"{name}: planned {plan}, got {got}")
    assert problems == []


async def test_an_output_wider_than_its_format_allows_is_refused_at_submit(
    client: httpx.AsyncClient,
) -> None:
    """What submit accepts, the worker can encode: 512 + 65,535 px wide is over JPEG's
    limit of 65,500 px a side (though under MAX_OUTPUT_PIXELS): 422 at submit, naming it."""
    spec = {"steps": [{"op": "extend", "right": 65_535}], "output": {"format": "jpeg"}}
    response = await post_job(client, "raw", CAMERA, spec)
    body = assert_problem(response, 422)
    assert body["code"] == "output_too_large"
    assert "65,500" in body["error"]
    assert "66047x512" in body["error"]


async def test_the_planned_size_is_the_displayed_one(client: httpx.AsyncClient) -> None:
    """The plan starts from the EXIF-oriented size: 200x120 stored is 120x200 shown."""
    assert displayed(PORTRAIT_6) == (120, 200)
    width_only = {"steps": [{"op": "resize", "width": 60}]}
    assert (await planned(client, "raw", PORTRAIT_6, width_only))["height"] == 100
    turned = {"steps": [{"op": "rotate", "angle": 90}]}
    plan = await planned(client, "multipart", PORTRAIT_6, turned)
    assert (plan["width"], plan["height"]) == (200, 120)


# --- 3. validation: 400 naming the field's path --------------------------------------------

INVALID: list[tuple[str, Spec, str, list[str]]] = [
    ("unknown-op", {"steps": [{"op": "sepia"}]}, "invalid_field", ["`steps[0].op`"]),
    (
        "unknown-field",
        {"steps": [{"op": "blur", "sigma": 2, "radius": 3}]},
        "invalid_field",
        ["`steps[0]`", "radius"],
    ),
    (
        "wrong-type",
        {"steps": [{"op": "resize", "width": "100"}]},
        "invalid_field",
        ["`steps[0].width`"],
    ),
    (
        "out-of-range",
        {"steps": [{"op": "flip"}, {"op": "blur", "sigma": 1000}]},
        "invalid_field",
        ["`steps[1].sigma`"],
    ),
    (
        "infinity",
        '{"steps": [{"op": "blur", "sigma": 1e999}]}',
        "invalid_field",
        ["`steps[0].sigma`"],
    ),
    ("nan-literal", '{"steps": [{"op": "blur", "sigma": NaN}]}', "malformed_json", ["JSON"]),
    ("spec-not-json", "{nope", "malformed_json", ["not valid JSON"]),
    (
        "more-than-max-steps",
        {"steps": [{"op": "flip"}] * 11},
        "invalid_field",
        ["`steps`", "MAX_STEPS", "11"],
    ),
    (
        "over-max-dimension",
        {"steps": [{"op": "resize", "width": 4097}]},
        "invalid_field",
        ["`steps[0].width`", "4096"],
    ),
    (
        "height-over-max-dimension",
        {"steps": [{"op": "flop"}, {"op": "resize", "width": 10, "height": 65535}]},
        "invalid_field",
        ["`steps[1].height`", "MAX_DIMENSION"],
    ),
    (
        "negative-size",
        {"steps": [{"op": "resize", "width": -5}]},
        "invalid_field",
        ["`steps[0].width`"],
    ),
    (
        "negative-margin",
        {"steps": [{"op": "extend", "left": -1}]},
        "invalid_field",
        ["`steps[0].left`"],
    ),
    (
        "crop-fraction-above-1",
        {"steps": [{"op": "crop", "width": 1.5, "height": 0.5}]},
        "invalid_field",
        ["`steps[0].width`"],
    ),
    (
        "crop-offset-fraction-above-1",
        {"steps": [{"op": "crop", "top": 1.01, "width": 10, "height": 10}]},
        "invalid_field",
        ["`steps[0].top`"],
    ),
    (
        "crop-of-zero-pixels",
        {"steps": [{"op": "crop", "width": 0, "height": 10}]},
        "invalid_field",
        ["`steps[0].width`"],
    ),
    (
        "crop-without-size",
        {"steps": [{"op": "crop", "left": 3}]},
        "invalid_field",
        ["`steps[0]`", "width"],
    ),
    (
        "resize-without-a-side",
        {"steps": [{"op": "resize", "fit": "fill"}]},
        "invalid_field",
        ["`steps[0]`", "width or height"],
    ),
    (
        "unknown-fit",
        {"steps": [{"op": "resize", "width": 9, "fit": "stretch"}]},
        "invalid_field",
        ["`steps[0].fit`"],
    ),
    (
        "bad-colour",
        {"steps": [{"op": "extend", "top": 1, "background": "red"}]},
        "invalid_field",
        ["`steps[0].background`"],
    ),
    ("steps-not-a-list", {"steps": {"op": "flip"}}, "invalid_field", ["`steps`"]),
    ("step-not-an-object", {"steps": ["flip"]}, "invalid_field", ["`steps[0]`"]),
    ("output-format", {"output": {"format": "svg"}}, "invalid_field", ["`output.format`"]),
    ("output-quality", {"output": {"quality": 0}}, "invalid_field", ["`output.quality`"]),
    ("unknown-top-level-field", {"steps": [], "colour": "red"}, "invalid_field", ["`colour`"]),
]


@pytest.mark.parametrize(
    ("spec", "code", "words"),
    [pytest.param(spec, code, words, id=name) for name, spec, code, words in INVALID],
)
async def test_an_invalid_document_gets_400_naming_the_field(
    api: Api, spec: Spec, code: str, words: list[str]
) -> None:
    """On every form, as a dry run and as a submit."""
    for form in FORMS:
        for dry_run in (True, False):
            response = await post_job(api.client, form, CAMERA, spec, dry_run=dry_run)
            assert_problem(response, 400, code, *words, where=f"{form}, dry_run={dry_run}:")
    await assert_nothing_created(api)


@pytest.mark.parametrize("form", ["json", "multipart"])
@pytest.mark.parametrize(
    ("spec", "words"),
    [
        pytest.param(
            json.dumps({"steps": [{"op": "flip"}] * 10_000}), ["`steps`"], id="10000-steps"
        ),
        pytest.param("[" * 100_000, [], id="100000-brackets"),
        pytest.param('{"steps": ' + "[" * 100_000, ["`steps[0]`"], id="100000-nested-steps"),
        pytest.param(
            '{"steps": [{"op": "flip", "x": ' + "[" * 100_000, ["`steps[0]`"], id="nested-field"
        ),
    ],
)
async def test_huge_or_deep_documents_get_a_clear_400(
    client: httpx.AsyncClient, form: Form, spec: str, words: list[str]
) -> None:
    """Too big for a URL (the raw form's `spec`), so: the JSON body and the form field."""
    response = await post_job(client, form, CAMERA, spec, dry_run=True)
    assert_problem(response, 400, None, *words)


async def test_a_long_spec_in_the_query_is_read_whole(client: httpx.AsyncClient) -> None:
    """2,000 steps (a 30 kB query) reach the check: 400 for `steps`, not a transport error."""
    spec = {"steps": [{"op": "flip"}] * 2000}
    assert_problem(await post_job(client, "raw", CAMERA, spec, dry_run=True), 400, None, "`steps`")


@pytest.mark.parametrize("form", FORMS)
async def test_the_limits_themselves_are_allowed(client: httpx.AsyncClient, form: Form) -> None:
    """MAX_STEPS steps, a side of MAX_DIMENSION: accepted (no enlarging: 512 stays 512)."""
    steps: list[dict[str, Any]] = [{"op": "flip"}] * 9 + [{"op": "resize", "width": 4096}]
    plan = await planned(client, form, CAMERA, {"steps": steps})
    assert (plan["width"], plan["height"]) == (512, 512)


@pytest.mark.parametrize("form", FORMS)
async def test_an_empty_document_keeps_the_image(client: httpx.AsyncClient, form: Form) -> None:
    plan = await planned(client, form, PORTRAIT_6, {"steps": []})
    assert plan == {"format": "jpeg", "width": 120, "height": 200, "exact": True}


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"operation": "resize", "steps": [{"op": "flip"}]}, ["`operation`"]),
        ({"width": 10, "height": 10, "steps": []}, ["`width`", "`height`"]),
        ({"output_format": "png", "output": {"format": "png"}}, ["`output_format`"]),
    ],
    ids=["operation", "width-height", "output-format"],
)
async def test_mixing_the_seed_fields_with_a_document_gets_400(
    client: httpx.AsyncClient, body: dict[str, Any], words: list[str]
) -> None:
    response = await post_job(client, "json", CAMERA, body, dry_run=True)
    assert_problem(response, 400, "invalid_field", "seed", *words)


async def test_parameters_beside_spec_get_400(api: Api) -> None:
    """The query (raw form) or the form fields (multipart) hold `spec` and nothing else."""
    spec = {"steps": [{"op": "resize", "width": 10}]}
    cases: list[tuple[dict[str, str], list[str]]] = [
        ({"operation": "resize"}, ["`operation`", "seed"]),
        ({"width": "10", "height": "10"}, ["`width`", "`height`", "seed"]),
        ({"output_format": "png"}, ["`output_format`", "seed"]),
        ({"colour": "red"}, ["unknown parameter", "`colour`"]),
    ]
    forms: tuple[Form, ...] = ("raw", "multipart")
    for fields, words in cases:
        for form in forms:
            for dry_run in (True, False):
                response = await post_job(
                    api.client, form, CAMERA, spec, dry_run=dry_run, fields=fields
                )
                where = f"{form} {fields}, dry_run={dry_run}:"
                assert_problem(response, 400, "invalid_field", *words, where=where)
    await assert_nothing_created(api)


# --- 4. 422 at submit: the document does not fit the image ---------------------------------

UNFIT: list[tuple[str, dict[str, Any], str]] = [
    (
        "crop-outside",
        {"steps": [{"op": "crop", "left": 500, "width": 100, "height": 100}]},
        "crop_outside_image",
    ),
    (
        "crop-fraction-of-zero-pixels",  # 0.0001 of 512 px rounds to 0
        {"steps": [{"op": "crop", "width": 0.0001, "height": 0.5}]},
        "crop_outside_image",
    ),
    (
        "crop-outside-after-a-resize",
        {
            "steps": [
                {"op": "resize", "width": 100},
                {"op": "crop", "left": 50, "top": 50, "width": 51, "height": 10},
            ]
        },
        "crop_outside_image",
    ),
    (
        "output-too-large",
        {"steps": [{"op": "extend", "right": 60_000, "bottom": 60_000}]},
        "output_too_large",
    ),
    ("watermark-not-configured", {"steps": [{"op": "watermark"}]}, "watermark_not_configured"),
]


@pytest.mark.parametrize(
    ("spec", "code"), [pytest.param(spec, code, id=name) for name, spec, code in UNFIT]
)
async def test_a_document_that_does_not_fit_the_image_gets_422_at_submit(
    api: Api, spec: dict[str, Any], code: str
) -> None:
    """On every form, as a dry run and as a submit; the message names the step."""
    last = len(spec["steps"]) - 1
    for form in FORMS:
        for dry_run in (True, False):
            response = await post_job(api.client, form, CAMERA, spec, dry_run=dry_run)
            where = f"{form}, dry_run={dry_run}:"
            assert_problem(response, 422, code, f"steps[{last}]", where=where)
    await assert_nothing_created(api)


async def test_no_step_may_exceed_max_output_pixels(tmp_path: Path) -> None:
    """MAX_OUTPUT_PIXELS bounds every step, not only the last one."""
    settings = make_settings(tmp_path, max_output_pixels=10_000)
    async with (
        open_server(settings) as server,
        httpx.AsyncClient(base_url=server.url, timeout=60) as client,
    ):
        api = Api(client, server, settings)
        small = {"steps": [{"op": "resize", "width": 64}]}  # 64x64 = 4,096 pixels
        assert (await planned(client, "raw", CAMERA, small))["width"] == 64
        big_then_small = {"steps": [{"op": "resize", "width": 101}, {"op": "resize", "width": 10}]}
        for form in FORMS:
            response = await post_job(client, form, CAMERA, big_then_small)
            assert_problem(response, 422, "output_too_large", "steps[0]", "10,000")
        await assert_nothing_created(api)


# --- 5. POST /probe ------------------------------------------------------------------------

PROBES: list[tuple[str, Path | bytes, dict[str, Any]]] = [
    (
        "portrait-orientation-6",
        PORTRAIT_6,
        {"format": "JPEG", "width": 120, "height": 200, "orientation": 6, "frames": 1},
    ),
    (
        "hopper-orientation-6",
        HOPPER_6,
        {"format": "JPEG", "width": 128, "height": 128, "orientation": 6, "animated": False},
    ),
    (
        "animated-gif",
        ANIMATED_GIF,
        {"format": "GIF", "width": 245, "height": 245, "frames": 42, "animated": True},
    ),
    (
        "rgba-png",
        RGBA_PNG,
        {"format": "PNG", "width": 1920, "height": 1200, "mode": "RGBA", "has_alpha": True},
    ),
    ("grey-png", CAMERA, {"format": "PNG", "mode": "L", "has_alpha": False, "orientation": 1}),
]


PROBE_FIELDS = {
    "format",
    "width",
    "height",
    "orientation",
    "mode",
    "frames",
    "animated",
    "has_alpha",
    "icc",
    "bytes",
}


@pytest.mark.parametrize(
    ("image", "expected"),
    [pytest.param(image, expected, id=name) for name, image, expected in PROBES],
)
async def test_probe_describes_the_upload_on_every_form(
    api: Api, image: Path | bytes, expected: dict[str, Any]
) -> None:
    answers = {}
    for form in FORMS:
        response = await upload(api.client, "/probe", form, image)
        assert response.status_code == 200, f"{form}: {response.text}"
        answers[form] = response.json()
    body = answers["json"]
    assert answers["raw"] == answers["multipart"] == body
    assert set(body) == PROBE_FIELDS
    assert {key: body[key] for key in expected} == expected
    assert body["bytes"] == len(image_bytes(image))
    assert (body["width"], body["height"]) == displayed(image)
    assert body["animated"] == (body["frames"] > 1)
    await assert_nothing_created(api)


@pytest.mark.parametrize("path", corpus_files(BAD), ids=lambda p: p.name)
async def test_probe_answers_a_bad_file_as_submit_does(
    client: httpx.AsyncClient, path: Path
) -> None:
    document = {"steps": [{"op": "resize", "width": 16}]}
    for form in FORMS:
        submitted = await post_job(client, form, path, document)
        probed = await upload(client, "/probe", form, path)
        where = f"{form}: submit {submitted.status_code}, probe {probed.status_code}"
        assert submitted.status_code < 500, where
        assert probed.status_code < 500, where
        if submitted.status_code == 202:
            # Refused only when decoded: the header alone may look fine to /probe.
            assert probed.status_code in (200, 400, 415, 422), where
            await finished(client, submitted.json()["job_id"])
            continue
        assert submitted.status_code in (400, 415, 422), where
        assert probed.status_code == submitted.status_code, where
        problem = assert_problem(probed, probed.status_code)
        assert problem["code"] == submitted.json()["code"], where


async def test_probe_refuses_what_is_not_an_upload(client: httpx.AsyncClient) -> None:
    assert_problem(await client.post("/probe", json={}), 400, "invalid_field", "image_data")
    extra = {"image_data": base64.b64encode(CAMERA.read_bytes()).decode(), "steps": []}
    assert_problem(await client.post("/probe", json=extra), 400, "invalid_field", "steps")
    assert_problem(
        await client.post("/probe", content=b"{", headers={"Content-Type": "application/json"}),
        400,
        "malformed_json",
    )
    text = await client.post("/probe", content=b"x=1", headers={"Content-Type": "text/plain"})
    assert_problem(text, 415)


# --- 6. the seed's body still works --------------------------------------------------------


async def test_a_seed_body_with_output_format_answers_as_before(
    client: httpx.AsyncClient,
) -> None:
    body = job_body(ELEPHANTS, operation="thumbnail", width=64, height=64, output_format="png")
    response = await client.post(
        "/jobs", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 202, response.text
    assert set(response.json()) == {"job_id", "status", "message"}
    job = await finished(client, response.json()["job_id"])
    assert job["status"] == "completed", job
    assert (job["operation"], job["width"], job["height"]) == ("thumbnail", 64, 64)
    assert job["output_format"] == "png"
    assert (job["result_width"], job["result_height"]) == (64, 36)
    assert not {"steps", "output", "spec"} & set(job), job
    assert await download(client, job["id"]) == ("png", (64, 36))


async def test_a_seed_dry_run_promises_what_the_job_produces(client: httpx.AsyncClient) -> None:
    """The plan is the size produced (64x36), not the seed's box (64x64) that the job view
    shows as `width`/`height`."""
    body = job_body(ELEPHANTS, operation="thumbnail", width=64, height=64, output_format="png")
    response = await client.post(
        "/jobs",
        params={"dry_run": "true"},
        content=body,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text
    plan = response.json()["variants"]["default"]
    assert (plan["format"], plan["width"], plan["height"]) == ("png", 64, 36)
