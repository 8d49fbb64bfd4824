"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    computed_field,
    field_validator,
    model_validator,
)

from adapters.train import TrainConfig
from service.input_rules import bounded_json, printable_name, printable_text
from service.vocabulary import ACTIVE, ZERO_SHOT, Activation, JobKind, JobState, Method, SearchSort, TrainingData

# The training recipe has one home, adapters.train.TrainConfig: the API's defaults are read from it.
RECIPE = TrainConfig()
MAX_WORD_TOKENS = 1024  # the word table's bound, for a tuning job and an uploaded adapter alike
MAX_BLOCK_ADAPTER_RANK = 64  # the block adapters' bound, likewise

# JSON columns may hold NULL for "nothing yet": the API shows an empty list or object.
ListOrEmpty = Annotated[list[str], BeforeValidator(lambda value: value or [])]
DictOrEmpty = Annotated[dict[str, Any], BeforeValidator(lambda value: value or {})]


class ApiModel(BaseModel):
    """Every body of the API: a field's docstring is its description in the OpenAPI document."""

    model_config = ConfigDict(use_attribute_docstrings=True)


class CollectionCreate(ApiModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    """Unique name of the collection (printable, not blank)"""
    description: Annotated[str | None, AfterValidator(printable_text)] = Field(None, max_length=5000)
    """Free text about the collection"""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("name must not be blank")
        return printable_name(value)


class IndexOut(ApiModel):
    space: str
    """Vector space: "none" (the backbone alone) or "v<N>" (an adapter version with visual prompts)"""
    kind: str
    """FAISS index type: exact (flat) or approximate (IVF)"""
    size: int
    """Vectors in the index"""


class CollectionOut(ApiModel):
    id: int
    """Collection id"""
    name: str
    """Unique name"""
    description: str | None
    """Free text about the collection"""
    created_at: datetime
    """Creation time (UTC)"""
    image_count: int
    """Images in the collection"""
    indexes: list[IndexOut]
    """The image indexes the collection has, one per space"""
    backbone: dict[str, Any]
    """Identity of the backbone its vectors were made with"""


Captions = list[Annotated[str, Field(max_length=2000)]]
Category = Annotated[str, AfterValidator(printable_name)]
Attributes = list[Annotated[str, Field(max_length=200)]]
Meta = Annotated[dict[str, Any], AfterValidator(bounded_json)]


class ImageMetadata(ApiModel):
    """What an image says about itself, as an upload's `metadata` entry or a manifest line gives it.

    `caption` is a one-item `captions` (both may be sent: the caption comes first).
    """

    model_config = ConfigDict(extra="forbid")

    caption: str | None = Field(None, max_length=2000, description="One caption (same as captions: [caption])")
    captions: Captions = Field(default_factory=list, max_length=64)
    """Captions describing the image (training pairs for tuning)"""
    category: Category | None = Field(None, max_length=200)
    """One category (a class name); used for category-aware training and filters"""
    attributes: Attributes = Field(default_factory=list, max_length=64)
    """Free attributes (tags)"""
    meta: Meta = Field(default_factory=dict)
    """Any JSON object of your own; searchable by key = value"""

    @property
    def all_captions(self) -> list[str]:
        return ([self.caption] if self.caption else []) + list(self.captions)


class ImagePatch(ApiModel):
    """An edit of one image (or of every image a filter matches): only the fields sent change.

    `caption`/`captions` replace the captions, `category` (null clears it) and `attributes` replace
    theirs, `meta` is merged key by key (a key set to null is removed).
    """

    model_config = ConfigDict(extra="forbid")

    caption: str | None = Field(None, max_length=2000, description="One caption (same as captions: [caption])")
    captions: Captions | None = Field(None, max_length=64)
    """Replaces every caption"""
    category: Category | None = Field(None, max_length=200)
    """Replaces the category; null clears it"""
    attributes: Attributes | None = Field(None, max_length=64)
    """Replaces the attributes"""
    meta: Meta | None = Field(None, description="Merged into the stored meta; a key set to null is removed")


class AcceptedImage(ApiModel):
    index: int
    """Position of the file in the request"""
    id: int
    """Image id"""
    filename: str
    """File name as uploaded"""
    sha256: str
    """SHA-256 of the file's bytes"""
    duplicate: bool
    """The collection already had these bytes: the stored image was kept (its metadata updated)"""


class RejectedImage(ApiModel):
    index: int
    """Position of the file in the request"""
    filename: str
    """File name as uploaded"""
    reason: str
    """Why it was refused"""


class IngestResponse(ApiModel):
    accepted: list[AcceptedImage]
    """Files stored (or found already stored)"""
    rejected: list[RejectedImage]
    """Files refused; the others are stored regardless"""


class ImportRequest(ApiModel):
    """What to import: a manifest or a directory tree under the server's import root (exactly one)."""

    model_config = ConfigDict(extra="forbid")

    manifest: str | None = Field(None, min_length=1, max_length=4096,
                                 description="Path of a .jsonl or .csv manifest under the import root "
                                             "(relative paths are relative to the root; image paths in it to the manifest)")
    directory: str | None = Field(None, min_length=1, max_length=4096,
                                  description="A directory under the import root: every image file in its tree "
                                              "(the folder an image sits in is its category; NAME.txt beside "
                                              "NAME.jpg holds its captions, one per line)")
    folder_categories: bool = True
    """With `directory`: take each image's category from the name of its folder"""

    @model_validator(mode="after")
    def _exactly_one(self) -> ImportRequest:
        if (self.manifest is None) == (self.directory is None):
            raise ValueError("give exactly one of manifest and directory")
        return self


class ImageOut(ApiModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    """Image id"""
    collection_id: int
    """The collection it belongs to"""
    filename: str
    """File name as uploaded or imported"""
    sha256: str
    """SHA-256 of the file's bytes"""
    content_type: str
    """MIME type of the stored file"""
    width: int
    """Width in pixels"""
    height: int
    """Height in pixels"""
    size_bytes: int
    """File size"""
    captions: list[str] = Field(validation_alias="caption_texts")
    """Captions, in order"""
    category: str | None
    """Category, if any"""
    attributes: ListOrEmpty
    """Attributes (tags)"""
    meta: DictOrEmpty
    """The image's own JSON metadata"""
    created_at: datetime
    """Upload time (UTC)"""
    captured_at: datetime | None
    """Capture time read from EXIF at ingest, if present"""

    @computed_field  # type: ignore[prop-decorator]  # pydantic's documented use of a decorated property
    @property
    def url(self) -> str:
        """Where to fetch the image file"""
        return f"/collections/{self.collection_id}/images/{self.id}/file"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def thumbnail_url(self) -> str:
        """Where to fetch a small JPEG thumbnail"""
        return f"/collections/{self.collection_id}/images/{self.id}/thumbnail"


class ImagePage(ApiModel):
    total: int
    """Images matching in all"""
    offset: int
    """Images skipped before this page"""
    limit: int
    """Largest page size asked for"""
    items: list[ImageOut]
    """The images of this page"""


MAX_ROW_ID = 2**63 - 1  # an id no database column can hold is a 422, never a 500


class SearchTerm(ApiModel):
    """One part of a combined query: a text or a stored image, with a weight (negative: "not like this")."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(None, max_length=1000)
    """A text (give either text or image_id)"""
    image_id: int | None = Field(None, ge=1, le=MAX_ROW_ID)
    """A stored image of the collection (give either text or image_id)"""
    weight: float = Field(1.0, ge=-10, le=10, description="Non-zero; a negative weight pushes results away")


MetaValue = Annotated[str, Field(max_length=2000)] | bool | int | float


class ImageFilter(ApiModel):
    """Which images a search (or a bulk edit) considers; every given condition must hold."""

    model_config = ConfigDict(extra="forbid")

    category: Category | None = Field(None, max_length=200)
    """Only images of this category"""
    attributes: list[Annotated[str, Field(max_length=200)]] = Field(
        default_factory=list, max_length=64, description="Every one of these attributes")
    meta: dict[Annotated[str, Field(max_length=200)], MetaValue] = Field(
        default_factory=dict, max_length=32, description="meta key = value, for every pair given")
    uploaded_from: datetime | None = Field(None, description="Upload time at or after (UTC when no zone)")
    uploaded_to: datetime | None = Field(None, description="Upload time at or before")
    captured_from: datetime | None = Field(None, description="EXIF capture time at or after")
    captured_to: datetime | None = Field(None, description="EXIF capture time at or before")


class BulkImagePatch(ApiModel):
    model_config = ConfigDict(extra="forbid")

    filter: ImageFilter = Field(description="The images to change (must not be empty)")
    change: ImagePatch
    """What to change on each of them"""


class BulkEditResult(ApiModel):
    updated: int
    """Images changed"""
    ids: list[int]
    """Their ids"""


class SearchOptions(ApiModel):
    """What every search takes besides its query."""

    model_config = ConfigDict(extra="forbid")

    k: int = Field(10, description="Results per query, 1..max_k")
    adapter: str = Field(ACTIVE, max_length=24, description=f'"{ACTIVE}", "{ZERO_SHOT}" or an adapter version')
    terms: list[SearchTerm] | None = Field(None, max_length=32,
                                           description="A weighted sum of texts and stored images")
    filter: ImageFilter = Field(default_factory=ImageFilter,
                                description="Applied inside the index search: k results still come back")
    min_score: float | None = Field(None, ge=-1, le=1, description="Drop hits scoring below this")
    sort: SearchSort = Field(SearchSort.SCORE, description="score (best first) or date (newest first)")


class SearchRequest(SearchOptions):
    query: str | list[str] | None = Field(None, description="A text, or a list of texts (one result list each)")
    image_id: int | None = Field(None, ge=1, le=MAX_ROW_ID, description='A stored image: "more like this"')


class SearchHit(ApiModel):
    image_id: int
    """Image id"""
    score: float
    """Cosine similarity to the query (higher is closer)"""
    captions: list[str]
    """The image's captions"""
    category: str | None
    """The image's category, if any"""
    filename: str
    """File name as uploaded or imported"""
    captured_at: datetime | None
    """EXIF capture time, if known"""
    uploaded_at: datetime
    """Upload time (UTC)"""
    url: str
    """Where to fetch the image file"""
    thumbnail_url: str
    """Where to fetch a small JPEG thumbnail"""


class SearchResponse(ApiModel):
    adapter: str
    """Who answered: "none" (the backbone alone) or "v<N>" (an adapter version)"""
    results: list[SearchHit] | list[list[SearchHit]]
    """The hits, best first: one list for one query, a list of lists for several"""
    search_id: int | None = Field(None, description="Refer to this result list in POST .../feedback "
                                                    "(null for a list of texts: see search_ids)")
    search_ids: list[int] | None = Field(None, description="For a list of texts: one search_id per text")


class DcarOptions(ApiModel):
    """DCAR's category-aware parts; off by default (plain symmetric InfoNCE)."""

    model_config = ConfigDict(extra="forbid")

    same_category_weight: float = Field(RECIPE.same_category_weight, ge=0.0, le=1.0,
                                        description="Weight of a same-category negative (< 1 pushes it away less)")
    hard_negatives: int = Field(RECIPE.hard_negatives, ge=0, le=16,
                                description="Mined neighbours per view added per anchor")
    attribute_reweighting: bool = Field(RECIPE.attribute_reweighting,
                                        description="Add captions composed of discriminative attributes")


class TuningConfig(ApiModel):
    model_config = ConfigDict(extra="forbid")

    # Every training field has TrainConfig's name and default (the recipe, see docs/bench/quality.md); the
    # held-out fractions, the activation rule and min_gain are the service's own.
    method: Method = Method.AUTO
    """textual, visual or dual prompts; auto (the default): dual prompts trained as each candidate recipe of
    adapters.candidates (as given; with block adapters beside the prompted image blocks; and the same with the
    adapters' lr at 3e-3), keeping the one best on the val pairs (a job on marks alone trains the first)"""
    epochs: int = Field(RECIPE.epochs, ge=1, le=200)
    """Passes over the training pairs (at most; early stopping may end sooner)"""
    lr: float = Field(RECIPE.lr, gt=0, le=1)
    """Learning rate"""
    batch_size: int = Field(RECIPE.batch_size, ge=2, le=1024)
    """Pairs per training step"""
    text_tokens: int = Field(RECIPE.text_tokens, ge=1, le=32)
    """Learned text prompt vectors"""
    visual_tokens: int = Field(RECIPE.visual_tokens, ge=1, le=64)
    """Learned image prompt vectors per prompted block"""
    visual_start: int = Field(RECIPE.visual_start, ge=0, le=64,
                              description="First image block that receives prompts (earlier ones are cached)")
    visual_deep_from: int | None = Field(RECIPE.visual_deep_from, ge=0, le=64,
                                         description="Fresh prompts at every block from here (VPT-deep); "
                                                     "null: shallow prompts only")
    text_init: Annotated[str, AfterValidator(printable_name)] = Field(RECIPE.text_init, min_length=1, max_length=200)
    """Words whose embeddings initialise the text prompts"""
    word_tokens: int = Field(RECIPE.word_tokens, ge=0, le=MAX_WORD_TOKENS,
                             description="The collection's most used words (tokens of its captions) whose "
                                         "embeddings the adapter learns; 0: none")
    block_adapter_rank: int = Field(RECIPE.block_adapter_rank, ge=0, le=MAX_BLOCK_ADAPTER_RANK,
                                    description="Rank of a bottleneck adapter beside every prompted image block "
                                                "(AdaptFormer-style; needs visual prompts); 0: none")
    patience: int | None = Field(RECIPE.patience, ge=1, le=200,
                                 description="Epochs without held-out improvement before stopping")
    val_fraction: float = Field(0.15, gt=0, lt=0.5, description="Held-out pairs for early stopping")
    test_fraction: float = Field(0.2, gt=0, lt=0.5, description="Held-out pairs for the final comparison")
    seed: int = Field(RECIPE.seed, ge=0, le=2**32 - 1)
    """Random seed of the split and the training"""
    dcar: DcarOptions = Field(default_factory=DcarOptions)
    """Category-aware loss options"""
    training_data: TrainingData = Field(
        TrainingData.AUTO,
        description="pairs: captioned or categorised images (and the user's marks) with held-out val and test pairs; "
                    "marks: the user's marked searches alone, the epoch and mixing weight chosen by cross-validation "
                    "over the marked queries and activation gated on it; auto: pairs when there are enough, else marks")
    activation: Activation = Field(Activation.IF_BETTER,
                                   description="if_better: activate only when the 95 % interval of the test gain "
                                               "over the active one lies above min_gain (a job on marks alone: the "
                                               "cross-validated gain over zero-shot, its interval corrected for "
                                               "the epochs and weights compared, on at least 30 judged queries)")
    min_gain: float = Field(0.0, ge=-1, le=1, description="Test gain over the active one needed to activate")


class JobOut(ApiModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    """Job id"""
    kind: JobKind
    """tuning (trains an adapter) or import (adds a manifest's or a directory's images)"""
    collection_id: int
    """The collection it tunes or imports into"""
    state: JobState
    """queued, running, succeeded, failed or cancelled"""
    config: dict[str, Any]
    """The tuning settings it runs with; for an import, the import request"""
    split_sizes: dict[str, int]
    """Training, validation and test pairs drawn for it; a job on marks alone: {marked: images marked for a
    query text}; empty for an import"""
    progress: DictOrEmpty
    """Latest progress: stage, step/total_steps, epoch, loss, held-out metrics, elapsed_s, eta_s (null once
    finished); a job on marks alone also run/runs (its cross-validation folds, then the final run). An import: step/total_steps are files done / files listed, with added, duplicates (same bytes
    already stored: metadata updated), failed, and failures (the first 100 failed files: path, reason)"""
    error: str | None
    """Why it failed, if it did"""
    adapter_version: int | None
    """The version it stored, if any"""
    created_at: datetime
    """When it was queued (UTC)"""
    started_at: datetime | None
    """When it started running (again, for an import resumed after a restart)"""
    finished_at: datetime | None
    """When it ended"""


class AdapterOut(ApiModel):
    model_config = ConfigDict(from_attributes=True)

    collection_id: int = Field(exclude=True)
    version: int
    """Version number (never reused within a collection)"""
    name: str
    """Its name as a search response gives it: "v<N>"."""
    active: bool
    """Whether searches with adapter active use it"""
    method: str
    """textual, visual or dual prompts"""
    has_visual: bool
    """Has image prompts, hence an image index of its own"""
    param_count: int
    """Learned parameters"""
    size_bytes: int
    """Size of its safetensors file"""
    file_sha256: str
    """SHA-256 of its safetensors file"""
    metrics: DictOrEmpty
    """Held-out test metrics of it and of the backbone alone"""
    note: str | None
    """Why it was (or was not) activated"""
    job_id: int | None
    """The tuning job that made it; null for an upload"""
    created_at: datetime
    """When it was stored (UTC)"""

    @computed_field  # type: ignore[prop-decorator]
    @property
    def file_url(self) -> str:
        """Where to download its safetensors file"""
        return f"/collections/{self.collection_id}/adapters/{self.version}/file"


class AdapterDetail(AdapterOut):
    report: DictOrEmpty
    """The tuning report: split, loss curve, epochs, test comparison, activation evidence"""


class FeedbackQuery(ApiModel):
    """The query a mark is about: a text or a stored image (exactly one)."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(None, max_length=1000, description="A text query")
    image_id: int | None = Field(None, ge=1, le=MAX_ROW_ID, description="A stored image used as the query")


class FeedbackRequest(ApiModel):
    model_config = ConfigDict(extra="forbid")

    search_id: int | None = Field(None, ge=1, le=MAX_ROW_ID,
                                  description="A search's `search_id`: the mark is about that search's query")
    query: FeedbackQuery | None = Field(None, description="Instead of search_id: the query itself")
    image_id: int = Field(ge=1, le=MAX_ROW_ID, description="The image marked (of this collection)")
    relevant: bool = Field(description="true: a right answer for the query; false: a wrong one")


class FeedbackOut(ApiModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    """Mark id"""
    search_id: int | None
    """The search the mark was made on, if it named one"""
    query: dict[str, Any]
    """The query: {"text": ...}, {"image_id": ...} or {"terms": [...]}"""
    image_id: int
    """The image marked"""
    relevant: bool
    """true: a right answer for the query; false: a wrong one"""
    created_at: datetime
    """When the mark was made (UTC)"""


class FeedbackPage(ApiModel):
    total: int
    """Marks in the collection"""
    offset: int
    """Marks skipped (newest first)"""
    limit: int
    """Marks per page at most"""
    items: list[FeedbackOut]
    """This page's marks, newest first"""
