"""The dashboard's files: GET /ui (the page) and GET /ui/static/{name} (its scripts and styles).

No authentication here: the page holds no data. It asks for an API key and calls the API with it.
Only the files of the `conduit/ui/static` folder are served, by exact name.
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

import conduit.ui
from conduit.errors import APIError

router = APIRouter()

STATIC = Path(conduit.ui.__file__).resolve().parent / "static"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9]+)+")
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
# The page loads nothing from elsewhere and runs no inline script: a prompt or a document that
# slipped through as markup could not run or phone home.
POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
          "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def _file(name: str) -> Response:
    path = STATIC / name
    suffix = Path(name).suffix
    # One plain name of a file in the folder: no separators, no dot-files, no "..", a known type.
    if not NAME.fullmatch(name) or suffix not in TYPES or not path.is_file() or path.resolve().parent != STATIC:
        raise APIError(404, f"No dashboard file '{name}'.", code="not_found")
    return Response(path.read_bytes(), media_type=TYPES[suffix], headers={
        "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff", "Content-Security-Policy": POLICY,
        "Referrer-Policy": "no-referrer"})


@router.get("/ui", include_in_schema=False)
@router.get("/ui/", include_in_schema=False)
async def index() -> Response:
    return _file("index.html")


@router.get("/ui/static/{name}", include_in_schema=False)
async def static(name: str) -> Response:
    return _file(name)
