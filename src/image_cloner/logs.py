"""Log lines people and machines can read, and that never carry a secret.

Everything (ours, kopf's, aiohttp's) goes through stdlib logging to one handler on the
root logger, formatted either like the seed project's zap console output (tab-separated)

    2021-12-18T18:51:25.484+0100  INFO  controller.image-cloner  cloning deployment image  {...}

or as JSON lines. Structured fields travel on the record (`log_event`), so both formats
render the same data. A redacting filter on the handler is the last safety net for
credentials: code must not log them in the first place, but a stray `Authorization`
header, a `user:pass@` URL or a configured password in an exception text is masked.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Literal, TextIO
from urllib.parse import quote

__all__ = [
    "CONTROLLER_LOGGER",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "JsonFormatter",
    "LogFormat",
    "LogLevel",
    "RedactingFilter",
    "Redactor",
    "TextFormatter",
    "configure_logging",
    "log_event",
]

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")

LogLevel = Literal["debug", "info", "warning", "error"]
LOG_LEVELS: tuple[LogLevel, ...] = ("debug", "info", "warning", "error")

CONTROLLER_LOGGER = "controller.image-cloner"
"""The logger name the seed's decision lines use."""

_FIELDS = "fields"  # LogRecord attribute holding the structured fields
_MASK = "***"
_MIN_SECRET_LENGTH = 4  # shorter values would mask ordinary words all over the log

# Credential shapes in free text. What is secret is known by value: the configured
# passwords (`Redactor.add`), and these shapes, never by the name of a log field.
_CREDENTIAL_WORD = r"[\w.-]*(?:password|passwd|token|_pass)|auth|\.?dockerconfigjson"
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # "Authorization: Bearer x", "'Authorization': 'Basic x'", "authorization=x"
    (
        re.compile(
            r"(authorization[\"']?\s*[:=]\s*[\"']?)((?:basic|bearer|token)\s+)?[^\s\"',;}]+",
            re.IGNORECASE,
        ),
        rf"\1\2{_MASK}",
    ),
    # https://user:password@host → https://user:***@host
    (re.compile(r"([a-z][a-z0-9+.-]*://[^/\s:@]+):[^/\s@]+@", re.IGNORECASE), rf"\1:{_MASK}@"),
    # "password=x", "access_token=x" (a query), '"auth": "x"' (a docker config.json entry)
    (
        re.compile(
            rf"(\b(?:{_CREDENTIAL_WORD})\b[\"']?\s*[:=]\s*[\"']?)[^\s\"',;&}}]+", re.IGNORECASE
        ),
        rf"\1{_MASK}",
    ),
)
# A whole value that is an Authorization header's credentials ("Bearer eyJ..."); a
# WWW-Authenticate challenge ('Bearer realm="..."') is not one and stays readable.
_CREDENTIALS_RE = re.compile(r"(?:basic|bearer)\s+[\w.~+/-]+=*", re.IGNORECASE)
_CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization"})


class Redactor:
    """Masks credentials in text: well-known shapes plus the values it was told about."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str) -> None:
        """Mask this value (and its URL-encoded form) from now on."""
        if len(secret) >= _MIN_SECRET_LENGTH:
            self._secrets.update({secret, quote(secret, safe="")})

    def __call__(self, text: str) -> str:
        # Longest first, so a secret containing another is masked whole.
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, _MASK)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text

    def value(self, value: object, *, key: str = "") -> object:
        """Redact a structured field value, by what it holds (its name does not matter).

        The one exception is a header mapping: the value of an `Authorization` entry is a
        credential whatever its shape.
        """
        if key.lower() in _CREDENTIAL_HEADERS and value is not None:
            return _MASK
        if isinstance(value, str):
            return _MASK if _CREDENTIALS_RE.fullmatch(value.strip()) else self(value)
        if isinstance(value, Mapping):
            return {str(k): self.value(v, key=str(k)) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self.value(v) for v in value]
        return value


class RedactingFilter(logging.Filter):
    """Rewrites each record in place so no handler or formatter sees a credential."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad %-format must not turn into a crash of the logging call
            message = str(record.msg)
        record.msg, record.args = self.redactor(message), None
        fields = getattr(record, _FIELDS, None)
        if isinstance(fields, Mapping):
            setattr(record, _FIELDS, self.redactor.value(fields))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redactor(record.stack_info)
        return True


def log_event(
    logger: logging.Logger,
    level: int,
    msg: str,
    /,
    *,
    exc_info: BaseException | None = None,
    stacklevel: int = 1,
    **fields: object,
) -> None:
    """Log `msg` with structured fields (rendered as JSON after the message, or as keys).

    `exc_info` adds the exception's traceback (redacted like everything else).
    `stacklevel` is which caller the record names: 1, the caller of `log_event`; a helper
    that logs for its own caller passes 2.
    """
    # +1: the record names a caller, never this function.
    logger.log(level, msg, exc_info=exc_info, extra={_FIELDS: fields}, stacklevel=stacklevel + 1)


def _fields_of(record: logging.LogRecord) -> dict[str, object]:
    fields = dict(getattr(record, _FIELDS, None) or {})
    # kopf's per-object loggers carry the object reference as `k8s_ref`.
    ref = getattr(record, "k8s_ref", None)
    if isinstance(ref, Mapping) and "name" not in fields:
        for key in ("kind", "name", "namespace"):
            if ref.get(key):
                fields[key] = ref[key]
    return fields


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created).astimezone()
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{int(record.msecs):03d}{moment:%z}"


def _exception_text(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    parts = [part for part in (record.exc_text, record.stack_info) if part]
    return "\n".join(parts)


class TextFormatter(logging.Formatter):
    """`time<TAB>LEVEL<TAB>logger<TAB>message<TAB>{"field": "value"}`, as the seed printed."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record), record.levelname, record.name, record.getMessage()]
        fields = _fields_of(record)
        if fields:
            parts.append(json.dumps(fields, default=str, ensure_ascii=False))
        line = "\t".join(parts)
        details = _exception_text(self, record)
        return f"{line}\n{details}" if details else line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, msg, then the fields as keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _fields_of(record).items():
            entry[f"fields.{key}" if key in entry else key] = value
        details = _exception_text(self, record)
        if details:
            entry["exception"] = details
        return json.dumps(entry, default=str, ensure_ascii=False)


class _Handler(logging.StreamHandler[TextIO]):
    """Marks the handler we installed, so configuring again replaces it."""


def configure_logging(
    *,
    fmt: LogFormat = "text",
    level: int | str = logging.INFO,
    stream: TextIO | None = None,
    secrets: Iterable[str] = (),
) -> Redactor:
    """Route all logging to one redacting handler; returns its `Redactor` for later secrets."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"unknown log format {fmt!r}: expected one of {', '.join(LOG_FORMATS)}")
    redactor = Redactor(secrets)
    handler = _Handler(stream if stream is not None else sys.stderr)
    handler.setFormatter(TextFormatter() if fmt == "text" else JsonFormatter())
    handler.addFilter(RedactingFilter(redactor))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return redactor
