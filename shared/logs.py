"""Logging for both sides: readable text for people, one JSON object per line for machines, and
`redact`, the one function that masks credentials in anything a person or a log may see.

Always to stderr: on the stdio transport stdout belongs to the MCP protocol. Every record passes
`SafeRecords` first, so no format can carry a URL credential, a configured key, or (from arq's own
job lines) a prompt or an answer.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
_PATTERNS = [  # what a URL, a command line, an error or a server's stderr may carry that is secret
    (re.compile(r"\b([a-z][a-z0-9+.-]*://)[^\s/@]+@", re.I), r"\1***@"),  # scheme://user:password@
    (re.compile(r"(://[^\s?#]*)\?[^\s#\"']*"), r"\1?***"),  # a URL's query (api-key=..., password=...)
    (re.compile(r"(?i)\b((?:bearer|basic)\s+)[^\s\"',]+"), r"\1***"),
    (
        re.compile(
            r"(?i)\b([\w-]*(?:password|passwd|pwd|token(?!s)|secret|api[_-]?key|apikey)[\w-]*)([\"']?\s*[=:]\s*)"
            r"(\"[^\"]*\"|'[^']*'|[^\s&,;\"']+)"
        ),
        r"\1\2***",
    ),
]
# a word or mark every pattern above needs (a string without any holds nothing they mask): checked
# first, as the four substitutions cost ~20 µs a string, and a job's two log lines redact ten
# (and each needs a ':', '=' or a space, found faster: ids, names and numbers have none)
_MAY_MATCH = re.compile(r"(?i)://|bearer|basic|password|passwd|pwd|token|secret|api[_-]?key|apikey")
_MARKS = re.compile(r"[\s:=]")
_SECRET_MIN_CHARS = 6  # shorter values would mask ordinary words; keys are far longer
_secrets: set[str] = set()


def keep_secret(*values: str | None) -> None:
    """Remember configured secrets (keys, tokens) so `redact` masks them wherever they show up."""
    _secrets.update(v for v in values if v and len(v) >= _SECRET_MIN_CHARS)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Mask URL credentials and queries, bearer tokens, `password=…`-style pairs, every secret given
    to `keep_secret`, and `secrets`. The one masking function: logs, errors, health and pages use it."""
    for secret in sorted({*_secrets, *secrets}, key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    if _MARKS.search(text) and _MAY_MATCH.search(text):
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
    return text


# arq's job lines (arq/worker.py) and what of each may be logged: the job and function (`ref`),
# timings and the outcome, never the arguments (the prompt) or the result (the answer).
_ARQ_LINES = {
    "%6.2fs → %s(%s)%s": ("%6.2fs → %s%s", lambda a: (a[0], a[1], a[3]), "started"),
    "%6.2fs ← %s ● %s": ("%6.2fs ← %s ●", lambda a: a[:2], "completed"),
    "%6.2fs ! %s failed, %s: %s": ("%6.2fs ! %s failed, %s", lambda a: a[:3], "failed"),
}


class SafeRecords(logging.Filter):
    """Rewrites each record before any formatter sees it: arq's job lines lose their arguments and
    results, and the message, its string extras and its traceback go through `redact`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "arq.worker" and isinstance(record.msg, str) and record.msg in _ARQ_LINES:
            fmt, keep, outcome = _ARQ_LINES[record.msg]
            args: tuple = record.args if isinstance(record.args, tuple) else ()
            if len(args) == record.msg.count("%"):
                record.msg, record.args = fmt, keep(args)
                job_id, _, function = str(args[1]).partition(":")
                record.job_id, record.function, record.arq_event = job_id, function, outcome
                record.exc_info = record.exc_text = (
                    None  # may quote the job's arguments; worker.job logs its own
                )
        record.msg, record.args = redact(record.getMessage()), ()
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD and isinstance(value, str):
                setattr(record, key, redact(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exception"] = record.exc_text
        return json.dumps(out, default=str)


_early: list[logging.LogRecord] = []  # said before setup_logging: held, then logged by it


def warn_at_start(logger: logging.Logger, message: str) -> None:
    """A WARNING said while the settings are read, before logging has a format: held until
    `setup_logging` (one JSON line each under LOG_FORMAT=json), at once if logging is set up."""
    if logging.getLogger().handlers:
        logger.warning(message)
    else:
        _early.append(logger.makeRecord(logger.name, logging.WARNING, "", 0, message, (), None))


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)-5s %(name)s: %(message)s", "%H:%M:%S")
        formatter.converter = time.localtime
        handler.setFormatter(formatter)
    handler.addFilter(SafeRecords())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpx2", "httpcore", "openai", "mcp", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    while _early:
        record = _early.pop(0)
        logging.getLogger(record.name).handle(record)
