"""Logging setup: one line per event, plain text by default or JSON lines (`--log-json`).

Plain:  2024-05-01T12:00:00.123Z INFO bridge.sender append failed, retrying stream=temps code=800
JSON:   {"time": "2024-05-01T12:00:00.123Z", "level": "info", "logger": "bridge.sender",
         "message": "append failed, retrying", "stream": "temps", "code": 800}

Context goes in `extra`, not into the message text, so both formats carry it as fields:
`logger.warning("append failed, retrying", extra={"stream": name, "code": code})`. Every
attribute a caller adds through `extra` is printed; `rule`, `stream`, `code` and `topic` are the
usual ones. A traceback (`logger.exception`) stays on the same line, as the field `exc`, with its
line breaks escaped.

Callers must not log per message or per record at INFO or above: at 25,000 msg/s that is the
whole budget of the process. Log state changes (connected, paused, a rule created, a retry
started) and summaries; per-message detail belongs at DEBUG, behind `logger.isEnabledFor`.

For uvicorn, pass `log_config=None` so its loggers use these handlers; its access log (one line
per HTTP request, health checks and scrapes included) is kept at WARNING unless the level is DEBUG.

Passwords in URLs (`hstream://user:pass@host`, `mqtt://user:pass@host`) are never printed:
log `redact_url(url)` rather than the URL, and as a safety net the handler `setup_logging`
installs replaces the password of any `scheme://user:password@` in a message, its arguments,
its extra fields and its traceback with `***`.
"""

import json as _json
import logging
import re
import sys
import time
from typing import Any, Final, TextIO

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

# Attributes every LogRecord has; anything else on a record came from `extra`.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's ANSI-coloured copy of the message
}
# Libraries that are chatty at INFO (uvicorn.access: a line per request; gmqtt: a line per
# connect and subscribe).
_QUIET_AT_INFO = ("uvicorn.access", "gmqtt")


REDACTED: Final = "***"

# scheme://user:password@ . The password runs to the last `@` before the next whitespace, but
# never across another `scheme://`: a raw password may hold `@` or `/` (parse_url splits at the
# last `@`), and two URLs in one word must not be merged. When in doubt this takes too much
# (`http://u:p@h/a@b` prints as `http://u:***@b`), never too little.
_CREDENTIALS = re.compile(
    r"(?P<prefix>[A-Za-z][A-Za-z0-9+.\-]*://[^\s:@/]*:)"
    r"(?P<password>(?:(?![A-Za-z][A-Za-z0-9+.\-]*://)\S)+)"
    r"(?=@)"
)


def redact_url(url: str) -> str:
    """`url` with the password of its `scheme://user:password@` part replaced by `***`.

    `hstream://bridge:s3cret@h1:6570,h2:6570` becomes `hstream://bridge:***@h1:6570,h2:6570`;
    a URL without a password (no userinfo, a user name alone, or an empty password) comes back
    unchanged. Works on any text: every URL with a password in it is redacted.
    """
    if "://" not in url or "@" not in url:
        return url
    return _CREDENTIALS.sub(_redact_match, url)


def _redact_match(match: "re.Match[str]") -> str:
    return match.group("prefix") + REDACTED


def _redacted(value: Any) -> Any:
    """`value`, or its text redacted when that text holds a password in a URL."""
    text = value if isinstance(value, str) else None
    if text is None:
        if isinstance(value, int | float | bool) or value is None:
            return value
        text = str(value)
    clean = redact_url(text)
    return value if clean == text else clean


class RedactCredentials(logging.Filter):
    """Replaces URL passwords with `***` in a record's message, arguments and extra fields.

    A safety net under `redact_url`: the formatted message is checked (so arguments of any
    type are covered), and when it held a password the record carries the redacted text with
    no arguments left to format. The formatters redact tracebacks. Never drops a record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: the handler reports it as logging does
            return True
        clean = redact_url(message)
        if clean != message:
            record.msg, record.args = clean, ()
        for key, value in extra_fields(record).items():
            clean_value = _redacted(value)
            if clean_value is not value:
                setattr(record, key, clean_value)
        return True


def _timestamp(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a caller passed through `extra`, in the order given."""
    return {
        k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
    }


def _plain_value(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    if text and not any(c in text for c in ' "=\\\n\r\t'):
        return text
    return _json.dumps(text, ensure_ascii=False)


class PlainFormatter(logging.Formatter):
    """`time level logger message key=value...` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage().replace("\n", "\\n")
        parts = [_timestamp(record.created), record.levelname, record.name, message]
        for key, value in extra_fields(record).items():
            parts.append(f"{key}={_plain_value(value)}")
        exc = self._exception_text(record)
        if exc:
            parts.append(f"exc={_plain_value(redact_url(exc))}")
        return " ".join(parts)

    def _exception_text(self, record: logging.LogRecord) -> str:
        if record.exc_info:
            return self.formatException(record.exc_info)
        return record.exc_text or ""


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the extra fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "time": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            event.setdefault(key, value)
        if record.exc_info:
            event["exc"] = redact_url(self.formatException(record.exc_info))
        elif record.exc_text:
            event["exc"] = redact_url(record.exc_text)
        return _json.dumps(event, ensure_ascii=False, default=str)


class _BridgeHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler `setup_logging` installed, so a second call replaces it."""


def setup_logging(level: str = "info", json: bool = False, *, stream: TextIO | None = None) -> None:
    """Send every log record to `stream` (stderr) in one format; calling again reconfigures.

    URL passwords are redacted on the way out (`RedactCredentials`).
    """
    try:
        numeric = LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}: use one of {', '.join(LEVELS)}") from None
    handler = _BridgeHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if json else PlainFormatter())
    handler.addFilter(RedactCredentials())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _BridgeHandler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in _QUIET_AT_INFO:
        logging.getLogger(name).setLevel(
            logging.DEBUG if numeric <= logging.DEBUG else logging.WARNING
        )
