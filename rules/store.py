"""The rules file in the data dir, and rule lists from other sources (the TOML config).

The file is JSON for humans to read and, carefully, to edit:

    {
      "version": 1,
      "rules": [
        {"id": "temps", "topic": "sensors/{site}/+/temp", ...}
      ]
    }

A bare JSON list of rules is accepted too. Saving is atomic (a temp file in the same directory,
fsync, rename, fsync of the directory), so a crash at any instant leaves either the old file or
the new one, never a mix. Rules keep the order they are given in: it is the order matches are
reported in.
"""

import json
import os
import tempfile
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final

from rules.model import Rule, RuleError, parse_rule

__all__ = [
    "FILE_VERSION",
    "RulesFile",
    "RulesFileError",
    "dump_rules",
    "parse_rules",
    "write_atomically",
]

FILE_VERSION: Final = 1


class RulesFileError(ValueError):
    """Rules that cannot be loaded; the message names the source and where in it."""


def parse_rules(items: Iterable[object], source: str) -> list[Rule]:
    """Validate decoded rules (a list of dicts) from `source` (a file name, "config.toml", ...).

    RulesFileError names the source, the rule's index (and id when it has one) and the field;
    two rules with the same id are refused too.
    """
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        try:
            rule = parse_rule(item)
        except RuleError as exc:
            raise RulesFileError(f"{source}: {_which(index, item)}: {exc}") from None
        first = seen.setdefault(rule.id, index)
        if first != index:
            raise RulesFileError(
                f"{source}: {_which(index, item)}: id: duplicate id, rule {first} has it too"
            )
        rules.append(rule)
    return rules


def _which(index: int, item: object) -> str:
    """`rule 3 (id 'temps')`, or `rule 3` when the item has no usable id."""
    rule_id = item.get("id") if isinstance(item, Mapping) else None
    return f"rule {index} (id {rule_id!r})" if isinstance(rule_id, str) else f"rule {index}"


def dump_rules(rules: Iterable[Rule]) -> str:
    """The rules file text: indented JSON, fields in model order, rules in the given order."""
    document = {
        "version": FILE_VERSION,
        "rules": [rule.model_dump(mode="json") for rule in rules],
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


class RulesFile:
    """The JSON rules file at `path`: `load()` and atomic `save()`.

    `save` may be called from several threads; saves do not interleave. Reads do not take the
    lock: a concurrent save replaces the file atomically, so a reader sees one whole version.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RulesFile({str(self.path)!r})"

    def load(self) -> list[Rule]:
        """The stored rules; [] when the file does not exist; RulesFileError when it is bad."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RulesFileError(
                f"{self.path}: not UTF-8 text (bad byte at offset {exc.start})"
            ) from None
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RulesFileError(
                f"{self.path}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}"
            ) from None
        return parse_rules(self._rule_list(document), str(self.path))

    def _rule_list(self, document: object) -> Sequence[object]:
        if isinstance(document, list):
            return document
        if not isinstance(document, dict):
            raise RulesFileError(
                f"{self.path}: expected a JSON object with a 'rules' list, not"
                f" {type(document).__name__}"
            )
        version = document.get("version", FILE_VERSION)
        if version != FILE_VERSION or isinstance(version, bool):
            raise RulesFileError(
                f"{self.path}: unsupported version {version!r} (this bridge reads {FILE_VERSION})"
            )
        unknown = sorted(set(document) - {"version", "rules"})
        if unknown:
            raise RulesFileError(f"{self.path}: unknown top-level keys {unknown}")
        rules = document.get("rules", [])
        if not isinstance(rules, list):
            raise RulesFileError(f"{self.path}: 'rules' must be a list, not {type(rules).__name__}")
        return rules

    def save(self, rules: Iterable[Rule]) -> None:
        """Replace the file with `rules`, atomically and durably.

        RulesFileError (and nothing written) when two rules share an id, since `load` would
        refuse the result. OSError when the disk refuses; the old file is then left as it was.
        """
        rules = list(rules)
        seen: set[str] = set()
        for rule in rules:
            if rule.id in seen:
                raise RulesFileError(f"{self.path}: not saved: duplicate rule id {rule.id!r}")
            seen.add(rule.id)
        text = dump_rules(rules).encode("utf-8")
        with self._lock:
            write_atomically(self.path, text)


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a crash leaves the old or the new content, whole."""
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as temp:
            temp.write(data)
            temp.flush()
            os.fsync(temp.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    # The rename is durable only once the directory entry is on disk.
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
