"""Structured logs: ``CALLGATE_LOG_FORMAT=json`` writes one JSON object a line to stderr,
the format log shippers read without parsing rules.

Every object has ``time`` (RFC 3339, UTC, milliseconds), ``level``, ``logger``, ``message``
and ``pid``; the fields a call site passes with ``extra=`` (``operation``, ``tenant_id``,
``call_id``, ``method``, ``path``, ``status``...) where it knows them; ``exc`` (the
traceback text) with an exception. A message's newlines stay inside its JSON string, so
one record is always one line. ``serve`` sets it up before it forks its workers and passes
the variable on to its persist child, so all of them log alike.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import orjson

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has: anything else on a record came from `extra=`.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            k: v for k, v in vars(record).items()
            if k not in _RECORD_ATTRIBUTES and not k.startswith("_")
        }
        doc.update(
            time=datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            level=record.levelname,
            logger=record.name,
            message=record.getMessage(),
            pid=record.process,
        )
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        try:
            return orjson.dumps(doc, default=str).decode()
        except (TypeError, orjson.JSONEncodeError):  # e.g. an int beyond 64 bits
            return json.dumps(doc, default=str, ensure_ascii=False)


def handler_for(log_format: str) -> logging.Handler:
    """A stderr handler writing ``log_format`` (one of LOG_FORMATS)."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    return handler
