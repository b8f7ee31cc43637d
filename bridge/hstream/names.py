"""HStreamDB resource names: 1-255 characters, a letter first, then letters, digits, `_` or `-`."""

import re

MAX_NAME_LENGTH = 255
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,254}")


def is_valid_name(name: str) -> bool:
    """Whether HStreamDB accepts `name` for a stream or a subscription."""
    return _NAME.fullmatch(name) is not None


def name_problem(name: str) -> str | None:
    """Why HStreamDB would refuse `name`, or None when it is valid."""
    if not name:
        return "name is empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"name is longer than {MAX_NAME_LENGTH} characters"
    if not name[0].isascii() or not name[0].isalpha():
        return f"name {name!r} must start with a letter"
    if not is_valid_name(name):
        return f"name {name!r} may only contain letters, digits, '_' and '-'"
    return None
