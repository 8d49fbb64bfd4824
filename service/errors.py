"""Domain errors: what went wrong, in the service's words, with no knowledge of HTTP.

Each carries a machine-readable ``code``, a human ``detail`` and optional extra ``fields`` (e.g. the
minimum number of pairs a job needs). ``service.api.errors`` maps each kind to its HTTP status in
one place; the CLI prints ``detail``.
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """Base of every refusal the service explains to its caller."""

    def __init__(self, code: str, detail: str, **fields: Any):
        super().__init__(detail)
        self.code, self.detail, self.fields = code, detail, fields


class NotFound(DomainError):
    """The named thing does not exist (or no longer does)."""


class Conflict(DomainError):
    """The request contradicts the current state (a duplicate name, deleting the active adapter)."""


class Invalid(DomainError):
    """The input itself is unusable (bad config, bad file, too few pairs)."""


class Forbidden(DomainError):
    """The input asks for something outside what the service allows (a path outside the import root)."""


class TooLarge(DomainError):
    """The input is over a configured limit."""


class Gone(DomainError):
    """A row exists but the file behind it was lost from storage."""


def not_found(what: str, ident: object) -> NotFound:
    return NotFound("not_found", f"{what} {ident} not found")
