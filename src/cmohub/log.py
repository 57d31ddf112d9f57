"""Logging setup with a redaction filter.

Log lines carry counts, codes, field paths, run and file IDs — never payloads. The
:class:`RedactionFilter` is the safety net behind that rule: it replaces

* any :class:`~cmohub.sensitive.Sensitive` argument or ``extra`` value,
* the value of any ``extra`` field whose name is classified (``mrn``, ``birth_date``, ...),
* ``name=value`` / ``"name": "value"`` pairs in the formatted message whose name is classified,

with ``<redacted>``. The classified names default to :data:`CLASSIFIED_FIELDS`; contracts add
their own classified property names through :func:`add_classified_fields`.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from cmohub.sensitive import REDACTED, Sensitive

#: Field names whose values are direct identifiers (DESIGN.md, privacy invariant 1).
CLASSIFIED_FIELDS: set[str] = {
    "name",
    "family",
    "family_name",
    "given",
    "given_name",
    "patient_name",
    "mrn",
    "subject_id",
    "identifier",
    "identifier_value",
    "birth_date",
    "birthdate",
    "birthDate",
    "dob",
    "address",
    "phone",
    "telecom",
    "email",
    "ssn",
    "national_id",
}

_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()) | {
    "message",
    "asctime",
    "taskName",
}
_pair_pattern: re.Pattern[str] | None = None


def add_classified_fields(names: Iterable[str]) -> None:
    """Register more classified field names (e.g. from contracts) with the filter."""
    global _pair_pattern  # noqa: PLW0603 - one compiled pattern shared by every filter instance
    CLASSIFIED_FIELDS.update(names)
    _pair_pattern = None


def _pattern() -> re.Pattern[str]:
    global _pair_pattern  # noqa: PLW0603 - lazily compiled cache, see add_classified_fields
    if _pair_pattern is None:
        names = "|".join(sorted((re.escape(n) for n in CLASSIFIED_FIELDS), key=len, reverse=True))
        # name=value, name: value, "name": "value"  (value up to a delimiter)
        _pair_pattern = re.compile(
            rf"""(?P<key>["']?\b(?:{names})\b["']?\s*[:=]\s*)(?P<value>"[^"]*"|'[^']*'|[^\s,;}}\]]+)"""
        )
    return _pair_pattern


def redact_text(text: str) -> str:
    """Replace the values of classified ``name=value`` pairs in ``text``."""
    return _pattern().sub(lambda m: m.group("key") + REDACTED, text)


def _redact_value(value: Any) -> Any:
    if isinstance(value, Sensitive):
        return REDACTED
    if isinstance(value, dict):
        return {
            k: (REDACTED if k in CLASSIFIED_FIELDS else _redact_value(v)) for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return type(value)(_redact_value(v) for v in value)
    return value


class RedactionFilter(logging.Filter):
    """Redact classified values from a record's message, arguments and extras."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            if isinstance(record.args, dict):
                record.args = _redact_value(record.args)
            else:
                record.args = tuple(_redact_value(a) for a in record.args)
        for key in list(vars(record)):
            if key in _STANDARD_ATTRS:
                continue
            value = getattr(record, key)
            if key in CLASSIFIED_FIELDS:
                setattr(record, key, REDACTED)
            else:
                setattr(record, key, _redact_value(value))
        # Format now, so the redacted text is what every handler sees.
        message = redact_text(record.getMessage())
        record.msg, record.args = message, None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, with offset), level, logger, message, extras."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS:
                data[key] = value
        if record.exc_text:
            data["exception"] = record.exc_text
        return json.dumps(data, default=str, sort_keys=True)


def configure_logging(level: str = "INFO", *, json_lines: bool = False) -> None:
    """Configure the ``cmohub`` logger: stderr handler with the redaction filter."""
    logger = logging.getLogger("cmohub")
    logger.setLevel(level.upper())
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactionFilter())
    handler.setFormatter(
        JsonFormatter()
        if json_lines
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    logger.addHandler(handler)
    logger.propagate = False


def get_logger(name: str) -> logging.Logger:
    """A ``cmohub.*`` logger that redacts even when the application configured none."""
    logger = logging.getLogger(name if name.startswith("cmohub") else f"cmohub.{name}")
    if not any(isinstance(f, RedactionFilter) for f in logger.filters):
        logger.addFilter(RedactionFilter())
    return logger
