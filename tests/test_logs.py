import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from bridge.hstream.url import parse_url
from bridge.logs import redact_url, setup_logging

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


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("hstream://bridge:s3cret@hserver:6570", "hstream://bridge:***@hserver:6570"),
        (
            "hstreams://u:p@h1:6570,h2:6570,[::1]:6570",
            "hstreams://u:***@h1:6570,h2:6570,[::1]:6570",
        ),
        ("hstream://u:p@ss:w/rd@h1,h2", "hstream://u:***@h1,h2"),
        ("mqtts://bridge:pa%40ss@emqx:8883", "mqtts://bridge:***@emqx:8883"),
        ("mqtt://:token@emqx", "mqtt://:***@emqx"),
    ],
)
def test_redact_url_hides_the_password_and_keeps_the_rest(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


@pytest.mark.parametrize(
    "url",
    [
        "hstream://127.0.0.1:6570",
        "hstream://h1:6570,h2:6570",
        "hstream://user@h1,h2",
        "hstream://user:@h1",
        "mqtt://emqx:1883",
        "not a url: user:pass@host",
        "",
    ],
)
def test_redact_url_leaves_urls_without_a_password_unchanged(url: str) -> None:
    assert redact_url(url) == url


def test_redact_url_redacts_every_url_in_a_text() -> None:
    text = "MQTT mqtt://a:pw1@emqx:1883, HStreamDB hstream://b:pw2@h1,h2 (mqtt://c:pw3@x,y://z)"
    assert redact_url(text) == (
        "MQTT mqtt://a:***@emqx:1883, HStreamDB hstream://b:***@h1,h2 (mqtt://c:***@x,y://z)"
    )


class Unprintable:
    def __str__(self) -> str:
        return "hstream://u:obj-secret@h"


@pytest.mark.parametrize("as_json", [False, True])
def test_passwords_in_urls_never_reach_the_log(as_json: bool) -> None:
    out = io.StringIO()
    setup_logging("info", json=as_json, stream=out)
    log = logging.getLogger("bridge.service")
    log.info("HStreamDB at hstream://u:in-message@h1,h2 is not reachable")
    log.info("bridge running: MQTT %s, HStreamDB %s", "mqtt://m:in-arg@emqx", Unprintable())
    log.info("%(url)s", {"url": "hstreams://u:in-mapping@h"})
    log.warning("connect failed", extra={"url": "mqtts://m:in-extra@emqx", "attempt": 3})
    try:
        parse_url("hstream://u:in-traceback@")  # names no host: the error quotes the URL
    except ValueError:
        log.exception("cannot start")
    text = out.getvalue()
    for secret in ("in-message", "in-arg", "obj-secret", "in-mapping", "in-extra", "in-traceback"):
        assert secret not in text, secret
    got = lines(out)
    assert len(got) == 5
    assert all("***@" in line for line in got), got
    if as_json:
        events = [json.loads(line) for line in got]
        assert events[0]["message"] == "HStreamDB at hstream://u:***@h1,h2 is not reachable"
        assert events[1]["message"] == (
            "bridge running: MQTT mqtt://m:***@emqx, HStreamDB hstream://u:***@h"
        )
        assert events[3]["url"] == "mqtts://m:***@emqx"
        assert events[3]["attempt"] == 3
        assert "hstream://u:***@" in events[4]["exc"]
    else:
        assert got[2].endswith(" hstreams://u:***@h")
        assert got[3].endswith(" url=mqtts://m:***@emqx attempt=3")


def test_a_record_without_a_password_is_left_as_it_was() -> None:
    out = io.StringIO()
    setup_logging("info", stream=out)
    record = logging.LogRecord("bridge", logging.INFO, __file__, 1, "at %s: %d%%", ("x", 5), None)
    logging.getLogger("bridge").handle(record)
    assert (record.msg, record.args) == ("at %s: %d%%", ("x", 5))
    assert lines(out)[0].endswith(" at x: 5%")
