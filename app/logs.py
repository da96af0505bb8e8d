"""Logging set-up for `python -m app serve`: plain text lines, or one JSON object per line,
and the two helpers that keep client-supplied values from forging or flooding either.

A record with a `fields` dict (the request line) is written as those fields; any other as
its message. Called by the CLI only: nothing configures logging at import or in create_app.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime

from app.config import LogFormat

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

# A client-supplied value (model, path, ...) is cut to this many characters in any log.
MAX_LOGGED_CHARS = 256
# What makes a value ambiguous in a `name=value name=value` line besides non-printables.
_QUOTE_IF = re.compile(r'[\s"\\]')


def bounded(value: str) -> str:
    """`value`, cut to MAX_LOGGED_CHARS characters with a note of its full length."""
    if len(value) <= MAX_LOGGED_CHARS:
        return value
    return f"{value[:MAX_LOGGED_CHARS]}...({len(value)} chars)"


def text_token(value: str) -> str:
    """`value` as one token of a text log line: as it is when plainly printable, else quoted
    with backslash escapes for quotes, backslashes and every non-printable character
    (newlines, NUL, U+2028, bidi controls...), so it can neither end the line nor pass for
    another field."""
    if value and value.isprintable() and not _QUOTE_IF.search(value):
        return value
    escaped = []
    for char in value:
        if char in '"\\':
            escaped.append("\\" + char)
        elif char.isprintable() or char == " ":
            escaped.append(char)
        else:
            escaped.append(ascii(char)[1:-1])  # \n, \x00, \u2028, \U0001f600-style
    return '"' + "".join(escaped) + '"'


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            data.update(fields)
        else:
            data["message"] = record.getMessage()
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def configure_logging(level: str, log_format: LogFormat) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # library warnings become log lines (JSON ones too)
