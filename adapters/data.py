"""The unit of training and evaluation data: one image with its captions and labels."""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image


@dataclass
class PairedItem:
    """An image with one or more captions; category and attribute phrases are optional.

    The service builds these from its database rows, the benchmark world generates them, and
    everything in ``adapters`` (training, losses, evaluation) consumes them.
    """

    image: Image.Image
    captions: list[str]
    category: str | None = None
    attributes: list[str] = field(default_factory=list)
    key: str | None = None  # caller's id (an image id in the service), carried through untouched
