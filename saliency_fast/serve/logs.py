"""Log lines that carry caller-supplied text: escaped to one printable ASCII line, cut short."""

from __future__ import annotations

import logging
import traceback

LOGGED_CHARS = 200
log = logging.getLogger("saliency_fast.serve")


def escape_for_log(text: str) -> str:
    """Control characters and non-ASCII escaped (``\\n``, ``\\x1b``, ``\\u00e9``), cut at 200 characters."""
    escaped = text[:LOGGED_CHARS].encode("unicode_escape").decode("ascii")
    return escaped + ("..." if len(text) > LOGGED_CHARS else "")


def log_failure(what: str, exc: BaseException) -> None:
    """An unexpected failure: its message escaped (it may quote a caller's text), and where it happened."""
    log.error("%s: %s\n%s", what, escape_for_log(repr(exc)), "".join(traceback.format_tb(exc.__traceback__)).rstrip())
