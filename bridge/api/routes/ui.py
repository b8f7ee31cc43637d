"""`/ui`: the operator's console, three static files shipped in the package (bridge/ui/).

The files hold no data, so they are served without a token; every call the page makes for
data (/rules, /stats, /dead-letters) needs it. Plain HTML, CSS and JavaScript: no build step,
nothing loaded from elsewhere (the Content-Security-Policy of bridge/api/security.py forbids
it), and they work offline.
"""

import functools
from importlib import resources
from typing import Final

from fastapi import APIRouter, HTTPException, Response, status

UI_FILES: Final = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}

router = APIRouter(include_in_schema=False)


@functools.cache
def ui_file(name: str) -> bytes:
    """A file of bridge/ui/, read once."""
    return (resources.files("bridge") / "ui" / name).read_bytes()


def _serve(name: str) -> Response:
    media_type = UI_FILES.get(name)
    if media_type is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no console file {name!r}")
    # Revalidated on every load, so a new bridge version never runs an old script.
    return Response(ui_file(name), media_type=media_type, headers={"Cache-Control": "no-cache"})


@router.get("/ui")
@router.get("/ui/")
async def console() -> Response:
    return _serve("index.html")


@router.get("/ui/{name}")
async def console_file(name: str) -> Response:
    return _serve(name)
