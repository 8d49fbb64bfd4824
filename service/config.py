"""All settings in one pydantic-settings class: environment variables (PAS_*) or CLI flags."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.data_dir import DEFAULT_DATA_DIR


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PAS_", env_file=".env", extra="ignore")

    data_dir: Path = Field(DEFAULT_DATA_DIR, description="Image files, indexes, adapters and the default SQLite file")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default sqlite:///<data_dir>/service.db")

    backbone_model: str | None = Field(None, description="open_clip model name, e.g. ViT-B-32; unset = offline default")
    backbone_pretrained: str | None = Field(None, description="open_clip pretrained tag or a local checkpoint path")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    precision: str = Field("auto", description="auto (fp16 on GPU, fp32 on CPU) | fp32 | fp16 | bf16")
    batch_size: int = Field(32, ge=1, le=4096, description="Images per encode batch")

    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1, description="Largest accepted image file")
    max_files_per_upload: int = Field(256, ge=1)
    max_image_pixels: int = Field(40_000_000, ge=1, description="Width x height above this is refused")
    import_root: Path | None = Field(None, description="Server-side imports must lie under this directory")
    import_batch_size: int = Field(64, ge=1, le=4096, description="Files an import job ingests per transaction "
                                                                  "(its progress and resume point advance by batches)")

    ann_threshold: int = Field(20_000, ge=1, description="Vectors at or above which an index becomes approximate")
    ann_nprobe: int = Field(32, ge=1, description="IVF lists probed per query")
    index_save_delay_s: float = Field(
        5.0, ge=0, description="Changed indexes are written at most this often (and at shutdown); 0 = after "
                               "every change. A crash in between only costs a repair from the stored vectors at the next start")
    max_k: int = Field(1000, ge=1)
    max_query_chars: int = Field(1000, ge=1)
    max_batch_queries: int = Field(64, ge=1)

    adapter_cache_size: int = Field(1024, ge=1, description="Loaded adapters kept in memory (LRU)")
    adapter_cache_bytes: int = Field(256 * 2**20, ge=1, description="Bytes of adapter tensors kept in memory (LRU): "
                                                                     "least recently used adapters are dropped beyond it")

    # Scaled-out deployment (README "Embedded default vs scaled-out deployment").
    scale_out: bool = Field(False, description="Several API and worker processes over one PostgreSQL and one shared "
                                               "data directory: the API only enqueues jobs, `prompt-adapters worker` "
                                               "runs them (procrastinate), searches follow other processes' writes")
    replica_sync_s: float = Field(1.0, ge=0, description="Scaled out: a collection's index generation is read from "
                                                         "the database at most this often per process (the bound on "
                                                         "how long another process's write can go unseen); 0 = every search")
    worker_heartbeat_s: float = Field(10.0, gt=0, description="Scaled out: how often a worker writes its heartbeat")
    worker_stalled_s: float = Field(30.0, gt=0, description="Scaled out: a worker silent for this long is dead; its "
                                                            "running job is failed")

    host: str = "127.0.0.1"
    port: int = 8000

    # Exposure (README "Security"): keys, browsers, bounded requests.
    auth_disabled: bool = Field(False, description="Serve without API keys even on a non-loopback address")
    allowed_hosts: str = Field("localhost,127.0.0.1,::1", description="Comma-separated Host names served "
                                                                     "(against DNS rebinding); * = any")
    cors_origins: str = Field("", description="Comma-separated browser origins allowed to call the API (CORS)")
    max_request_bytes: int = Field(64 * 1024 * 1024, ge=1, description="Largest request body, counted as it streams")
    max_adapter_bytes: int = Field(16 * 1024 * 1024, ge=1, description="Largest uploaded adapter file")
    header_timeout_s: float = Field(10.0, gt=0, description="Time for a request line and headers")
    body_timeout_s: float = Field(30.0, gt=0, description="Longest wait for the next piece of a request body")
    keep_alive_s: int = Field(5, ge=1, description="Idle keep-alive connections are closed after this")
    max_connections: int = Field(256, ge=1, description="Concurrent connections; more get 503")

    @field_validator("database_url", "backbone_model", "backbone_pretrained", "import_root", mode="before")
    @classmethod
    def _blank_is_unset(cls, value):
        # An empty environment variable (e.g. from a compose file) means "not set".
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("data_dir", "import_root")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return value.expanduser().resolve() if value is not None else None

    @model_validator(mode="after")
    def _scale_out_needs_postgres(self) -> Settings:
        if self.scale_out and not self.resolved_database_url.startswith("postgresql"):
            raise ValueError("PAS_SCALE_OUT needs a PostgreSQL database (PAS_DATABASE_URL=postgresql+psycopg://...): "
                             "several processes cannot share the SQLite file")
        if self.scale_out and self.worker_stalled_s <= self.worker_heartbeat_s:
            raise ValueError("PAS_WORKER_STALLED_S must be longer than PAS_WORKER_HEARTBEAT_S")
        return self

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'service.db'}"

    @property
    def collections_dir(self) -> Path:
        return self.data_dir / "collections"
