"""`/docs`: Swagger UI from files the bridge serves itself, so it works offline.

FastAPI's own /docs loads Swagger UI from a CDN, and its page starts it with an inline
script, which the Content-Security-Policy (bridge/api/security.py) forbids. Here the page
loads the Swagger UI dist files from the `swagger-ui-bundle-v2` package (Swagger UI 5: it
renders OpenAPI 3.1, which FastAPI writes; the older `swagger-ui-bundle` ships 4.x, which does
not) and starts it with a small script of ours (bridge/ui/docs.js). No token: the OpenAPI
document describes the API and holds no data.
"""

from pathlib import Path
from typing import Final

from fastapi import APIRouter, HTTPException, Response, status
from fastapi.responses import FileResponse, HTMLResponse
from swagger_ui_bundle import swagger_ui_path

from bridge.api.routes.ui import ui_file

SWAGGER_FILES: Final = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
}

PAGE: Final = """\
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>hstream-bridge API</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/docs/assets/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/assets/docs.js"></script>
</body>
</html>
"""

router = APIRouter(include_in_schema=False)


@router.get("/docs")
async def docs() -> HTMLResponse:
    return HTMLResponse(PAGE, headers={"Cache-Control": "no-cache"})


@router.get("/docs/assets/{name}")
async def docs_asset(name: str) -> Response:
    if name == "docs.js":
        return Response(
            ui_file(name),
            media_type="text/javascript; charset=utf-8",
            headers={"Cache-Control": "no-cache"},
        )
    media_type = SWAGGER_FILES.get(name)
    if media_type is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no docs file {name!r}")
    # The dist files change only with the package: let the browser keep them for a day.
    return FileResponse(
        Path(str(swagger_ui_path / name)),
        media_type=media_type,
        headers={"Cache-Control": "public, max-age=86400"},
    )
