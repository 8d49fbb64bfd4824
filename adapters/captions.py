"""Captions for images that have a category (and maybe attributes) but no caption of their own.

A collection labelled by class is still trainable: each such image gets a few templated captions
("a photo of a red striped tile") so it can take part in contrastive training. Callers should say
in their report that these captions were generated.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

TEMPLATES = ("a photo of a {text}", "a {text}", "an image of a {text}")


def templated_captions(category: str, attributes: Sequence[str] = (), templates: Sequence[str] = TEMPLATES) -> list[str]:
    """One caption per template, naming the attributes then the category: ``a photo of a red tile``.

    Raises ValueError for an empty category (there is nothing to describe).
    """
    name = (category or "").strip()
    if not name:
        raise ValueError("a templated caption needs a category")
    words = [a.strip() for a in attributes if a and a.strip()]
    text = " ".join([*words, name])
    # "a apple" -> "an apple": the article agrees with the word that follows it.
    return [re.sub(r"\ba (?=[aeiouAEIOU])", "an ", template.format(text=text)) for template in templates]
