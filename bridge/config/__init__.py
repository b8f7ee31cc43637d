"""Rules and sources as one versioned document, replicated through an HStreamDB stream."""

from bridge.config.log import (
    ConfigConflict,
    ConfigLog,
    ConfigNotApplied,
    Document,
    PreconditionFailed,
)

__all__ = ["ConfigConflict", "ConfigLog", "ConfigNotApplied", "Document", "PreconditionFailed"]
