"""The console's static files (/ui), the offline Swagger UI (/docs), and the security headers.

The page itself, in a browser against the real bridge, is tests/ui/test_console.py.
"""

import re
from html.parser import HTMLParser

import httpx
import pytest

from bridge.api.security import CONTENT_SECURITY_POLICY
from tests.api.conftest import served
from tests.api.memory_bridge import MemoryBridge

SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


class Page(HTMLParser):
    """The URLs a page loads, and anything inline that a strict CSP would block."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name in ("src", "href"):
            if values.get(name):
                self.urls.append(str(values[name]))
        if tag == "style" or "style" in values:
            self.inline.append(f"<{tag}> style")
        self.inline += [f"<{tag} {name}>" for name, _ in attrs if name.startswith("on")]
        if tag == "script":
            if not values.get("src"):
                self.inline.append("<script> without src")
            self._in_script = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append(f"script text {data.strip()[:40]!r}")


def parse(html: str) -> Page:
    page = Page()
    page.feed(html)
    return page


def assert_local(urls: list[str]) -> None:
    for url in urls:
        if url.startswith("data:"):
            continue
        assert url.startswith("/"), url
        assert not url.startswith("//"), url  # another host, scheme-relative


@pytest.mark.parametrize("path", ["/ui", "/ui/"])
async def test_the_console_page_loads_only_its_own_files_and_nothing_inline(
    client: httpx.AsyncClient, path: str
) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    page = parse(response.text)
    assert set(page.urls) >= {"/ui/app.js", "/ui/style.css", "/docs"}
    assert_local(page.urls)
    assert page.inline == []


@pytest.mark.parametrize(
    ("name", "media_type"),
    [("app.js", "text/javascript"), ("style.css", "text/css"), ("index.html", "text/html")],
)
async def test_the_console_files_are_served_with_their_types(
    client: httpx.AsyncClient, name: str, media_type: str
) -> None:
    response = await client.get(f"/ui/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"] == f"{media_type}; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    assert len(response.content) > 100


async def test_the_console_script_loads_nothing_from_elsewhere(client: httpx.AsyncClient) -> None:
    script = (await client.get("/ui/app.js")).text
    style = (await client.get("/ui/style.css")).text
    for text in (script, style):
        assert not re.search(r"https?://", text)
        assert "@import" not in text
    # The token travels in a header, never in a URL.
    assert "Authorization" in script
    assert not re.search(r"[?&](token|access_token)=", script)


@pytest.mark.parametrize("path", ["/ui/nope.js", "/ui/../bridge/service.py", "/ui/docs.js"])
async def test_other_paths_under_ui_are_404(client: httpx.AsyncClient, path: str) -> None:
    assert (await client.get(path)).status_code == 404


async def test_docs_reference_only_local_urls_and_every_asset_is_served(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    page = parse(response.text)
    assert page.inline == []  # the CSP would block an inline start script
    assert_local(page.urls)
    assets = [url for url in page.urls if not url.startswith("data:")]
    assert sorted(assets) == [
        "/docs/assets/docs.js",
        "/docs/assets/swagger-ui-bundle.js",
        "/docs/assets/swagger-ui.css",
    ]
    for url in assets:
        asset = await client.get(url)
        assert asset.status_code == 200, url
        kind = "text/css" if url.endswith(".css") else "text/javascript"
        assert asset.headers["content-type"] == f"{kind}; charset=utf-8", url
    bundle = await client.get("/docs/assets/swagger-ui-bundle.js")
    assert len(bundle.content) > 500_000  # the real Swagger UI, not a stub
    start = (await client.get("/docs/assets/docs.js")).text
    assert '"/openapi.json"' in start
    assert "validatorUrl: null" in start  # no badge fetched from swagger.io


async def test_only_the_known_docs_assets_are_served(client: httpx.AsyncClient) -> None:
    for name in ("index.html", "swagger-ui.js.map", "../__init__.py", "oauth2-redirect.html"):
        assert (await client.get(f"/docs/assets/{name}")).status_code == 404, name
    assert (await client.get("/redoc")).status_code == 404
    assert (await client.get("/docs/oauth2-redirect")).status_code == 404


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/ui"),
        ("GET", "/ui/app.js"),
        ("GET", "/docs"),
        ("GET", "/docs/assets/swagger-ui.css"),
        ("GET", "/rules"),
        ("GET", "/ready"),
        ("GET", "/metrics"),
        ("GET", "/rules/nope"),  # 404
        ("POST", "/rules"),  # 422
    ],
)
async def test_every_answer_carries_the_security_headers(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await client.request(method, path)
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, (path, name)


async def test_refusals_before_the_app_carry_them_too(secured_bridge: MemoryBridge) -> None:
    async with served(secured_bridge) as client:
        unauthorized = await client.get("/stats")
        misdirected = await client.get("/ui", headers={"Host": "evil.example"})
    assert (unauthorized.status_code, misdirected.status_code) == (401, 421)
    for response in (unauthorized, misdirected):
        for name, value in SECURITY_HEADERS.items():
            assert response.headers.get(name) == value, (response.status_code, name)


async def test_the_console_and_docs_need_no_token_but_their_data_does(
    secured_bridge: MemoryBridge,
) -> None:
    async with served(secured_bridge) as client:
        for path in ("/ui", "/ui/app.js", "/ui/style.css", "/docs", "/docs/assets/docs.js"):
            assert (await client.get(path)).status_code == 200, path
        for path in ("/stats", "/dead-letters", "/rules"):
            assert (await client.get(path)).status_code == 401, path
