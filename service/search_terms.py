"""What a search asks for, as query vectors of the selected adapter's space.

A query is one of: texts (one result list each), a stored image ("more like this"), an uploaded
image, or a weighted sum of texts and images (rclip's ``"2:golden retriever" + pool.jpg - fruit``).
Texts go through the adapter's text encoder; a stored image's vector is read from the database (the
adapter's image space was computed at ingest or re-embedding: never encoded again); an uploaded
image goes through the adapter's image encoder once. Each part is a unit vector; the weighted sum is
normalised again, so scores stay cosine similarities.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from sqlalchemy import select

from service.adapter_versions import Resolved
from service.context import ServiceContext
from service.errors import Invalid, NotFound
from service.imaging import ImageRejected, decode_image
from service.input_rules import visible_text
from service.models import Embedding, ImageRecord
from service.schemas import SearchTerm

MIN_NORM = 1e-6  # a sum whose terms cancel out points nowhere


@dataclass
class Query:
    vectors: np.ndarray  # (n, dim), unit rows
    batch: bool  # a list of texts was sent: one result list per text


def clean_text(ctx: ServiceContext, text: str) -> str:
    text = visible_text(text)
    if not text:
        raise Invalid("empty_query", "query text is empty")
    if len(text) > ctx.settings.max_query_chars:
        raise Invalid("query_too_long", f"query is over {ctx.settings.max_query_chars} characters")
    return text


def validate_queries(ctx: ServiceContext, queries: list[str]) -> list[str]:
    if not queries:
        raise Invalid("empty_query", "at least one query is required")
    if len(queries) > ctx.settings.max_batch_queries:
        raise Invalid("too_many_queries", f"at most {ctx.settings.max_batch_queries} queries per request")
    return [clean_text(ctx, text) for text in queries]


def unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, MIN_NORM)).astype(np.float32)


def stored_image_vectors(ctx: ServiceContext, collection_id: int, space: str, image_ids: list[int]) -> np.ndarray:
    """The vectors of stored images in one space, in the order asked (404 for an image not in the collection)."""
    with ctx.session() as session:
        rows = {image_id: vector for image_id, vector in session.execute(
            select(Embedding.image_id, Embedding.vector)
            .join(ImageRecord, ImageRecord.id == Embedding.image_id)
            .where(ImageRecord.collection_id == collection_id, Embedding.space == space,
                   Embedding.image_id.in_(set(image_ids)))
        )}
    missing = [i for i in image_ids if i not in rows]
    if missing:
        raise NotFound("image_not_found", f"image {missing[0]} not found in collection {collection_id}")
    return np.stack([np.frombuffer(rows[i], dtype=np.float32) for i in image_ids])


def uploaded_image_query(ctx: ServiceContext, collection_id: int, who: Resolved, data: bytes, weight: float,
                         terms: list[SearchTerm]) -> np.ndarray:
    """An uploaded image (not stored), weighted and added to any terms."""
    try:
        image = decode_image(data, ctx.settings.max_upload_bytes, ctx.settings.max_image_pixels).image
    except ImageRejected as exc:
        raise Invalid("bad_image", f"the query image is refused: {exc}") from exc
    if weight == 0:
        raise Invalid("bad_term", "the image's weight must not be 0")
    return combined_vector(ctx, collection_id, who, terms, image, weight)


def combined_vector(ctx: ServiceContext, collection_id: int, who: Resolved, terms: list[SearchTerm],
                    uploaded: Image.Image | None = None, uploaded_weight: float = 1.0) -> np.ndarray:
    """One unit vector (1, dim): the weighted sum of the terms' unit vectors (and of an uploaded image)."""
    if not terms and uploaded is None:
        raise Invalid("empty_query", "at least one term is required")
    for term in terms:
        if (term.text is None) == (term.image_id is None):
            raise Invalid("bad_term", "each term has exactly one of text and image_id")
        if term.weight == 0:
            raise Invalid("bad_term", "a term's weight must not be 0")
    texts = [t for t in terms if t.text is not None]
    images = [t for t in terms if t.image_id is not None]
    parts: list[np.ndarray] = []
    weights: list[float] = []
    if texts:
        cleaned = [clean_text(ctx, t.text or "") for t in texts]
        parts.append(unit(ctx.text_batcher.encode_texts(who.encoder, cleaned)))
        weights += [t.weight for t in texts]
    if images:
        vectors = stored_image_vectors(ctx, collection_id, who.space, [t.image_id or 0 for t in images])
        parts.append(unit(vectors))
        weights += [t.weight for t in images]
    if uploaded is not None:
        parts.append(unit(who.encoder.encode_images([uploaded])))
        weights.append(uploaded_weight)
    total = (np.asarray(weights, dtype=np.float32)[:, None] * np.concatenate(parts)).sum(axis=0, keepdims=True)
    if float(np.linalg.norm(total)) < MIN_NORM:
        raise Invalid("empty_query", "the terms cancel each other out")
    return unit(total)


def query_vectors(ctx: ServiceContext, collection_id: int, who: Resolved, *, query: str | list[str] | None,
                  image_id: int | None, terms: list[SearchTerm] | None) -> Query:
    """The vectors of a JSON search: exactly one of ``query``, ``image_id`` and ``terms``."""
    given = [name for name, value in (("query", query), ("image_id", image_id), ("terms", terms)) if value is not None]
    if len(given) != 1:
        raise Invalid("bad_query", "send exactly one of query, image_id and terms"
                      + (f" (got {', '.join(given)})" if given else ""))
    if query is not None:
        texts = validate_queries(ctx, query if isinstance(query, list) else [query])
        return Query(unit(ctx.text_batcher.encode_texts(who.encoder, texts)), isinstance(query, list))
    if image_id is not None:
        return Query(unit(stored_image_vectors(ctx, collection_id, who.space, [image_id])), False)
    return Query(combined_vector(ctx, collection_id, who, terms or []), False)
