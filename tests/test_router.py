"""The router alone: records, attributes and dead letters made from one message."""

import time
import tracemalloc
from typing import Any

from bridge.hstream._api import FLAG_JSON, FLAG_RAW, pb
from bridge.mqtt import Message
from bridge.router import HEADER_CACHE_BYTES, Router
from rules import Matcher, Rule


def message(topic: str, payload: bytes, props: tuple[tuple[str, str], ...] = ()) -> Message:
    return Message(topic, payload, 1, False, props, time.monotonic())


def router(*rules: Rule) -> Router:
    return Router(Matcher(rules), dead_letter_stream="dlq", max_record_bytes=2048)


def decode(data: bytes) -> Any:
    record = pb.HStreamRecord()
    record.ParseFromString(data)
    return record


def test_raw_and_json_records_carry_key_and_mqtt_attributes() -> None:
    r = router(
        Rule(id="raw", topic="s/{dev}", stream="raw_${dev}", key="${dev}"),
        Rule(id="js", topic="s/+", stream="js", payload="json"),
    )
    msg = message("s/d1", b'{"t": 1}', (("unit", "C"),))
    raw, js = r.outputs(msg, r.routes(msg.topic))
    assert (raw.stream, raw.key, raw.reason) == ("raw_d1", "d1", None)
    record = decode(raw.data)
    assert record.header.flag == FLAG_RAW
    assert record.payload == b'{"t": 1}'
    assert dict(record.header.attributes) == {
        "mqtt.topic": "s/d1",
        "mqtt.qos": "1",
        "mqtt.retain": "false",
        "mqtt.user.unit": "C",
    }
    assert decode(js.data).header.flag == FLAG_JSON


def test_cached_headers_do_not_leak_between_keys_or_topics() -> None:
    r = router(Rule(id="k", topic="k/{dev}", stream="k", key="${dev}"))
    first = [
        r.outputs(m, r.routes(m.topic))[0] for m in (message("k/a", b"1"), message("k/b", b"2"))
    ]
    again = r.outputs(message("k/a", b"3"), r.routes("k/a"))[0]
    assert [decode(o.data).header.key for o in (*first, again)] == ["a", "b", "a"]
    assert decode(again.data).payload == b"3"


def test_oversized_record_and_unencodable_text_become_dead_letters() -> None:
    r = router(Rule(id="big", topic="big/#", stream="big"))
    big = r.outputs(message("big/x", b"x" * 4096), r.routes("big/x"))[0]
    assert (big.stream, big.reason, big.target) == ("dlq", "record_too_large", "big")
    # A user property protobuf cannot serialize must not crash intake (the message would come
    # again and again): it becomes a dead letter with the text made valid.
    bad = message("big/y", b"payload", (("name", "\udcff"),))
    (out,) = r.outputs(bad, r.routes("big/y"))
    assert (out.stream, out.reason) == ("dlq", "encode_error")
    assert decode(out.data).payload == b"payload"


def test_header_cache_is_bounded_in_bytes_for_long_topics() -> None:
    # 10,000 distinct 16 KiB topics used as keys too: a count-bounded cache (65,536 entries)
    # would keep every one, about 48 KiB each (key, topic, header): 480 MB.
    r = Router(
        Matcher([Rule(id="big", topic="big/#", stream="big", key="${topic}")]),
        dead_letter_stream="dlq",
        max_record_bytes=1 << 20,
    )
    budget = r.header_cache.budget
    assert budget == HEADER_CACHE_BYTES == 8 * 1024 * 1024
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for n in range(10_000):
            topic = f"big/{n:08}/" + "t" * 16_000
            (out,) = r.outputs(message(topic, b"1"), r.routes(topic))
            assert out.reason is None
            assert r.header_cache.used <= budget
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # An entry is accounted at ~48 KiB: the topic (also the key: one string) and the header.
    assert 60 <= len(r.header_cache) <= budget // (48 * 1024)
    # What Python really holds matches the accounting: the cache and a few messages in flight.
    assert after - before <= budget + 512 * 1024, (after - before, r.header_cache.used)
    assert peak - before <= budget + 1024 * 1024
    assert r.header_cache.used == sum(r.header_cache.cost(k, v) for k, v in r._headers.items())
    # The newest topic is still a hit: the same header object comes back.
    topic = f"big/{9_999:08}/" + "t" * 16_000
    key = (FLAG_RAW, topic, topic, 1, False)
    assert key in r._headers
    assert r._header(FLAG_RAW, topic, message(topic, b"2")) is r._headers[key]


def test_header_cache_hit_stays_a_dict_lookup() -> None:
    r = router(Rule(id="k", topic="k/{dev}", stream="k", key="${dev}"))
    msg = message("k/a", b"1")
    header = r._header(FLAG_RAW, "a", msg)
    used = r.header_cache.used
    for _ in range(10):
        assert r._header(FLAG_RAW, "a", msg) is header
    assert r.header_cache.used == used
    assert len(r.header_cache) == 1
