"""The sources file in the data dir (`sources.json`), like the rules file beside it.

    {"version": 1, "sources": [{"id": "shop", "kind": "postgres", ...}]}

Saved atomically (rules.store.write_atomically). The DSN is stored as given, password included
when the DSN holds one: the file is created readable by its owner only. Prefer `password_env`.
"""

import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final

from bridge.cdc.config import Source, SourceError, parse_source
from rules.store import write_atomically

__all__ = ["SourcesFile", "SourcesFileError", "parse_sources"]

FILE_VERSION: Final = 1


class SourcesFileError(ValueError):
    """Sources that cannot be loaded; the message names where and the field."""


def parse_sources(items: Iterable[object], origin: str) -> list[Source]:
    sources: list[Source] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        try:
            source = parse_source(item)
        except SourceError as exc:
            which = item.get("id") if isinstance(item, Mapping) else None
            name = f"source {index}" + (f" (id {which!r})" if isinstance(which, str) else "")
            raise SourcesFileError(f"{origin}: {name}: {exc}") from None
        if source.id in seen:
            raise SourcesFileError(f"{origin}: source {index}: id: duplicate id {source.id!r}")
        seen.add(source.id)
        sources.append(source)
    return sources


Transform = Callable[[Mapping[str, Any]], Mapping[str, Any]]


def _as_is(source: Mapping[str, Any]) -> Mapping[str, Any]:
    return source


class SourcesFile:
    """`seal` is applied to each source document before it is written, `open` to each one read
    (the bridge seals passwords: bridge/config/secrets.py)."""

    def __init__(self, path: Path, *, seal: Transform = _as_is, open: Transform = _as_is) -> None:
        self.path = Path(path)
        self._seal = seal
        self._open = open

    def load(self) -> list[Source]:
        """The stored sources; [] when the file does not exist."""
        try:
            text = self.path.read_text("utf-8")
        except FileNotFoundError:
            return []
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SourcesFileError(f"{self.path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
        if not isinstance(document, dict) or document.get("version") != FILE_VERSION:
            raise SourcesFileError(f"{self.path}: expected {{'version': 1, 'sources': [...]}}")
        items = document.get("sources", [])
        if not isinstance(items, list):
            raise SourcesFileError(f"{self.path}: 'sources' must be a list")
        opened = [self._open(item) if isinstance(item, dict) else item for item in items]
        return parse_sources(opened, str(self.path))

    def save(self, sources: Iterable[Source]) -> None:
        document = {
            "version": FILE_VERSION,
            "sources": [self._seal(source.model_dump(mode="json")) for source in sources],
        }
        text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
        write_atomically(self.path, text.encode("utf-8"))
        os.chmod(self.path, 0o600)
