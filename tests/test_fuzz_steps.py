"""Property-based tests of job documents at `POST /jobs?dry_run=true`, against one real server
process: whatever the document, the answer is never a 5xx and every refusal is a
problem+json with a message; a document that respects every constraint of
`imaging/document.py` and the deployment's limits (MAX_STEPS, MAX_DIMENSION, a resize names
a side) is never a 400, and its plan is exactly the one `imaging.geometry.plan` makes
(a 200 with that size, or the 422 of that geometry error)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any, Literal

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from imaging.document import Step
from imaging.encode import MAX_SIDE
from imaging.geometry import GeometryError, plan
from tests.conftest import GOOD
from tests.servers import fuzz_client, make_settings

IMAGE_PATH = GOOD / "pillow__pil123p.png"  # a small real PNG, 162x150, with transparency
IMAGE = IMAGE_PATH.read_bytes()
IMAGE_B64 = base64.b64encode(IMAGE).decode()
with Image.open(IMAGE_PATH) as _opened:
    SIZE = _opened.size
MAX_STEPS = 10  # the server's defaults (make_settings leaves them alone)
MAX_DIMENSION = 4096
MAX_OUTPUT_PIXELS = 40_000_000
LEAKS = ("Traceback", "/tmp/", "/work/", "site-packages", "hypercorn", "Quart", "Werkzeug")
FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

Form = Literal["json", "multipart"]
Json = dict[str, Any]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """One real server process (as `make run` starts it) for every example."""
    config = make_settings(tmp_path_factory.mktemp("fuzz-steps"), max_upload_bytes=64 * 1024)
    with fuzz_client(config) as client:
        yield client


def dry_run(client: httpx.Client, form: Form, document: Json) -> httpx.Response:
    """The document with the image: as one JSON body, or as a multipart `spec` field."""
    if form == "json":
        return client.post(
            "/jobs", params={"dry_run": "true"}, json={"image_data": IMAGE_B64, **document}
        )
    return client.post(
        "/jobs",
        params={"dry_run": "true"},
        data={"spec": json.dumps(document)},
        files={"image": ("image.png", IMAGE, "image/png")},
    )


def check_answer(response: httpx.Response) -> None:
    """Never a 5xx or a leak; every refusal is a problem+json with a message."""
    assert response.status_code < 500, response.text
    for leak in LEAKS:
        assert leak not in response.text, response.text
    if response.status_code >= 400:
        assert response.headers["content-type"] == "application/problem+json", response.text
        body = response.json()
        assert isinstance(body["error"], str)
        assert body["error"].strip(), body
        assert body["status"] == response.status_code


# --- valid documents -----------------------------------------------------------------------

fractions = st.floats(0.0, 1.0)
shares = st.floats(0.0, 1.0, exclude_min=True)
levels = st.floats(0.0, 10.0)
pixel_amounts = st.integers(1, 300) | st.integers(1, 65_535)
margins = st.integers(0, 64) | st.integers(0, 65_535)
colours = st.from_regex(r"#([0-9a-fA-F]{6}|[0-9a-fA-F]{8})", fullmatch=True) | st.lists(
    st.integers(0, 255), min_size=3, max_size=4
)
compass = st.sampled_from(
    [
        "centre",
        "center",
        "north",
        "northeast",
        "east",
        "southeast",
        "south",
        "southwest",
        "west",
        "northwest",
    ]
)
positions = (
    compass
    | st.sampled_from(["entropy", "attention"])
    | st.fixed_dictionaries({"x": fractions, "y": fractions})
)
sides = st.integers(1, 300) | st.integers(1, MAX_DIMENSION)


def step(
    op: str, required: dict[str, st.SearchStrategy[Any]] | None = None, **optional: Any
) -> Any:
    """A step dictionary: `op`, the required fields, any subset of the optional ones."""
    return st.fixed_dictionaries({"op": st.just(op), **(required or {})}, optional=optional)


resizes = st.builds(
    lambda base, box: {**base, **box},
    step(
        "resize",
        fit=st.sampled_from(["cover", "contain", "fill", "inside", "outside"]),
        position=positions,
        background=colours,
        enlarge=st.booleans(),
    ),
    st.fixed_dictionaries({"width": sides})
    | st.fixed_dictionaries({"height": sides})
    | st.fixed_dictionaries({"width": sides, "height": sides}),
)
valid_steps = st.one_of(
    resizes,
    step(
        "crop",
        {"width": pixel_amounts | shares, "height": pixel_amounts | shares},
        left=st.integers(0, 200) | st.integers(0, 65_535) | fractions,
        top=st.integers(0, 200) | st.integers(0, 65_535) | fractions,
    ),
    step(
        "rotate",
        {"angle": st.sampled_from([0, 90, 180, 270, -90, 360]) | st.floats(-360.0, 360.0)},
        background=colours,
    ),
    step("flip"),
    step("flop"),
    step("grayscale"),
    step("blur", {"sigma": st.floats(0.3, 100.0)}),
    step("sharpen", sigma=st.floats(0.5, 10.0), amount=levels),
    step("modulate", brightness=levels, saturation=levels, contrast=levels),
    step("extend", top=margins, right=margins, bottom=margins, left=margins, background=colours),
    step("trim", threshold=st.integers(0, 255)),
    step("watermark", opacity=fractions, position=compass, scale=shares, margin=margins),
)
# `quality` with a png named is a 400 (it is only for lossy formats): not generated here.
outputs = st.fixed_dictionaries(
    {},
    optional={
        "format": st.sampled_from(["jpeg", "jpg", "webp", "avif"]) | st.none(),
        "quality": st.integers(1, 100) | st.none(),
    },
) | st.fixed_dictionaries({"format": st.sampled_from(["png", "gif"])})
# `steps` is always there: `{"image_data": ...}` alone is the seed's (incomplete) body.
valid_documents = st.fixed_dictionaries(
    {"steps": st.lists(valid_steps, max_size=MAX_STEPS)}, optional={"output": outputs}
)


def expected_answer(document: Json) -> tuple[int, Json]:
    """What the dry run must answer: the plan `imaging` makes for the image, or its 422."""
    steps = msgspec.json.decode(json.dumps(document["steps"]), type=list[Step])
    try:
        result = plan(steps, SIZE, max_pixels=MAX_OUTPUT_PIXELS, watermark=False)
    except GeometryError as exc:
        return 422, {"code": exc.code}
    wanted = document.get("output", {}).get("format")
    output = "jpeg" if wanted == "jpg" else wanted or "png"  # without a format, PNG stays PNG
    if max(result.width, result.height) > MAX_SIDE[output]:  # e.g. a 8x65536 strip as gif
        return 422, {"code": "output_too_large"}
    planned = {"format": output, "width": result.width, "height": result.height}
    return 200, {"variants": {"default": planned | {"exact": result.exact}}}


@pytest.mark.parametrize("form", ["json", "multipart"])
@FUZZ
@given(document=valid_documents)
# A strip taller than GIF can write: the encoder's side limit is a 422, as the model says.
@example(
    document={
        "steps": [{"op": "resize", "width": 8}, {"op": "extend", "top": 65529}],
        "output": {"format": "gif"},
    }
)
def test_a_valid_document_is_planned_never_refused(
    client: httpx.Client, form: Form, document: Json
) -> None:
    response = dry_run(client, form, document)
    check_answer(response)
    status, body = expected_answer(document)
    assert response.status_code == status, response.text
    if status == 422:
        assert response.json()["code"] == body["code"], response.text
    else:
        assert response.json() == body


# --- anything else -------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([2**63, 2**64, -(2**63) - 1, 10**30, 65_536, 4097, 0, -1, -0.0, 1e308])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
OPS = [
    "resize",
    "crop",
    "rotate",
    "flip",
    "flop",
    "blur",
    "sharpen",
    "grayscale",
    "modulate",
    "extend",
    "trim",
    "watermark",
]
FIELDS = [
    "op",
    "width",
    "height",
    "fit",
    "position",
    "background",
    "enlarge",
    "left",
    "top",
    "right",
    "bottom",
    "angle",
    "sigma",
    "amount",
    "brightness",
    "saturation",
    "contrast",
    "threshold",
    "opacity",
    "scale",
    "margin",
    "x",
    "y",
]
op_names = st.sampled_from([*OPS, "sepia", "Resize", "", "RESIZE "]) | st.text(max_size=8)
field_names = st.sampled_from([*FIELDS, "radius", "Width", "op "]) | st.text(max_size=8)


def without(step: Json, key: str) -> Json:
    return {name: value for name, value in step.items() if name != key}


broken_steps = st.one_of(
    # A valid step with one field set to anything (often an unknown field, a wrong type,
    # or out of range), or with one field left out.
    st.builds(lambda s, k, v: {**s, k: v}, valid_steps, field_names, json_values),
    st.builds(without, valid_steps, st.sampled_from(FIELDS)),
    # Random fields under a random op, or no object at all.
    st.builds(
        lambda op, fields: {"op": op, **fields},
        op_names,
        st.dictionaries(field_names, json_values, max_size=4),
    ),
    json_values,
)
any_steps = st.lists(valid_steps | broken_steps, max_size=MAX_STEPS + 3) | st.lists(
    st.just({"op": "flip"}), min_size=MAX_STEPS + 1, max_size=MAX_STEPS + 5
)
broken_documents = st.one_of(
    st.fixed_dictionaries(
        {"steps": any_steps},
        optional={
            "output": outputs | json_values,
            "variants": json_values,
            "extra": json_values,
        },
    ),
    st.fixed_dictionaries({"steps": json_values}),
    st.fixed_dictionaries({"output": st.dictionaries(field_names, json_values, max_size=3)}),
    st.dictionaries(
        st.sampled_from(["steps", "output", "operation", "width", "output_format"])
        | st.text(max_size=8).filter(lambda key: key != "image_data"),
        json_values,
        max_size=4,
    ),
)


@pytest.mark.parametrize("form", ["json", "multipart"])
@FUZZ
@given(document=broken_documents)
def test_any_document_gets_a_clear_answer(client: httpx.Client, form: Form, document: Json) -> None:
    response = dry_run(client, form, document)
    check_answer(response)
    assert response.status_code in (200, 400, 422), response.text
    if response.status_code == 422:
        assert response.json()["code"] in {
            "crop_outside_image",
            "output_too_large",
            "watermark_not_configured",
        }, response.text
