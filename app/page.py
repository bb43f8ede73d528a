"""The web page: `/` and its files under `/static/`, from this package's `static/` folder.

The files are read once, when this module is imported (a few tens of KB), into a table
keyed by their path under `static/`: a request names an entry of that table or gets a 404,
so no part of a URL ever reaches the file system. `index.html` refers to each file with
`?v=<its hash>`; a request carrying the current hash may be cached for a year, any other
one is revalidated (`no-cache` with an ETag), so a new release is never hidden by a cache.

Quart gives every app a `/static/<path:filename>` route (endpoint `static`) serving the
app's `static/` folder, which is this one; registering this blueprint hands that endpoint to
`static_file` below, so one code path serves these files with the headers above.
"""

from __future__ import annotations

import hashlib
import mimetypes
import re
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable

from quart import Blueprint, Response, request
from quart.blueprints import BlueprintSetupState

from app.errors import NotFound

__all__ = ["ASSETS", "blueprint"]

blueprint = Blueprint("page", __name__)

STATIC_PREFIX = "/static/"
INDEX = "index.html"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
}
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
# The page loads nothing from elsewhere: its own files, and images from blob: URLs.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
# `/static/<name>` in index.html, to which the current hash is added.
_ASSET_REFERENCE = re.compile(r"""(["'])/static/([A-Za-z0-9_./-]+)\1""")


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    version: str  # a hash of the body: the ETag, and the `?v=` that index.html sends

    @classmethod
    def of(cls, name: str, body: bytes) -> Asset:
        suffix = name[name.rfind(".") :].lower() if "." in name else ""
        content_type = CONTENT_TYPES.get(suffix) or (
            mimetypes.guess_type(name)[0] or "application/octet-stream"
        )
        return cls(body, content_type, hashlib.sha256(body).hexdigest()[:16])


def _read(folder: Traversable, prefix: str = "") -> dict[str, Asset]:
    assets: dict[str, Asset] = {}
    for entry in folder.iterdir():
        name = prefix + entry.name
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            assets |= _read(entry, name + "/")
        elif entry.is_file():
            assets[name] = Asset.of(name, entry.read_bytes())
    return assets


def _versioned_index(assets: dict[str, Asset]) -> Asset:
    """index.html with `?v=<hash>` added to each reference to one of the files."""

    def versioned(match: re.Match[str]) -> str:
        quote, name = match.group(1), match.group(2)
        asset = assets.get(name)
        suffix = f"?v={asset.version}" if asset is not None else ""
        return f"{quote}{STATIC_PREFIX}{name}{suffix}{quote}"

    text = assets[INDEX].body.decode()
    return Asset.of(INDEX, _ASSET_REFERENCE.sub(versioned, text).encode())


ASSETS: dict[str, Asset] = _read(files("app").joinpath("static"))
PAGE = _versioned_index(ASSETS)


async def _send(asset: Asset, cache_control: str) -> Response:
    headers = {
        "Cache-Control": cache_control,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    if asset.content_type.startswith("text/html"):
        headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response = Response(asset.body, status=200, headers=headers, content_type=asset.content_type)
    response.set_etag(asset.version)
    return await response.make_conditional(request)


@blueprint.get("/")
async def index() -> Response:
    """The page."""
    return await _send(PAGE, REVALIDATE)


async def static_file(filename: str) -> Response:
    """One file of `static/`, by its path there; anything else is a 404."""
    asset = PAGE if filename == INDEX else ASSETS.get(filename)
    if asset is None:
        raise NotFound(f"no file {filename[:80]!r} under /static/")
    fresh = request.args.get("v") == asset.version
    return await _send(asset, IMMUTABLE if fresh else REVALIDATE)


@blueprint.record_once
def _serve_static(state: BlueprintSetupState) -> None:
    app = state.app
    if "static" in app.view_functions:
        app.view_functions["static"] = static_file
    else:
        app.add_url_rule(STATIC_PREFIX + "<path:filename>", "static", static_file)
