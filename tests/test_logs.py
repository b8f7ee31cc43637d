import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from bridge.logs import setup_logging

CONTEXT = {"rule": "temps", "stream": "temps_site1", "code": 800, "topic": "sensors/site 1/t"}


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    access = logging.getLogger("uvicorn.access").level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("uvicorn.access").setLevel(access)


def fail() -> None:
    raise ValueError("bad\nthing")


def lines(out: io.StringIO) -> list[str]:
    return out.getvalue().splitlines()


def test_plain_line_has_time_level_logger_message_and_extra_fields() -> None:
    out = io.StringIO()
    setup_logging("info", stream=out)
    logging.getLogger("bridge.sender").warning("append failed, retrying", extra=CONTEXT)
    [line] = lines(out)
    assert re.match(
        r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z WARNING bridge\.sender append failed, retrying ",
        line,
    )
    assert line.endswith(' rule=temps stream=temps_site1 code=800 topic="sensors/site 1/t"')


def test_json_line_is_one_object_with_the_same_fields() -> None:
    out = io.StringIO()
    setup_logging("info", json=True, stream=out)
    logging.getLogger("bridge.sender").warning("append failed, retrying", extra=CONTEXT)
    [line] = lines(out)
    event = json.loads(line)
    assert event["level"] == "warning"
    assert event["logger"] == "bridge.sender"
    assert event["message"] == "append failed, retrying"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", event["time"])
    assert {k: event[k] for k in CONTEXT} == CONTEXT


@pytest.mark.parametrize("as_json", [False, True])
def test_a_traceback_stays_on_one_line(as_json: bool) -> None:
    out = io.StringIO()
    setup_logging("info", json=as_json, stream=out)
    try:
        fail()
    except ValueError:
        logging.getLogger("bridge.x").exception("failed\nbadly", extra={"rule": "r"})
    [line] = lines(out)
    if as_json:
        event = json.loads(line)
        assert "ValueError: bad" in event["exc"]
        assert event["rule"] == "r"
    else:
        assert "failed\\nbadly rule=r exc=" in line
        assert "ValueError: bad" in line


def test_level_filters_and_debug_is_off_by_default() -> None:
    out = io.StringIO()
    setup_logging(stream=out)
    log = logging.getLogger("bridge.y")
    log.debug("per-message detail")
    log.info("state change")
    assert [line.split(" ", 3)[3] for line in lines(out)] == ["state change"]


def test_calling_again_replaces_the_handler_instead_of_adding_one() -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging("info", stream=first)
    setup_logging("debug", json=True, stream=second)
    logging.getLogger("bridge.z").debug("once")
    assert first.getvalue() == ""
    assert json.loads(second.getvalue())["message"] == "once"


def test_uvicorn_access_log_is_quiet_at_info() -> None:
    out = io.StringIO()
    setup_logging("info", stream=out)
    logging.getLogger("uvicorn.access").info('127.0.0.1 - "GET /health" 200')
    assert out.getvalue() == ""


def test_unknown_level_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="debug, info, warning, error"):
        setup_logging("verbose")
