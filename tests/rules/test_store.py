"""The rules file: round trip, errors that name file and place, atomic and serialised saves."""

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from rules.model import Rule
from rules.store import RulesFile, RulesFileError, dump_rules, parse_rules


def rule(rule_id: str, topic: str = "a/{x}", stream: str = "s_${x}", **fields: Any) -> Rule:
    return Rule.model_validate({"id": rule_id, "topic": topic, "stream": stream, **fields})


RULES = [
    rule("temps", "sensors/{site}/+/temp", "temps_${site}", key="${site}"),
    rule("all", "#", "everything", payload="json", qos=0, enabled=False),
    rule("sys", "$SYS/#", "sys", key="${topic}", qos=2),
]


def leftovers(directory: Path, name: str) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name != name)


def test_missing_file_loads_as_no_rules(tmp_path: Path) -> None:
    assert RulesFile(tmp_path / "rules.json").load() == []


def test_saved_rules_load_back_equal_and_in_order(tmp_path: Path) -> None:
    store = RulesFile(tmp_path / "rules.json")

    store.save(RULES)

    assert store.load() == RULES
    assert leftovers(tmp_path, "rules.json") == []


def test_saved_file_is_indented_json_with_stable_field_order(tmp_path: Path) -> None:
    store = RulesFile(tmp_path / "rules.json")
    store.save(RULES)
    first = store.path.read_bytes()

    store.save(store.load())

    assert store.path.read_bytes() == first  # saving what was loaded changes nothing
    text = first.decode()
    assert text.endswith("\n")
    assert '\n  "rules": [\n    {\n      "id": "temps",' in text
    document = json.loads(text)
    assert document["version"] == 1
    assert list(document["rules"][0]) == [
        "id",
        "topic",
        "stream",
        "key",
        "payload",
        "qos",
        "enabled",
    ]
    assert text == dump_rules(RULES)


def test_save_creates_the_directory(tmp_path: Path) -> None:
    store = RulesFile(tmp_path / "data" / "sub" / "rules.json")

    store.save(RULES[:1])

    assert store.load() == RULES[:1]


def test_save_of_no_rules_writes_an_empty_list(tmp_path: Path) -> None:
    store = RulesFile(tmp_path / "rules.json")
    store.save(RULES)

    store.save([])

    assert store.load() == []
    assert json.loads(store.path.read_text()) == {"version": 1, "rules": []}


def test_hand_written_bare_list_and_defaults_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    path.write_text('[{"id": "a", "topic": "a/#", "stream": "a"}]')

    assert RulesFile(path).load() == [rule("a", "a/#", "a")]


def test_invalid_json_names_the_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    path.write_text('{\n  "rules": [\n    {"id": "a",, "topic": "a"}\n  ]\n}\n')

    with pytest.raises(RulesFileError) as caught:
        RulesFile(path).load()

    assert str(caught.value).startswith(f"{path}:3:16: invalid JSON:")


def test_truncated_file_is_an_error_not_an_empty_rule_set(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    path.write_text('{"version": 1, "rules": [{"id": "a"')

    with pytest.raises(RulesFileError, match=r"rules\.json:1:\d+: invalid JSON"):
        RulesFile(path).load()
    path.write_text("")
    with pytest.raises(RulesFileError, match=r"rules\.json:1:1: invalid JSON"):
        RulesFile(path).load()


def test_invalid_rule_names_the_file_index_id_and_field(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    document = json.loads(dump_rules(RULES))
    document["rules"][2]["stream"] = "sys_${node}"
    path.write_text(json.dumps(document))

    with pytest.raises(RulesFileError) as caught:
        RulesFile(path).load()

    message = str(caught.value)
    assert message.startswith(f"{path}: rule 2 (id 'sys'): stream: unknown placeholder ${{node}}")


def test_rule_without_an_id_is_named_by_index(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    path.write_text('{"rules": [{"topic": "a", "stream": "a"}]}')

    with pytest.raises(RulesFileError, match=r"rules\.json: rule 0: id: Field required"):
        RulesFile(path).load()


def test_non_utf8_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    path.write_bytes(b'{"rules": ["\xff"]}')

    with pytest.raises(
        RulesFileError, match=r"rules\.json: not UTF-8 text \(bad byte at offset 12\)"
    ):
        RulesFile(path).load()


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ('"rules"', "expected a JSON object with a 'rules' list, not str"),
        ('{"version": 2, "rules": []}', "unsupported version 2"),
        ('{"version": true, "rules": []}', "unsupported version True"),
        ('{"rules": {}}', "'rules' must be a list, not dict"),
        ('{"rules": [], "rulez": []}', "unknown top-level keys ['rulez']"),
        ('{"rules": [1]}', "rule 0: rule: a rule is a JSON object, not int"),
    ],
)
def test_wrong_document_shapes_are_refused_naming_the_file(
    tmp_path: Path, content: str, fragment: str
) -> None:
    path = tmp_path / "rules.json"
    path.write_text(content)

    with pytest.raises(RulesFileError) as caught:
        RulesFile(path).load()

    assert str(caught.value).startswith(f"{path}: ")
    assert fragment in str(caught.value)


def test_duplicate_ids_are_refused_on_load(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"rules": [{"id": "a", "topic": "a", "stream": "a"}] * 2}, indent=1))

    with pytest.raises(RulesFileError, match="rule 1 \\(id 'a'\\): id: duplicate id, rule 0"):
        RulesFile(path).load()


def test_duplicate_ids_are_refused_on_save_and_the_file_is_untouched(tmp_path: Path) -> None:
    store = RulesFile(tmp_path / "rules.json")
    store.save(RULES)
    before = store.path.read_bytes()

    with pytest.raises(RulesFileError, match="duplicate rule id 'temps'"):
        store.save([RULES[0], RULES[1], RULES[0]])

    assert store.path.read_bytes() == before
    assert leftovers(tmp_path, "rules.json") == []


def test_failed_replace_keeps_the_old_file_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RulesFile(tmp_path / "rules.json")
    store.save(RULES)
    before = store.path.read_bytes()

    def refuse(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="No space left"):
        store.save(RULES[:1])

    assert store.path.read_bytes() == before
    assert leftovers(tmp_path, "rules.json") == []


def test_failed_fsync_keeps_the_old_file_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RulesFile(tmp_path / "rules.json")
    store.save(RULES)
    before = store.path.read_bytes()

    def refuse(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", refuse)
    with pytest.raises(OSError, match="Input/output error"):
        store.save(RULES[:1])

    assert store.path.read_bytes() == before
    assert leftovers(tmp_path, "rules.json") == []


def test_failed_first_save_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = RulesFile(tmp_path / "rules.json")

    def refuse(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="No space left"):
        store.save(RULES)

    assert list(tmp_path.iterdir()) == []
    assert store.load() == []


def test_concurrent_saves_leave_one_whole_version(tmp_path: Path) -> None:
    store = RulesFile(tmp_path / "rules.json")
    versions = [[rule(f"t{n}-{i}") for i in range(n % 5 + 1)] for n in range(8)]
    errors: list[BaseException] = []

    def save_many(version: list[Rule]) -> None:
        try:
            for _ in range(10):
                store.save(version)
                assert store.load() in versions  # readers never see a partial file
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=save_many, args=(v,)) for v in versions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)

    assert errors == []
    assert store.load() in versions
    assert leftovers(tmp_path, "rules.json") == []


def test_parse_rules_names_the_source_rule_and_field() -> None:
    items = [
        {"id": "a", "topic": "a", "stream": "a"},
        {"id": "b", "topic": "a/#/b", "stream": "b"},
    ]

    with pytest.raises(RulesFileError) as caught:
        parse_rules(items, "bridge.toml")

    assert str(caught.value).startswith(
        "bridge.toml: rule 1 (id 'b'): topic: '#' must be the last level"
    )


def test_parse_rules_refuses_duplicate_ids_and_returns_rules_in_order() -> None:
    items: list[dict[str, Any]] = [
        {"id": "b", "topic": "b", "stream": "b"},
        {"id": "a", "topic": "a", "stream": "a", "qos": 2},
    ]

    assert [r.id for r in parse_rules(items, "bridge.toml")] == ["b", "a"]
    with pytest.raises(RulesFileError, match=r"bridge\.toml: rule 2 \(id 'b'\): id: duplicate"):
        parse_rules([*items, items[0]], "bridge.toml")
