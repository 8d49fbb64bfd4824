"""The service's fixed words: job kinds and states, methods, activation policies, and the names of spaces.

A space names the image vectors an index holds: ``"none"`` for the zero-shot backbone, ``"v<N>"``
for adapter version N with visual prompts. ``"none"`` is also an adapter selector (search with no
adapter), next to ``"active"`` and a version.
"""

from __future__ import annotations

import sys
from enum import Enum

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # pragma: no cover - Python 3.10

    class StrEnum(str, Enum):
        def __str__(self) -> str:
            return str(self.value)


class SearchSort(StrEnum):
    """How search hits are ordered: best score first, or newest first (capture date, else upload date)."""

    SCORE = "score"
    DATE = "date"


class JobKind(StrEnum):
    """What a job does; one queue and one job API serve both."""

    TUNING = "tuning"  # train an adapter (service.tuning)
    IMPORT = "import"  # add the files of a manifest or a directory tree (service.import_jobs)


class ImportOutcome(StrEnum):
    """What became of one file of an import job."""

    ADDED = "added"  # stored as a new image
    DUPLICATE = "duplicate"  # the collection already had these bytes: its metadata was updated instead
    FAILED = "failed"  # refused; the entry's reason says why


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
OPEN_STATES = (JobState.QUEUED, JobState.RUNNING)


class Stage(StrEnum):
    """Where a job is, as its progress reports it (the last one is its final state)."""

    QUEUED = "queued"
    STARTING = "starting"
    LOADING = "loading"
    TRAINING = "training"
    EVALUATING = "evaluating"
    INDEXING = "indexing"
    IMPORTING = "importing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Method(StrEnum):
    """Which prompts an adapter learns."""

    TEXT = "text"
    VISUAL = "visual"
    DUAL = "dual"
    AUTO = "auto"  # dual prompts, trained as each of adapters.candidates' recipes; the best on val is kept

    def trained(self) -> Method:
        """The prompts a job of this method stores."""
        return Method.DUAL if self == Method.AUTO else self

    @classmethod
    def of(cls, has_text: bool, has_visual: bool) -> Method:
        """The method that produced prompts of these kinds (an uploaded file does not say)."""
        if has_text and has_visual:
            return cls.DUAL
        return cls.VISUAL if has_visual else cls.TEXT


class TrainingData(StrEnum):
    """What a tuning job learns from (``service.tuning.plan_job``)."""

    AUTO = "auto"  # pairs when the collection has enough captioned or categorised images, marks otherwise
    PAIRS = "pairs"  # captioned or categorised images (plus the user's marks), with held-out val and test pairs
    MARKS = "marks"  # the user's marked searches alone, chosen and gated by cross-validation (adapters.marks)


class Activation(StrEnum):
    """When a finished tuning job makes its version the active one (rules: ``service.activation``)."""

    IF_BETTER = "if_better"  # the paired 95 % interval of the gain lies above min_gain
    IF_NOT_WORSE = "if_not_worse"
    ALWAYS = "always"
    NEVER = "never"


SCOPES = ("read", "write", "admin")  # an API key's scope, each including the ones before it

ZERO_SHOT = "none"  # the zero-shot space, and the selector for "no adapter"
ACTIVE = "active"  # the selector for "whichever version is active"


def version_space(version: int) -> str:
    """The name of an adapter version: its space (when it has visual prompts) and its display name."""
    return f"v{version}"


def is_version_space(space: str) -> bool:
    return space.startswith("v") and space[1:].isascii() and space[1:].isdigit()


def space_version(space: str) -> int:
    """The adapter version of a space other than ZERO_SHOT."""
    if not is_version_space(space):
        raise ValueError(f"{space!r} is not an adapter space")
    return int(space[1:])


def parse_version(selector: str) -> int | None:
    """'3' or 'v3' (or 'V3') -> 3; anything else -> None.

    ASCII digits only ("v²" passes str.isdigit but not int()), and at most 18 of them (a BIGINT).
    """
    raw = selector[1:] if selector[:1] in ("v", "V") else selector
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 18 else None
