"""The Rule model: one MQTT topic filter routed to one HStreamDB stream.

Rules are data, never code. A Rule validates every field when it is built and refuses anything
the bridge could not subscribe to or route, so a stored or accepted rule always works:

    {"id": "temps", "topic": "sensors/{site}/+/temp", "stream": "temps_${site}",
     "key": "${site}", "payload": "raw", "qos": 1, "enabled": true}

It is a pydantic model so the HTTP API can answer 422 with the field in `loc` and a message that
says what is wrong; `parse_rule` does the same for callers outside HTTP and raises RuleError.
Validation is strict: `"qos": "1"`, `"enabled": "yes"` and unknown fields are refused, so a
typo is an error rather than a silently ignored setting.
"""

import functools
import re
from collections.abc import Mapping
from typing import Any, Final, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from rules.template import StreamTemplate, Template, TemplateError
from rules.topic import TopicError, TopicFilter

__all__ = ["MAX_ID_LENGTH", "PayloadFormat", "QoS", "Rule", "RuleError", "parse_rule"]

MAX_ID_LENGTH: Final = 64
_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

PayloadFormat = Literal["raw", "json"]
"""`raw`: the payload bytes as they came (RAW record); `json`: a JSON object (JSON record)."""
QoS = Literal[0, 1, 2]


class RuleError(ValueError):
    """An invalid rule, naming the field (`topic`, `stream`, ...) and what is wrong with it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(field, message)
        self.field = field
        self.message = message

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"

    @classmethod
    def from_validation_error(cls, error: ValidationError) -> "RuleError":
        """The first problem pydantic found, with the others appended to the message."""
        problems = [(_field_of(detail["loc"]), str(detail["msg"])) for detail in error.errors()]
        if not problems:
            return cls("rule", str(error))
        field, message = problems[0]
        others = "; ".join(f"{f}: {m}" for f, m in problems[1:])
        return cls(field, f"{message} (also {others})" if others else message)


def _field_of(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) if loc else "rule"


# Parsed filters and templates are immutable and a rule's text repeats (validation, then
# compiling, then the same rule loaded again), so parsing is done once per distinct text.
@functools.lru_cache(maxsize=4096)
def _filter(value: str) -> TopicFilter:
    return TopicFilter(value)


@functools.lru_cache(maxsize=4096)
def _stream_template(value: str) -> StreamTemplate:
    return StreamTemplate(value)


@functools.lru_cache(maxsize=4096)
def _template(value: str) -> Template:
    return Template(value)


def _invalid(kind: str, error: Exception) -> PydanticCustomError:
    return PydanticCustomError(kind, str(error))


class Rule(BaseModel):
    """A validated routing rule (immutable; build a changed copy with `model_copy(update=)`)."""

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    id: str = Field(
        description="1-64 characters of letters, digits, '_', '.', '-'; a letter or digit first",
        examples=["temps"],
    )
    topic: str = Field(
        description=(
            "MQTT topic filter; a whole level written {name} is a named single-level wildcard"
            " (subscribed as +), + an anonymous one, # only as the last level"
        ),
        examples=["sensors/{site}/+/temp"],
    )
    stream: str = Field(
        description=(
            "HStreamDB stream name template: literal letters, digits, '_', '-' and ${name}"
            " placeholders for the filter's captures or ${topic}; characters a stream name may"
            " not contain are replaced by '_' in the values"
        ),
        examples=["temps_${site}"],
    )
    key: str = Field(
        default="",
        description="partition key template (values used as they are); '' for no key",
        examples=["${site}"],
    )
    payload: PayloadFormat = Field(default="raw", description="raw bytes or a JSON object")
    qos: QoS = Field(default=1, description="maximum QoS to subscribe with (0, 1 or 2)")
    enabled: bool = Field(default=True, description="disabled rules are kept but not used")

    _filter: TopicFilter = PrivateAttr()
    _stream: StreamTemplate = PrivateAttr()
    _key: Template = PrivateAttr()

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        if _ID.fullmatch(value) is None:
            raise PydanticCustomError(
                "rule_id",
                f"id {value!r} must be 1-{MAX_ID_LENGTH} characters of letters, digits, '_', '.'"
                " or '-', starting with a letter or a digit",
            )
        return value

    @field_validator("topic")
    @classmethod
    def _check_topic(cls, value: str) -> str:
        try:
            _filter(value)
        except TopicError as exc:
            raise _invalid("topic_filter", exc) from None
        return value

    @field_validator("stream")
    @classmethod
    def _check_stream(cls, value: str, info: ValidationInfo) -> str:
        try:
            template = _stream_template(value)
            _check_captures(template, info)
        except TemplateError as exc:
            raise _invalid("stream_template", exc) from None
        return value

    @field_validator("key")
    @classmethod
    def _check_key(cls, value: str, info: ValidationInfo) -> str:
        try:
            template = _template(value)
            _check_captures(template, info)
        except TemplateError as exc:
            raise _invalid("key_template", exc) from None
        return value

    @field_validator("qos", mode="before")
    @classmethod
    def _check_qos(cls, value: object) -> object:
        # Literal[0, 1, 2] alone accepts True and 1.0 (they compare equal to 1).
        if type(value) is not int or value not in (0, 1, 2):
            raise PydanticCustomError("qos", f"qos must be 0, 1 or 2, not {value!r}")
        return value

    def model_post_init(self, context: Any, /) -> None:
        self._filter = _filter(self.topic)
        self._stream = _stream_template(self.stream)
        self._key = _template(self.key)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A validated copy with `update` applied (pydantic's own copy would not validate)."""
        data = self.model_dump()
        data.update(update or {})
        return self.model_validate(data)

    @property
    def filter(self) -> TopicFilter:
        """The parsed topic filter (`.subscription` is what to SUBSCRIBE with)."""
        return self._filter

    @property
    def stream_template(self) -> StreamTemplate:
        """The parsed stream name template."""
        return self._stream

    @property
    def key_template(self) -> Template:
        """The parsed partition key template."""
        return self._key


def _check_captures(template: Template, info: ValidationInfo) -> None:
    """Refuse placeholders the (valid) topic filter does not capture."""
    topic = info.data.get("topic")
    if isinstance(topic, str):  # absent when the topic itself was invalid
        template.check_names(_filter(topic).capture_names)


def parse_rule(data: object) -> Rule:
    """Build a Rule from decoded JSON (a dict); RuleError names the field that is wrong."""
    if not isinstance(data, Mapping):
        raise RuleError("rule", f"a rule is a JSON object, not {type(data).__name__}")
    try:
        return Rule.model_validate(data)
    except ValidationError as exc:
        raise RuleError.from_validation_error(exc) from None
