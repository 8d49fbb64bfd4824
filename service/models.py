"""Database tables (SQLAlchemy 2). Portable types only: SQLite by default, PostgreSQL through the same code."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import JSON, DateTime, ForeignKey, Integer, LargeBinary, String, Text, TypeDecorator, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from service.vocabulary import ZERO_SHOT, JobKind, version_space


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """Timezone-aware on every database: SQLite hands back naive values, which are UTC here."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


class Base(DeclarativeBase):
    pass


class BackboneState(Base):
    """The one backbone whose vector space every stored embedding lives in."""

    __tablename__ = "backbone_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    identity: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Collection(Base):
    __tablename__ = "collections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The highest adapter version ever given out: numbers are never reused after a delete.
    adapter_versions_issued: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Raised by every unit of work on the collection: another process holding its indexes in memory
    # compares it with the number it last synced at and catches up from the stored vectors when it differs.
    index_generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    images: Mapped[list[ImageRecord]] = relationship(
        back_populates="collection", cascade="all, delete-orphan", passive_deletes=True
    )


class ImageRecord(Base):
    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("collection_id", "sha256", name="uq_images_collection_sha256"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"), index=True)
    sha256: Mapped[str] = mapped_column(String(64))
    filename: Mapped[str] = mapped_column(String(500))
    content_type: Mapped[str] = mapped_column(String(100))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(Integer)
    category: Mapped[str | None] = mapped_column(String(200), nullable=True)
    attributes: Mapped[list] = mapped_column(JSON, default=list)
    meta: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # EXIF DateTimeOriginal (or DateTime) read at ingest: the camera's clock, taken as UTC (EXIF rarely has a zone).
    captured_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    collection: Mapped[Collection] = relationship(back_populates="images")
    captions: Mapped[list[Caption]] = relationship(
        back_populates="image", cascade="all, delete-orphan", passive_deletes=True, order_by="Caption.position"
    )
    embeddings: Mapped[list[Embedding]] = relationship(
        back_populates="image", cascade="all, delete-orphan", passive_deletes=True
    )

    @property
    def caption_texts(self) -> list[str]:
        return [c.text for c in self.captions]


class Caption(Base):
    __tablename__ = "captions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer, default=0)
    text: Mapped[str] = mapped_column(Text)

    image: Mapped[ImageRecord] = relationship(back_populates="captions")


class Embedding(Base):
    """A stored image vector in one space ("none" = zero-shot, else an adapter version).

    Kept in the database, in the same transaction as its image row, so that an index can always be
    rebuilt without re-encoding and never disagrees with the rows for long.
    """

    __tablename__ = "embeddings"
    __table_args__ = (UniqueConstraint("image_id", "space", name="uq_embeddings_image_space"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"), index=True)
    space: Mapped[str] = mapped_column(String(64), index=True)
    vector: Mapped[bytes] = mapped_column(LargeBinary)

    image: Mapped[ImageRecord] = relationship(back_populates="embeddings")


class AdapterVersion(Base):
    """A trained (or uploaded) adapter of a collection; its file lives under the collection's folder."""

    __tablename__ = "adapters"
    __table_args__ = (UniqueConstraint("collection_id", "version", name="uq_adapters_collection_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    method: Mapped[str] = mapped_column(String(20))  # a Method
    has_visual: Mapped[bool] = mapped_column(default=False)
    file_sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    param_count: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    report: Mapped[dict] = mapped_column(JSON, default=dict)
    active: Mapped[bool] = mapped_column(default=False)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)  # why it is (not) active
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    @property
    def name(self) -> str:
        """What the API calls it: "v<N>"."""
        return version_space(self.version)

    @property
    def space(self) -> str:
        """The image index it answers from: a text-only adapter shares the zero-shot image vectors."""
        return version_space(self.version) if self.has_visual else ZERO_SHOT


class TuningJob(Base):
    """A background job: a tuning job or (``kind`` "import") an import; the table keeps its first name."""

    __tablename__ = "tuning_jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(20), default=JobKind.TUNING, server_default=JobKind.TUNING.value)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"), index=True)
    state: Mapped[str] = mapped_column(String(20), index=True)  # a JobState
    config: Mapped[dict] = mapped_column(JSON)
    split: Mapped[dict] = mapped_column(JSON)  # image ids of train / val (early stopping) / test; {} for an import
    progress: Mapped[dict] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    adapter_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    @property
    def split_sizes(self) -> dict[str, int]:
        return {part: len(ids) for part, ids in (self.split or {}).items()}


class SearchRecord(Base):
    """A served result list, so that feedback can refer to it by ``search_id`` (the newest few per collection)."""

    __tablename__ = "searches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"), index=True)
    adapter: Mapped[str] = mapped_column(String(24))  # the selector as asked ("active", "none", "v3")
    served_by: Mapped[str] = mapped_column(String(24))  # what answered ("none", "v3")
    query: Mapped[dict] = mapped_column(JSON)  # {"text"}, {"image_id"}, {"terms"} or {"uploaded_image", "terms"}
    image_ids: Mapped[list] = mapped_column(JSON)  # the hits, best first
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class FeedbackRecord(Base):
    """A user's mark on an image for a query: relevant or not. Tuning jobs train on the relevant ones."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"), index=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    search_id: Mapped[int | None] = mapped_column(Integer, nullable=True)  # no key: old searches are pruned
    query: Mapped[dict] = mapped_column(JSON)  # as SearchRecord.query
    query_text: Mapped[str | None] = mapped_column(Text, nullable=True)  # set when the query is one text
    query_image_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    relevant: Mapped[bool] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ImportEntry(Base):
    """One file of an import job, listed when the job is queued; ``outcome`` is written in the same
    transaction as the batch that ingests it, so a job resumed after a restart starts at the first
    entry without one and nothing is ingested twice."""

    __tablename__ = "import_entries"
    __table_args__ = (UniqueConstraint("job_id", "position", name="uq_import_entries_job_position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("tuning_jobs.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)  # order of ingest: manifest order, or sorted paths
    path: Mapped[str] = mapped_column(Text)  # as reported: the manifest's path, or relative to the import root
    file: Mapped[str] = mapped_column(Text)  # where to read it (checked against the import root again then)
    caption_file: Mapped[str | None] = mapped_column(Text, nullable=True)  # a sidecar of captions
    metadata_: Mapped[dict] = mapped_column("metadata", JSON, default=dict)  # captions, category, attributes, meta
    outcome: Mapped[str | None] = mapped_column(String(20), nullable=True)  # an ImportOutcome once done
    image_id: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the image it became (no key: deletable)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)  # why it failed
