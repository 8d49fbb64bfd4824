"""Rules for untrusted text and JSON, in one place: names, filenames, queries, free-form metadata, errors."""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Any

MAX_JSON_DEPTH = 8
MAX_JSON_STRING = 2000
MAX_JSON_ITEMS = 200
MAX_FILENAME_CHARS = 500


def has_control_chars(text: str) -> bool:
    """C0/C1 controls (NUL, ESC, DEL, ...) and line/paragraph separators."""
    return any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in text)


def printable_name(value: str) -> str:
    """A name shown in lists and logs: no control characters (pydantic validators raise ValueError)."""
    if has_control_chars(value):
        raise ValueError("must not contain control characters")
    return value


def printable_text(value: str | None) -> str | None:
    """Free text (a description): line breaks and tabs are fine, other control characters are not."""
    if value is not None and has_control_chars(value.replace("\n", "").replace("\r", "").replace("\t", "")):
        raise ValueError("must not contain control characters other than line breaks and tabs")
    return value


def check_filename(name: str) -> str | None:
    """Why an uploaded file's name is refused, or None."""
    if has_control_chars(name):
        return "the filename contains control characters"
    if len(name) > MAX_FILENAME_CHARS:
        return f"the filename is over {MAX_FILENAME_CHARS} characters"
    return None


def visible_text(text: str) -> str:
    """The text without invisible format characters (zero-width space, BOM, ...) and controls, spaces collapsed."""
    kept = "".join(ch for ch in text if unicodedata.category(ch) not in ("Cf", "Cc", "Co", "Cs", "Cn"))
    return " ".join(kept.split())


def bounded_json(value: Any, depth: int = 0) -> Any:
    """Free-form JSON (an image's ``meta``): nesting, sizes and keys bounded, so nothing downstream recurses deep."""
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, str):
        if len(value) > MAX_JSON_STRING:
            raise ValueError(f"a string is over {MAX_JSON_STRING} characters")
        return value
    if isinstance(value, dict):
        if len(value) > MAX_JSON_ITEMS:
            raise ValueError(f"an object has over {MAX_JSON_ITEMS} keys")
        for key, item in value.items():
            bounded_json(key, depth + 1)
            bounded_json(item, depth + 1)
        return value
    if isinstance(value, list):
        if len(value) > MAX_JSON_ITEMS:
            raise ValueError(f"a list has over {MAX_JSON_ITEMS} items")
        for item in value:
            bounded_json(item, depth + 1)
        return value
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("NaN and infinity are not JSON")
    return value


_ABSOLUTE_PATH = re.compile(r"(?<![\w.])(?:[A-Za-z]:)?[/\\](?:[^\s'\"/\\:]+[/\\])+[^\s'\":]*")
_ADDRESS = re.compile(r" (?:object )?at 0x[0-9a-fA-F]+")


def public_error(exc: BaseException) -> str:
    """What a client may read of an error: our own messages without server paths; never a library's repr."""
    detail = getattr(exc, "detail", None)
    if isinstance(detail, str):
        return redact(detail)
    if isinstance(exc, ValueError) and type(exc).__module__ == "builtins":
        return redact(str(exc))
    return f"internal error ({type(exc).__name__}); the server log has the details"


def redact(text: str) -> str:
    return _ADDRESS.sub("", _ABSOLUTE_PATH.sub("<server path>", text))
