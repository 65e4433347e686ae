"""The server's logs: one line per event, with the call it belongs to.

Log calls about a call pass its id (and the carrier's, when known) as ``extra``::

    logger.info("call started", extra={"call_id": call.id, "carrier_call_id": "CA1"})

Two formats: ``text`` for a person at a terminal (``... INFO flowcat_ft.transports
[call 12] call started carrier_call_id=CA1``) and ``json`` for a log pipeline (one object
per line: ``ts``, ``level``, ``logger``, ``message``, the extras, and ``error`` with the
traceback where there is one).
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Literal

__all__ = ["CONTEXT_FIELDS", "JsonFormatter", "TextFormatter", "configure_logging"]

CONTEXT_FIELDS = ("call_id", "carrier", "carrier_call_id", "peer", "close_code")
"""The ``extra`` fields the formatters know; others are left out."""


def _context(record: logging.LogRecord) -> dict[str, object]:
    return {name: getattr(record, name) for name in CONTEXT_FIELDS if hasattr(record, name)}


class TextFormatter(logging.Formatter):
    """``time level logger [call N] message key=value...``"""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        context = _context(record)
        call = context.pop("call_id", None)
        line = super().formatMessage(record)
        if call is not None:
            head, _, message = line.partition(f"{record.name} ")
            line = f"{head}{record.name} [call {call}] {message}"
        return " ".join([line, *(f"{k}={v}" for k, v in context.items())])


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_context(record),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO", format: Literal["text", "json"] = "text") -> None:
    """Send the process's logs to stderr in ``format`` at ``level`` (replacing handlers)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # httpx logs each provider request at INFO (one per turn and per sentence): debugging.
    logging.getLogger("httpx").setLevel("DEBUG" if level.upper() == "DEBUG" else "WARNING")
