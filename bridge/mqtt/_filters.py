"""Turn the wanted topic filters into a set the broker can serve without duplicates.

A broker may send one copy of a message per matching subscription (Mosquitto 2.0 does, EMQX
too), so with `sensors/#` and `sensors/+/+/temp` both subscribed every temperature would reach
the pipeline twice. The router matches every message against all rules anyway, so the source
subscribes to filters that never overlap instead: overlapping filters are replaced by the least
general filter covering both (`sensors/#` here; `a/+/c` with `a/b/+` becomes `a/+/+`), with the
higher QoS. That may subscribe to more than the rules need; the router acks what matches no rule.
"""

from collections.abc import Mapping


def _wildcard_ok(level: str, position: int) -> bool:
    """MQTT 4.7.2: a wildcard first level does not match a topic level starting with '$'."""
    return not (position == 0 and level.startswith("$"))


def overlaps(first: str, second: str) -> bool:
    """Whether some topic name matches both filters."""
    a, b = first.split("/"), second.split("/")
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x == "#" or y == "#":
            other = y if x == "#" else x
            return other in ("#", "+") or _wildcard_ok(other, i)
        if x == "+" or y == "+":
            other = y if x == "+" else x
            if other != "+" and not _wildcard_ok(other, i):
                return False
            continue
        if x != y:
            return False
    if len(a) == len(b):
        return True
    longer = a if len(a) > len(b) else b
    return longer[min(len(a), len(b))] == "#"  # `a/#` also matches `a`


def merge(first: str, second: str) -> str:
    """The least general filter (level by level) that every topic of both filters matches."""
    a, b = first.split("/"), second.split("/")
    out: list[str] = []
    for i in range(max(len(a), len(b))):
        if i >= len(a) or i >= len(b) or a[i] == "#" or b[i] == "#":
            out.append("#")
            break
        out.append(a[i] if a[i] == b[i] else "+")
    return "/".join(out)


def non_overlapping(wanted: Mapping[str, int]) -> dict[str, int]:
    """Filters covering every wanted one, no two overlapping, each with the highest QoS it
    covers; the same input always gives the same output."""
    result: dict[str, int] = {}
    for topic, qos in wanted.items():
        current, current_qos = topic, qos
        merged = True
        while merged:
            merged = False
            for other in list(result):
                if other == current or overlaps(other, current):
                    current_qos = max(current_qos, result.pop(other))
                    current = merge(other, current)
                    merged = True
        result[current] = current_qos
    return result
