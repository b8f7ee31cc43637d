"""Routing rules: MQTT topic filters with captures, stream/key templates, matching and storage.

Pure code (no asyncio, no I/O except the rules file in `RulesFile`). The bridge builds a
`Matcher` from the enabled rules, subscribes to `Matcher.subscriptions()`, and calls
`Matcher.route(topic)` for every message.
"""

from rules.matcher import Match, Matcher, Route
from rules.model import PayloadFormat, QoS, Rule, RuleError, parse_rule
from rules.store import RulesFile, RulesFileError, dump_rules, parse_rules
from rules.template import RenderError, StreamTemplate, Template, TemplateError, stream_safe
from rules.topic import (
    MAX_TOPIC_LENGTH,
    TopicError,
    TopicFilter,
    check_topic_name,
    topic_name_problem,
)

__all__ = [
    "MAX_TOPIC_LENGTH",
    "Match",
    "Matcher",
    "PayloadFormat",
    "QoS",
    "RenderError",
    "Route",
    "Rule",
    "RuleError",
    "RulesFile",
    "RulesFileError",
    "StreamTemplate",
    "Template",
    "TemplateError",
    "TopicError",
    "TopicFilter",
    "check_topic_name",
    "dump_rules",
    "parse_rule",
    "parse_rules",
    "stream_safe",
    "topic_name_problem",
]
